"""Horizontal scale while traffic flows: 1 -> 3 -> 2 workers in one consumer group over the six
co-partitioned input partitions. After each rebalance the partitions are spread evenly, every
worker holds state for its own advertisers only and scores windows exactly as the offline
replay does; at the end the alert ids equal the replay's and no id carries two contents.

Traffic is produced in event-time order across both inputs (the simulator's order), paced, while
workers join and leave. Allowed lateness is 300 s of event time for workers and replay alike, so
a feedback record consumed a moment after newer impressions of its partition is never late (at
the ~80x event-time pace here that is seconds of wall time): the live result then equals the
replay whatever the interleaving. Broker behaviour relied on: group rebalances hand partitions
over with the committed offsets; the compacted changelog carries the advertiser state.
"""

from __future__ import annotations

import time

import orjson
import pytest

from app.settings import Settings
from riskstream.backtest import partition_for
from tests.conftest import (TopicReader, labelled_metrics, owned_partitions, timed_case,
                            wait_until)

pytestmark = pytest.mark.integration

LATENESS_S = 300
PARTITIONS = 6


def _settle(workers, prefix: str, released: int, traffic, scores: TopicReader,
            exp_scores: dict, advertiser_partition: dict[str, int]) -> list[int]:
    """Wait for the group to settle on ``workers`` and the released traffic to be processed;
    check the spread, each worker's state and every score so far (``exp_scores``: window ->
    the replay's score record). Returns partitions per worker."""
    topic = f"{prefix}ad-impressions"
    tail = lambda: "\n".join(f"--- {w.app_id}:{w.port}\n{w.log_tail(15)}" for w in workers)

    def spread():
        counts = [owned_partitions(w, topic) for w in workers]
        ready = all(w.get("/readyz")[0] == 200 for w in workers)
        return counts if ready and sum(counts) == PARTITIONS else None

    wait_until(spread, 90, f"{len(workers)} workers sharing {PARTITIONS} partitions",
               on_timeout=tail)
    traffic.wait_delivered(released)

    def owned_and_idle():
        """Partitions per worker, from its lag series, once every one shows lag 0."""
        owned = []
        for w in workers:
            lags = {int(dict(labels)["partition"]): value
                    for (name, labels), value in labelled_metrics(w).items()
                    if name == "riskstream_consumer_lag_messages"
                    and dict(labels)["topic"] == topic}
            if any(lags.values()):
                return None
            owned.append(set(lags))
        every = sorted(p for parts in owned for p in parts)
        return owned if every == list(range(PARTITIONS)) and spread() else None

    owned = wait_until(owned_and_idle, 90, "released traffic processed (lag 0 everywhere)",
                       on_timeout=tail)
    counts = [len(parts) for parts in owned]
    # even: no idle worker while another holds several (6 = 6/n each for n in 1, 2, 3)
    assert counts == [PARTITIONS // len(workers)] * len(workers), counts
    # each worker holds state only for advertisers of the partitions it owns
    for w, parts in zip(workers, owned):
        active = labelled_metrics(w)[("riskstream_active_advertisers", ())]
        mine = [a for a, p in advertiser_partition.items() if p in parts]
        assert active <= len(mine), (w.app_id, parts, active, len(mine))
    # every window scored so far (before and after the rebalance) scored as offline
    scores.poll(1.0)
    for r in scores.records:
        rec = r.json()
        key = (rec["advertiser_id"], rec["window"]["start"])
        assert key in exp_scores, f"unexpected window {key}"
        exp = exp_scores[key]
        # on a difference, the window's features that differ say what the live window missed
        assert rec["risk_score"] == exp["risk_score"], (
            key, rec["risk_score"], exp["risk_score"], f"partition {r.partition}@{r.offset}",
            {k: (v, exp["metrics"].get(k)) for k, v in rec["metrics"].items()
             if v != exp["metrics"].get(k)})
    return counts


def test_one_three_two_workers_share_partitions_and_alert_like_one(
        kafka_broker, kafka_topics, worker, traffic):
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    settings = Settings(allowed_lateness_seconds=LATENESS_S)
    case = timed_case(seed=41, advertisers=16, duration_s=1800, spam_start_s=900,
                      settings=settings)
    exp_scores = {(o.record["advertiser_id"], o.record["window"]["start"]): o.record
                  for o in case.expected.outputs if o.kind == "score"}
    assert case.expected_alerts(), "test design: the incident must alert offline"
    records = case.records(prefix)
    advertiser_partition = {a: partition_for(a.encode(), PARTITIONS)
                            for a in {orjson.loads(v)["advertiser_id"] for _, _, v in records}}
    n = len(records)
    env = {"RISKSTREAM_ALLOWED_LATENESS_SECONDS": str(LATENESS_S)}
    feed = traffic(bootstrap, records, rate=600)

    with TopicReader(bootstrap, f"{prefix}risk-scores") as scores:
        feed.release(n // 5)
        a = worker(prefix, **env)
        group = a.env["RISKSTREAM_APP_ID"]
        spreads = [_settle([a], prefix, n // 5, feed, scores, exp_scores,
                           advertiser_partition)]

        feed.release(n // 2)  # flows while two more workers join
        started = time.monotonic()
        b = worker(prefix, RISKSTREAM_APP_ID=group, **env)
        c = worker(prefix, RISKSTREAM_APP_ID=group, **env)
        spreads.append(_settle([a, b, c], prefix, n // 2, feed, scores, exp_scores,
                               advertiser_partition))
        scale_out_s = time.monotonic() - started

        feed.release(n * 4 // 5)  # flows while one leaves (SIGTERM: graceful)
        started = time.monotonic()
        assert c.stop(timeout=45) == 0, c.log_tail()
        spreads.append(_settle([a, b], prefix, n * 4 // 5, feed, scores, exp_scores,
                               advertiser_partition))
        scale_in_s = time.monotonic() - started

        feed.release_all()
        spreads.append(_settle([a, b], prefix, n, feed, scores, exp_scores,
                               advertiser_partition))
    with TopicReader(bootstrap, f"{prefix}risk-dead-letter") as dead:
        dead.poll(1.0)  # all input is valid: a dead letter here (late_event) explains a miss
        assert not dead.records, [(r.json()["reason"], r.json()["source"])
                                  for r in dead.records[:5]]
    out = case.assert_live_output(bootstrap, prefix, on_timeout=lambda: a.log_tail(30))
    print(f"\nscale: {n} events, partitions per worker after each step {spreads}; 1->3 settled "
          f"and caught up {scale_out_s:.1f}s after the second worker's start, 3->2 "
          f"{scale_in_s:.1f}s after the SIGTERM; {out}")
