"""Window accumulation (riskstream.windows), its sketches, and window features."""

from __future__ import annotations

import math

import pytest

from riskstream.engine import DictStore, EngineConfig, RiskEngine
from riskstream.features import FEATURE_NAMES, window_features
from riskstream.windows import (
    CLICK_DELAY_BOUNDS,
    FAST_CLICK_MS,
    KMV_K,
    SHORT_DWELL_MS,
    AdvertiserWindow,
    window_start,
)

T0 = window_start(1_700_000_000_000, 60_000)


def imp(user="u1", region="US", cost=1000, clicked=False, delay=0, converted=False, dwell=0):
    return {"user_id": user, "region": region, "cost_micros": cost, "clicked": clicked,
            "click_delay_ms": delay, "converted": converted, "dwell_ms": dwell}


def fb(kind, reason="", rating=None):
    return {"kind": kind, "reason": reason, "rating": rating}


def test_window_start_is_aligned():
    assert window_start(T0 + 59_999, 60_000) == T0
    assert window_start(T0 + 60_000, 60_000) == T0 + 60_000
    assert window_start(T0, 60_000) == T0


def test_accumulates_impressions_and_feedback():
    w = AdvertiserWindow(T0, T0 + 60_000)
    w.add_impression(imp("u1", "US", 2000, clicked=True, delay=FAST_CLICK_MS - 1, dwell=200))
    w.add_impression(imp("u2", "US", 3000, clicked=True, delay=FAST_CLICK_MS, converted=True,
                         dwell=SHORT_DWELL_MS))
    w.add_impression(imp("u2", "GB", 500))
    w.add_feedback(fb("report", "scam"))
    w.add_feedback(fb("report", "misleading"))
    w.add_feedback(fb("hide"))
    w.add_feedback(fb("complaint", "not_received"))
    w.add_feedback(fb("satisfaction", rating=1))
    w.add_feedback(fb("satisfaction", rating=4))
    w.add_feedback(fb("not_interested", "irrelevant"))  # not a counted reason
    assert (w.impressions, w.clicks, w.fast_clicks, w.conversions) == (3, 2, 1, 1)
    assert w.spend_micros == 5500
    assert w.short_dwells == 1 and w.dwell_sum_ms == 200 + SHORT_DWELL_MS
    assert w.regions == {"US": 2, "GB": 1}
    assert w.unique_users() == 2.0
    assert w.feedback_count("report") == 2 and w.feedback_count("hide") == 1
    assert w.feedback_count("complaint") == 1 and w.feedback_count("satisfaction") == 2
    assert w.feedback_count("not_interested") == 1
    assert w.reason_count("scam") == 1 and w.reason_count("misleading") == 1
    assert w.reason_count("not_received") == 1
    assert w.rating_sum == 5 and w.low_ratings == 1

    x = window_features(w)
    assert x["impressions"] == 3 and x["clicks"] == 2
    assert x["ctr"] == pytest.approx(2 / 3)
    assert x["fast_click_share"] == pytest.approx(0.5)
    assert x["short_dwell_share"] == pytest.approx(0.5)
    assert x["cvr"] == pytest.approx(0.5)
    assert x["spend"] == pytest.approx(0.0055)
    assert x["top_region_share"] == pytest.approx(2 / 3) and x["regions"] == 2
    assert x["impressions_per_user"] == pytest.approx(1.5)
    assert x["reports"] == 2 and x["report_rate"] == pytest.approx(2 / 3)
    assert x["scam_reports"] == 2 and x["complaints"] == 1
    assert x["complaint_rate"] == pytest.approx(1.0)
    assert x["mean_rating"] == pytest.approx(2.5) and x["low_rating_share"] == pytest.approx(0.5)


def test_snapshot_restore_roundtrip():
    w = AdvertiserWindow(T0, T0 + 60_000)
    for i in range(100):
        w.add_impression(imp(f"u{i}", f"R{i % 40}", clicked=i % 3 == 0, delay=i * 37, dwell=i))
    w.add_feedback(fb("report", "scam"))
    w2 = AdvertiserWindow.restore(w.snapshot())
    assert w2.snapshot() == w.snapshot()
    assert window_features(w2) == window_features(w)


def test_regions_are_bounded():
    w = AdvertiserWindow(T0, T0 + 60_000)
    for i in range(100):
        w.add_impression(imp(region=f"R{i}"))
    assert len(w.regions) <= 33 and w.regions["other"] == 100 - 32
    assert sum(w.regions.values()) == 100


