"""Decision (riskstream.decision): alert lifecycle, warm-up threshold, policy rules' volume floors.

Thresholds come from an explicit DecisionConfig and from the rules' own definitions, so tuning
the defaults does not break these tests.
"""

from __future__ import annotations

import pytest

from riskstream.decision import (
    POLICY_RULES,
    SEVERITY_RANK,
    DecisionConfig,
    Rule,
    RuleHit,
    decide,
    evaluate_rules,
    severity_for,
)

CFG = DecisionConfig(threshold=0.8, warmup_windows=5, warmup_threshold=0.98, resolve_after=3,
                     medium_at=0.9, high_at=0.97, critical_at=0.995)
SEEN = 50  # past warm-up
NORMAL = 0.1


def hit(severity="high", code="r"):
    return RuleHit(code, severity, "msg", 1.0, 0.5)


def test_lifecycle_open_suppress_escalate_resolve():
    # a normal window with nothing open: nothing to emit, nothing to remember
    v, st = decide(None, NORMAL, [], SEEN, CFG)
    assert (v.flagged, v.status, st) == (False, None, None)

    v, st = decide(None, 0.85, [], SEEN, CFG)
    assert v.flagged and v.status == "open" and v.severity == "low"
    assert st["severity"] == "low" and st["flagged_windows"] == 1 and st["normal_streak"] == 0

    # same or lower severity while open: suppressed (flagged, nothing emitted)
    v, st = decide(st, 0.86, [], SEEN, CFG)
    assert v.flagged and v.status is None and v.severity == "low"
    assert st["flagged_windows"] == 2

    # higher severity: escalated, the episode keeps counting
    v, st = decide(st, 0.93, [], SEEN, CFG)
    assert v.status == "escalated" and v.severity == "medium" and st["severity"] == "medium"
    assert st["flagged_windows"] == 3
    v, st = decide(st, 0.999, [], SEEN, CFG)
    assert v.status == "escalated" and v.severity == "critical"
    # lower severity afterwards: suppressed at the episode's severity
    v, st = decide(st, 0.85, [], SEEN, CFG)
    assert v.status is None and v.flagged and v.severity == "critical"
    assert st["flagged_windows"] == 5

    # resolve_after consecutive normal windows resolve it; a flagged one resets the streak
    v, st = decide(st, NORMAL, [], SEEN, CFG)
    assert (v.flagged, v.status, st["normal_streak"]) == (False, None, 1)
    v, st = decide(st, NORMAL, [], SEEN, CFG)
    assert (v.status, st["normal_streak"]) == (None, 2)
    v, st = decide(st, 0.85, [], SEEN, CFG)
    assert v.status is None and st["normal_streak"] == 0
    for i in range(CFG.resolve_after - 1):
        v, st = decide(st, NORMAL, [], SEEN, CFG)
        assert v.status is None and st is not None
    v, st = decide(st, NORMAL, [], SEEN, CFG)
    assert v.status == "resolved" and v.severity == "critical" and st is None

    # after resolution a new flagged window opens a new episode
    v, st = decide(st, 0.85, [], SEEN, CFG)
    assert v.status == "open" and st["flagged_windows"] == 1


def test_state_passed_in_is_not_mutated():
    _, st = decide(None, 0.85, [], SEEN, CFG)
    frozen = dict(st)
    decide(st, 0.999, [], SEEN, CFG)
    decide(st, NORMAL, [], SEEN, CFG)
    assert st == frozen


def test_warmup_raises_the_threshold():
    risk = (CFG.threshold + CFG.warmup_threshold) / 2
    for seen in range(CFG.warmup_windows):
        v, st = decide(None, risk, [], seen, CFG)
        assert not v.flagged and st is None and v.threshold == CFG.warmup_threshold
    v, st = decide(None, risk, [], CFG.warmup_windows, CFG)
    assert v.flagged and v.status == "open" and v.threshold == CFG.threshold
    # an extreme score alerts even during warm-up
    v, _ = decide(None, CFG.warmup_threshold, [], 0, CFG)
    assert v.flagged


def test_rules_flag_regardless_of_score_and_warmup():
    v, st = decide(None, 0.0, [hit("high")], 0, CFG)
    assert v.flagged and v.status == "open" and v.severity == "high"


def test_severity_bands_and_rule_bump():
    assert severity_for(0.5, [], CFG) == "low"
    assert severity_for(0.9, [], CFG) == "medium"
    assert severity_for(0.97, [], CFG) == "high"
    assert severity_for(0.995, [], CFG) == "critical"
    # a rule's severity is a floor; two or more rules raise it one step
    assert severity_for(0.5, [hit("high")], CFG) == "high"
    assert severity_for(0.5, [hit("high"), hit("medium")], CFG) == "critical"
    assert severity_for(0.999, [hit("high"), hit("high")], CFG) == "critical"


@pytest.mark.parametrize("rule", POLICY_RULES, ids=lambda r: r.code)
def test_rules_need_their_volume_floor(rule: Rule):
    value = max(rule.threshold * 2, rule.threshold + 1)
    x = {rule.feature: value, rule.volume_feature: float(rule.min_volume)}
    if rule.feature == rule.volume_feature:
        x[rule.feature] = max(value, rule.min_volume)
    codes = [h.code for h in evaluate_rules(x)]
    assert rule.code in codes
    h = next(h for h in evaluate_rules(x) if h.code == rule.code)
    assert h.value == x[rule.feature] and h.threshold == rule.threshold
    assert h.severity in SEVERITY_RANK
    if rule.min_volume > 0 and rule.feature != rule.volume_feature:
        below = dict(x, **{rule.volume_feature: rule.min_volume - 1})
        assert rule.code not in [h.code for h in evaluate_rules(below)]
    # below the threshold never fires, whatever the volume
    under = dict(x, **{rule.feature: rule.threshold * 0.5 if rule.threshold > 0 else -1.0,
                       rule.volume_feature: max(rule.min_volume, 1) * 100})
    if rule.feature == rule.volume_feature:
        under[rule.feature] = rule.threshold * 0.5
    assert rule.code not in [h.code for h in evaluate_rules(under)]


def test_click_spam_rule_floor():
    rule = next(r for r in POLICY_RULES if r.code == "click_spam_fast_clicks")
    x = {"fast_click_share": 1.0, "clicks": rule.min_volume - 1}
    assert evaluate_rules(x) == []
    x["clicks"] = rule.min_volume
    assert [h.code for h in evaluate_rules(x)] == ["click_spam_fast_clicks"]


def test_one_report_on_few_impressions_is_not_a_rate_alert():
    assert evaluate_rules({"reports": 1.0, "impressions": 5.0, "report_rate": 0.2}) == []


def test_empty_features_fire_nothing():
    assert evaluate_rules({}) == []
