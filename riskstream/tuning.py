"""Model tuning on recorded window features: capture once, replay model variants in seconds.

A window's features do not depend on the model (``window_features`` of the closed window), so a
simulated run can be replayed by the engine once while every closed window's features are
recorded, and model variants then run over those features alone: per advertiser, in closing
order, ``score_one`` -> ``decide`` -> ``learn_one`` (or ``observe_flagged`` when flagged), as
``RiskEngine._close_window`` does. That gives the engine's alerts exactly (same ids, statuses,
severities and scores; ``tests/test_tuning.py``) at a fraction of the cost, since parsing and
windowing are done once (seed 9001, 200 advertisers x 4 h: capture 31 CPU-s, a replay 5 CPU-s).

.. code-block:: bash

    riskstream simulate --out-dir /tmp/sim --advertisers 200 --duration 14400 --seed 9001
    python -m riskstream.tuning capture --impressions /tmp/sim/impressions.jsonl \\
        --feedback /tmp/sim/feedback.jsonl --out /tmp/sim/features.jsonl
    python -m riskstream.tuning replay --features /tmp/sim/features.jsonl \\
        --truth /tmp/sim/truth.jsonl --set CUSUM_OFFSET=2.5

``riskstream tune ...`` is the same command line. Over several captured runs (seeds; ``--run
FEATURES TRUTH`` repeated):

.. code-block:: bash

    # the operating curve: recall, episode precision, benign alerts and delay per threshold
    # (--against hst: another spec's curve on the same runs)
    python -m riskstream.tuning sweep --run f1.jsonl t1.jsonl --run f2.jsonl t2.jsonl \\
        --thresholds 0.6,0.7,0.8,0.9
    # why an incident was missed or found late: per incident its delay, the first alert's
    # reasons and the evidence it left (clicks, fast clicks, reports, deception signals, ...)
    python -m riskstream.tuning incidents --run f1.jsonl t1.jsonl [--all]

``--set NAME=VALUE`` sets a constant of the model's module (``models.baseline`` for
robust-baseline; ``module.NAME`` for another module) for the replay; values are Python literals.
The engine's configuration (window, lateness, decision thresholds) is the one of the capture,
from the settings, as ``riskstream backtest`` uses them.

Not for validation figures: those come from ``riskstream backtest`` or from this replay checked
against it (docs/detection.md).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from models.protocol import learn_after_decision
from models.registry import get_spec
from riskstream import backtest
from riskstream.alerts import alert_id_for
from riskstream.backtest import read_lines
from riskstream.evaluation import (
    EVIDENCE,
    GRACE_WINDOWS,
    combine,
    evaluate,
    honest_ranks,
    incident_evidence,
    missed_or_late,
    parse_thresholds,
    rank_cell,
    surprise_cells,
)
from riskstream.decision import DecisionConfig, decide, evaluate_rules
from riskstream.engine import EngineConfig, ModelConfig, RiskEngine
from riskstream.features import window_features

FORMAT = "riskstream-window-features/1"

# One closed window: (advertiser_id, window start ms, window end ms, window_features(w)).
Window = tuple[str, int, int, dict[str, float]]


# -- capture ----------------------------------------------------------------------------------
class _RecordingEngine(RiskEngine):
    """The engine, recording each window it closes before closing it as usual."""

    recorded: list[Window]

    def _close_window(self, st: Any, w: Any, out: list) -> None:
        self.recorded.append((st.advertiser_id, w.start, w.end, window_features(w)))
        super()._close_window(st, w, out)


@contextlib.contextmanager
def recording() -> Iterator[list[Window]]:
    """While open, ``backtest.replay`` runs an engine that appends every closed window to the
    yielded list (in closing order). The engine's outputs are unchanged."""
    windows: list[Window] = []
    engine_class = type("RecordingEngine", (_RecordingEngine,), {"recorded": windows})
    saved = backtest.RiskEngine
    backtest.RiskEngine = engine_class
    try:
        yield windows
    finally:
        backtest.RiskEngine = saved