def test_unique_users_exact_below_sketch_size():
    w = AdvertiserWindow(T0, T0 + 60_000)
    n = KMV_K - 1
    for rep in range(3):  # repeats are not counted twice
        for i in range(n):
            w.add_impression(imp(f"user-{i}"))
    assert w.unique_users() == float(n)
    assert w.impressions == 3 * n
    assert window_features(w)["impressions_per_user"] == pytest.approx(3.0)


@pytest.mark.parametrize("n", [10_000, 50_000])
def test_unique_users_approximate_above_sketch_size(n):
    w = AdvertiserWindow(T0, T0 + 60_000)
    for i in range(n):
        w.add_impression(imp(f"u{i * 7919 + 13}"))
    for i in range(0, n, 3):  # repeats do not move the estimate
        w.add_impression(imp(f"u{i * 7919 + 13}"))
    est = w.unique_users()
    assert len(w.user_hashes) == KMV_K  # bounded state
    assert abs(est - n) / n < 0.25, est


def test_bot_pool_shows_as_impressions_per_user():
    w = AdvertiserWindow(T0, T0 + 60_000)
    for i in range(1000):
        w.add_impression(imp(f"bot{i % 5}"))
    x = window_features(w)
    assert x["unique_users"] == 5 and x["impressions_per_user"] == pytest.approx(200)


def test_median_click_delay_from_histogram():
    w = AdvertiserWindow(T0, T0 + 60_000)
    for d in (50, 150, 250, 800, 5000):
        w.add_impression(imp(clicked=True, delay=d, dwell=5000))
    # buckets: <=100, <=200, <=300 (3rd of 5 clicks: the median), <=1000, <=5000
    assert w.median_click_delay_ms() == 300.0
    assert window_features(w)["median_click_delay_ms"] == 300.0
    w2 = AdvertiserWindow(T0, T0 + 60_000)
    for d in (2500, 2600, 40_000):
        w2.add_impression(imp(clicked=True, delay=d))
    assert w2.median_click_delay_ms() == 3000.0
    w3 = AdvertiserWindow(T0, T0 + 60_000)
    w3.add_impression(imp(clicked=True, delay=CLICK_DELAY_BOUNDS[-1] + 1))
    assert w3.median_click_delay_ms() > CLICK_DELAY_BOUNDS[-1]  # beyond the last bucket
    assert AdvertiserWindow(T0, T0 + 60_000).median_click_delay_ms() == 0.0


def test_features_of_empty_window_are_finite():
    x = window_features(AdvertiserWindow(T0, T0 + 60_000))
    assert tuple(x) == FEATURE_NAMES
    assert all(isinstance(v, float) and math.isfinite(v) for v in x.values()), x
    assert x["impressions"] == 0.0 and x["ctr"] == 0.0


def test_features_of_feedback_only_window_are_finite():
    w = AdvertiserWindow(T0, T0 + 60_000)
    w.add_feedback(fb("complaint", "scam"))
    w.add_feedback(fb("report", "scam"))
    x = window_features(w)
    assert all(math.isfinite(v) for v in x.values()), x
    assert x["impressions"] == 0 and x["reports"] == 1 and x["report_rate"] == 0.0
    assert x["complaint_rate"] == 1.0


def test_feedback_is_attributed_to_its_own_window():
    """A report arriving two windows after the impression counts in the report's window."""
    engine = RiskEngine(EngineConfig(window_ms=60_000, lateness_ms=10_000), DictStore())
    base = {"advertiser_id": "adv-1", "campaign_id": "c", "ad_id": "a", "region": "US",
            "placement": "feed", "cost_micros": 1000.0, "clicked": False, "click_delay_ms": 0.0,
            "converted": False, "dwell_ms": 0.0}
    out = []
    for i in range(5):
        out += engine.process({"type": "impression", "event_id": f"i{i}",
                               "event_time": T0 + 1000 * i, "user_id": f"u{i}", **base}, 0)
    out += engine.process({"type": "feedback", "event_id": "f1", "event_time": T0 + 130_000,
                           "advertiser_id": "adv-1", "ad_id": "a", "user_id": "u1",
                           "kind": "report", "reason": "scam", "rating": None,
                           "channel": "in_app"}, 0)
    out += engine.process({"type": "impression", "event_id": "i9", "event_time": T0 + 125_000,
                           "user_id": "u9", **base}, 0)
    out += engine.flush()
    scores = {o.record["window"]["start"]: o.record["metrics"] for o in out if o.kind == "score"}
    assert set(scores) == {T0, T0 + 120_000}
    assert scores[T0]["impressions"] == 5 and scores[T0]["reports"] == 0
    assert scores[T0 + 120_000]["reports"] == 1 and scores[T0 + 120_000]["impressions"] == 1
    assert scores[T0 + 120_000]["scam_reports"] == 1
