"""A worker killed with SIGKILL mid-stream is replaced; the replacement restores the advertiser
state from the changelog table and the final output equals one uninterrupted offline run.

Broker behaviour relied on: committed consumer-group offsets and the compacted changelog topic
survive the client's death; a new member of the same group resumes from the committed offsets.
"""

from __future__ import annotations

import time
from collections import defaultdict

import orjson
import pytest

from tests.conftest import (TopicReader, assert_valid, labelled_metrics, produce_lines,
                            simulated_case, wait_until)

pytestmark = pytest.mark.integration


def _score_key(record: dict) -> tuple[str, int]:
    return record["advertiser_id"], record["window"]["start"]


def _expected_outputs(expected) -> tuple[dict, dict]:
    """(window -> score, alert id -> alert) of one uninterrupted offline run."""
    return ({_score_key(o.record): o.record["risk_score"]
             for o in expected.outputs if o.kind == "score"},
            {a["alert_id"]: a for a in expected.alerts()})


def _assert_output_equals_replay(bootstrap: str, prefix: str, second, exp_scores: dict,
                                 exp_alerts: dict) -> None:
    with TopicReader(bootstrap, f"{prefix}risk-scores") as scores, \
            TopicReader(bootstrap, f"{prefix}risk-alerts") as alerts:
        scores.wait_for(lambda rs: set(exp_scores) <= {_score_key(r.json()) for r in rs}, 120,
                        f"all {len(exp_scores)} window scores", on_timeout=second.log_tail)
        alerts.wait_for(lambda rs: set(exp_alerts) <= {r.json()["alert_id"] for r in rs}, 60,
                        f"{len(exp_alerts)} alerts", on_timeout=second.log_tail)
        alerts.poll(1.0)
        score_values = defaultdict(set)
        for r in scores.records:
            score_values[_score_key(r.json())].add(r.json()["risk_score"])
        by_id = defaultdict(list)
        for r in alerts.records:
            by_id[r.json()["alert_id"]].append(r.json())

    # Nothing lost, nothing new: the alert ids are exactly those of one uninterrupted run.
    assert set(by_id) == set(exp_alerts)
    # At-least-once may repeat an alert after the kill, never with different content.
    for aid, copies in by_id.items():
        assert_valid("risk-alert.v1.json", copies[0])
        contents = {orjson.dumps({k: v for k, v in c.items() if k != "emitted_at"},
                                 option=orjson.OPT_SORT_KEYS) for c in copies}
        assert len(contents) == 1, f"{aid} emitted with different content"
        off = exp_alerts[aid]
        assert (copies[0]["status"], copies[0]["risk_score"]) == (off["status"], off["risk_score"])
    # Every window scored as offline; a replayed window repeats the same score (restored state).
    assert set(score_values) == set(exp_scores)
    for key, values in score_values.items():
        assert values == {exp_scores[key]}, f"window {key}: live {values} != {exp_scores[key]}"


def _move_committed_offsets_ahead(bootstrap: str, group: str, topic: str, by: int,
                                  keep: int = 0) -> int:
    """Commit, for the (empty) group, every partition of ``topic`` ``by`` offsets beyond what it
    has committed (never past ``keep`` offsets before the end): a consumer's committed offset
    running ahead of the state on the changelog. Returns how many offsets were skipped in all.
    (A gap is found when an event after it arrives: ``keep`` > 0 leaves some.)"""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        committed = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        moved, skipped = [], 0
        for tp in committed:
            end = c.get_watermark_offsets(tp, timeout=10)[1]
            start = max(tp.offset, 0)
            if end > start:
                new = max(min(start + by, end - keep), start)
                if new == start:
                    continue
                skipped += new - start
                moved.append(TopicPartition(topic, tp.partition, new))
        c.commit(offsets=moved, asynchronous=False)
        return skipped
    finally:
        c.close()


