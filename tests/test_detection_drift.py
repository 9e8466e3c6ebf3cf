"""robust-baseline v4 to v6: the drift detector (one-sided Poisson CUSUM; v5 adds a joint drift
of hides and reports for scam ads, v6 one of deception signals, low ratings and conversions for
cloaked pages), deception signals and the cohort prior's event floor. Unit
tests on plain feature dicts (fast, no broker)."""

from __future__ import annotations

import math
import random

import orjson

from models.baseline import CUSUM_RATIOS, DEFAULT_PRIORS, PRIOR_EVENTS, RobustBaseline
from riskstream.decision import DecisionConfig
from riskstream.features import window_features
from riskstream.windows import AdvertiserWindow

THRESHOLD = DecisionConfig().threshold


def window(imps: float, clicks: float, deception: float = 0.0) -> dict[str, float]:
    return {"impressions": imps, "clicks": clicks, "ctr": clicks / imps if imps else 0.0,
            "deception_signals": deception, "deception_rate": deception / imps if imps else 0.0}


def trained(windows: int = 120, imps: float = 50.0, clicks: float = 0.5) -> RobustBaseline:
    m = RobustBaseline()
    for _ in range(windows):
        m.learn_one(window(imps, clicks))
    return m


def run(m: RobustBaseline, xs: list[dict[str, float]]) -> list[float]:
    """Score then learn (or observe when flagged), as the engine does; the risk per window."""
    risks = []
    for x in xs:
        r = m.score_one(x)
        risks.append(r)
        if r >= THRESHOLD:
            m.observe_flagged(x)
        else:
            m.learn_one(x)
    return risks


RAMP = [window(50.0, 0.5 * (1.0 + 4.0 * min(i / 30.0, 1.0))) for i in range(40)]


def test_slow_ctr_ramp_at_low_volume_crosses_the_threshold() -> None:
    """50 impressions a minute at 1% CTR, then CTR climbs linearly to x5 over 30 windows and
    stays: no window alone is remarkable (1-3 clicks), the drift statistic is."""
    risks = run(trained(), RAMP)
    assert max(risks) >= THRESHOLD
    # a single window of the ramp's end, judged on its own, is not enough
    assert trained().score_one(window(50.0, 2.5)) < THRESHOLD


def test_without_the_drift_statistic_the_ramp_is_missed(monkeypatch) -> None:
    import models.baseline as baseline

    monkeypatch.setattr(baseline, "CUSUM_RATIOS", {})
    assert max(run(trained(), RAMP)) < THRESHOLD


def test_steady_traffic_never_drifts() -> None:
    m = trained(windows=50)
    risks = run(m, [window(50.0, 0.5)] * 300)
    assert max(risks) < 0.2
    assert "ctr" not in m.state()["cusum"]  # at rest: not stored


def test_volume_swing_with_normal_rates_does_not_drift() -> None:
    """Campaign launch / seasonal swing: volume x4 with the same CTR."""
    m = trained()
    risks = run(m, [window(50.0 * (1 + 3 * math.sin(math.pi * i / 60)), 0.5 * (
        1 + 3 * math.sin(math.pi * i / 60))) for i in range(60)])
    assert max(risks) < THRESHOLD


def test_trickle_of_deception_signals_adds_up() -> None:
    """A cloaked landing page at 200 impressions a minute: one report or complaint citing
    scam / not received every ~6 windows (the cohort expects one in ~80)."""
    m = trained(imps=200.0, clicks=2.0)
    xs = [window(200.0, 2.0, 1.0 if i % 6 == 5 else 0.0) for i in range(60)]
    risks = run(m, xs)
    assert max(risks) >= THRESHOLD
    c = m.explain(xs[29])
    assert c and c[0].feature in ("deception_rate",) + tuple(CUSUM_RATIOS)


def test_flagged_window_restarts_the_drift() -> None:
    m = trained()
    for i in range(20):
        m.learn_one(window(50.0, 2.0))
    assert m.state()["cusum"]["ctr"][0] > 0.0
    m.observe_flagged(window(50.0, 2.0))
    assert "ctr" not in m.state()["cusum"]
    m2 = RobustBaseline()
    m2.load_state(m.state())
    assert m2._cusum["ctr"] == [0.0, 0.0, 0.0]


def test_drift_explains_with_the_rate_since_it_began() -> None:
    m = trained()
    for _ in range(15):
        m.learn_one(window(50.0, 1.5))  # 3% against a 1% baseline
    top = max(m.deviations(window(50.0, 1.5)), key=lambda c: c.deviation)
    assert top.feature == "ctr"
    assert 0.025 < top.value < 0.035 and top.baseline < 0.015


