"""The worker on a real broker: dead-lettering, alerting, and parity with the offline replay.

Input is produced *before* the worker starts, so every input partition has its backlog when the
worker joins: a source is only treated as caught up once it has delivered that backlog (or stays
idle at its highwater), and no event is late. That makes the live run deterministic and equal to
``riskstream.backtest.replay`` on the same lines.
"""

from __future__ import annotations

import time
from typing import Callable

import orjson
import pytest

from app.factory import engine_config
from app.settings import Settings
from riskstream.backtest import partition_for, replay
from riskstream.events import DEAD_LETTER_ORIGINAL_BYTES
from riskstream.simulate import ground_truth
from riskstream.windows import window_start
from tests.conftest import TopicReader, assert_valid, produce, produce_lines, simulated_case

pytestmark = pytest.mark.integration

W = 60_000
PARTITIONS = 6
SPAM, CALM = "adv-spam-1", "adv-calm-1"
NORMAL_WINDOWS, SPAM_WINDOWS, AFTER_WINDOWS = 10, 3, 3
PER_WINDOW = 40


def _impression(n: int, adv: str, t: int, *, clicked: bool, delay: int, dwell: int) -> bytes:
    return orjson.dumps({
        "event_id": f"{adv}-i{n}", "event_time": t, "advertiser_id": adv,
        "campaign_id": f"{adv}-c1", "ad_id": f"{adv}-c1-a1", "user_id": f"{adv}-u{n}",
        "region": "US", "placement": "feed", "cost_micros": 1200, "clicked": clicked,
        "click_delay_ms": delay, "converted": False, "dwell_ms": dwell})


def handcrafted_stream(t0: int) -> tuple[list[bytes], list[bytes]]:
    """Two advertisers, one window of 40 impressions a minute each. SPAM behaves for 10 windows,
    then for 3 windows 90% of its impressions are clicked 100 ms after the impression with 200 ms
    of dwell (the ``click_spam_fast_clicks`` policy rule: >= 60% fast clicks, >= 20 clicks),
    then behaves again; the trailing windows move event time past the spam windows' end plus the
    allowed lateness. CALM behaves throughout. A few in-app hides arrive as feedback."""
    imps, fbs = [], []
    n = 0
    for w in range(NORMAL_WINDOWS + SPAM_WINDOWS + AFTER_WINDOWS):
        spam = NORMAL_WINDOWS <= w < NORMAL_WINDOWS + SPAM_WINDOWS
        for i in range(PER_WINDOW):
            t = t0 + w * W + i * 1_000 + 500
            for adv in (SPAM, CALM):
                n += 1
                if adv == SPAM and spam:
                    imps.append(_impression(n, adv, t, clicked=i % 10 != 0, delay=100,
                                            dwell=200))
                else:
                    imps.append(_impression(n, adv, t, clicked=i % 20 == 7, delay=1800,
                                            dwell=25_000))
        if w % 4 == 1:
            for adv in (SPAM, CALM):
                fbs.append(orjson.dumps({
                    "event_id": f"{adv}-f{w}", "event_time": t0 + w * W + 20_000,
                    "advertiser_id": adv, "ad_id": f"{adv}-c1-a1", "user_id": f"{adv}-u1",
                    "kind": "hide", "reason": "irrelevant", "channel": "in_app"}))
    return imps, fbs


def _score_key(record: dict) -> tuple[str, int]:
    return record["advertiser_id"], record["window"]["start"]


def _has_scores(keys) -> Callable:
    want = set(keys)
    return lambda records: want <= {_score_key(r.json()) for r in records}


def _has_alerts(ids) -> Callable:
    want = set(ids)
    return lambda records: want <= {r.json()["alert_id"] for r in records}


def _dead_source(record) -> tuple[str, int, int]:
    src = record.json()["source"]
    return src["topic"], src["partition"], src["offset"]


def _compare_scores(got: dict, want: dict) -> None:
    """Equal, or a failure that says how (a model changed under the test shows up here)."""
    if got == want:
        return
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    differ = [(k, got[k], want[k]) for k in sorted(set(got) & set(want)) if got[k] != want[k]]
    pytest.fail(f"live scores != offline replay: {len(want)} expected, {len(got)} live; "
                f"missing {missing}, extra {extra}, {len(differ)} differ, e.g. "
                f"(window, live, offline) {differ[:5]} (only same-code runs compare: was "
                f"models/ or riskstream/ edited while the test ran?)", pytrace=False)