def capture(impressions: Iterable[bytes], feedback: Iterable[bytes], *,
            engine_config: EngineConfig, partitions: int,
            model_config: ModelConfig = ModelConfig(1)) -> tuple[list[Window],
                                                                  backtest.ReplayResult]:
    """Replay through the engine, recording the closed windows: (windows, the replay result)."""
    with recording() as windows:
        result = backtest.replay(impressions, feedback, engine_config=engine_config,
                                 model_config=model_config, partitions=partitions)
    return windows, result


def features_header(engine_config: EngineConfig) -> dict[str, Any]:
    """A features file's header: the engine configuration its windows were closed with."""
    return {"format": FORMAT, "window_ms": engine_config.window_ms,
            "lateness_ms": engine_config.lateness_ms,
            "decision": asdict(engine_config.decision)}


def write_features(path: Path | str, windows: list[Window], engine_config: EngineConfig) -> None:
    with open(path, "wb") as fh:
        fh.write(orjson.dumps(features_header(engine_config)) + b"\n")
        for w in windows:
            fh.write(orjson.dumps(w) + b"\n")


def read_features(path: Path | str) -> tuple[dict[str, Any], list[Window]]:
    """(header, windows) of a features file; floats round-trip exactly (orjson)."""
    lines = read_lines(path)
    header = orjson.loads(lines[0])
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a window-features file ({header.get('format')!r})")
    return header, [tuple(orjson.loads(line)) for line in lines[1:]]  # type: ignore[misc]


# -- replay -----------------------------------------------------------------------------------
class _Advertiser:
    __slots__ = ("model", "lifecycle")

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lifecycle: dict[str, Any] | None = None


def replay_features(windows: Iterable[Window], spec_name: str = "robust-baseline",
                    decision: DecisionConfig = DecisionConfig()) -> list[dict[str, Any]]:
    """The enforce alerts the engine would emit for these windows with model ``spec_name``.

    Each alert keeps the fields evaluation and comparison need: ``alert_id``, ``status``,
    ``advertiser_id``, ``window``, ``severity``, ``risk_score`` and ``reasons`` (rule codes and
    the explaining features), as the engine builds them.
    """
    spec = get_spec(spec_name)
    detector = f"risk:{spec_name}"
    advertisers: dict[str, _Advertiser] = {}
    alerts: list[dict[str, Any]] = []
    for adv, start, end, x in windows:
        a = advertisers.get(adv)
        if a is None:
            a = advertisers[adv] = _Advertiser(spec.create())
        model = a.model
        rule_hits = evaluate_rules(x)
        risk = model.score_one(x)
        prev = a.lifecycle
        (flagged, status, severity, _threshold), a.lifecycle = decide(
            prev, risk, rule_hits, model.windows_seen, decision)
        if status is not None:
            reasons = []
            if status != "resolved":
                reasons = [h.code for h in rule_hits] + [c.feature for c in model.explain(x)]
            alerts.append({
                "alert_id": alert_id_for(adv, start, end, detector, status), "status": status,
                "advertiser_id": adv, "window": {"start": start, "end": end},
                "severity": severity or "low", "risk_score": round(risk, 6),
                "reasons": reasons})
        learn_after_decision(model, x, flagged)  # as the engine's _close_window
    return alerts


def engine_alert_summary(alert: dict[str, Any]) -> dict[str, Any]:
    """An engine alert in ``replay_features``'s form (to compare the two)."""
    return {"alert_id": alert["alert_id"], "status": alert["status"],
            "advertiser_id": alert["advertiser_id"],
            "window": {"start": alert["window"]["start"], "end": alert["window"]["end"]},
            "severity": alert["severity"], "risk_score": alert["risk_score"],
            "reasons": [r.get("feature", r["code"]) for r in alert["reasons"]
                        if r["type"] != "lifecycle"]}