def test_prior_is_worth_at_least_a_few_events() -> None:
    """A rare count's baseline is not estimated from its own first events: one complaint after
    50 quiet windows leaves the baseline within 2x of the cohort prior."""
    m = RobustBaseline()
    s = m.state()["rates"]["complaints_per_impression"]
    assert s[0] >= PRIOR_EVENTS * 0.999
    for _ in range(50):
        m.learn_one(window(200.0, 2.0))
    x = dict(window(200.0, 2.0), complaints=1.0)
    m.learn_one(x)
    s = m.state()["rates"]["complaints_per_impression"]
    assert s[0] / s[1] < 2 * DEFAULT_PRIORS["complaints_per_impression"]


def test_deception_signals_count_deceptive_reasons_only() -> None:
    w = AdvertiserWindow(0, 60_000)
    for kind, reason in (("report", "scam"), ("report", "misleading"), ("report", "offensive"),
                         ("complaint", "not_received"), ("refund_request", "counterfeit"),
                         ("complaint", "quality"), ("hide", "")):
        w.add_feedback({"kind": kind, "reason": reason})
    w.add_feedback({"kind": "satisfaction", "reason": "", "rating": 1})
    for i in range(100):
        w.add_impression({"user_id": f"u{i}", "region": "US", "cost_micros": 1000,
                          "clicked": False, "click_delay_ms": 0, "converted": False,
                          "dwell_ms": 0})
    f = window_features(w)
    assert f["deception_signals"] == 4.0
    assert f["deception_rate"] == 0.04


def burst(m: RobustBaseline) -> float:
    """A bot burst: 10x the impressions at a third of the CTR for 20 windows, all learned (the
    worst case of a partly flagged burst). The CTR baseline after it, relative to before."""
    s = m.state()["rates"]["ctr"]
    before = s[0] / s[1]
    for _ in range(20):
        m.learn_one(window(1000.0, 5.0))
    s = m.state()["rates"]["ctr"]
    return s[0] / s[1] / before


def test_volume_burst_does_not_rewrite_the_ctr_baseline() -> None:
    """Capped at twice the typical volume, the burst moves the CTR baseline by far less than its
    share of impressions would, so normal CTR afterwards does not read as a drift."""
    m = trained(imps=100.0, clicks=1.5)
    assert burst(m) > 0.6  # uncapped: below 0.45 (next test)
    assert 100.0 < m.state()["volume"] < 200.0  # the burst does not become the typical volume
    assert max(run(m, [window(100.0, 1.5)] * 60)) < THRESHOLD


def test_volume_cap_off_shows_the_problem(monkeypatch) -> None:
    import models.baseline as baseline

    monkeypatch.setattr(baseline, "VOLUME_CAP", 1e9)
    m = trained(imps=100.0, clicks=1.5)
    assert burst(m) < 0.45  # normal CTR afterwards is 2.3x this baseline


def young_advertisers_alerting(seeds: int = 40) -> int:
    """Young advertisers at CTR 3.5% (the cohort prior says 2%), 60 impressions a minute,
    Poisson clicks: how many alert after the 5-window warm-up, in their first 90 windows."""
    import numpy as np

    alerting = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        xs = [window(60.0, float(rng.poisson(60 * 0.035))) for _ in range(90)]
        alerting += max(run(RobustBaseline(), xs)[5:]) >= THRESHOLD
    return alerting


def test_baseline_leaving_the_prior_is_not_a_drift(monkeypatch) -> None:
    """While a young advertiser's baseline converges from the cohort prior, the drift statistic
    is off (DRIFT_WARMUP); with it on from the first window, some of them alert."""
    import models.baseline as baseline

    assert young_advertisers_alerting() == 0
    monkeypatch.setattr(baseline, "DRIFT_WARMUP", 0)
    assert young_advertisers_alerting() > 0


# -- v5: the joint hide + report drift (scam ads) ---------------------------------------------


def feedback_window(imps: float = 100.0, hides: float = 0.15,
                    reports: float = 0.02) -> dict[str, float]:
    """One window's features with the hide and report counts the joint drift reads (fractional
    counts stand for an average window)."""
    return {"impressions": imps, "clicks": 1.0, "ctr": 1.0 / imps, "hide_rate": hides / imps,
            "reports": reports, "report_rate": reports / imps}


def trained_feedback(windows: int = 120) -> RobustBaseline:
    m = RobustBaseline()
    for _ in range(windows):
        m.learn_one(feedback_window())
    return m