def test_worker_dead_letters_bad_input_and_alerts_on_click_spam(kafka_broker, kafka_topics,
                                                                worker):
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    imp_topic, fb_topic = f"{prefix}ad-impressions", f"{prefix}user-feedback"
    now = int(time.time() * 1000)
    t0 = window_start(now - 30 * W, W)
    imps, fbs = handcrafted_stream(t0)

    # what the same valid input gives offline: the expected alerts (derived, not hard-coded)
    expected = replay(imps, fbs, engine_config=engine_config(Settings()), partitions=PARTITIONS)
    exp_alerts = expected.alerts()
    exp_scores = {_score_key(o.record): o.record["risk_score"]
                  for o in expected.outputs if o.kind == "score"}
    spam_alerts = [a for a in exp_alerts if a["advertiser_id"] == SPAM
                   and any(r["code"] == "click_spam_fast_clicks" for r in a["reasons"])]
    assert spam_alerts, "test design: the spam windows must trip the click-spam rule offline"
    assert len(exp_scores) == 2 * (NORMAL_WINDOWS + SPAM_WINDOWS + AFTER_WINDOWS - 1)

    # bad input, interleaved with good input, on both topics
    spam_key = SPAM.encode()
    old = orjson.loads(imps[0])
    bad_imps = {
        "bad_json": (spam_key, b'{"event_id": "broken", "advertiser_id": '),
        "missing_field": (spam_key, orjson.dumps({k: v for k, v in old.items()
                                                  if k != "user_id"})),
        "non_utf8": (b"\xc3\x28-key", b"\xff\xfe\xfd{\"event_id\": \x80}"),
        "oversized": (spam_key, orjson.dumps({**old, "event_id": "big", "pad": "x" * 70_000})),
        "too_old": (spam_key, orjson.dumps({**old, "event_id": "old",
                                            "event_time": now - 8 * 86_400_000})),
    }
    bad_fbs = {
        "unknown_kind": (spam_key, orjson.dumps({"event_id": "fk", "event_time": t0 + 1000,
                                                 "advertiser_id": SPAM, "kind": "like"})),
        "future_event_time": (spam_key, orjson.dumps({
            "event_id": "ff", "event_time": now + 3_600_000, "advertiser_id": SPAM,
            "kind": "hide"})),
    }
    reason = {"bad_json": "bad_json", "missing_field": "missing_field", "non_utf8": "bad_json",
              "oversized": "oversized", "too_old": "too_old", "unknown_kind": "unknown_kind",
              "future_event_time": "future_event_time"}

    def keyed(lines):
        return [(orjson.loads(v)["advertiser_id"].encode(), v) for v in lines]

    imp_records = keyed(imps[:300]) + list(bad_imps.values()) + keyed(imps[300:])
    fb_records = keyed(fbs[:2]) + list(bad_fbs.values()) + keyed(fbs[2:])
    imp_pos = produce(bootstrap, imp_topic, imp_records)
    fb_pos = produce(bootstrap, fb_topic, fb_records)
    # the murmur2 partitioner put each advertiser where the replay routes it
    for (key, _v), (p, _o) in zip(imp_records, imp_pos):
        if key in (SPAM.encode(), CALM.encode()):
            assert p == partition_for(key, PARTITIONS)
    # source position of each bad record -> (what it is, its key and value)
    expected_dead: dict[tuple[str, int, int], tuple[str, bytes, bytes]] = {}
    for topic, records, positions, bad in ((imp_topic, imp_records, imp_pos, bad_imps),
                                           (fb_topic, fb_records, fb_pos, bad_fbs)):
        for name, (key, value) in bad.items():
            p, o = positions[records.index((key, value))]
            expected_dead[(topic, p, o)] = (name, key, value)

    started_ms = int(time.time() * 1000)
    w = worker(prefix)

    with TopicReader(bootstrap, f"{prefix}risk-dead-letter") as dead, \
            TopicReader(bootstrap, f"{prefix}risk-scores") as scores, \
            TopicReader(bootstrap, f"{prefix}risk-alerts") as alerts:
        dead.wait_for(lambda rs: set(expected_dead) <= {_dead_source(r) for r in rs}, 60,
                      f"dead letters of {sorted(expected_dead)}", on_timeout=w.log_tail)
        scores.wait_for(_has_scores(exp_scores), 60, "every closable window scored",
                        on_timeout=w.log_tail)
        want_ids = {a["alert_id"] for a in exp_alerts}
        alerts.wait_for(_has_alerts(want_ids), 30, f"alerts {sorted(want_ids)}",
                        on_timeout=w.log_tail)
        alerts.poll(1.0)  # anything extra would show up now

        # dead letters: exactly the bad records, with their reason and source position
        got_dead = {}
        for r in dead.records:
            rec = r.json()
            assert_valid("dead-letter.v1.json", rec)
            got_dead[_dead_source(r)] = (r.key, rec)
        assert set(got_dead) == set(expected_dead)
        for pos, (name, key, value) in expected_dead.items():
            dl_key, rec = got_dead[pos]
            assert rec["reason"] == reason[name], (name, rec)
            assert dl_key == key  # keyed by the source record's key
            if name == "non_utf8":
                assert rec["original_encoding"] == "hex"
                assert bytes.fromhex(rec["original"]) == value
            else:
                assert rec["original_encoding"] == "utf-8"
                # at most 64 KiB of the original is kept; the source offset locates the rest
                kept = value[:DEAD_LETTER_ORIGINAL_BYTES]
                assert rec["original"].encode() == kept
                assert rec["original_size"] == len(value)
                assert rec["original_truncated"] == (len(kept) < len(value))
            if name == "missing_field":
                assert "user_id" in rec["detail"]
            assert started_ms - 60_000 <= rec["dead_lettered_at"] <= int(time.time() * 1000)

        # scores: the same windows and risk as offline
        got_scores = {}
        for r in scores.records:
            rec = r.json()
            assert_valid("risk-score.v1.json", rec)
            assert r.key == rec["advertiser_id"].encode()
            got_scores[_score_key(rec)] = rec["risk_score"]
        _compare_scores(got_scores, exp_scores)

        # alerts: keyed by advertiser, valid, and exactly the offline ones
        got = [r.json() for r in alerts.records]
        for r, a in zip(alerts.records, got):
            assert_valid("risk-alert.v1.json", a)
            assert r.key == a["advertiser_id"].encode()
        assert {a["alert_id"] for a in got} == want_ids
        spam_live = [a for a in got if a["alert_id"] in {s["alert_id"] for s in spam_alerts}]
        assert spam_live and all(a["mode"] == "enforce" and a["status"] in ("open", "escalated")
                                 for a in spam_live)
        assert spam_live[0]["window"]["start"] >= t0 + NORMAL_WINDOWS * W
        assert spam_live[0]["metrics"]["fast_click_share"] >= 0.6

        # an event for an already closed window is dead-lettered as late_event
        late = orjson.dumps({**old, "event_id": "late-1", "event_time": t0 + 5_000})
        [(p, o)] = produce(bootstrap, imp_topic, [(spam_key, late)])
        dead.wait_for(lambda rs: (imp_topic, p, o) in {_dead_source(r) for r in rs}, 30,
                      "the late event's dead letter", on_timeout=w.log_tail)
        (rec,) = [r.json() for r in dead.records if _dead_source(r) == (imp_topic, p, o)]
        assert rec["reason"] == "late_event" and rec["original"].encode() == late

    metrics = w.metrics()
    assert metrics["riskstream_events_invalid_total"] == len(expected_dead) + 1
    assert metrics["riskstream_events_late_total"] == 1
    assert metrics["riskstream_windows_closed_total"] == len(exp_scores)