def parse_assignment(text: str, default_module: str) -> tuple[str, str, Any]:
    """``NAME=VALUE`` or ``module.NAME=VALUE`` -> (module, name, value as a Python literal).

    >>> parse_assignment("CUSUM_OFFSET=2.5", "models.baseline")
    ('models.baseline', 'CUSUM_OFFSET', 2.5)
    >>> parse_assignment("riskstream.features.X={'a': 1}", "models.baseline")
    ('riskstream.features', 'X', {'a': 1})
    """
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    module, _, attr = name.strip().rpartition(".")
    return module or default_module, attr, ast.literal_eval(value.strip())


@contextlib.contextmanager
def constants(assignments: Iterable[tuple[str, str, Any]]) -> Iterator[None]:
    """Set module constants for the duration of the block (each must exist)."""
    saved = []
    try:
        for module_name, attr, value in assignments:
            module = importlib.import_module(module_name)
            if not hasattr(module, attr):
                raise AttributeError(f"{module_name} has no constant {attr}")
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, value)
        yield
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)


def summary_line(ev: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v['detected']}/{v['incidents']}"
                      for k, v in sorted(ev["per_kind"].items()))
    return (f"recall {ev['detected']}/{ev['incidents']}, precision "
            f"{ev['true_episodes']}/{ev['alert_episodes']}, benign {ev['alerts_on_benign']}, "
            f"median delay {ev['median_delay_windows']}, p90 {ev['p90_delay_windows']} "
            f"({kinds})")


# -- several runs: operating points, and the incidents behind the figures ---------------------
class Run:
    """One captured run (a seed): its features header (``features_header``) and windows, and
    its truth."""

    __slots__ = ("name", "header", "windows", "truth")

    def __init__(self, name: str, header: dict[str, Any], windows: list[Window],
                 truth: list[dict[str, Any]]) -> None:
        self.name, self.header, self.windows, self.truth = name, header, windows, truth

    @classmethod
    def load(cls, features: Path | str, truth: Path | str) -> "Run":
        """A features file and its truth file (named after the features' directory:
        /tmp/det/s9901/features.jsonl -> s9901)."""
        path = Path(features)
        header, windows = read_features(features)
        return cls(path.parent.name or path.stem, header, windows,
                   [orjson.loads(line) for line in read_lines(truth)])

    @property
    def window_ms(self) -> int:
        return int(self.header["window_ms"])

    def decision(self, threshold: float | None = None) -> DecisionConfig:
        """The capture's decision configuration, at ``threshold`` if given (the warm-up
        threshold never below it)."""
        cfg = DecisionConfig(**self.header["decision"])
        if threshold is None:
            return cfg
        return replace(cfg, threshold=threshold,
                       warmup_threshold=max(cfg.warmup_threshold, threshold))

    def evaluate(self, alerts: list[dict[str, Any]]) -> dict[str, Any]:
        wm = self.window_ms
        return evaluate(alerts, self.truth, window_ms=wm, grace_ms=GRACE_WINDOWS * wm,
                        advertiser_hours=len(self.windows) * wm / 3_600_000)


def sweep(runs: list[Run], thresholds: Iterable[float],
          spec_name: str = "robust-baseline") -> list[dict[str, Any]]:
    """The operating curve: per alert threshold, the evaluation of all runs replayed at it.

    Each threshold is a replay of its own, not a re-cut of one run's scores: a flagged window
    is not learned, so the threshold changes the baselines that later windows are judged by.
    """
    out = []
    for threshold in thresholds:
        ev = combine([run.evaluate(replay_features(run.windows, spec_name,
                                                   run.decision(threshold)))
                      for run in runs])
        ev["threshold"] = threshold
        out.append(ev)
    return out