# (offsets ahead, offsets kept before the end). committed_far_ahead: the replacement's first
# fetch is a long run behind the gap, still in the fetch loop's hands when the agent seeks back
# (docs/faults.md, "The scale test's flake under load"). committed_to_end: every offset of the
# second half skipped, so no event arrives after the gap to show it (found at the assignment)
AHEAD = {"committed_ahead": (7, 0), "committed_far_ahead": (1500, 500),
         "committed_to_end": (10**9, 0)}


@pytest.mark.parametrize("how", ["sigkill", *AHEAD])
def test_sigkilled_worker_is_replaced_without_losing_or_changing_alerts(
        kafka_broker, kafka_topics, worker, tmp_path, how):
    """``committed_ahead``: the first worker stops gracefully, and then the group's committed
    offsets are moved a few events past what its checkpointed state holds (what a consumer that
    acknowledges an event it skipped would do). The replacement must notice the gap -- the
    state records the next offset it expects -- fetch those events again, and lose nothing."""
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    duration_s = 2400
    case = simulated_case(tmp_path, seed=31, advertisers=12, duration_s=duration_s,
                          spam_start_s=1500)
    cfg, imps, fbs, expected = case.config, case.impressions, case.feedback, case.expected
    exp_scores, exp_alerts = _expected_outputs(expected)
    assert exp_alerts, "test design: the incident must alert offline"

    # First half of event time (the incident is in the second half) for the first worker.
    split = cfg.start_ms + duration_s * 1000 // 2
    first_imps = [line for line in imps if orjson.loads(line)["event_time"] < split]
    first_fbs = [line for line in fbs if orjson.loads(line)["event_time"] < split]
    produce_lines(bootstrap, f"{prefix}ad-impressions", first_imps)
    produce_lines(bootstrap, f"{prefix}user-feedback", first_fbs)
    first = worker(prefix)
    deadline = time.monotonic() + 120
    while True:  # processed everything it was given, and checkpointed/committed after it
        m = first.metrics()
        if (m.get("riskstream_events_consumed_total", 0) == len(first_imps) + len(first_fbs)
                and m.get("riskstream_checkpoints_total", 0) > 0
                and m.get("riskstream_windows_closed_total", 0) > 0):
            break
        assert time.monotonic() < deadline, f"first worker stuck: {m}\n{first.log_tail()}"
        time.sleep(0.2)  # polling interval of a condition, not a synchronisation guess
    app_id = first.env["RISKSTREAM_APP_ID"]
    if how == "sigkill":
        first.proc.kill()  # SIGKILL: no graceful drain, no final commit
        first.proc.wait(10)
    else:
        assert first.stop() == 0  # graceful: its state and offsets agree
    produce_lines(bootstrap, f"{prefix}ad-impressions", imps[len(first_imps):])
    produce_lines(bootstrap, f"{prefix}user-feedback", fbs[len(first_fbs):])
    if how != "sigkill":
        skipped = _move_committed_offsets_ahead(bootstrap, app_id, f"{prefix}ad-impressions",
                                                *AHEAD[how])
        assert skipped > 0
    started = time.monotonic()
    second = worker(prefix, RISKSTREAM_APP_ID=app_id)
    recovery_s = time.monotonic() - started

    _assert_output_equals_replay(bootstrap, prefix, second, exp_scores, exp_alerts)
    if how != "sigkill":  # found as gaps (or, with no event after them, as stalls): fetched again
        gaps = sum(v for (name, labels), v in labelled_metrics(second).items()
                   if name == "riskstream_input_gaps_total"
                   and {("outcome", "refetched"), ("outcome", "stalled")} & set(labels))
        assert gaps >= 1, second.log_tail()
    print(f"\nreplacement ready after {recovery_s:.1f}s")