def test_live_alerts_equal_offline_replay(kafka_broker, kafka_topics, worker, tmp_path):
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    case = simulated_case(tmp_path, seed=21, advertisers=15, duration_s=1800, spam_start_s=900)
    cfg, imps, fbs, expected = case.config, case.impressions, case.feedback, case.expected
    exp_scores = {_score_key(o.record): o.record["risk_score"]
                  for o in expected.outputs if o.kind == "score"}
    exp_alerts = {a["alert_id"]: a for a in expected.alerts()}
    (truth,) = ground_truth(cfg)
    assert any(a["advertiser_id"] == truth["advertiser_id"] for a in exp_alerts.values()), \
        "test design: the incident must alert offline"
    assert expected.invalid == {}

    produce_lines(bootstrap, f"{prefix}ad-impressions", imps)
    produce_lines(bootstrap, f"{prefix}user-feedback", fbs)
    w = worker(prefix)

    with TopicReader(bootstrap, f"{prefix}risk-scores") as scores, \
            TopicReader(bootstrap, f"{prefix}risk-alerts") as alerts:
        scores.wait_for(_has_scores(exp_scores), 120, f"all {len(exp_scores)} window scores",
                        on_timeout=w.log_tail)
        _compare_scores({_score_key(r.json()): r.json()["risk_score"] for r in scores.records},
                        exp_scores)
        alerts.wait_for(_has_alerts(exp_alerts), 30, f"{len(exp_alerts)} alerts",
                        on_timeout=w.log_tail)
        alerts.poll(1.0)  # anything extra would show up now
        got_alerts = {r.json()["alert_id"]: r.json() for r in alerts.records}

    assert set(got_alerts) == set(exp_alerts)
    for aid, a in got_alerts.items():
        assert_valid("risk-alert.v1.json", a)
        off = exp_alerts[aid]
        assert (a["status"], a["severity"], a["risk_score"], a["reasons"]) == \
            (off["status"], off["severity"], off["risk_score"], off["reasons"])
    m = w.metrics()
    assert m.get("riskstream_events_invalid_total", 0) == 0
    assert m["riskstream_events_consumed_total"] == len(imps) + len(fbs)