def incident_rows(run: Run, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``evaluation.incident_evidence`` of one run, each row naming the run."""
    return [{"run": run.name, **row} for row in incident_evidence(
        run.windows, run.truth, alerts, window_ms=run.window_ms,
        grace_ms=GRACE_WINDOWS * run.window_ms)]


def run_honest_ranks(run: Run, rows: list[dict[str, Any]]) -> None:
    """``evaluation.honest_ranks`` of one run's incident rows."""
    honest_ranks(run.windows, run.truth, rows, grace_ms=GRACE_WINDOWS * run.window_ms)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _markdown(header: list[str], rows: Iterable[list[str]]) -> str:
    return "\n".join("| " + " | ".join(cells) + " |"
                     for cells in [header, ["---"] * len(header), *rows])


def sweep_table(points: list[dict[str, Any]]) -> str:
    """The operating curve as a Markdown table."""
    kinds = sorted({k for p in points for k in p["per_kind"]})
    return _markdown(
        ["threshold", "incident recall", "episode precision", "benign alerted", "median delay",
         "p90 delay", *kinds],
        ([f"{p['threshold']:g}",
          f"{_fmt(p['incident_recall'])} ({p['detected']}/{p['incidents']})",
          f"{_fmt(p['episode_precision'])} ({p['true_episodes']}/{p['alert_episodes']})",
          f"{p['alerts_on_benign']} of {p['benign_lookalikes']}",
          _fmt(p["median_delay_windows"], "g"), _fmt(p["p90_delay_windows"], "g"),
          *(f"{p['per_kind'][k]['detected']}/{p['per_kind'][k]['incidents']}"
            if k in p["per_kind"] else "-" for k in kinds)] for p in points))


def incidents_table(rows: list[dict[str, Any]]) -> str:
    """Incident rows as a Markdown table (evidence columns in ``EVIDENCE`` order)."""
    ranked = any("honest_rank" in r for r in rows)
    return _markdown(
        ["run", "kind", "advertiser", "impressions/min", "minutes", "delay", *EVIDENCE,
         "least likely count (vs expected)", "p", *(["honest rank"] if ranked else []),
         "first alert's reasons"],
        ([r["run"], r["kind"], r["advertiser_id"], _fmt(r["impressions_per_min"], ".1f"),
          format(r["minutes"], "g"),
          "missed" if r["delay_windows"] is None else format(r["delay_windows"], "g"),
          *(format(r["evidence"][k], "g") for k in EVIDENCE), *surprise_cells(r),
          *([rank_cell(r)] if ranked else []),
          ", ".join(r["reasons"] or ())] for r in rows))


# -- CLI --------------------------------------------------------------------------------------
def _cmd_capture(args: argparse.Namespace) -> int:
    from app.factory import engine_config
    from app.settings import Settings
    from app.topics import load_topics

    ecfg = engine_config(Settings())
    partitions = args.partitions or {t.name: t for t in load_topics()}["ad-impressions"].partitions
    windows, result = capture(read_lines(args.impressions), read_lines(args.feedback),
                              engine_config=ecfg, partitions=partitions)
    write_features(args.out, windows, ecfg)
    print(f"{len(windows):,} windows of {result.events:,} events -> {args.out} "
          f"({len(result.alerts())} alerts by the default model)")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    run = Run.load(args.features, args.truth)
    with constants(_assignments(args)):
        alerts = replay_features(run.windows, args.model, run.decision())
    ev = run.evaluate(alerts)
    print(f"{args.features}: {summary_line(ev)}")
    if args.alerts:
        with open(args.alerts, "wb") as fh:
            for a in alerts:
                fh.write(orjson.dumps(a) + b"\n")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(ev))
    return 0


def _runs(args: argparse.Namespace) -> list[Run]:
    return [Run.load(features, truth) for features, truth in args.run]


def _assignments(args: argparse.Namespace) -> list[tuple[str, str, Any]]:
    module = get_spec(args.model).factory.__module__
    return [parse_assignment(s, module) for s in args.set or ()]


