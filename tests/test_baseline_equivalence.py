"""``RobustBaseline`` after the per-window speed-up (issue 7) gives bit-identical results to the
v5 code it replaced (``tests/fixtures/baseline_v5_reference.py``, a frozen copy of main at
cd67e83).

Thousands of generated windows -- ordinary traffic, empty and feedback-only windows, sparse counts,
volume and CTR spikes, report and hide trickles that open the drift statistics after their
warm-up, non-finite and negative values, missing features -- go through both classes with the
engine's call sequence (``score_one``, ``explain`` now and then, then ``learn_one`` or
``observe_flagged``), with ``state()``/``load_state`` round trips through JSON mid-stream and
cold starts from other cohort priors and parameters. Scores, ``explain``/``deviations`` output
and ``state()`` must be equal as ``repr`` (which tells ``-0.0`` from ``0.0`` and prints every
float exactly).

The new class keeps the last scored window's intermediate results for ``learn_one``; the tests
also take the paths where that cache must not be used (a window changed in place after scoring,
``state()`` handed out in between, ``learn_one`` without a score).

``duplicates`` pairs the frozen copy with ``models/baseline.py``: intended, it is the old code.

Since v6 (issue 3) the current class runs here in v5's configuration (``V5_CONSTANTS``: no
cloaking drift, joint offset 2, no level guard) and its state is compared without the ``cvr`` rate
v6 added (evidence only, read by the cloaking drift alone): so the test also shows that v6 is v5
plus exactly those additions.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from models.baseline import RobustBaseline, _count, _finite
from tests.fixtures import baseline_v5_reference as reference
from tests.fixtures.baseline_v5_reference import ReferenceBaseline

V5_CONSTANTS = {"JOINT_DRIFTS": reference.JOINT_DRIFTS, "JOINT_OFFSET": reference.JOINT_OFFSET,
                "LEVEL_GUARD": False}


@pytest.fixture(autouse=True)
def v5_configuration(monkeypatch) -> None:
    import models.baseline as baseline

    for name, value in V5_CONSTANTS.items():
        monkeypatch.setattr(baseline, name, value)


def v5_state(model: RobustBaseline) -> dict[str, Any]:
    """``model.state()`` without what v6 added (the evidence-only ``cvr`` rate)."""
    state = model.state()
    return dict(state, rates={k: v for k, v in state["rates"].items() if k != "cvr"})


THRESHOLD = 0.8  # the default alert threshold: flagged windows go to observe_flagged
SPECIAL = (0.0, -0.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e13, 3, True)


def same(a: Any, b: Any) -> bool:
    return repr(a) == repr(b)


def generated_window(rng: random.Random, regime: str, volume: float) -> dict[str, float]:
    """One window's features (the keys of ``riskstream.features.window_features``) for a
    traffic regime; counts are Poisson-like integers, so small volumes give sparse counts."""
    def poisson(lam: float) -> float:
        k, t = 0, rng.expovariate(1.0)
        while t < lam and k < 10_000:
            k, t = k + 1, t + rng.expovariate(1.0)
        return float(k)

    imps = poisson(volume * (10.0 if regime == "volume_spike" else 1.0))
    ctr = {"ctr_spike": 0.2, "ctr_ramp": 0.05}.get(regime, 0.02)
    clicks = poisson(imps * ctr)
    report_rate = {"report_trickle": 0.01, "scam": 0.005}.get(regime, 4e-4)
    hide_rate = 0.012 if regime == "scam" else 2e-3
    reports, hides = poisson(imps * report_rate), poisson(imps * hide_rate)
    ratings = poisson(imps * 0.01)
    low = poisson(ratings * 0.2)
    complaints, refunds = poisson(imps * 3e-5), poisson(imps * 1e-5)
    scam, deception = poisson(imps * 2e-4), poisson(imps * (1e-3 if regime == "scam" else 6e-5))
    per_imp = 1.0 / imps if imps else 0.0
    per_click = 1.0 / clicks if clicks else 0.0
    users = max(1.0, imps - poisson(imps * 0.05)) if imps else 0.0
    x = {
        "impressions": imps, "spend": imps * 0.001, "clicks": clicks, "ctr": clicks * per_imp,
        "conversions": 0.0, "cvr": 0.0,
        "median_click_delay_ms": rng.uniform(100.0, 5000.0) if clicks else 0.0,
        "fast_click_share": poisson(clicks * 0.05) * per_click,
        "mean_dwell_ms": rng.uniform(1000.0, 40000.0) if clicks else 0.0,
        "short_dwell_share": poisson(clicks * 0.1) * per_click,
        "unique_users": users, "impressions_per_user": imps / users if users else 0.0,
        "top_region_share": 0.5 if imps else 0.0, "regions": 3.0 if imps else 0.0,
        "reports": reports, "report_rate": reports * per_imp, "hide_rate": hides * per_imp,
        "not_interested_rate": poisson(imps * 2e-3) * per_imp,
        "scam_reports": scam, "scam_report_rate": scam * per_imp,
        "complaints": complaints, "refund_requests": refunds,
        "complaint_rate": complaints + refunds,
        "complaints_per_impression": (complaints + refunds) * per_imp,
        "harm_rate": (reports + complaints + refunds + low) * per_imp,
        "deception_signals": deception, "deception_rate": deception * per_imp,
        "satisfaction_responses": ratings,
        "mean_rating": rng.uniform(1.0, 5.0) if ratings else 0.0,
        "low_rating_share": low / ratings if ratings else 0.0,
    }
    if regime == "odd":
        # non-finite, negative, integer and boolean values, and missing features
        for key in rng.sample(sorted(x), 6):
            x[key] = rng.choice(SPECIAL)
        for key in rng.sample(sorted(x), 3):
            del x[key]
    return x


REGIMES = ("normal",) * 12 + ("volume_spike", "ctr_spike", "ctr_ramp", "report_trickle",
                              "scam", "empty", "odd")


def stream(seed: int, windows: int, volume: float) -> list[dict[str, float]]:
    """An advertiser's windows: mostly normal, with runs (1-40 windows) of other regimes."""
    rng = random.Random(seed)
    out: list[dict[str, float]] = []
    while len(out) < windows:
        regime = rng.choice(REGIMES)
        run = 1 if regime == "normal" else rng.randint(1, 40)
        for _ in range(run):
            out.append({} if regime == "empty" else generated_window(rng, regime, volume))
    return out[:windows]