SCAM_AD = [feedback_window(hides=0.9, reports=0.5) for _ in range(30)]


def test_scam_ad_hides_and_reports_add_up(monkeypatch) -> None:
    """A scam ad at 100 impressions a minute: hides x6 and reports x25, each a fraction of an
    event a window. The joint drift crosses the threshold within ~10 windows; without it, the
    short horizons take longer."""
    import models.baseline as baseline

    risks = run(trained_feedback(), SCAM_AD)
    first = next(i for i, r in enumerate(risks) if r >= THRESHOLD)
    assert first <= 12
    monkeypatch.setattr(baseline, "JOINT_DRIFTS", {})
    risks = run(trained_feedback(), SCAM_AD)
    assert all(r < THRESHOLD for r in risks[:first + 1])


def top_reason_when_flagged(m: RobustBaseline, xs: list[dict[str, float]]):
    """The first reason of the first window that crosses the threshold (learning until then)."""
    for x in xs:
        if m.score_one(x) >= THRESHOLD:
            return m.explain(x)[0]
        m.learn_one(x)
    raise AssertionError("never crossed the threshold")


def test_scam_drift_is_explained_by_a_stream_above_its_baseline() -> None:
    top = top_reason_when_flagged(trained_feedback(), SCAM_AD)
    assert top.feature in ("hide_rate", "report_rate"), top
    assert top.value > 5 * top.baseline


def test_steady_hides_and_reports_never_drift() -> None:
    """Four hours of Poisson hides and reports at the advertiser's own rates: no alert."""
    rng = random.Random(5)

    def poisson(lam: float) -> float:
        k, t = 0, rng.expovariate(1.0)
        while t < lam:
            k, t = k + 1, t + rng.expovariate(1.0)
        return float(k)

    m = trained_feedback()
    xs = [feedback_window(hides=poisson(0.15), reports=poisson(0.02)) for _ in range(240)]
    assert max(run(m, xs)) < THRESHOLD


def test_one_report_is_not_a_joint_drift() -> None:
    """The joint drift needs JOINT_MIN_EVENTS events: a single report on a quiet advertiser
    (x50 its rate for one window) does not open it."""
    from models.baseline import JOINT_MIN_EVENTS

    assert JOINT_MIN_EVENTS >= 2
    m = trained_feedback()
    risks = run(m, [feedback_window(hides=0.0, reports=1.0)] + [feedback_window()] * 5)
    assert max(risks) < THRESHOLD


def test_joint_drift_state_round_trips() -> None:
    m = trained_feedback()
    for x in SCAM_AD[:3]:
        m.learn_one(x)
    c = m.state()["cusum"]["hide_report"]
    assert len(c) == 1 + 2 * 2 and c[0] > 0.0  # statistic, then (events, exposure) x 2 streams
    m2 = RobustBaseline()
    m2.load_state(m.state())
    assert m2.state() == m.state()
    assert m2.score_one(SCAM_AD[0]) == m.score_one(SCAM_AD[0])
    m.observe_flagged(SCAM_AD[0])
    assert "hide_report" not in m.state()["cusum"]  # a flagged window restarts it


# -- v6: the joint cloaking drift (deception signals, low ratings, conversions as evidence) -----


def cloak_window(deception: float = 0.004, conversions: float = 0.05, ratings: float = 0.1,
                 low: float = 0.015) -> dict[str, float]:
    """An average window at 60 impressions and 1 click a minute (fractional counts): deception
    signals, conversions and satisfaction ratings (``low`` of them 1-2 stars)."""
    return {"impressions": 60.0, "clicks": 1.0, "ctr": 1.0 / 60.0,
            "conversions": conversions, "cvr": conversions,
            "deception_signals": deception, "deception_rate": deception / 60.0,
            "satisfaction_responses": ratings, "low_rating_share": low / ratings if ratings else 0.0}


def trained_cloak(windows: int = 120) -> RobustBaseline:
    m = RobustBaseline()
    for _ in range(windows):
        m.learn_one(cloak_window())
    return m


# a cloaked page: 3x conversions, deception signals at ~x40 (reports of clickers, then
# complaints), a few 1-2 star ratings; each well under one event a window
CLOAKING = [cloak_window(deception=0.15, conversions=0.15, ratings=0.2, low=0.1)] * 40


