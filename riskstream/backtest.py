"""Offline replay: the live engine over recorded or simulated streams, with a deterministic clock.

The replay routes each event to the partition Kafka would (murmur2 of the advertiser key, the
Java/aiokafka default partitioner; the simulator produces with the same), merges each partition's
impressions and feedback in event-time order, and feeds them to the very ``RiskEngine`` the
agents run, marking a source caught up when its last event of that partition has been read (as
the agent does when it reaches the highwater). Windows therefore close on the same watermarks
and the alert ids equal those of a live run over the same input.

Deterministic clock: ``emitted_at`` is the window's end plus the allowed lateness, and validation
uses no wall clock (recordings may be old): the age and far-future checks, which compare with the
wall clock online, do not apply offline.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sized

import orjson
from aiokafka.partitioner import murmur2

from riskstream.engine import DictStore, EngineConfig, ModelConfig, Output, RiskEngine
from riskstream.evaluation import (
    GRACE_WINDOWS,
    evaluate,
    honest_ranks,
    incident_evidence,
    parse_thresholds,
    plain_misses,
)
from riskstream.events import InvalidEvent, Limits, validate_feedback, validate_impression

REPLAY_LIMITS = Limits(max_age_ms=1 << 62)
REPLAY_NOW_MS = 1 << 62  # "now" for validation: with REPLAY_LIMITS, no event is too old or new


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partition for a keyed record (murmur2, as Java and aiokafka do)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class ReplayResult:
    outputs: list[Output] = field(default_factory=list)
    events: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    engine: RiskEngine | None = None

    def alerts(self, kind: str = "alert") -> list[dict[str, Any]]:
        return [o.record for o in self.outputs if o.kind == kind]

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def read_lines(path: Path | str) -> list[bytes]:
    with open(path, "rb") as fh:
        return [line.rstrip(b"\r\n") for line in fh if line.strip()]


def replay(
    impressions: Iterable[bytes],
    feedback: Iterable[bytes],
    *,
    engine_config: EngineConfig = EngineConfig(),
    model_config: ModelConfig = ModelConfig(),
    partitions: int = 6,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Replay raw JSON lines (the topics' value bytes) through a fresh engine."""
    started = time.perf_counter()
    result = _replay(impressions, feedback, engine_config, model_config, partitions, progress)
    result.seconds = time.perf_counter() - started
    return result


class _PartitionFeed:
    """One partition of the replay: its feedback, and its impressions as they stream by."""

    __slots__ = ("partition", "feedback", "next_feedback", "feedback_time", "held", "outputs")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.feedback: list[dict] = []  # validated, in file order
        self.next_feedback = 0  # index of the first feedback event not fed yet
        self.feedback_time: float = math.inf  # its event time (inf: none left)
        self.held: dict | None = None  # the partition's latest impression, not fed yet
        self.outputs: list[Output] = []


def _validated(lines: Iterable[bytes], validate: Callable[[bytes, int, Limits], dict],
               invalid: dict[str, int]) -> Iterator[dict]:
    """The valid events of ``lines``; the others counted by reason in ``invalid``."""
    for raw in lines:
        try:
            yield validate(raw, REPLAY_NOW_MS, REPLAY_LIMITS)
        except InvalidEvent as exc:
            invalid[exc.reason] = invalid.get(exc.reason, 0) + 1