def round_trip(model: Any, cls: type, params: dict[str, Any]) -> Any:
    fresh = cls(**params)
    fresh.load_state(orjson.loads(orjson.dumps(model.state())))
    return fresh


def run_both(seed: int, windows: int, volume: float, params: dict[str, Any]) -> dict[str, int]:
    """Both classes through one stream, asserting equality at every step; what was exercised."""
    rng = random.Random(seed + 1)
    ref, new = ReferenceBaseline(**params), RobustBaseline(**params)
    seen = {"flagged": 0, "explained": 0, "round_trips": 0, "drift": 0}
    for i, x in enumerate(stream(seed, windows, volume)):
        risk = new.score_one(x)
        assert same(risk, ref.score_one(x)), (seed, i)
        if risk >= THRESHOLD or rng.random() < 0.05:
            assert same(new.explain(x), ref.explain(x)), (seed, i)
            seen["explained"] += 1
        if rng.random() < 0.02:
            assert same(new.deviations(x), ref.deviations(x)), (seed, i)
        if rng.random() < 0.02:
            assert same(v5_state(new), ref.state()), (seed, i)  # handed out between score and learn
        if risk >= THRESHOLD or rng.random() < 0.01:
            new.observe_flagged(x)
            ref.observe_flagged(x)
            seen["flagged"] += 1
        else:
            new.learn_one(x)
            ref.learn_one(x)
        state = v5_state(new)
        assert same(state, ref.state()), (seed, i)
        seen["drift"] += bool(state["cusum"])
        if rng.random() < 0.01:
            new, ref = round_trip(new, RobustBaseline, params), round_trip(ref, ReferenceBaseline,
                                                                         params)
            seen["round_trips"] += 1
    return seen


