"""Shared fixtures and helpers: the session broker, per-test topic prefixes, worker processes,
a murmur2 producer and a bounded reader of output topics.

Helpers are plain functions (``from tests.conftest import produce, consume_until``) so tests can
use them inside loops; fixtures wrap the ones that own resources (worker processes).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jsonschema
import pytest

# The session broker fixture ``kafka_broker`` (and its report header / summary hooks).
pytest_plugins = ["tests.conftest_brokers"]

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"


# -- test outcome, for fixtures that print diagnostics on failure ----------------------------
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
               for when in ("setup", "call"))


# -- JSON schemas ----------------------------------------------------------------------------
@lru_cache(maxsize=None)
def schema_validator(name: str) -> jsonschema.protocols.Validator:
    """A validator for ``schemas/<name>`` (e.g. ``"risk-alert.v1.json"``), schema itself checked."""
    schema = json.loads((SCHEMAS / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def assert_valid(name: str, record: dict) -> None:
    errors = sorted(schema_validator(name).iter_errors(record), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:5])


# -- topics ----------------------------------------------------------------------------------
@pytest.fixture
def topic_prefix() -> str:
    """Unique per test: tests share the session broker, never a topic."""
    return f"t{uuid.uuid4().hex[:12]}-"


def apply_topics(bootstrap: str, prefix: str) -> list[str]:
    """Create every topic of topics.yaml under ``prefix`` (app.topics.apply_topics)."""
    from app.topics import apply_topics as _apply

    return _apply(bootstrap, prefix, timeout=30.0)


@pytest.fixture
def kafka_topics(kafka_broker: Any, topic_prefix: str) -> str:
    """The test's topics, created; returns the prefix."""
    created = apply_topics(kafka_broker.bootstrap, topic_prefix)
    assert f"{topic_prefix}ad-impressions" in created, created
    return topic_prefix


