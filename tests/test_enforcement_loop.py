"""Enforcement decisions flow back into the decision stage: a confirmed advertiser is not
re-alerted and its windows never become its baseline; a dismissal closes the episode."""

from __future__ import annotations

import pytest

from riskstream.engine import DictStore, EngineConfig, RiskEngine
from riskstream.events import InvalidEvent, validate_decision

T0 = 1_767_571_200_000
WINDOW = 60_000


def window_events(adv: str, minute: int, *, spam: bool) -> list[dict]:
    """One minute of traffic: 100 impressions; click spam = 60 clicks within 100 ms."""
    out = []
    for i in range(100):
        clicked = (i < 60) if spam else (i < 2)
        out.append({"type": "impression", "event_id": f"{minute}-{i}",
                    "event_time": T0 + minute * WINDOW + i * 500, "advertiser_id": adv,
                    "campaign_id": "", "ad_id": "", "user_id": f"u{minute}-{i}", "region": "US",
                    "placement": "feed", "cost_micros": 1000.0, "clicked": clicked,
                    "click_delay_ms": (100.0 if spam else 4000.0) if clicked else 0.0,
                    "converted": False, "dwell_ms": (200.0 if spam else 30000.0) if clicked else 0.0})
    return out


def run(engine: RiskEngine, minutes: range, spam: set[int]) -> list:
    outputs = []
    for m in minutes:
        for ev in window_events("adv", m, spam=m in spam):
            outputs += engine.process(ev, 0)
    return outputs


def alerts(outputs: list) -> list[dict]:
    return [o.record for o in outputs if o.kind == "alert"]


@pytest.fixture
def engine() -> RiskEngine:
    eng = RiskEngine(EngineConfig(), DictStore())
    eng.set_caught_up(0, "feedback", True)
    return eng


def test_confirmed_advertiser_is_not_realerted_and_not_learned(engine: RiskEngine) -> None:
    first = alerts(run(engine, range(0, 25), spam={20, 21, 22}))
    opened = [a for a in first if a["status"] == "open"]
    assert len(opened) == 1
    engine.apply_decision({"type": "decision", "alert_id": opened[0]["alert_id"],
                           "advertiser_id": "adv", "decision": "confirmed"}, 0)
    model = engine.state_of(0, "adv").models["robust-baseline"]
    seen_before = model.windows_seen
    later = alerts(run(engine, range(25, 90), spam=set(range(60, 70))))
    assert [a for a in later if a["status"] in ("open", "escalated")] == []
    assert engine.stats["suppressed_enforced"] > 0
    assert model.windows_seen == seen_before  # known-bad traffic is never learned
    assert engine.decisions["risk:robust-baseline"] == [1, 0]


def test_dismissal_closes_the_episode_so_the_next_anomaly_opens_a_new_one(engine) -> None:
    first = alerts(run(engine, range(0, 25), spam={20, 21, 22}))
    opened = [a for a in first if a["status"] == "open"]
    engine.apply_decision({"type": "decision", "alert_id": opened[0]["alert_id"],
                           "advertiser_id": "adv", "decision": "dismissed"}, 0)
    assert "risk:robust-baseline" not in engine.state_of(0, "adv").lifecycle
    later = alerts(run(engine, range(25, 40), spam={30}))
    assert [a["status"] for a in later if a["status"] == "open"] == ["open"]
    assert engine.decisions["risk:robust-baseline"] == [0, 1]


def test_decision_validation() -> None:
    ok = validate_decision(b'{"alert_id":"ra1-x","advertiser_id":"a","decision":"confirmed",'
                           b'"decided_at":"2026-01-01T00:00:00Z"}', 0)
    assert ok["decision"] == "confirmed"
    with pytest.raises(InvalidEvent) as exc:
        validate_decision(b'{"alert_id":"x","advertiser_id":"a","decision":"maybe"}', 0)
    assert exc.value.reason == "bad_value"
