"""The engine's per-partition advertiser cache (the hot path's look-up) follows the states it
holds: an advertiser whose state was deleted or expired comes back with a fresh state that the
engine checkpoints, not with the forgotten one."""

from __future__ import annotations

import orjson
import pytest

import riskstream.engine as engine_mod
from riskstream.engine import DictStore, EngineConfig, ModelConfig, RiskEngine
from tests.test_engine_ttl import T0, impression


def test_deleted_state_is_not_revived_from_the_cache():
    store = DictStore()
    eng = RiskEngine(EngineConfig(), store)
    eng.process(impression("a", T0), 0)
    eng.flush()  # the window closes: the state keeps only its model
    eng.checkpoint()
    assert "a:0:a" in store.data
    # the only model's spec is no longer configured: the state is empty and deleted
    assert eng.apply_model_config(ModelConfig(2, "gaussian-sad"))
    eng.checkpoint()
    assert "a:0:a" not in store.data
    assert eng.state_of(0, "a") is None
    eng.process(impression("a", T0 + 600_000), 0)
    st = eng.state_of(0, "a")
    assert st is not None and list(st.windows) == [T0 + 600_000]  # T0 starts a window
    eng.checkpoint()
    saved = orjson.loads(store.data["a:0:a"])
    assert [w["start"] for w in saved["windows"]] == list(st.windows)


def test_expired_advertiser_returns_with_a_checkpointed_state(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(engine_mod, "EXPIRY_EVERY_CHECKPOINTS", 1)
    store = DictStore()
    eng = RiskEngine(EngineConfig(advertiser_ttl_ms=3_600_000), store)
    eng.set_caught_up(0, "feedback", True)
    eng.process(impression("back", T0), 0)
    for minute in range(1, 130):
        eng.process(impression("busy", T0 + minute * 60_000), 0)
        eng.checkpoint()
    assert eng.stats["expired"] == 1 and "a:0:back" not in store.data
    t = T0 + 130 * 60_000
    eng.process(impression("back", t), 0)
    eng.checkpoint()
    saved = orjson.loads(store.data["a:0:back"])
    assert saved["last_event_ms"] == t
    assert eng.state_of(0, "back").last_event_ms == t