def _replay(impressions: Iterable[bytes], feedback: Iterable[bytes], engine_config: EngineConfig,
            model_config: ModelConfig, partitions: int,
            progress: Callable[[int, int], None] | None) -> ReplayResult:
    """Per partition, the engine gets ``heapq.merge(impressions, feedback, key=event_time)`` of
    that partition's events in file order: an impression goes first while its time is <= the
    next feedback's (ties: impressions first), and each source's last event is fed as caught
    up (as the agent at the highwater).

    The impressions, nearly all the events, are fed as they are read rather than collected per
    partition first: each event is used while it is still in the CPU cache, and the replay holds
    one impression per partition instead of all of them. The feedback is read and routed first.
    A partition's latest impression is held until the next one arrives, since only then is it
    known not to be the last. Partitions share nothing in the engine, so each partition's
    outputs are the same as when partitions are replayed one after the other, and they are
    returned in that order (by partition).
    """
    result = ReplayResult()
    engine = RiskEngine(engine_config, DictStore(), model_config)
    result.engine = engine
    process = engine.process
    feeds: dict[int, _PartitionFeed] = {}
    # advertiser -> its partition's feed: murmur2 in Python is slow, and a dict lookup per
    # event is all the routing then costs
    route: dict[str, _PartitionFeed] = {}
    late: dict[str, int] = {}

    def feed_of(adv: str) -> _PartitionFeed:
        p = partition_for(adv.encode(), partitions)
        f = feeds.get(p)
        if f is None:
            f = feeds[p] = _PartitionFeed(p)
        route[adv] = f
        return f

    def feed(f: _PartitionFeed, ev: dict, caught_up: bool) -> None:
        try:
            closed = process(ev, f.partition, caught_up)
        except InvalidEvent as exc:
            late[exc.reason] = late.get(exc.reason, 0) + 1
            return
        if closed:
            f.outputs.extend(closed)

    def feed_feedback_before(f: _PartitionFeed, t: float) -> None:
        """Feed the partition's next feedback events while their time is < ``t``."""
        fbs, i = f.feedback, f.next_feedback
        last = len(fbs) - 1
        while i <= last and fbs[i]["event_time"] < t:
            feed(f, fbs[i], i == last)
            i += 1
        f.next_feedback = i
        f.feedback_time = fbs[i]["event_time"] if i <= last else math.inf

    fb_invalid: dict[str, int] = {}
    fb_count = 0
    for ev in _validated(feedback, validate_feedback, fb_invalid):
        (route.get(ev["advertiser_id"]) or feed_of(ev["advertiser_id"])).feedback.append(ev)
        fb_count += 1
    for f in feeds.values():
        f.feedback_time = f.feedback[0]["event_time"]
    total = fb_count + len(impressions) if isinstance(impressions, Sized) else 0

    imp_invalid: dict[str, int] = {}
    imp_count = 0
    validate = validate_impression
    for raw in impressions:
        # _validated(impressions, ...), inlined: no generator to resume per impression
        try:
            ev = validate(raw, REPLAY_NOW_MS, REPLAY_LIMITS)
        except InvalidEvent as exc:
            imp_invalid[exc.reason] = imp_invalid.get(exc.reason, 0) + 1
            continue
        adv = ev["advertiser_id"]
        f = route.get(adv)
        if f is None:
            f = feed_of(adv)
        held = f.held
        f.held = ev
        if held is not None:  # feed(f, held, False), inlined: this is the replay's hot loop
            try:
                closed = process(held, f.partition, False)
            except InvalidEvent as exc:
                late[exc.reason] = late.get(exc.reason, 0) + 1
            else:
                if closed:
                    f.outputs.extend(closed)
        elif not f.feedback:  # a partition without feedback: that source is caught up
            f.outputs.extend(engine.set_caught_up(f.partition, "feedback", True))
        t = ev["event_time"]
        if t > f.feedback_time:
            feed_feedback_before(f, t)
        imp_count += 1
        if progress is not None and not imp_count & 0xFFFF:
            progress(imp_count, total)

    out = result.outputs
    for p in sorted(feeds):
        f = feeds[p]
        if f.held is None:  # feedback only
            f.outputs.extend(engine.set_caught_up(p, "impression", True))
        else:
            feed(f, f.held, True)
            f.held = None
        feed_feedback_before(f, math.inf)
        out.extend(f.outputs)
    engine.checkpoint()
    result.events = imp_count + fb_count
    # the reasons in the order they were first met in a sequential replay: impressions, then
    # feedback, then the engine's
    for counts in (imp_invalid, fb_invalid, late):
        for reason, n in counts.items():
            result.invalid[reason] = result.invalid.get(reason, 0) + n
    if progress is not None:
        progress(result.events, result.events)
    return result