# -- where an input partition's reading stands (agents.events.read_position) -------------------
def test_read_position_seeks_a_stalled_partition_and_never_marks_a_gap_caught_up():
    from agents.events import REFETCH_RETRY_S, read_position

    retry = REFETCH_RETRY_S
    # (position, committed, earliest, highwater, expected, refetching, refetch_age_s, idle_s)
    # reading: from its last event; before any, from the state's offset, else the committed one
    assert read_position(120, 100, 0, 150, 120, False, 0.0, 1.0) == (120, None)
    assert read_position(None, 100, 0, 100, 100, False, 0.0, 99.0) == (100, None)
    assert read_position(None, 100, 0, 150, 130, False, 0.0, 1.0) == (130, None)
    assert read_position(None, None, 7, 7, -1, False, 0.0, 99.0) == (7, None)
    # caught up (next offset = highwater) or state ahead of the broker: nothing to seek
    assert read_position(150, 150, 0, 150, 150, False, 0.0, 99.0) == (150, None)
    assert read_position(None, 100, 0, 130, 130, False, 0.0, 99.0) == (130, None)
    # a gap being fetched again reads up to the state's offset (not caught up: 80 < the
    # highwater), and is sought again once nothing of it came for the retry time
    assert read_position(None, 100, 0, 150, 80, True, 0.0, 99.0) == (80, None)
    assert read_position(95, 100, 0, 150, 80, True, retry - 0.1, 99.0) == (80, None)
    assert read_position(95, 100, 0, 150, 80, True, retry, 0.0) == (80, 80)
    # nothing read since the assignment, the broker holds offsets past the state's: reading at
    # the state's offset; if nothing comes, the consumer is elsewhere (its committed offset ran
    # ahead of the state, or the worker's own checkpoint committed the state's offsets behind
    # it): sought there, whatever the committed offset says
    for committed in (150, 80, None):
        assert read_position(None, committed, 0, 150, 80, False, 0.0, retry - 0.1) == (80, None)
        assert read_position(None, committed, 0, 150, 80, False, 0.0, retry) == (80, 80)
    # a partition whose next record never came (lag 1 for good): sought to it
    assert read_position(149, 149, 0, 150, 149, False, 0.0, retry - 0.1) == (149, None)
    assert read_position(149, 149, 0, 150, 149, False, 0.0, retry) == (149, 149)
    # ... unless the broker no longer holds the state's offset (retention): nothing to fetch
    # there, the reading stands at the committed offset (here caught up)
    assert read_position(None, 150, 90, 150, 80, False, 0.0, 99.0) == (150, None)


def test_a_partition_without_state_is_read_from_its_earliest_offset(
        kafka_broker, kafka_topics, worker, tmp_path):
    """A partition the state has never seen starts at the broker's earliest offset: a first
    event past it is a gap, fetched again. (Seen in tests/test_scale.py: a feedback partition's
    first records were fetched, then dropped from the agent's queue by a rebalance before any
    checkpoint; with no committed offset to seek back to, the position stayed past them and the
    next owner began at offset 2, losing a hide from a window.) Here the fresh group's committed
    offsets are simply moved past the first events of every impression partition."""
    import uuid

    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    case = simulated_case(tmp_path, seed=31, advertisers=12, duration_s=2400,
                          spam_start_s=1500)
    exp_scores, exp_alerts = _expected_outputs(case.expected)
    produce_lines(bootstrap, f"{prefix}ad-impressions", case.impressions)
    produce_lines(bootstrap, f"{prefix}user-feedback", case.feedback)
    app_id = f"rs-test-fresh-{uuid.uuid4().hex[:8]}"
    from confluent_kafka import KafkaException

    def moved() -> int | None:  # a fresh broker's group coordinator may still be loading
        try:
            return _move_committed_offsets_ahead(bootstrap, app_id,
                                                 f"{prefix}ad-impressions", 5)
        except KafkaException:
            return None

    skipped = wait_until(moved, 60, "the fresh group's offsets committed")
    assert skipped > 0
    w = worker(prefix, RISKSTREAM_APP_ID=app_id)
    _assert_output_equals_replay(bootstrap, prefix, w, exp_scores, exp_alerts)
    gaps = sum(v for (name, labels), v in labelled_metrics(w).items()
               if name == "riskstream_input_gaps_total" and ("outcome", "refetched") in labels)
    assert gaps >= 1, w.log_tail()