def test_cloaked_page_signals_add_up(monkeypatch) -> None:
    """Deception signals, low ratings and the rise in conversions are evidence together sooner
    than the deception drift alone (v5: no cloaking drift)."""
    import models.baseline as baseline

    risks = run(trained_cloak(), CLOAKING)
    first = next(i for i, r in enumerate(risks) if r >= THRESHOLD)
    monkeypatch.setattr(baseline, "JOINT_DRIFTS",
                        {k: v for k, v in baseline.JOINT_DRIFTS.items() if k != "cloak"})
    risks = run(trained_cloak(), CLOAKING)
    assert all(r < THRESHOLD for r in risks[:first + 1])


def test_more_conversions_alone_never_alert() -> None:
    """cvr is evidence only: a landing page that converts 4x better, with nothing else wrong,
    is good news, and four hours of it raise no alert."""
    m = trained_cloak()
    assert max(run(m, [cloak_window(conversions=0.2)] * 240)) < THRESHOLD
    assert all(c.feature != "cvr" for c in m.deviations(cloak_window(conversions=2.0)))


def test_cloak_drift_is_explained_by_a_harm_stream() -> None:
    top = top_reason_when_flagged(trained_cloak(), CLOAKING)
    assert top.feature in ("deception_rate", "low_rating_share"), top


def test_conversions_do_not_count_toward_the_joint_minimum(monkeypatch) -> None:
    """Conversions add to the statistic only next to harm: with one deception signal (fewer
    than JOINT_MIN_EVENTS harm events) and many conversions the cloak drift is not scored, even
    above its offset."""
    import models.baseline as baseline

    monkeypatch.setattr(baseline, "JOINT_OFFSET", 0.5)
    m = trained_cloak()

    def cloak_row(x: dict[str, float]):
        step = m._joint_step("cloak", baseline.window_counts(x))
        return step[0], m._joint_row("cloak", step)

    stat, row = cloak_row(cloak_window(deception=1.0, conversions=3.0))
    assert stat > 0.5 and row is None
    assert cloak_row(cloak_window(deception=2.0, conversions=3.0))[1] is not None


# -- v6: levels do not learn what they already find anomalous ----------------------------------


def user_window(imps: float, per_user: float) -> dict[str, float]:
    return {"impressions": imps, "clicks": 0.0, "ctr": 0.0, "impressions_per_user": per_user}


def per_user_deviations(windows: int = 20) -> list[float]:
    """A bot burst seen by the impressions-per-user level: 40 impressions a minute at 1.0 per
    user, then 300 a minute at 4 per user, learned (each window below the alert threshold)."""
    m = RobustBaseline()
    for _ in range(150):
        m.learn_one(user_window(40.0, 1.0))
    out = []
    for _ in range(windows):
        x = user_window(300.0, 4.0)
        out.append(next(c.deviation for c in m.deviations(x)
                        if c.feature == "impressions_per_user"))
        m.learn_one(x)
    return out


def test_level_guard_keeps_a_burst_from_becoming_its_own_baseline(monkeypatch) -> None:
    import models.baseline as baseline

    guarded = per_user_deviations()
    assert guarded[0] > 3.5 and guarded[-1] > 0.85 * guarded[0]
    monkeypatch.setattr(baseline, "LEVEL_GUARD", False)
    unguarded = per_user_deviations()
    assert unguarded[0] == guarded[0]
    assert unguarded[-1] < 0.5 * unguarded[0]  # v5: the level learned the burst within minutes


def test_level_guard_still_follows_a_lasting_shift() -> None:
    """A lasting change of level (4 per user for 12 hours) is absorbed, only more slowly."""
    m = RobustBaseline()
    for _ in range(150):
        m.learn_one(user_window(40.0, 1.0))
    for _ in range(720):
        m.learn_one(user_window(40.0, 4.0))
    dev = next(c.deviation for c in m.deviations(user_window(40.0, 4.0))
               if c.feature == "impressions_per_user")
    assert dev < 1.0


# -- session 5 (NOT adopted, docs/detection.md): drifts against the baseline of their start ----
# (the FROZEN_DRIFT option, off in v6) and a ramp drift; the candidate's configuration

V7_CONSTANTS = {
    "FROZEN_DRIFT": frozenset({"ctr", "deception_rate", "ramp"}),
    "JOINT_DRIFTS": {"hide_report": {"hide_rate": 4.0, "report_rate": 10.0},
                     "cloak": {"deception_rate": 10.0, "low_rating_share": 8.0, "cvr": 2.5},
                     "ramp": {"ctr": 3.0, "report_rate": 4.0}},
}
V6_CONSTANTS = {
    "FROZEN_DRIFT": frozenset(),
    "JOINT_DRIFTS": {k: v for k, v in V7_CONSTANTS["JOINT_DRIFTS"].items() if k != "ramp"},
}


