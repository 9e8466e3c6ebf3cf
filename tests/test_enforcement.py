"""The example enforcement consumer (app/enforcement.py): idempotent handling by alert_id,
schema_version checks, offsets committed only after the store, and enforcement decisions."""

from __future__ import annotations

import re
import signal
import sqlite3
import threading
import uuid
from argparse import Namespace
from typing import Any

import orjson
import pytest

from app.enforcement import (HandledStore, _stop_on_signals, decide, decision_record, follow,
                             handle, parse_alert)
from app.settings import Settings
from riskstream.alerts import build_alert, encode
from tests.conftest import assert_valid, consume_until, produce

T0 = 1_700_000_000_000
MIN = 60_000


def make_alert(advertiser_id: str = "adv-7", window: int = 0, status: str = "open",
               severity: str = "high") -> dict[str, Any]:
    start = T0 + window * MIN
    return build_alert(
        advertiser_id=advertiser_id, window_start=start, window_end=start + MIN,
        detector="risk:robust-baseline", status=status, severity=severity, risk_score=0.93,
        threshold=0.8, model_name="robust-baseline", model_version="1", config_version=0,
        mode="enforce",
        reasons=[{"type": "rule", "code": "ctr_spike", "message": "CTR 0.4 > 0.2",
                  "value": 0.4, "threshold": 0.2}],
        metrics={"ctr": 0.4}, episode={"flagged_windows": 1, "opened_alert_id": None},
        emitted_at_ms=start + MIN + 10_000)


class Recorder:
    def __init__(self) -> None:
        self.acted: list[str] = []
        self.warnings: list[str] = []

    def act(self, alert: dict[str, Any]) -> None:
        self.acted.append(alert["alert_id"])

    def warn(self, message: str) -> None:
        self.warnings.append(message)


# -- unit: handle() ------------------------------------------------------------------------------
def test_same_alert_twice_is_handled_then_duplicate(tmp_path):
    store, rec = HandledStore(tmp_path / "s.sqlite"), Recorder()
    alert = make_alert()
    assert_valid("risk-alert.v1.json", alert)
    assert handle(encode(alert), store, rec.act, rec.warn) == "handled"
    assert handle(encode(alert), store, rec.act, rec.warn) == "duplicate"
    assert rec.acted == [alert["alert_id"]]
    assert store.count() == 1 and not rec.warnings


def test_distinct_lifecycle_alerts_are_each_handled(tmp_path):
    store, rec = HandledStore(tmp_path / "s.sqlite"), Recorder()
    alerts = [make_alert(window=0, status="open"), make_alert(window=1, status="escalated",
                                                              severity="critical"),
              make_alert(window=9, status="resolved", severity="low")]
    assert [handle(encode(a), store, rec.act, rec.warn) for a in alerts] == ["handled"] * 3
    assert rec.acted == [a["alert_id"] for a in alerts]


@pytest.mark.parametrize("value, why", [
    (orjson.dumps({**make_alert(), "schema_version": 2}), "schema_version 2"),
    (orjson.dumps({k: v for k, v in make_alert().items() if k != "schema_version"}),
     "schema_version None"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (None, "tombstone"),
    (orjson.dumps({**make_alert(), "alert_id": ""}), "alert_id"),
])
def test_unreadable_records_are_skipped_with_a_warning(tmp_path, value, why):
    store, rec = HandledStore(tmp_path / "s.sqlite"), Recorder()
    assert handle(value, store, rec.act, rec.warn) == "skipped"
    assert rec.acted == [] and store.count() == 0
    assert len(rec.warnings) == 1 and why in rec.warnings[0], rec.warnings


def test_unknown_fields_are_ignored():
    alert, why = parse_alert(orjson.dumps({**make_alert(), "new_field": {"x": 1}}))
    assert alert is not None and why == ""


def test_store_survives_a_restart(tmp_path):
    path = tmp_path / "deep" / "store.sqlite"  # parent directories are created
    alert = make_alert(severity="critical")
    first = HandledStore(path)
    assert handle(encode(alert), first, Recorder().act) == "handled"
    first.close()

    again, rec = HandledStore(path), Recorder()  # a restarted consumer
    assert handle(encode(alert), again, rec.act) == "duplicate"
    assert rec.acted == []
    again.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT alert_id, advertiser_id, status, severity, handled_at "
                          "FROM handled").fetchall()
    assert [r[:4] for r in rows] == [(alert["alert_id"], "adv-7", "open", "critical")]
    assert rows[0][4].endswith("Z")


def test_a_failed_action_is_not_recorded(tmp_path):
    """The id is inserted in the action's transaction: if the action fails, the alert is not
    marked handled, so its re-delivery acts again."""
    store = HandledStore(tmp_path / "s.sqlite")
    alert = make_alert()

    def boom(_alert: dict) -> None:
        raise RuntimeError("enforcement API down")

    with pytest.raises(RuntimeError, match="API down"):
        handle(encode(alert), store, boom)
    assert not store.contains(alert["alert_id"])
    rec = Recorder()
    assert handle(encode(alert), store, rec.act) == "handled"
    assert rec.acted == [alert["alert_id"]]


