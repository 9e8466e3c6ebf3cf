"""SIGTERM drains a worker: it exits 0 within a bound, having checkpointed and committed, so a
successor in the same group has nothing to redo (broker behaviour relied on: offsets committed
to the group coordinator before the member leaves are what a new member resumes from)."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.conftest import produce_lines

pytestmark = pytest.mark.integration


def _impressions(n: int, t0: int) -> list[bytes]:
    return [orjson.dumps({"event_id": f"d{i}", "event_time": t0 + i * 100,
                          "advertiser_id": f"adv-{i % 7}", "user_id": f"u{i}",
                          "cost_micros": 1000, "clicked": False}) for i in range(n)]


def test_sigterm_drains_and_the_successor_has_nothing_to_redo(kafka_broker, kafka_topics,
                                                               worker):
    prefix = kafka_topics
    t0 = int(time.time() * 1000) - 600_000
    lines = _impressions(3000, t0)
    produce_lines(kafka_broker.bootstrap, f"{prefix}ad-impressions", lines)
    first = worker(prefix)
    deadline = time.monotonic() + 90
    while first.metrics().get("riskstream_events_consumed_total", 0) < len(lines):
        assert time.monotonic() < deadline, first.log_tail()
        time.sleep(0.2)  # polling interval of a condition
    assert first.stop(timeout=45) == 0, first.log_tail()  # SIGTERM: graceful, exit code 0

    second = worker(prefix, RISKSTREAM_APP_ID=first.env["RISKSTREAM_APP_ID"])
    # The successor owns every partition and has read up to the end: no event redelivered.
    deadline = time.monotonic() + 60
    while True:
        m = second.metrics()
        lags = {k: v for k, v in m.items() if k.startswith("riskstream_consumer_lag_messages")}
        if lags and all(v == 0 for v in lags.values()):
            break
        assert time.monotonic() < deadline, (m, second.log_tail())
        time.sleep(0.2)
    assert m.get("riskstream_events_consumed_total", 0) == 0
    assert m.get("riskstream_events_replayed_skipped_total", 0) == 0
