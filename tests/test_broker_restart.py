"""Apache Kafka stops for 10 s in the middle of the traffic and starts again on the same port
with the same data dir: the running worker stays alive, reconnects and resumes by itself, and
the final alerts and scores equal the offline replay (nothing lost, no id with two contents).

Pace: the traffic runs ahead of real time (tens of event-time seconds per wall second), except
around the outage, where it slows to ~8x so that the outage spans less event time than the
allowed lateness (300 s here; the default 10 s corresponds to real time). An outage spanning
*more* event time than the lateness makes events late (see docs/faults.md): after the restart
one input's backlog can arrive before the other's, while the other still counts as caught up.

This module has its own broker (``kafka_broker`` overridden here), so stopping it never
disturbs the session broker other tests use. Broker behaviour relied on: a restarted KRaft node
keeps its logs, committed group offsets and producer ids; idempotent producers resend what was
unacknowledged in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from app import brokers
from app.settings import Settings
from tests.conftest import labelled_metrics, timed_case, wait_until
from tests.conftest_brokers import broker_selection

pytestmark = pytest.mark.integration

LATENESS_S = 300  # see tests/test_scale.py: paced traffic, replay parity
DOWN_S = 10.0     # the issue asks for 10-30 s


@dataclass
class RestartableBroker:
    info: brokers.BrokerInfo
    kind: str = "apache"

    @property
    def bootstrap(self) -> str:
        return self.info.bootstrap

    def stop(self) -> None:
        assert brokers.stop(self.info), "the broker was not running"

    def start_again(self) -> float:
        self.info = brokers.start_again(self.info, die_with_parent=True)
        return self.info.startup_seconds or 0.0


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableBroker]:
    """A broker of this module's own (Apache Kafka only: the embedded one keeps no data)."""
    kind, reason = broker_selection()
    if kind != "apache":
        pytest.skip(f"needs a local Apache Kafka to stop and start ({reason})")
    broker = RestartableBroker(brokers.start_apache_kafka(
        Path(tmp_path_factory.mktemp("kafka-restart")), die_with_parent=True))
    try:
        yield broker
    finally:
        brokers.stop(broker.info)


def _consumed(w) -> float:
    return sum(v for (name, _), v in labelled_metrics(w).items()
               if name == "riskstream_events_consumed_total")


def test_worker_resumes_by_itself_after_a_broker_restart(kafka_broker, kafka_topics, worker,
                                                         traffic):
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    settings = Settings(allowed_lateness_seconds=LATENESS_S)
    case = timed_case(seed=51, advertisers=12, duration_s=1800, spam_start_s=900,
                      settings=settings)
    assert case.expected_alerts(), "test design: the incident must alert offline"
    records = case.records(prefix)
    n = len(records)
    feed = traffic(bootstrap, records, rate=1000)
    feed.release(n // 6)
    w = worker(prefix, RISKSTREAM_ALLOWED_LATENESS_SECONDS=str(LATENESS_S))
    wait_until(lambda: _consumed(w) >= n // 8, 60, "the worker processing traffic",
               on_timeout=w.log_tail)

    slow = 50  # records/s, ~8 event-time s per wall s: 10 s away = ~80 s < lateness
    feed.set_rate(slow)
    feed.release(n // 6 + int(slow * (DOWN_S + 10)))  # keeps coming while the broker is away
    kafka_broker.stop()
    down_at = time.monotonic()
    while time.monotonic() - down_at < DOWN_S:  # the outage itself: its length is the fault
        assert w.proc.poll() is None, f"worker exited during the outage:\n{w.log_tail()}"
        assert w.get("/livez")[0] == 200
        time.sleep(0.5)
    startup_s = kafka_broker.start_again()
    up_at = time.monotonic()
    down_s = up_at - down_at
    wait_until(lambda: _consumed(w) >= feed.sent, 60, "the worker resuming",
               on_timeout=w.log_tail)
    resumed_s = time.monotonic() - up_at
    feed.set_rate(1000)
    feed.release_all()
    feed.wait_delivered(timeout=120)
    wait_until(lambda: _consumed(w) >= n, 120, f"all {n} events processed after the restart",
               on_timeout=w.log_tail)
    assert w.proc.poll() is None, "the worker must resume by itself, not exit"

    out = case.assert_live_output(bootstrap, prefix, on_timeout=w.log_tail)
    m = w.metrics()
    assert m["riskstream_events_consumed_total"] == n  # each event counted once
    assert m.get("riskstream_events_invalid_total", 0) == 0
    print(f"\nbroker restart: down {down_s:.1f}s (ready {startup_s:.1f}s after its start); "
          f"worker caught up with the traffic {resumed_s:.1f}s after the broker was back; "
          f"{n} events, {out}")
