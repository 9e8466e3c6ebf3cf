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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from models.protocol import learn_after_decision
from models.registry import get_spec
from riskstream import backtest
from riskstream.alerts import alert_id_for
from riskstream.backtest import evaluate, read_lines
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


def write_features(path: Path | str, windows: list[Window], engine_config: EngineConfig) -> None:
    header = {"format": FORMAT, "window_ms": engine_config.window_ms,
              "lateness_ms": engine_config.lateness_ms,
              "decision": asdict(engine_config.decision)}
    with open(path, "wb") as fh:
        fh.write(orjson.dumps(header) + b"\n")
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
    header, windows = read_features(args.features)
    truth = [orjson.loads(line) for line in read_lines(args.truth)]
    module = get_spec(args.model).factory.__module__
    assignments = [parse_assignment(s, module) for s in args.set or ()]
    with constants(assignments):
        alerts = replay_features(windows, args.model, DecisionConfig(**header["decision"]))
    ev = evaluate(alerts, truth, window_ms=header["window_ms"], grace_ms=30 * header["window_ms"],
                  advertiser_hours=len(windows) * header["window_ms"] / 3_600_000)
    print(f"{args.features}: {summary_line(ev)}")
    if args.alerts:
        with open(args.alerts, "wb") as fh:
            for a in alerts:
                fh.write(orjson.dumps(a) + b"\n")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(ev))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m riskstream.tuning", description=__doc__.split(
        "\n\n")[0])
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
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
