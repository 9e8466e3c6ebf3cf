"""Idle advertisers expire by TTL (event time), so state stays bounded under churn."""

from __future__ import annotations

import pytest

import riskstream.engine as engine_mod
from riskstream.engine import DictStore, EngineConfig, RiskEngine

T0 = 1_767_571_200_000


def impression(adv: str, t: int) -> dict:
    return {"type": "impression", "event_id": "e", "event_time": t, "advertiser_id": adv,
            "campaign_id": "", "ad_id": "", "user_id": "u", "region": "US", "placement": "feed",
            "cost_micros": 1.0, "clicked": False, "click_delay_ms": 0.0, "converted": False,
            "dwell_ms": 0.0}


def test_idle_advertiser_expires_after_ttl_and_active_one_stays(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(engine_mod, "EXPIRY_EVERY_CHECKPOINTS", 1)
    store = DictStore()
    eng = RiskEngine(EngineConfig(advertiser_ttl_ms=3_600_000), store)
    eng.set_caught_up(0, "feedback", True)  # no feedback traffic: impressions drive time
    eng.process(impression("idle", T0), 0)
    eng.process(impression("busy", T0), 0)
    for minute in range(1, 130):
        eng.process(impression("busy", T0 + minute * 60_000), 0)
        eng.checkpoint()
    assert "a:0:idle" not in store.data
    assert "a:0:busy" in store.data
    assert eng.stats["expired"] == 1


def test_nothing_expires_within_ttl(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(engine_mod, "EXPIRY_EVERY_CHECKPOINTS", 1)
    store = DictStore()
    eng = RiskEngine(EngineConfig(advertiser_ttl_ms=24 * 3_600_000), store)
    eng.set_caught_up(0, "feedback", True)
    eng.process(impression("quiet", T0), 0)
    for minute in range(1, 130):
        eng.process(impression("busy", T0 + minute * 60_000), 0)
        eng.checkpoint()
    assert "a:0:quiet" in store.data
    assert eng.stats["expired"] == 0