CASES = [
    # seed, windows, impressions per window, model parameters (a cohort prior other than the
    # default, another number of short horizons, another guard)
    (9101, 900, 100.0, {}),
    (9102, 900, 40.0, {}),
    (9103, 700, 5.0, {}),
    (9104, 700, 800.0, {}),
    (9105, 600, 60.0, {"priors": {"ctr": 0.05, "report_rate": 1e-3, "mean_rating": 3.5},
                       "prior_weight": 3.0}),
    (9106, 600, 60.0, {"short_decays": (0.8, 0.9, 0.99), "learn_guard": 1.5, "alpha": 0.05}),
    (9107, 600, 0.5, {}),
]


@pytest.mark.parametrize("seed,windows,volume,params", CASES)
def test_same_scores_explanations_and_state(seed, windows, volume, params) -> None:
    seen = run_both(seed, windows, volume, params)
    assert seen["round_trips"] > 0
    if volume >= 40.0:
        assert seen["flagged"] > 0 and seen["explained"] > 0 and seen["drift"] > 0, seen


def test_cold_start_from_a_cohort_prototype_state() -> None:
    """A model started from another model's state (as ``models.cohort.warm_model`` does), and a
    prototype learned without scoring (``learn_one`` alone, no cached window)."""
    ref, new = ReferenceBaseline(), RobustBaseline()
    for x in stream(9201, 150, 80.0):
        ref.learn_one(x)
        new.learn_one(x)
    assert same(v5_state(new), ref.state())
    state = orjson.loads(orjson.dumps(new.state()))
    a, b = ReferenceBaseline(), RobustBaseline()
    a.load_state(state)
    b.load_state(state)
    for x in stream(9202, 200, 80.0):
        assert same(b.explain(x), a.explain(x))  # explain before any score
        assert same(b.score_one(x), a.score_one(x))
        a.learn_one(x)
        b.learn_one(x)
        assert same(v5_state(b), a.state())


def test_a_window_changed_after_scoring_is_learned_as_it_is_now() -> None:
    """The cache is keyed by the window's identity and content: a dict changed in place between
    ``score_one`` and ``learn_one`` is evaluated again."""
    ref, new = ReferenceBaseline(), RobustBaseline()
    for x in stream(9301, 120, 100.0):
        assert same(new.score_one(x), ref.score_one(x))
        x["clicks"] = x.get("clicks", 0.0) * 3.0 + 1.0
        x["reports"] = 2.0
        new.learn_one(x)
        ref.learn_one(x)
        assert same(v5_state(new), ref.state())


def test_a_state_changed_after_scoring_is_learned_as_it_is_now() -> None:
    """``state()`` hands out the model's own lists: changed between ``score_one`` and
    ``learn_one``, the change counts, as it did before the cache."""
    ref, new = ReferenceBaseline(), RobustBaseline()
    for x in stream(9501, 150, 100.0):
        assert same(new.score_one(x), ref.score_one(x))
        for model in (ref, new):
            state = model.state()
            state["rates"]["ctr"][0] *= 1.5
            state["rates"]["report_rate"][2] += 1.0
            state["levels"]["mean_dwell_ms"][0] -= 0.1
        new.learn_one(x)
        ref.learn_one(x)
        assert same(v5_state(new), ref.state())


def test_an_old_state_loads_the_same() -> None:
    """A v4 state (no ``cusum``, no ``deception_rate``) loads into both alike."""
    ref = ReferenceBaseline()
    for x in stream(9401, 80, 100.0):
        ref.learn_one(x)
    old = orjson.loads(orjson.dumps(ref.state()))
    del old["cusum"], old["rates"]["deception_rate"]
    a, b = ReferenceBaseline(), RobustBaseline()
    a.load_state(old)
    b.load_state(old)
    for x in stream(9402, 80, 100.0):
        assert same(b.score_one(x), a.score_one(x))
        a.learn_one(x)
        b.learn_one(x)
    assert same(v5_state(b), a.state())


@pytest.mark.parametrize("v", SPECIAL + (5.5, -1e13, "x", None, 2 ** 40))
def test_count_is_finite_clamped_at_zero(v) -> None:
    assert same(_count(v), max(_finite(v), 0.0))