def test_sigterm_and_sigint_stop_the_loop_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    for sig in (signal.SIGTERM, signal.SIGINT):
        stop = threading.Event()
        with _stop_on_signals(stop):
            signal.raise_signal(sig)  # runs the Python handler before returning
            assert stop.is_set()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# -- unit: decisions -----------------------------------------------------------------------------
def test_decision_record_matches_the_schema():
    rec = decision_record("ra1-" + "0" * 32, "adv-7", "dismissed", "false positive")
    assert_valid("enforcement-decision.v1.json", rec)
    assert rec["note"] == "false positive" and rec["decided_at"].endswith("Z")
    assert "note" not in decision_record("ra1-x", "adv-7", "confirmed")
    with pytest.raises(ValueError, match="confirmed, dismissed"):
        decision_record("ra1-x", "adv-7", "maybe")


# -- integration ---------------------------------------------------------------------------------
SUMMARY = re.compile(r"summary: handled=(\d+) duplicates=(\d+) skipped=(\d+)")


def _settings(kafka_broker: Any, prefix: str) -> Settings:
    session_s = kafka_broker.faust_settings()["broker_session_timeout"]
    return Settings(topic_prefix=prefix, session_timeout_ms=int(session_s * 1000))


def _run_follow(bootstrap: str, settings: Settings, args: Namespace, capsys) -> tuple[dict, str]:
    assert follow(bootstrap, settings, args) == 0
    out = capsys.readouterr().out
    m = SUMMARY.search(out)
    assert m, out
    return dict(zip(("handled", "duplicates", "skipped"), map(int, m.groups()))), out


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        offsets = c.committed([TopicPartition(topic, p) for p in range(6)], timeout=30)
    finally:
        c.close()
    return {tp.partition: tp.offset for tp in offsets if tp.offset >= 0}


@pytest.mark.integration
def test_follow_is_idempotent_and_commits_offsets(kafka_broker, kafka_topics, tmp_path, capsys):
    bootstrap = kafka_broker.bootstrap
    settings = _settings(kafka_broker, kafka_topics)
    topic = settings.topic("risk-alerts")
    a1, a2, a3 = (make_alert(window=0), make_alert(window=1, status="escalated",
                                                   severity="critical"),
                  make_alert(window=9, status="resolved", severity="low"))
    # one advertiser: one partition, so the delivery order is the produce order
    sent = produce(bootstrap, topic, [(b"adv-7", encode(a)) for a in (a1, a2, a1, a3, a1)])
    partition = sent[0][0]
    args = Namespace(group=f"enforcement-{uuid.uuid4().hex[:8]}",
                     store=str(tmp_path / "enforcement.sqlite"), max_messages=5,
                     max_seconds=120.0)

    counts, out = _run_follow(bootstrap, settings, args, capsys)
    assert counts == {"handled": 3, "duplicates": 2, "skipped": 0}, out
    assert sum("adv-7" in line for line in out.splitlines()) == 3, out  # acted once each
    assert _committed(bootstrap, args.group, topic) == {partition: 5}
    with sqlite3.connect(args.store) as db:
        ids = {r[0] for r in db.execute("SELECT alert_id FROM handled")}
    assert ids == {a1["alert_id"], a2["alert_id"], a3["alert_id"]}

    # Restart (same group, same store): it resumes after the committed offsets. Had they not
    # been committed, the first two records read would be the old a1 and a2 (duplicates).
    a4 = make_alert(window=20)
    v2 = orjson.dumps({**make_alert(window=21), "schema_version": 2})
    produce(bootstrap, topic, [(b"adv-7", encode(a4)), (b"adv-7", v2)])
    args.max_messages = 2
    counts, out = _run_follow(bootstrap, settings, args, capsys)
    assert counts == {"handled": 1, "duplicates": 0, "skipped": 1}, out
    assert _committed(bootstrap, args.group, topic) == {partition: 7}  # past the skipped one
    with sqlite3.connect(args.store) as db:
        assert db.execute("SELECT COUNT(*) FROM handled").fetchone()[0] == 4


@pytest.mark.integration
def test_decide_publishes_a_keyed_decision(kafka_broker, kafka_topics):
    bootstrap = kafka_broker.bootstrap
    settings = _settings(kafka_broker, kafka_topics)
    alert = make_alert(advertiser_id="adv-42")
    # where the alert of this advertiser goes (murmur2 on the key, like the workers)
    [(alert_partition, _)] = produce(bootstrap, settings.topic("risk-alerts"),
                                     [(b"adv-42", encode(alert))])
    record = decide(bootstrap, settings, alert["alert_id"], "adv-42", "confirmed",
                    note="checked by analyst")
    [got] = consume_until(bootstrap, settings.topic("risk-enforcement-decisions"), 1, 30,
                          "the decision")
    assert got.key == b"adv-42" and got.json() == record
    assert_valid("enforcement-decision.v1.json", got.json())
    assert got.json()["decision"] == "confirmed" and got.json()["alert_id"] == alert["alert_id"]
    assert got.partition == alert_partition  # co-partitioned with the advertiser's alerts
