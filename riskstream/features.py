"""Window features: a closed :class:`AdvertiserWindow` in, a flat ``{name: float}`` out.

Pure and cheap (runs once per advertiser per window, not per event). The names are part of the
alert contract (``metrics`` in risk-alerts) and of every model's input, so they are listed once in
:data:`FEATURES` with their meaning and the direction in which they signal risk.

>>> from riskstream.windows import AdvertiserWindow
>>> w = AdvertiserWindow(0, 60_000)
>>> f = window_features(w)
>>> f["impressions"], f["ctr"]
(0.0, 0.0)
"""

from __future__ import annotations

from typing import NamedTuple

from riskstream.windows import FEEDBACK_COUNTERS, REASON_COUNTERS, AdvertiserWindow


class Feature(NamedTuple):
    name: str
    risk_direction: int  # +1: higher is riskier, -1: lower is riskier, 0: context only
    kind: str            # "count" (compare with count-aware statistics), "rate", "level"
    meaning: str


FEATURES: tuple[Feature, ...] = (
    Feature("impressions", 0, "count", "impressions served in the window"),
    Feature("spend", 0, "level", "spend in currency units (cost_micros / 1e6)"),
    Feature("clicks", 0, "count", "clicks on those impressions"),
    Feature("ctr", +1, "rate", "clicks / impressions"),
    Feature("conversions", 0, "count", "conversions"),
    Feature("cvr", 0, "rate", "conversions / clicks"),
    Feature("median_click_delay_ms", -1, "level", "median impression-to-click time"),
    Feature("fast_click_share", +1, "rate", "share of clicks under 300 ms"),
    Feature("mean_dwell_ms", -1, "level", "mean landing-page dwell after a click"),
    Feature("short_dwell_share", +1, "rate", "share of clicks with dwell under 1 s"),
    Feature("unique_users", 0, "level", "distinct users (KMV sketch above 64)"),
    Feature("impressions_per_user", +1, "level", "impressions / unique users"),
    Feature("top_region_share", +1, "rate", "share of impressions in the top region"),
    Feature("regions", 0, "level", "distinct regions"),
    Feature("reports", +1, "count", "reports received"),
    Feature("report_rate", +1, "rate", "reports / impressions"),
    Feature("hide_rate", +1, "rate", "hides / impressions"),
    Feature("not_interested_rate", +1, "rate", "not-interested / impressions"),
    Feature("scam_reports", +1, "count", "reports and complaints citing scam or misleading"),
    Feature("scam_report_rate", +1, "rate", "scam_reports / impressions"),
    Feature("complaints", +1, "count", "post-conversion complaints"),
    Feature("refund_requests", +1, "count", "refund requests"),
    Feature("complaint_rate", +1, "rate", "(complaints + refunds) / max(conversions, 1)"),
    Feature("complaints_per_impression", +1, "rate",
            "(complaints + refunds) / impressions: steadier than per conversion, since the "
            "complaints of a window answer conversions of earlier windows"),
    Feature("harm_rate", +1, "rate",
            "(reports + complaints + refunds + ratings <= 2) / impressions: pooled harm signals"),
    Feature("deception_signals", +1, "count",
            "reports, complaints and refund requests citing scam, misleading, counterfeit or "
            "not received: what a cloaked landing page draws, minutes (reports) to hours "
            "(complaints) after the click"),
    Feature("deception_rate", +1, "rate", "deception_signals / impressions"),
    Feature("satisfaction_responses", 0, "count", "satisfaction ratings received"),
    Feature("mean_rating", -1, "level", "mean satisfaction rating (0 when none)"),
    Feature("low_rating_share", +1, "rate", "share of ratings <= 2"),
)
FEATURE_NAMES = tuple(f.name for f in FEATURES)
FEATURE_INFO = {f.name: f for f in FEATURES}

# Counter positions in a window (``AdvertiserWindow.feedback_count`` / ``reason_count`` without
# the look-up per window close).
_REPORT, _HIDE, _NOT_INTERESTED, _COMPLAINT, _REFUND, _SATISFACTION = (
    FEEDBACK_COUNTERS.index(k) for k in ("report", "hide", "not_interested", "complaint",
                                         "refund_request", "satisfaction"))
_SCAM, _MISLEADING, _COUNTERFEIT, _NOT_RECEIVED = (
    REASON_COUNTERS.index(r) for r in ("scam", "misleading", "counterfeit", "not_received"))


def window_features(w: AdvertiserWindow) -> dict[str, float]:
    imps = w.impressions
    clicks = w.clicks
    conversions = w.conversions
    per_imp = 1.0 / imps if imps else 0.0
    users = w.unique_users()
    feedback = w.feedback
    reasons = w.reasons
    reports = feedback[_REPORT]
    complaints = feedback[_COMPLAINT]
    refunds = feedback[_REFUND]
    ratings = feedback[_SATISFACTION]
    scam = reasons[_SCAM] + reasons[_MISLEADING]
    deception = scam + reasons[_COUNTERFEIT] + reasons[_NOT_RECEIVED]
    top_region = max(w.regions.values()) if w.regions else 0
    return {
        "impressions": float(imps),
        "spend": w.spend_micros / 1e6,
        "clicks": float(clicks),
        "ctr": clicks * per_imp,
        "conversions": float(conversions),
        "cvr": conversions / clicks if clicks else 0.0,
        "median_click_delay_ms": w.median_click_delay_ms(),
        "fast_click_share": w.fast_clicks / clicks if clicks else 0.0,
        "mean_dwell_ms": w.dwell_sum_ms / clicks if clicks else 0.0,
        "short_dwell_share": w.short_dwells / clicks if clicks else 0.0,
        "unique_users": users,
        "impressions_per_user": imps / users if users else 0.0,
        "top_region_share": top_region * per_imp,
        "regions": float(len(w.regions)),
        "reports": float(reports),
        "report_rate": reports * per_imp,
        "hide_rate": feedback[_HIDE] * per_imp,
        "not_interested_rate": feedback[_NOT_INTERESTED] * per_imp,
        "scam_reports": float(scam),
        "scam_report_rate": scam * per_imp,
        "complaints": float(complaints),
        "refund_requests": float(refunds),
        "complaint_rate": (complaints + refunds) / max(conversions, 1),
        "complaints_per_impression": (complaints + refunds) * per_imp,
        "harm_rate": (reports + complaints + refunds + w.low_ratings) * per_imp,
        "deception_signals": float(deception),
        "deception_rate": deception * per_imp,
        "satisfaction_responses": float(ratings),
        "mean_rating": w.rating_sum / ratings if ratings else 0.0,
        "low_rating_share": w.low_ratings / ratings if ratings else 0.0,
    }