def configure(monkeypatch, constants: dict) -> None:
    import models.baseline as baseline

    for name, value in constants.items():
        monkeypatch.setattr(baseline, name, value)


# 50 impressions a minute at 1% CTR; CTR climbs linearly to x5 over 30 windows, then is normal
# again (the simulator's slow ramp ends): no window alone is remarkable (0.5-2.4 clicks)
RAMP_THAT_ENDS = ([window(50.0, 0.5 * (1.0 + 4.0 * i / 30.0)) for i in range(30)]
                  + [window(50.0, 0.5)] * 30)


def test_frozen_drift_catches_a_ramp_that_ends(monkeypatch) -> None:
    """v6 judged the ramp against a CTR baseline that learned it (below the learning guard a
    ramp window enters at full weight): max risk ~0.5. Against the baseline of the drift's
    start the same windows cross the threshold."""
    configure(monkeypatch, V6_CONSTANTS)
    assert max(run(trained(), RAMP_THAT_ENDS)) < THRESHOLD
    configure(monkeypatch, V7_CONSTANTS)
    assert max(run(trained(), RAMP_THAT_ENDS)) >= THRESHOLD


def test_frozen_baseline_is_the_one_of_the_drift_start(monkeypatch) -> None:
    configure(monkeypatch, V7_CONSTANTS)
    m = trained()
    start = m._base_rate("ctr")
    for x in RAMP_THAT_ENDS[:20]:
        m.learn_one(x)
    state = m.state()
    assert state["cusum"]["ctr"][0] > 0.0
    frozen = state["frozen"]["ctr"][0]
    assert start <= frozen < 1.1 * start  # the baseline when the drift left zero (window 3)
    assert m._base_rate("ctr") > 1.2 * frozen  # while the live baseline followed the ramp
    assert len(state["frozen"]["ramp"]) == 2  # one baseline per stream of the joint drift


def test_frozen_baselines_round_trip_and_rest(monkeypatch) -> None:
    configure(monkeypatch, V7_CONSTANTS)
    m = trained()
    assert "frozen" not in m.state()  # at rest: not stored
    for x in RAMP_THAT_ENDS[:15]:
        m.learn_one(x)
    m2 = RobustBaseline()
    m2.load_state(orjson.loads(orjson.dumps(m.state())))
    assert m2.state() == m.state()
    for x in RAMP_THAT_ENDS[15:]:
        assert m2.score_one(x) == m.score_one(x)
        m.learn_one(x)
        m2.learn_one(x)
    m.observe_flagged(RAMP_THAT_ENDS[0])
    assert "frozen" not in m.state()  # a flagged window restarts the drifts


def test_state_without_frozen_baselines_loads(monkeypatch) -> None:
    """A v6 state with a drift up (no "frozen"): the drift is judged against the current
    baseline, as v6 did, until it returns to zero."""
    configure(monkeypatch, V6_CONSTANTS)
    m6 = trained()
    for x in RAMP_THAT_ENDS[:15]:
        m6.learn_one(x)
    state = orjson.loads(orjson.dumps(m6.state()))
    assert state["cusum"]["ctr"][0] > 0.0 and "frozen" not in state
    x = RAMP_THAT_ENDS[15]
    v6_risk = m6.score_one(x)
    configure(monkeypatch, V7_CONSTANTS)
    m7 = RobustBaseline()
    m7.load_state(state)
    ctr6 = next(c.deviation for c in m6.deviations(x) if c.feature == "ctr")
    assert next(c.deviation for c in m7.deviations(x) if c.feature == "ctr") == ctr6
    assert abs(m7.score_one(x) - v6_risk) < 0.05  # the ramp drift starts at rest
    m7.learn_one(x)
    assert m7.state()["frozen"]["ctr"][0] == m6._base_rate("ctr")


def test_steady_traffic_and_volume_swings_never_drift_with_frozen_baselines(monkeypatch) -> None:
    configure(monkeypatch, V7_CONSTANTS)
    m = trained(windows=50)
    assert max(run(m, [window(50.0, 0.5)] * 300)) < 0.2
    assert "ctr" not in m.state()["cusum"]
    m = trained()
    swing = [window(50.0 * (1 + 3 * math.sin(math.pi * i / 60)),
                    0.5 * (1 + 3 * math.sin(math.pi * i / 60))) for i in range(60)]
    assert max(run(m, swing)) < THRESHOLD
