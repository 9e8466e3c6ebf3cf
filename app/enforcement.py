"""Example enforcement consumer of ``risk-alerts``: at-least-once delivery, idempotent handling.

This is the pattern we recommend to enforcement teams (``riskstream alerts follow`` runs it):

1. **Consume in a consumer group, auto-commit off.** An offset is committed (synchronously) only
   after the alert it covers has been handled *and* recorded. A crash anywhere before the commit
   means Kafka delivers the alert again: nothing is lost.
2. **Deduplicate by ``alert_id``.** riskstream delivers at least once: a worker restart, a
   rebalance or a producer retry can emit the same alert again, always with the same
   deterministic ``alert_id`` (see ``riskstream/alerts.py``). A durable store of handled ids
   (here a small SQLite table) turns a re-delivery into a no-op. The id is inserted in the same
   database transaction as the action, so if your action writes to the same database the two
   commit together (effectively once); if the action is external (an API call), make it
   idempotent too, keyed by ``alert_id``, because a crash between the action and the insert
   repeats it.
3. **Check ``schema_version``.** Only version 1 is understood; anything else is reported and
   skipped -- but its offset is committed, so one unreadable record never blocks the partition.
   Unknown *fields* are ignored (adding fields is not a breaking change).

Decisions made on an alert go back on ``risk-enforcement-decisions`` (:func:`decide`), keyed by
``advertiser_id``, per ``schemas/enforcement-decision.v1.json``.

The logic is in small functions that need no broker:

>>> store = HandledStore(":memory:")
>>> alert = {"schema_version": 1, "alert_id": "ra1-x", "advertiser_id": "adv-1",
...          "status": "open", "severity": "high"}
>>> raw = orjson.dumps(alert)
>>> handle(raw, store, act=lambda a: None), handle(raw, store, act=lambda a: None)
('handled', 'duplicate')
>>> handle(b'{"schema_version": 2, "alert_id": "ra1-y"}', store, warn=lambda msg: None)
'skipped'
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from riskstream.alerts import SCHEMA_VERSION, render_line

#: Fields this consumer needs; the rest of the contract is optional to it.
REQUIRED_FIELDS = ("alert_id", "advertiser_id", "status", "severity")
DECISIONS = ("confirmed", "dismissed")
POLL_S = 0.5


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _act(alert: dict[str, Any]) -> None:
    """The example "action": print the alert. Replace with your enforcement step."""
    try:
        line = render_line(alert)
    except (KeyError, TypeError, ValueError, IndexError):  # partial alert: still show it
        line = (f"{alert['status'].upper():9} {alert['severity'].upper():8} "
                f"{alert['advertiser_id']:>12} {alert['alert_id']}")
    print(line, flush=True)


# -- idempotency store -----------------------------------------------------------------------
class HandledStore:
    """Durable set of handled alert ids (SQLite), shared by restarts of the consumer."""

    def __init__(self, path: str | Path) -> None:
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("""CREATE TABLE IF NOT EXISTS handled (
            alert_id TEXT PRIMARY KEY,
            advertiser_id TEXT NOT NULL,
            status TEXT NOT NULL,
            severity TEXT NOT NULL,
            handled_at TEXT NOT NULL)""")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def insert(self, alert: dict[str, Any]) -> bool:
        """Record the alert as handled; False if its id was already there."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO handled (alert_id, advertiser_id, status, severity, handled_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (alert["alert_id"], alert["advertiser_id"], alert["status"], alert["severity"],
             _now_iso()))
        return cur.rowcount == 1

    def contains(self, alert_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM handled WHERE alert_id = ?",
                               (alert_id,)).fetchone() is not None

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM handled").fetchone()[0]

    def close(self) -> None:
        self.db.close()


# -- pure handling ---------------------------------------------------------------------------
def parse_alert(value: bytes | None) -> tuple[dict[str, Any] | None, str]:
    """``(alert, "")`` for a record this consumer understands, else ``(None, reason)``."""
    if value is None:
        return None, "empty record (tombstone)"
    try:
        alert = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON ({exc})"
    if not isinstance(alert, dict):
        return None, f"not a JSON object ({type(alert).__name__})"
    version = alert.get("schema_version")
    if version != SCHEMA_VERSION:
        return None, (f"unsupported schema_version {version!r} (this consumer understands "
                      f"{SCHEMA_VERSION}); alert_id={alert.get('alert_id')!r}")
    missing = [f for f in REQUIRED_FIELDS if not isinstance(alert.get(f), str) or not alert[f]]
    if missing:
        return None, f"missing or invalid field(s) {', '.join(missing)}"
    return alert, ""


def handle(value: bytes | None, store: HandledStore,
           act: Callable[[dict[str, Any]], None] = _act,
           warn: Callable[[str], None] = _warn) -> str:
    """Handle one record of risk-alerts: ``"handled"``, ``"duplicate"`` or ``"skipped"``.

    The id is inserted and the action run in one store transaction: if ``act`` raises, the
    insert is rolled back and the exception propagates (the offset is not committed, so the
    alert is delivered again)."""
    alert, why = parse_alert(value)
    if alert is None:
        warn(f"skipping record: {why}")
        return "skipped"
    with store.transaction():
        if not store.insert(alert):
            return "duplicate"
        act(alert)
    return "handled"