def compare_specs(champion: ReplayResult, challenger: ReplayResult) -> dict[str, Any]:
    """Champion vs challenger on the same input: agreement on flagged windows and on alerted
    advertisers, and alert volume (precision and recall come from ``evaluate`` per spec)."""
    def flagged(r: ReplayResult) -> set[tuple[str, int]]:
        return {(o.record["advertiser_id"], o.record["window"]["start"])
                for o in r.outputs if o.kind == "score" and o.record["flagged"]}

    def alerted(r: ReplayResult) -> set[str]:
        return {a["advertiser_id"] for a in r.alerts() if a["status"] == "open"}

    fa, fb = flagged(champion), flagged(challenger)
    aa, ab = alerted(champion), alerted(challenger)
    return {
        "flagged_windows": {"champion": len(fa), "challenger": len(fb), "both": len(fa & fb),
                            "jaccard": len(fa & fb) / len(fa | fb) if fa | fb else 1.0},
        "alerted_advertisers": {"champion": len(aa), "challenger": len(ab), "both": len(aa & ab),
                                "only_champion": sorted(aa - ab)[:20],
                                "only_challenger": sorted(ab - aa)[:20],
                                "jaccard": len(aa & ab) / len(aa | ab) if aa | ab else 1.0},
        "alerts": {"champion": len(champion.alerts()), "challenger": len(challenger.alerts())},
    }


def advertiser_hours_of(result: ReplayResult, window_ms: int) -> float:
    closed = sum(1 for o in result.outputs if o.kind == "score")
    return closed * window_ms / 3_600_000


# -- CLI --------------------------------------------------------------------------------------
CURVE_KEYS = ("threshold", "incidents", "detected", "incident_recall", "alert_episodes",
              "true_episodes", "episode_precision", "benign_lookalikes", "alerts_on_benign",
              "median_delay_windows", "p90_delay_windows", "per_kind")


def _thresholds(text: str | None, truth: list[dict] | None) -> list[float] | str:
    """``--thresholds`` as floats in (0, 1], or an error message."""
    if not text:
        return []
    if truth is None:
        return "--thresholds needs --truth (the curve is recall and precision per threshold)"
    try:
        return parse_thresholds(text)
    except ValueError as exc:
        return f"--thresholds: {exc}"


def _recording(on: bool) -> Any:
    """``riskstream.tuning.recording()`` when ``on`` (the closed windows' features, for the
    operating curve), else a context that records nothing."""
    if not on:
        return contextlib.nullcontext([])
    from riskstream.tuning import recording  # tuning imports this module

    return recording()


def operating_curve(spec: str, engine_config: EngineConfig, windows: list, truth: list[dict],
                    thresholds: list[float]) -> list[dict[str, Any]]:
    """Recall, precision, benign alerts and delay of ``spec`` at each alert threshold, from
    the recorded window features of one replay (``riskstream.tuning.sweep``: each threshold a
    replay of its own, so that what a flagged window does not teach the model is accounted
    for)."""
    from riskstream.tuning import Run, features_header, sweep

    run = Run(spec, features_header(engine_config), windows, truth)
    return [{k: point[k] for k in CURVE_KEYS} for point in sweep([run], thresholds, spec)]


def add_arguments(p: Any) -> None:
    p.add_argument("--impressions", help="JSON lines of impressions (the ad-impressions schema)")
    p.add_argument("--feedback", help="JSON lines of feedback (the user-feedback schema)")
    p.add_argument("--series", help="CSV timestamp,value[,label]: generic series mode")
    p.add_argument("--out", required=True, help="alerts JSONL (or scores CSV in series mode)")
    p.add_argument("--truth", help="ground truth JSONL (from `riskstream simulate --truth`)")
    p.add_argument("--model", action="append", default=None,
                   help="model spec to run in enforce mode; give twice to compare two specs")
    p.add_argument("--report", help="directory for report.json (and report.html)")
    p.add_argument("--thresholds", help="with --truth: the operating curve at these "
                   "comma-separated alert thresholds (e.g. 0.6,0.7,0.8,0.9): recall, precision "
                   "and delay at each, from a replay of the run's recorded window features")
    p.add_argument("--partitions", type=int, default=None,
                   help="partition count to route by (default: topics.yaml)")
    p.add_argument("--window-seconds", type=int, default=None)
    p.add_argument("--lateness-seconds", type=int, default=None)
    g = p.add_argument_group("replaying a topic range instead of files")
    g.add_argument("--from-topics", action="store_true",
                   help="read ad-impressions and user-feedback (with RISKSTREAM_TOPIC_PREFIX) "
                        "from Kafka, up to their current end, instead of --impressions/--feedback")
    g.add_argument("--bootstrap", help="broker for --from-topics (default: "
                                       "KAFKA_BOOTSTRAP_SERVERS or the local broker)")
    g.add_argument("--since", help="first record time: ISO 8601 (2026-11-26T10:00Z) or epoch ms")
    g.add_argument("--until", help="records at or after this time are left out (same forms)")
    g.add_argument("--read-timeout", type=float, default=300.0,
                   help="seconds allowed to read the range (default 300)")


