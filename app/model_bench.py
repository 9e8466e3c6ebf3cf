"""Per-window cost of ``robust-baseline`` alone, optionally against a git revision's class.

``python -m app.model_bench [--against REV] [--rounds N] [--sparse A] [--calls PATH]``

The model's calls in a replay are recorded once -- the bench's backtest input (``app.bench``:
simulated seed 17, ``--events`` events of ``--advertisers`` 1,000 at ``--base-rate`` 500
events/s: about 6 windows per advertiser, all before the drift warm-up; ``--advertisers 100
--base-rate 40`` gives ~125 windows each, drift statistics included) or, with ``--sparse A``, its
sparse-advertiser input (A advertisers, every event a window of its own) -- in the engine's
order per advertiser: ``score_one``, ``explain`` when an alert is built, then ``learn_one`` or
``observe_flagged``. They are then replayed on fresh models (creation included, as in the
engine) of this tree's class and, with ``--against``, of REV's ``models/baseline.py``,
alternating round by round in one process so that both see the same load. Printed: CPU µs per
scored window per round, the ratio (REV / this tree), and whether both classes returned the
same scores and explanations.

``--calls PATH`` keeps the recording (pickled) so that later runs skip the replay, e.g. for an
instruction count that does not depend on the machine's load::

    python -m app.model_bench --calls /tmp/calls.pkl --rounds 0          # record only
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        python -m app.model_bench --calls /tmp/calls.pkl --rounds 1 --only this
    # minus the same with --rounds 0, divided by the windows printed
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from models import baseline

ROOT = Path(__file__).resolve().parents[1]
# op codes of a recorded call: (model index, op, window features)
SCORE, EXPLAIN, LEARN, FLAGGED = range(4)


def record_calls(events: int, sparse: int, advertisers: int = 1000, base_rate: float = 500.0
                 ) -> list[tuple[int, int, dict[str, float]]]:
    """The model calls of one replay of the bench's input, in order."""
    from app import bench
    from riskstream import simulate
    from riskstream.backtest import replay

    calls: list[tuple[int, int, dict[str, float]]] = []
    index: dict[int, int] = {}
    last: dict[int, tuple[int, dict[str, float]]] = {}  # model -> (id, copy) of its last x
    cls = baseline.RobustBaseline
    originals = {name: getattr(cls, name)
                 for name in ("score_one", "explain", "learn_one", "observe_flagged")}

    def recorder(name: str, op: int):
        method = originals[name]

        def call(self, x, *args):
            i = index.setdefault(id(self), len(index))
            # the engine passes one dict to all the calls of a window: so does the replay
            held = last.get(i)
            if held is None or held[0] != id(x) or held[1] != x:
                held = last[i] = (id(x), dict(x))
            calls.append((i, op, held[1]))
            return method(self, x, *args)
        return call

    for op, name in enumerate(originals):
        setattr(cls, name, recorder(name, op))
    try:
        if sparse:
            argv, sys.argv = sys.argv, ["sparse", str(sparse)]
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(bench._SPARSE_CHILD, "sparse", "exec"), {"__name__": "sparse"})
            finally:
                sys.argv = argv
        else:
            cfg = simulate.SimConfig(seed=17, advertisers=advertisers,
                                     duration_s=events / base_rate * 1.5,
                                     base_rate_per_s=base_rate)
            imps: list[bytes] = []
            fbs: list[bytes] = []
            for kind, _key, value in itertools.islice(simulate.generate(cfg), events):
                (imps if kind == simulate.IMPRESSION else fbs).append(value)
            replay(imps, fbs)
    finally:
        for name, method in originals.items():
            setattr(cls, name, method)
    return calls


def class_at(rev: str) -> type:
    """``RobustBaseline`` as ``models/baseline.py`` is at git revision ``rev``."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:models/baseline.py"],
                         check=True, capture_output=True, text=True).stdout
    mod = types.ModuleType(f"baseline_at_{rev}")
    exec(compile(src, f"{rev}:models/baseline.py", "exec"), mod.__dict__)
    return mod.RobustBaseline


def run_calls(cls: type, calls: list[tuple[int, int, dict[str, float]]]) -> tuple[float, list]:
    """CPU seconds to replay ``calls`` on fresh models of ``cls``, and what they returned."""
    models: dict[int, Any] = {}
    out: list[Any] = []
    cpu0 = time.process_time()
    for i, op, x in calls:
        m = models.get(i)
        if m is None:
            m = models[i] = cls()
        if op == SCORE:
            out.append(m.score_one(x))
        elif op == EXPLAIN:
            out.append(m.explain(x))
        elif op == LEARN:
            m.learn_one(x)
        else:
            m.observe_flagged(x)
    return time.process_time() - cpu0, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.model_bench", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--advertisers", type=int, default=1000)
    p.add_argument("--base-rate", type=float, default=500.0,
                   help="events/s of the simulation: lower = more windows per advertiser")
    p.add_argument("--sparse", type=int, default=0, metavar="ADVERTISERS")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--against", metavar="REV")
    p.add_argument("--only", choices=("this", "rev"), help="replay only one of the two classes")
    p.add_argument("--calls", type=Path, help="pickle of the recorded calls (made if missing)")
    a = p.parse_args(argv)
    if a.calls is not None and a.calls.exists():
        calls = pickle.loads(a.calls.read_bytes())
    else:
        calls = record_calls(a.events, a.sparse, a.advertisers, a.base_rate)
        if a.calls is not None:
            a.calls.write_bytes(pickle.dumps(calls))
    windows = sum(1 for _, op, _ in calls if op == SCORE)
    print(f"{windows} windows, {len(calls)} calls, {len({c[0] for c in calls})} models")
    classes = {"this tree": baseline.RobustBaseline}
    if a.against:
        classes = {a.against: class_at(a.against), **classes}
    if a.only:
        classes = {k: v for k, v in classes.items() if (k == "this tree") == (a.only == "this")}
    per_window: dict[str, list[float]] = {name: [] for name in classes}
    results: dict[str, list] = {}
    for r in range(a.rounds):
        for name, cls in classes.items():
            cpu_s, results[name] = run_calls(cls, calls)
            per_window[name].append(cpu_s / windows * 1e6)
            print(f"round {r + 1} {name}: {per_window[name][-1]:.1f} CPU-µs per window")
    if a.against and not a.only and a.rounds:
        ratios = sorted(old / new for old, new in zip(per_window[a.against],
                                                      per_window["this tree"]))
        print(f"ratio {a.against} / this tree: median {ratios[len(ratios) // 2]:.2f} "
              f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}); "
              f"same results: {results[a.against] == results['this tree']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