# -- the consumer loop -----------------------------------------------------------------------
@dataclass
class FollowStats:
    handled: int = 0
    duplicates: int = 0
    skipped: int = 0
    commit_failures: int = 0

    @property
    def messages(self) -> int:
        return self.handled + self.duplicates + self.skipped

    def count(self, outcome: str) -> None:
        if outcome == "handled":
            self.handled += 1
        elif outcome == "duplicate":
            self.duplicates += 1
        else:
            self.skipped += 1

    def summary(self) -> str:
        return (f"summary: handled={self.handled} duplicates={self.duplicates} "
                f"skipped={self.skipped}")


def _client_config(settings: Any) -> dict[str, Any]:
    from app.cli import client_config

    return client_config(settings)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the loop then finishes the current record, closes the
    consumer and prints its summary). Signal handlers exist only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda _signo, _frame: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def consume_alerts(bootstrap: str, settings: Any, *, group: str, store: HandledStore,
                   max_messages: int | None = None, max_seconds: float | None = None,
                   act: Callable[[dict[str, Any]], None] = _act,
                   stop: threading.Event | None = None) -> FollowStats:
    """The at-least-once loop: poll, handle, commit synchronously; bounded by ``max_messages``
    / ``max_seconds`` (None: unbounded) or ``stop``."""
    from confluent_kafka import Consumer, KafkaException

    stop = stop or threading.Event()
    stats = FollowStats()
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(settings.session_timeout_ms // 5, 500),
        **_client_config(settings),
    })
    topic = settings.topic("risk-alerts")
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    try:
        consumer.subscribe([topic])
        while not stop.is_set():
            if max_messages is not None and stats.messages >= max_messages:
                break
            timeout = POLL_S
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    break
            msg = consumer.poll(timeout)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                _warn(f"consumer: {err}")
                continue
            stats.count(handle(msg.value(), store, act=act))
            try:  # only now: the alert is recorded, so a re-delivery would be a duplicate
                consumer.commit(message=msg, asynchronous=False)
            except KafkaException as exc:  # e.g. a rebalance took the partition: redelivered
                stats.commit_failures += 1
                _warn(f"commit of {msg.topic()}[{msg.partition()}]@{msg.offset()} failed "
                      f"({exc}); the alert will be delivered again and deduplicated")
    finally:
        consumer.close()  # leaves the group: partitions move to other members at once
    return stats


def follow(bootstrap: str, settings: Any, args: Any) -> int:
    """``riskstream alerts follow``: print each new alert once, across restarts."""
    from confluent_kafka import KafkaException

    store = HandledStore(args.store)
    stop = threading.Event()
    print(f"following {settings.topic('risk-alerts')} as group {args.group!r} "
          f"(store {args.store}); Ctrl-C to stop", file=sys.stderr, flush=True)
    code = 0
    stats = FollowStats()
    try:
        with _stop_on_signals(stop):
            stats = consume_alerts(bootstrap, settings, group=args.group, store=store,
                                   max_messages=args.max_messages,
                                   max_seconds=args.max_seconds, stop=stop)
    except KafkaException as exc:
        _warn(f"consumer failed: {exc}")
        code = 1
    finally:
        store.close()
    print(stats.summary() + (f" commit_failures={stats.commit_failures}"
                             if stats.commit_failures else ""), flush=True)
    return code


# -- decisions -------------------------------------------------------------------------------
def decision_record(alert_id: str, advertiser_id: str, decision: str,
                    note: str | None = None, decided_at: str | None = None) -> dict[str, Any]:
    """A risk-enforcement-decisions value (schemas/enforcement-decision.v1.json)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if not alert_id or not advertiser_id:
        raise ValueError("alert_id and advertiser_id are required")
    record = {"alert_id": alert_id, "advertiser_id": advertiser_id, "decision": decision,
              "decided_at": decided_at or _now_iso()}
    if note:
        record["note"] = note
    return record


def decide(bootstrap: str, settings: Any, alert_id: str, advertiser_id: str, decision: str,
           note: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Publish an enforcement decision on risk-enforcement-decisions, keyed by advertiser_id
    (murmur2, like every keyed riskstream topic). Returns the record; raises RuntimeError if it
    was not acknowledged (acks=all) within ``timeout``."""
    from confluent_kafka import Producer

    record = decision_record(alert_id, advertiser_id, decision, note)
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
        "client.id": f"riskstream-decide-{uuid.uuid4().hex[:8]}",
        **_client_config(settings),
    })
    errors: list[str] = []
    delivered: list[bool] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append(True)

    topic = settings.topic("risk-enforcement-decisions")
    producer.produce(topic, key=advertiser_id.encode(), value=orjson.dumps(record),
                     on_delivery=on_delivery)
    producer.flush(timeout)
    if errors or not delivered:
        raise RuntimeError(f"decision for {alert_id} not delivered to {topic}: "
                           f"{errors[0] if errors else f'no acknowledgement within {timeout}s'}")
    return record