def run(args: Any, settings: Any) -> int:
    from app.factory import engine_config as engine_config_for
    from app.topics import load_topics

    if args.series:
        from riskstream.series import run_series

        return run_series(args)
    from_topics = getattr(args, "from_topics", False)
    if from_topics == bool(args.impressions or args.feedback) or not (
            from_topics or (args.impressions and args.feedback)):
        print("backtest: give --impressions and --feedback, or --from-topics (or --series)",
              file=sys.stderr)
        return 2
    overrides = {}
    if args.window_seconds:
        overrides["window_seconds"] = args.window_seconds
    if args.lateness_seconds is not None:
        overrides["allowed_lateness_seconds"] = args.lateness_seconds
    if overrides:
        settings = type(settings)(**{**settings.__dict__, **overrides})
    ecfg = engine_config_for(settings)
    partitions = args.partitions or {t.name: t for t in load_topics()}["ad-impressions"].partitions
    if from_topics:
        from app.topic_range import TopicRangeError, parse_time

        try:
            imps, fbs = read_topic_inputs(settings, args.bootstrap, parse_time(args.since),
                                          parse_time(args.until), args.read_timeout)
        except (TopicRangeError, ValueError) as exc:
            print(f"backtest: {exc}", file=sys.stderr)
            return 1
    else:
        imps, fbs = read_lines(args.impressions), read_lines(args.feedback)
    truth = [orjson.loads(line) for line in read_lines(args.truth)] if args.truth else None
    curve = _thresholds(getattr(args, "thresholds", None), truth)
    if isinstance(curve, str):
        print(f"backtest: {curve}", file=sys.stderr)
        return 2
    specs = args.model or [settings.model_spec]
    report: dict[str, Any] = {"input": {"impressions": len(imps), "feedback": len(fbs)},
                              "models": {}}

    def progress(done: int, total: int) -> None:
        print(f"\r  {done:,}/{total:,} events", end="", file=sys.stderr, flush=True)

    results: list[ReplayResult] = []
    for i, spec in enumerate(specs):
        with _recording(bool(curve)) as windows:
            result = replay(imps, fbs, engine_config=ecfg, model_config=ModelConfig(1, spec),
                            partitions=partitions, progress=progress)
        print(file=sys.stderr)
        results.append(result)
        alerts = result.alerts()
        out_path = Path(args.out) if i == 0 else Path(args.out).with_suffix(f".{spec}.jsonl")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "wb") as fh:
            for a in alerts:
                fh.write(orjson.dumps(a) + b"\n")
        entry: dict[str, Any] = {
            "alerts_file": str(out_path), "events": result.events,
            "events_per_s": round(result.events_per_s), "seconds": round(result.seconds, 3),
            "invalid": result.invalid, "alerts": len(alerts),
        }
        scores = [o.record for o in result.outputs if o.kind == "score"]
        if truth is not None:
            grace_ms = GRACE_WINDOWS * ecfg.window_ms
            entry["evaluation"] = evaluate(
                alerts, truth, window_ms=ecfg.window_ms, grace_ms=grace_ms,
                advertiser_hours=advertiser_hours_of(result, ecfg.window_ms))
            closed = [(r["advertiser_id"], r["window"]["start"], r["window"]["end"],
                       r["metrics"]) for r in scores]
            entry["incidents"] = incident_evidence(closed, truth, alerts,
                                                   window_ms=ecfg.window_ms, grace_ms=grace_ms)
            honest_ranks(closed, truth, entry["incidents"], grace_ms=grace_ms)
            del closed
        if curve:
            entry["operating_curve"] = operating_curve(spec, ecfg, windows, truth, curve)
            del windows
        report["models"][spec] = entry
        if args.report:
            from riskstream.report import write_html

            rdir = Path(args.report)
            rdir.mkdir(parents=True, exist_ok=True)
            write_html(rdir / f"report-{spec}.html", spec, scores, alerts, truth,
                       entry.get("evaluation"), ecfg.decision.threshold,
                       incidents=entry.get("incidents"), curve=entry.get("operating_curve"))
        print(f"{spec}: {result.events:,} events in {result.seconds:.2f}s "
              f"({result.events_per_s:,.0f}/s), {len(alerts)} alerts -> {out_path}")
        if "evaluation" in entry:
            ev = entry["evaluation"]
            print(f"  recall {ev['incident_recall']}, episode precision "
                  f"{ev['episode_precision']}, median delay {ev['median_delay_windows']} windows, "
                  f"alerts on benign look-alikes {ev['alerts_on_benign']}")
            missed, plain = plain_misses(entry["incidents"])
            if missed:
                print(f"  missed {missed}: {plain} of them left evidence that at least 1 in "
                      "20 advertisers without incidents match (honest rank >= 0.05; --report "
                      "lists each)")
        for point in entry.get("operating_curve", ()):
            print(f"  at threshold {point['threshold']:g}: recall {point['incident_recall']}, "
                  f"episode precision {point['episode_precision']}, median delay "
                  f"{point['median_delay_windows']} windows, alerts on benign look-alikes "
                  f"{point['alerts_on_benign']}")
    for spec, result in zip(specs[1:], results[1:]):
        cmp = compare_specs(results[0], result)
        report.setdefault("comparisons", {})[f"{specs[0]} vs {spec}"] = cmp
        fw, aa = cmp["flagged_windows"], cmp["alerted_advertisers"]
        print(f"{specs[0]} (champion) vs {spec} (challenger): flagged windows "
              f"{fw['champion']} / {fw['challenger']}, both {fw['both']} (Jaccard "
              f"{fw['jaccard']:.2f}); alerted advertisers {aa['champion']} / "
              f"{aa['challenger']}, both {aa['both']} (Jaccard {aa['jaccard']:.2f})")
    if args.report:
        rdir = Path(args.report)
        rdir.mkdir(parents=True, exist_ok=True)
        (rdir / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"report: {rdir / 'report.json'} and report-<model>.html")
    return 0


def read_topic_inputs(settings: Any, bootstrap: str | None, since_ms: int | None,
                      until_ms: int | None, timeout: float) -> tuple[list[bytes], list[bytes]]:
    """The impressions and feedback values of a topic range, each in (partition, offset)
    order -- within a partition, the order a worker consumed them. A null value becomes an
    empty line, which the replay dead-letters as the worker did."""
    from app.cli import client_config, resolve_bootstrap
    from app.topic_range import read_topic_range

    bootstrap = resolve_bootstrap(settings, bootstrap)
    out = []
    for name in ("ad-impressions", "user-feedback"):
        topic = settings.topic(name)

        def progress(done: int, total: int, topic: str = topic) -> None:
            print(f"\r  reading {topic}: {done:,}/{total:,}", end="", file=sys.stderr,
                  flush=True)

        records = read_topic_range(bootstrap, topic, client_config=client_config(settings),
                                   since_ms=since_ms, until_ms=until_ms, timeout=timeout,
                                   progress=progress)
        print(file=sys.stderr)
        out.append([r.value or b"" for r in records])
    return out[0], out[1]


def iter_jsonl(path: Path | str) -> Iterator[dict]:
    for line in read_lines(path):
        yield orjson.loads(line)
