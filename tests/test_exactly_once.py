"""``RISKSTREAM_PROCESSING_GUARANTEE=exactly_once`` on Apache Kafka: a worker SIGKILLed in the
middle of its input is replaced, and a ``read_committed`` consumer of the outputs sees every
window score and alert exactly once -- no duplicate record at all, not merely duplicate ids with
the same content (which at-least-once allows) -- and the same ids and scores as the replay.

KNOWN TO FAIL (xfail, strict): faust-streaming 0.15.3 commits the consumed offsets through
transactional producers, but its TransactionManager routes a send into a transaction through the
consumer's metadata and the assignor's topic groups, which know no output topic, so risk-scores /
risk-alerts / risk-dead-letter go through the plain producer (no transaction markers on
risk-scores): after a kill, outputs since the last commit are emitted again (66 repeated score
records in one run), and once the replacement's alert differed from the replay in its feature
baselines. The fix needs the agent (agents/events.py) -- see docs/faults.md. The test takes
~45 s, so it runs only with RISKSTREAM_TEST_EXACTLY_ONCE=1.

Broker behaviour relied on: Faust's transactional producers (one transactional id per input
partition) put outputs, changelog writes and the consumed offsets in one transaction; a new
producer with the same transactional id fences the dead one and its open transaction is
aborted, so read_committed consumers never see it; transaction markers occupy offsets.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import TopicReader, labelled_metrics, produce, timed_case, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("RISKSTREAM_TEST_EXACTLY_ONCE") != "1",
                       reason="known gap, ~45 s: set RISKSTREAM_TEST_EXACTLY_ONCE=1 to run"),
    pytest.mark.xfail(strict=True, reason="outputs are not in Faust's transactions "
                      "(docs/faults.md, exactly_once)"),
]

def _consumed(w) -> float:
    return sum(v for (name, _), v in labelled_metrics(w).items()
               if name == "riskstream_events_consumed_total")


def _offset_span(bootstrap: str, topic: str) -> int:
    """Offsets used in ``topic`` (data records plus transaction markers)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "offset-span"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(hi - lo for lo, hi in (c.get_watermark_offsets(TopicPartition(topic, p),
                                                                  timeout=10)
                                          for p in parts))
    finally:
        c.close()


def test_exactly_once_kill_leaves_no_duplicate_output(kafka_broker, kafka_topics, worker):
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    if kafka_broker.kind == "embedded":
        pytest.skip("the embedded broker has no transactions")
    case = timed_case(seed=61, advertisers=12, duration_s=1800, spam_start_s=900)
    assert case.expected_alerts(), "test design: the incident must alert offline"
    by_topic = case.records_by_topic(prefix)
    for topic, records in by_topic.items():
        produce(bootstrap, topic, records)  # all input first: a deterministic replay
    n = sum(len(r) for r in by_topic.values())
    eos = {"RISKSTREAM_PROCESSING_GUARANTEE": "exactly_once"}

    first = worker(prefix, **eos)
    wait_until(lambda: _consumed(first) >= n * 0.4, 90, "the first worker half-way",
               on_timeout=first.log_tail, interval=0.05)
    first.proc.kill()  # SIGKILL mid-stream: its open transaction stays open
    first.proc.wait(10)

    second = worker(prefix, RISKSTREAM_APP_ID=first.env["RISKSTREAM_APP_ID"], **eos)
    out = case.assert_live_output(bootstrap, prefix, on_timeout=second.log_tail)

    # TopicReader reads read_committed (librdkafka's default isolation level): each window
    # score and each alert record exactly once, no repeat even with identical content
    assert out["alert_repeats"] == 0 and out["score_repeats"] == 0, out
    # the outputs really went through transactions: markers take offsets of their own
    with TopicReader(bootstrap, f"{prefix}risk-scores",
                     **{"isolation.level": "read_uncommitted"}) as raw:
        raw.wait_for(out["windows"], 30, "uncommitted view")
        raw.poll(1.0)
        aborted = len(raw.records) - out["windows"]
    span = _offset_span(bootstrap, f"{prefix}risk-scores")
    assert span > len(raw.records), "no transaction markers: exactly_once is not in effect"
    print(f"\nexactly_once: {n} events, killed at >= 40%; read_committed: {out}; "
          f"{aborted} aborted score records visible only to read_uncommitted; "
          f"{span - len(raw.records)} offsets taken by transaction markers")