def _thresholds(text: str) -> list[float]:
    try:
        return parse_thresholds(text)
    except ValueError as exc:  # argparse shows the message of this one
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_sweep(args: argparse.Namespace) -> int:
    runs = _runs(args)
    thresholds = args.thresholds
    curves = {}
    with constants(_assignments(args)):
        curves[args.model] = sweep(runs, thresholds, args.model)
    for spec in args.against or ():  # as registered: --set is for --model's module only
        curves[spec] = sweep(runs, thresholds, spec)
    for spec, points in curves.items():
        print(f"{len(runs)} run(s), model {spec}" + "".join(
            f", {s}" for s in (args.set or () if spec == args.model else ())))
        print(sweep_table(points))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(curves))
    return 0


def _cmd_incidents(args: argparse.Namespace) -> int:
    rows, evaluations = [], []
    with constants(_assignments(args)):
        for run in _runs(args):
            alerts = replay_features(run.windows, args.model, run.decision(args.threshold))
            evaluations.append(run.evaluate(alerts))
            run_rows = incident_rows(run, alerts)
            if args.honest_rank:
                run_honest_ranks(run, run_rows)
            rows += run_rows
    print(summary_line(combine(evaluations)))
    shown = rows if args.all else missed_or_late(rows, args.slower_than)
    print(incidents_table(shown))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(rows))
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m riskstream.tuning") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture", help="replay through the engine, recording window features")
    c.add_argument("--impressions", required=True)
    c.add_argument("--feedback", required=True)
    c.add_argument("--out", required=True, help="window features, JSON lines")
    c.add_argument("--partitions", type=int, default=None,
                   help="partition count to route by (default: topics.yaml)")
    c.set_defaults(func=_cmd_capture)
    r = sub.add_parser("replay", help="replay a model over captured features and evaluate")
    r.add_argument("--features", required=True)
    r.add_argument("--truth", required=True)
    r.add_argument("--model", default="robust-baseline", help="model spec (default %(default)s)")
    r.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a constant of the model's module for this replay (repeatable)")
    r.add_argument("--alerts", help="write the replay's alerts here (JSON lines)")
    r.add_argument("--json", help="write the evaluation here (JSON)")
    r.set_defaults(func=_cmd_replay)

    def several(name: str, help_: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_)
        q.add_argument("--run", nargs=2, action="append", required=True,
                       metavar=("FEATURES", "TRUTH"), help="a captured run (repeatable: seeds)")
        q.add_argument("--model", default="robust-baseline",
                       help="model spec (default %(default)s)")
        q.add_argument("--set", action="append", metavar="NAME=VALUE",
                       help="a constant of the model's module (repeatable)")
        q.add_argument("--json", help="write the results here (JSON)")
        return q

    w = several("sweep", "the operating curve: recall, precision and delay per alert threshold")
    w.add_argument("--against", action="append", metavar="SPEC",
                   help="also the curve of this model spec, on the same runs (repeatable): "
                        "compare models at equal precision, not at one threshold")
    w.add_argument("--thresholds", type=_thresholds, default="0.5,0.6,0.7,0.8,0.9,0.95",
                   help="comma-separated alert thresholds (default %(default)s)")
    w.set_defaults(func=_cmd_sweep)
    i = several("incidents", "per incident: delay and the evidence it left (missed and slow "
                "ones unless --all)")
    i.add_argument("--threshold", type=float, default=None,
                   help="alert threshold (default: the capture's)")
    i.add_argument("--slower-than", type=float, default=3.0,
                   help="list detected incidents slower than this many windows (default 3)")
    i.add_argument("--all", action="store_true", help="list every incident")
    i.add_argument("--honest-rank", action="store_true",
                   help="per incident, the share of advertisers without incidents whose least "
                        "likely count over the same span is as unlikely (slower)")
    i.set_defaults(func=_cmd_incidents)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
