"""Decision: a window's model score plus policy rules -> severity, reasons, alert lifecycle.

Pure functions over plain data. One open alert per advertiser and detector at a time:

* a flagged window with no open alert opens one (``status="open"``);
* a flagged window whose severity is higher than the open alert's escalates it
  (``status="escalated"``, a new alert id, the episode keeps its first id);
* other flagged windows are suppressed (no alert storm from one bad hour);
* ``resolve_after`` consecutive normal windows resolve it (``status="resolved"``).

Policy rules are deliberately few and explainable; each has a volume floor so that one report
on five impressions is not "a 20% report rate".

>>> rules = evaluate_rules({"reports": 12.0, "impressions": 300.0, "report_rate": 0.04})
>>> [r.code for r in rules]
['report_rate_above_floor']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

SEVERITIES = ("low", "medium", "high", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


class RuleHit(NamedTuple):
    code: str
    severity: str
    message: str
    value: float
    threshold: float


@dataclass(frozen=True)
class Rule:
    code: str
    feature: str
    threshold: float
    volume_feature: str
    min_volume: float
    severity: str
    message: str

    def check(self, x: dict[str, float]) -> RuleHit | None:
        value = x.get(self.feature, 0.0)
        if x.get(self.volume_feature, 0.0) >= self.min_volume and value >= self.threshold:
            return RuleHit(self.code, self.severity, self.message, value, self.threshold)
        return None


POLICY_RULES: tuple[Rule, ...] = (
    Rule("report_rate_above_floor", "report_rate", 0.02, "reports", 8, "high",
         "reports per impression above the 2% policy floor (at least 8 reports)"),
    Rule("scam_reports", "scam_reports", 10, "impressions", 0, "high",
         "10 or more reports citing scam or misleading content in one window"),
    Rule("click_spam_fast_clicks", "fast_click_share", 0.6, "clicks", 20, "high",
         "over 60% of clicks within 300 ms of the impression (at least 20 clicks)"),
    Rule("complaints_per_conversion", "complaint_rate", 1.0, "complaints", 8, "high",
         "post-conversion complaints and refund requests exceed conversions (at least 8)"),
)


def evaluate_rules(x: dict[str, float], rules: tuple[Rule, ...] = POLICY_RULES) -> list[RuleHit]:
    return [hit for rule in rules if (hit := rule.check(x)) is not None]


@dataclass(frozen=True)
class DecisionConfig:
    threshold: float = 0.8
    warmup_windows: int = 5
    warmup_threshold: float = 0.98
    resolve_after: int = 30
    # risk score -> severity bands (inclusive lower bounds)
    medium_at: float = 0.9
    high_at: float = 0.97
    critical_at: float = 0.995


def severity_for(risk: float, rule_hits: list[RuleHit], cfg: DecisionConfig) -> str:
    sev = "low"
    if risk >= cfg.critical_at:
        sev = "critical"
    elif risk >= cfg.high_at:
        sev = "high"
    elif risk >= cfg.medium_at:
        sev = "medium"
    for hit in rule_hits:
        if SEVERITY_RANK[hit.severity] > SEVERITY_RANK[sev]:
            sev = hit.severity
    if len(rule_hits) >= 2 and sev != "critical":
        sev = SEVERITIES[SEVERITY_RANK[sev] + 1]
    return sev


class Verdict(NamedTuple):
    flagged: bool
    status: str | None  # "open", "escalated", "resolved" or None (nothing to emit)
    severity: str | None
    threshold: float


def decide(
    state: dict[str, Any] | None,
    risk: float,
    rule_hits: list[RuleHit],
    windows_seen: int,
    cfg: DecisionConfig,
) -> tuple[Verdict, dict[str, Any] | None]:
    """Next verdict and lifecycle state for one detector of one advertiser.

    ``state`` is None when no alert is open, else ``{"severity", "normal_streak", ...}``.
    """
    threshold = cfg.threshold if windows_seen >= cfg.warmup_windows else cfg.warmup_threshold
    flagged = risk >= threshold or bool(rule_hits)
    if flagged:
        severity = severity_for(risk, rule_hits, cfg)
        if state is None:
            return Verdict(True, "open", severity, threshold), {
                "severity": severity, "normal_streak": 0, "flagged_windows": 1}
        new_state = dict(state, normal_streak=0, flagged_windows=state["flagged_windows"] + 1)
        if SEVERITY_RANK[severity] > SEVERITY_RANK[state["severity"]]:
            new_state["severity"] = severity
            return Verdict(True, "escalated", severity, threshold), new_state
        return Verdict(True, None, state["severity"], threshold), new_state
    if state is None:
        return Verdict(False, None, None, threshold), None
    streak = state["normal_streak"] + 1
    if streak >= cfg.resolve_after:
        return Verdict(False, "resolved", state["severity"], threshold), None
    return Verdict(False, None, state["severity"], threshold), dict(state, normal_streak=streak)