# -- producing -------------------------------------------------------------------------------
def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes]],
            timeout: float = 60.0) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` records in order with the murmur2 partitioner (Java's and
    aiokafka's default, so a keyed record lands where the replay routes it). Returns each
    record's ``(partition, offset)``; fails the test if any is not delivered in time."""
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2_random",
        "acks": "all",
        "enable.idempotence": True,  # in-order per partition, even with retries
        "linger.ms": 5,
        "compression.type": "none",
        "message.max.bytes": 4 * 1024 * 1024,
    })
    delivered: list[tuple[int, int] | None] = [None] * len(records)
    errors: list[str] = []

    def report(i: int) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"record {i}: {err}")
            else:
                delivered[i] = (msg.partition(), msg.offset())
        return on_delivery

    for i, (key, value) in enumerate(records):
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=report(i))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(timeout)
    assert not errors, f"produce to {topic}: {errors[:5]}"
    assert remaining == 0 and None not in delivered, \
        f"produce to {topic}: {remaining} record(s) undelivered after {timeout}s"
    return delivered  # type: ignore[return-value]


def produce_lines(bootstrap: str, topic: str, lines: Sequence[bytes]) -> list[tuple[int, int]]:
    """Produce JSON lines keyed by their advertiser_id (the topics' contract)."""
    import orjson

    return produce(bootstrap, topic,
                   [(orjson.loads(v)["advertiser_id"].encode(), v) for v in lines])


# -- consuming -------------------------------------------------------------------------------
class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.value)


Until = int | Callable[[list[Record]], bool]


def _describe(records: list[Record], n: int = 5) -> str:
    shown = [f"  p{r.partition}@{r.offset} key={r.key!r} value={(r.value or b'')[:200]!r}"
             for r in records[-n:]]
    return "\n".join(shown) or "  (nothing)"


class TopicReader:
    """Reads a whole topic from the beginning with a fresh consumer, accumulating records.

    Partitions are *assigned* (group id fresh and unused for offsets), not subscribed: no
    group join, so no rebalance delay on any broker kind. Isolation is librdkafka's default,
    ``read_committed``: records of aborted transactions are never seen.
    """

    def __init__(self, bootstrap: str, topic: str, **config: Any) -> None:
        """``config``: extra consumer settings (e.g. ``{"isolation.level": ...}`` via
        ``**{"isolation.level": "read_committed"}``)."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.topic = topic
        self.records: list[Record] = []
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            **config,
        })
        meta = self.consumer.list_topics(topic, timeout=30)
        tmeta = meta.topics.get(topic)
        assert tmeta is not None and tmeta.error is None and tmeta.partitions, \
            f"topic {topic} not found: {tmeta and tmeta.error}"
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                              for p in sorted(tmeta.partitions)])

    def poll(self, seconds: float = 0.5) -> list[Record]:
        """Read what arrives within ``seconds``; returns the new records."""
        new: list[Record] = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msgs = self.consumer.consume(num_messages=1000, timeout=min(left, 0.5))
            for m in msgs:
                if m.error() is not None:
                    raise AssertionError(f"{self.topic}: consumer error {m.error()}")
                new.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value()))
            if msgs and len(msgs) < 1000:
                break  # drained what is there: let the caller check its condition
        self.records.extend(new)
        return new

    def wait_for(self, until: Until, timeout: float, what: str = "",
                 on_timeout: Callable[[], str] | None = None) -> list[Record]:
        """Poll until ``until`` holds (a record count, or a predicate over all records read so
        far), or fail after ``timeout`` seconds with what was seen."""
        check = (lambda rs: len(rs) >= until) if isinstance(until, int) else until
        deadline = time.monotonic() + timeout
        while not check(self.records):
            if time.monotonic() >= deadline:
                extra = on_timeout() if on_timeout else ""
                pytest.fail(f"{self.topic}: {what or until} not reached within {timeout:.0f}s; "
                            f"saw {len(self.records)} record(s), last:\n"
                            f"{_describe(self.records)}{extra}", pytrace=False)
            self.poll(0.5)
        return self.records

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> "TopicReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def consume_until(bootstrap: str, topic: str, until: Until, timeout: float, what: str = "",
                  on_timeout: Callable[[], str] | None = None) -> list[Record]:
    """Every record of ``topic`` from the beginning, once ``until`` holds (a count or a
    predicate over the records read so far); fails after ``timeout`` seconds with what it saw
    (plus ``on_timeout()``, e.g. a worker's log tail)."""
    with TopicReader(bootstrap, topic) as reader:
        return list(reader.wait_for(until, timeout, what, on_timeout))


# -- worker processes ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Worker:
    proc: subprocess.Popen
    log_path: Path
    port: int
    prefix: str
    app_id: str
    env: dict[str, str] = field(repr=False, default_factory=dict)
    stopped: bool = False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metrics(self) -> dict[str, float]:
        """``/metrics`` samples summed by metric name over their labels."""
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
        return out

    def log_tail(self, lines: int = 60) -> str:
        """The log's last ``lines``, and, while the worker runs, its input metrics by
        partition (what a stalled partition shows first: lag, gaps, late events)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        tail = "\n".join(text.splitlines()[-lines:])
        if self.proc.poll() is None:
            try:
                status, body = self.get("/metrics")
            except OSError:
                return tail
            keep = ("riskstream_consumer_lag", "riskstream_input_gaps", "riskstream_events_",
                    "riskstream_dead_letter", "riskstream_windows_closed")
            tail += "\n--- metrics:\n" + "\n".join(
                ln for ln in body.decode(errors="replace").splitlines()
                if ln.startswith(keep) and not ln.endswith(" 0.0"))
        return tail

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode} before ready; log tail:"
                            f"\n{self.log_tail()}", pytrace=False)
            try:
                status, body = self.get("/readyz", timeout=1.0)
                if status == 200:
                    return
                last = f"{status} {body[:100]!r}"
            except (urllib.error.URLError, ConnectionError, socket.timeout) as exc:
                last = str(exc)
            time.sleep(0.2)
        pytest.fail(f"worker not ready within {timeout}s (/readyz: {last}); log tail:\n"
                    f"{self.log_tail()}", pytrace=False)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (Faust's graceful stop), SIGKILL if it has not exited within ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.stopped = True
        return self.proc.returncode


def worker_env(bootstrap: str, broker_kind: str, prefix: str, app_id: str, data_dir: Path,
               port: int, **overrides: str) -> dict[str, str]:
    """A clean environment for a worker: nothing inherited that riskstream or Kafka reads."""
    from app.brokers import faust_settings

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RISKSTREAM_", "KAFKA_"))}
    fs = faust_settings(broker_kind if broker_kind in ("apache", "embedded") else "apache")
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "RISKSTREAM_TOPIC_PREFIX": prefix,
        "RISKSTREAM_APP_ID": app_id,
        "RISKSTREAM_DATA_DIR": str(data_dir),
        "RISKSTREAM_WEB_PORT": str(port),
        "RISKSTREAM_SESSION_TIMEOUT_MS": str(int(fs["broker_session_timeout"] * 1000)),
        "RISKSTREAM_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    if "producer_max_batch_size" in fs:
        env["RISKSTREAM_PRODUCER_MAX_BATCH_SIZE"] = str(fs["producer_max_batch_size"])
    env.update(overrides)
    return env


@pytest.fixture
def worker(kafka_broker: Any, tmp_path: Path, request: pytest.FixtureRequest
           ) -> Iterator[Callable[..., Worker]]:
    """Factory: ``worker(prefix, ready_timeout=90, **env)`` starts ``riskstream worker`` as a
    subprocess on the session broker and returns once ``/readyz`` answers 200. Every worker is
    stopped at teardown (SIGTERM, then SIGKILL); on failure the log tails are printed."""
    started: list[Worker] = []

    def start(prefix: str, *, ready_timeout: float = 90.0, **env_overrides: str) -> Worker:
        n = len(started)
        app_id = f"rs-test-{uuid.uuid4().hex[:10]}"
        wdir = tmp_path / f"worker{n}"
        wdir.mkdir()
        port = free_port()
        env = worker_env(kafka_broker.bootstrap, kafka_broker.kind, prefix, app_id,
                         wdir / "data", port, **env_overrides)
        log_path = wdir / "worker.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=wdir,
                                    env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        w = Worker(proc, log_path, port, prefix, app_id, env)
        started.append(w)
        w.wait_ready(ready_timeout)
        return w

    yield start

    failed = _failed(request)
    for w in started:
        was_running = w.proc.poll() is None
        code = w.stop()
        if failed or not was_running:
            state = "stopped" if was_running else "had already exited"
            print(f"\n--- worker {w.app_id} {state} (exit {code}); log tail {w.log_path}:\n"
                  f"{w.log_tail(80)}")


# -- a recent simulated stream and its offline expectation -----------------------------------
@dataclass
class SimulatedCase:
    config: Any
    impressions: list[bytes]
    feedback: list[bytes]
    expected: Any  # riskstream.backtest.ReplayResult over the same lines, 6 partitions


def simulated_case(tmp_path: Path, *, seed: int, advertisers: int, duration_s: int,
                   spam_start_s: int, **sim: Any) -> SimulatedCase:
    """A recent simulated stream (ending at the current minute, so the worker's age check
    passes) with one blatant click-spam incident, written to files, and the offline replay of
    exactly those lines: what a live worker on the same input must produce. ``sim`` overrides
    SimConfig fields (e.g. ``diurnal_amplitude=0.0``: the same traffic whatever the hour)."""
    from dataclasses import replace

    from app.factory import engine_config
    from app.settings import Settings
    from riskstream.backtest import read_lines, replay
    from riskstream.simulate import IncidentSpec, SimConfig, write_jsonl

    now = int(time.time() * 1000)
    cfg = SimConfig(seed=seed, advertisers=advertisers, duration_s=duration_s,
                    base_rate_per_s=6,
                    incidents=(IncidentSpec("click_spam", start_s=spam_start_s, duration_s=600,
                                            params=(("ctr_x", 10.0),)),))
    cfg = replace(cfg, start_ms=now - now % 60_000 - duration_s * 1000, **sim)
    paths = {n: tmp_path / f"{n}.jsonl" for n in ("impressions", "feedback", "truth")}
    write_jsonl(cfg, str(paths["impressions"]), str(paths["feedback"]), str(paths["truth"]))
    imps, fbs = read_lines(paths["impressions"]), read_lines(paths["feedback"])
    expected = replay(imps, fbs, engine_config=engine_config(Settings()), partitions=6)
    return SimulatedCase(cfg, imps, fbs, expected)


# -- fault tests: labelled metrics, polling, a paced producer, a time-ordered case -----------
def labelled_metrics(w: Worker) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` samples keyed by (name, sorted label pairs), unsummed."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = w.get("/metrics")
    assert status == 200, f"/metrics answered {status}"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def owned_partitions(w: Worker, topic: str) -> int:
    """How many partitions of ``topic`` the worker's consumer holds (0 if none / no answer)."""
    try:
        samples = labelled_metrics(w)
    except (OSError, AssertionError):
        return 0
    return int(samples.get(("riskstream_assigned_partitions", (("topic", topic),)), 0))


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               on_timeout: Callable[[], str] | None = None, interval: float = 0.25) -> Any:
    """Poll ``check()`` until it returns something truthy (returned), or fail after
    ``timeout`` seconds saying ``what`` was awaited (plus ``on_timeout()``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = on_timeout() if on_timeout else ""
            pytest.fail(f"{what}: not reached within {timeout:.0f}s {extra}", pytrace=False)
        time.sleep(interval)  # polling interval of a condition, not a synchronisation guess


@dataclass
class TimedCase:
    """A recent simulated stream in event-time order (both topics merged) and the offline
    replay of exactly those events with ``settings``: what live workers must produce."""
    events: list[tuple[str, bytes, bytes]]  # (kind "impression" | "feedback", key, value)
    impressions: list[bytes]
    feedback: list[bytes]
    expected: Any  # ReplayResult

    def expected_alerts(self) -> dict[str, dict]:
        return {a["alert_id"]: a for a in self.expected.alerts()}

    def expected_scores(self) -> dict[tuple[str, int], float]:
        return {(o.record["advertiser_id"], o.record["window"]["start"]): o.record["risk_score"]
                for o in self.expected.outputs if o.kind == "score"}

    def records(self, prefix: str) -> list[tuple[str, bytes, bytes]]:
        """(topic, key, value) in event-time order, for :class:`Traffic`."""
        topics = {"impression": f"{prefix}ad-impressions", "feedback": f"{prefix}user-feedback"}
        return [(topics[kind], key, value) for kind, key, value in self.events]

    def records_by_topic(self, prefix: str) -> dict[str, list[tuple[bytes, bytes]]]:
        """(key, value) per topic, each in event-time order, for :func:`produce`."""
        out: dict[str, list[tuple[bytes, bytes]]] = {}
        for topic, key, value in self.records(prefix):
            out.setdefault(topic, []).append((key, value))
        return out

    def assert_live_output(self, bootstrap: str, prefix: str, timeout: float = 60.0,
                           on_timeout: Callable[[], str] | None = None) -> dict[str, int]:
        """Wait for every expected window score and alert on the output topics, then check
        them against the replay: the same alert ids (nothing lost, nothing extra), one content
        per id (a repeat after a redelivery is identical but for ``emitted_at``), and every
        window's score equal to the replay's, repeats included. Returns counts."""
        import orjson

        exp_alerts, exp_scores = self.expected_alerts(), self.expected_scores()

        def window(r: Record) -> tuple[str, int]:
            rec = r.json()
            return rec["advertiser_id"], rec["window"]["start"]

        def missing(reader: TopicReader) -> str:
            seen = {window(r) for r in reader.records}
            gone = sorted(set(exp_scores) - seen)
            return f"\nmissing {len(gone)} window(s), e.g. {gone[:6]}" + (
                on_timeout() if on_timeout else "")

        with TopicReader(bootstrap, f"{prefix}risk-scores") as scores, \
                TopicReader(bootstrap, f"{prefix}risk-alerts") as alerts:
            scores.wait_for(lambda rs: set(exp_scores) <= {window(r) for r in rs}, timeout,
                            f"all {len(exp_scores)} window scores",
                            on_timeout=lambda: missing(scores))
            alerts.wait_for(lambda rs: set(exp_alerts) <= {r.json()["alert_id"] for r in rs},
                            timeout, f"{len(exp_alerts)} alerts", on_timeout=on_timeout)
            alerts.poll(1.0)  # anything extra would show up now
            score_values: dict[tuple[str, int], set[float]] = {}
            for r in scores.records:
                score_values.setdefault(window(r), set()).add(r.json()["risk_score"])
            contents: dict[str, set[bytes]] = {}
            for r in alerts.records:
                rec = r.json()
                assert_valid("risk-alert.v1.json", rec)
                contents.setdefault(rec["alert_id"], set()).add(orjson.dumps(
                    {k: v for k, v in rec.items() if k != "emitted_at"},
                    option=orjson.OPT_SORT_KEYS))
            n_alert_records, n_score_records = len(alerts.records), len(scores.records)

        assert set(contents) == set(exp_alerts), (sorted(set(exp_alerts) - set(contents)),
                                                  sorted(set(contents) - set(exp_alerts)))
        twice = {aid: len(c) for aid, c in contents.items() if len(c) > 1}
        assert not twice, f"alert ids emitted with different content: {twice}"
        for aid, content in contents.items():
            live, off = orjson.loads(next(iter(content))), exp_alerts[aid]
            assert (live["status"], live["severity"], live["risk_score"], live["reasons"]) == \
                (off["status"], off["severity"], off["risk_score"], off["reasons"]), aid
        assert set(score_values) == set(exp_scores)
        wrong = {k: (v, exp_scores[k]) for k, v in score_values.items() if v != {exp_scores[k]}}
        assert not wrong, f"window scores differ from the replay: {list(wrong.items())[:5]}"
        return {"alerts": len(contents), "alert_repeats": n_alert_records - len(contents),
                "windows": len(score_values), "score_repeats": n_score_records - len(score_values)}


def timed_case(*, seed: int, advertisers: int, duration_s: int, spam_start_s: int,
               rate_per_s: float = 6, settings: Any = None) -> TimedCase:
    from dataclasses import replace

    from app.factory import engine_config
    from app.settings import Settings
    from riskstream.backtest import replay
    from riskstream.simulate import IncidentSpec, SimConfig, generate

    now = int(time.time() * 1000)
    cfg = SimConfig(seed=seed, advertisers=advertisers, duration_s=duration_s,
                    base_rate_per_s=rate_per_s,
                    incidents=(IncidentSpec("click_spam", start_s=spam_start_s, duration_s=600,
                                            params=(("ctr_x", 10.0),)),))
    cfg = replace(cfg, start_ms=now - now % 60_000 - duration_s * 1000)
    events = list(generate(cfg))
    imps = [v for k, _, v in events if k == "impression"]
    fbs = [v for k, _, v in events if k != "impression"]
    expected = replay(imps, fbs, engine_config=engine_config(settings or Settings()),
                      partitions=6)
    return TimedCase(events, imps, fbs, expected)


class Traffic:
    """Produces records to their topics from a background thread, in order, paced at
    ``rate`` records/s, up to a limit the test raises with ``release(n)`` (so phases of a
    test overlap with traffic). One idempotent murmur2 producer: per-partition order holds
    and a broker outage is ridden out with retries (``message.timeout.ms`` 120 s).
    ``close()`` stops it; ``delivered`` counts acknowledged records, ``errors`` lists
    failures."""

    def __init__(self, bootstrap: str, records: Sequence[tuple[str, bytes | None, bytes]],
                 rate: float, chunk: int = 50) -> None:
        import threading

        from confluent_kafka import Producer

        self.records = list(records)
        self.rate, self.chunk = rate, chunk
        self.limit = 0
        self.sent = 0
        self.delivered = 0
        self.errors: list[str] = []
        self._stop = False
        self._cond = threading.Condition()
        self._producer = Producer({
            "bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "acks": "all",
            "enable.idempotence": True, "linger.ms": 5, "message.timeout.ms": 120_000,
            "reconnect.backoff.max.ms": 1000, "log_level": 0})
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def release(self, n: int) -> None:
        with self._cond:
            self.limit = min(max(self.limit, n), len(self.records))
            self._cond.notify_all()

    def release_all(self) -> None:
        self.release(len(self.records))

    def set_rate(self, rate: float) -> None:
        """Pace from the next chunk on (records/s)."""
        self.rate = rate

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.errors.append(str(err))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and self.sent >= self.limit:
                    self._producer.poll(0)
                    self._cond.wait(0.1)
                if self._stop:
                    return
                upto = min(self.limit, self.sent + self.chunk)
            started = time.monotonic()
            for topic, key, value in self.records[self.sent:upto]:
                while True:
                    try:
                        self._producer.produce(topic, value=value, key=key,
                                               on_delivery=self._on_delivery)
                        break
                    except BufferError:
                        self._producer.poll(0.05)
            n = upto - self.sent
            self.sent = upto
            self._producer.poll(0)
            time.sleep(max(n / self.rate - (time.monotonic() - started), 0))

    def wait_delivered(self, n: int | None = None, timeout: float = 60.0) -> None:
        """Every released record (or the first ``n``) acknowledged by the broker."""
        want = self.limit if n is None else n
        deadline = time.monotonic() + timeout
        while self.delivered < want:
            assert not self.errors, f"produce errors: {self.errors[:5]}"
            assert time.monotonic() < deadline, \
                f"traffic: {self.delivered}/{want} delivered after {timeout:.0f}s"
            self._producer.poll(0.1) if not self._thread.is_alive() else time.sleep(0.1)
        assert not self.errors, f"produce errors: {self.errors[:5]}"

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(10)
        self._producer.flush(10)


@pytest.fixture
def traffic() -> Iterator[Callable[..., Traffic]]:
    """Factory: ``traffic(bootstrap, records, rate)`` -> a started :class:`Traffic`; closed at
    teardown."""
    made: list[Traffic] = []

    def make(bootstrap: str, records: Sequence[tuple[str, bytes | None, bytes]],
             rate: float, chunk: int = 50) -> Traffic:
        t = Traffic(bootstrap, records, rate, chunk)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def require_tool(name: str, package: str) -> str:
    """Path of the executable ``name``; skips the test when it is missing, unless
    ``RISKSTREAM_REQUIRE_TOOLS=1`` (CI), which makes a missing tool a failure."""
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package {package})"
        if os.environ.get("RISKSTREAM_REQUIRE_TOOLS") == "1":
            pytest.fail(f"RISKSTREAM_REQUIRE_TOOLS=1 but {message}", pytrace=False)
        pytest.skip(message)
    return path
