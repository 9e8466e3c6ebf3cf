"""The risk engine (riskstream.engine) with the in-memory DictStore: event-time watermarks, late
events, checkpoint/restore and revoke, and the alert contract of its output."""

from __future__ import annotations

from functools import lru_cache

import orjson
import pytest

from riskstream.alerts import alert_id_for
from riskstream.backtest import partition_for, replay
from riskstream.engine import DictStore, EngineConfig, ModelConfig, RiskEngine
from riskstream.events import InvalidEvent, validate_feedback, validate_impression
from riskstream.simulate import IncidentSpec, SimConfig, generate
from riskstream.windows import window_start
from tests.conftest import assert_valid

W, L = 60_000, 10_000
CFG = EngineConfig(window_ms=W, lateness_ms=L)
T0 = window_start(1_700_000_000_000, W)
_n = 0


def imp(t: int, adv: str = "adv-1", **kw) -> dict:
    global _n
    _n += 1
    ev = {"type": "impression", "event_id": f"i{_n}", "event_time": t, "advertiser_id": adv,
          "campaign_id": "c", "ad_id": "a", "user_id": f"u{_n}", "region": "US",
          "placement": "feed", "cost_micros": 1000.0, "clicked": False, "click_delay_ms": 0.0,
          "converted": False, "dwell_ms": 0.0}
    ev.update(kw)
    return ev


def fb(t: int, adv: str = "adv-1", kind: str = "hide") -> dict:
    global _n
    _n += 1
    return {"type": "feedback", "event_id": f"f{_n}", "event_time": t, "advertiser_id": adv,
            "ad_id": "a", "user_id": "u", "kind": kind, "reason": "", "rating": None,
            "channel": "in_app"}


def closed(outputs) -> list[tuple[str, int]]:
    return [(o.key, o.record["window"]["start"]) for o in outputs if o.kind == "score"]


# -- watermarks ------------------------------------------------------------------------------
def test_window_closes_only_after_watermark_passes_end_plus_lateness():
    eng = RiskEngine(CFG, DictStore())
    assert eng.set_caught_up(0, "feedback", True) == []  # only impressions drive partition 0
    assert eng.process(imp(T0 + 5_000), 0) == []
    assert eng.process(imp(T0 + W + 1_000), 0) == []           # past the end, not the lateness
    assert eng.process(imp(T0 + W + L - 1), 0) == []
    out = eng.process(imp(T0 + W + L), 0)                       # end + lateness reached
    assert closed(out) == [("adv-1", T0)]
    rec = out[0].record
    assert rec["window"] == {"start": T0, "end": T0 + W}
    assert rec["metrics"]["impressions"] == 1
    assert_valid("risk-score.v1.json", rec)
    # the next window is still open and takes events
    assert eng.process(imp(T0 + W + 2_000), 0) == []
    assert eng.stats["windows_closed"] == 1


def test_late_event_raises_late_event():
    eng = RiskEngine(CFG, DictStore())
    eng.set_caught_up(0, "feedback", True)
    eng.process(imp(T0 + 1_000), 0)
    eng.process(imp(T0 + 2 * W + L), 0)  # closes [T0, T0+W) and [T0+W, T0+2W)
    for t in (T0, T0 + W - 1, T0 + W + 30_000):
        with pytest.raises(InvalidEvent) as info:
            eng.process(imp(t), 0)
        assert info.value.reason == "late_event"
    with pytest.raises(InvalidEvent) as info:
        eng.process(fb(T0 + 100), 0)
    assert info.value.reason == "late_event"
    assert eng.stats["late"] == 4
    # still open (within the allowed lateness of the current window): accepted
    assert eng.process(imp(T0 + 2 * W + 1), 0) == []
    # another partition has its own clock: the same event time is not late there
    assert eng.process(imp(T0 + 1_000, "adv-2"), 1) == []


def test_lagging_source_holds_the_watermark():
    eng = RiskEngine(CFG, DictStore())
    for k in range(6):  # impressions run 5 windows ahead; feedback has delivered nothing
        assert eng.process(imp(T0 + k * W + 1_000), 0) == []
    # feedback at T0+W+L closes exactly the first window: the minimum of the two sources
    out = eng.process(fb(T0 + W + L), 0)
    assert closed(out) == [("adv-1", T0)]
    # feedback caught up (e.g. idle at the highwater): it no longer holds the watermark,
    # impressions (at T0+5W+1s) close everything ending at or before T0+4W+1s
    out = eng.set_caught_up(0, "feedback", True)
    assert sorted(s for _, s in closed(out)) == [T0 + k * W for k in range(1, 4)]
    # a caught-up source that delivers again lags again: the minimum applies once more
    assert eng.process(fb(T0 + 5 * W + L), 0, caught_up=False) == []
    out = eng.process(imp(T0 + 7 * W + L), 0)
    assert closed(out) == [("adv-1", T0 + 4 * W)]  # up to feedback's T0+5W+L, not T0+7W+L


def test_all_sources_caught_up_uses_the_maximum():
    eng = RiskEngine(CFG, DictStore())
    eng.process(fb(T0 + 1_000), 0, caught_up=True)
    eng.process(imp(T0 + 1_000), 0)
    out = eng.process(imp(T0 + 3 * W + L), 0, caught_up=True)
    assert sorted(s for _, s in closed(out)) == [T0]  # only adv-1's windows with events
    assert eng.process(fb(T0 + 3 * W + 100), 0, caught_up=True) == []


def test_flush_closes_every_open_window():
    eng = RiskEngine(CFG, DictStore())
    eng.process(imp(T0 + 1_000), 0)
    eng.process(imp(T0 + W + 1_000, "adv-2"), 3)
    assert sorted(closed(eng.flush())) == [("adv-1", T0), ("adv-2", T0 + W)]


# -- a realistic stream: simulated traffic with one blatant incident -----------------------------
SIM = SimConfig(seed=3, advertisers=12, duration_s=2400, base_rate_per_s=12,
                incidents=(IncidentSpec("click_spam", start_s=1200, duration_s=600,
                                        params=(("ctr_x", 10.0),)),))


@lru_cache(maxsize=None)
def sim_lines() -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    imps, fbs = [], []
    for kind, _key, value in generate(SIM):
        (imps if kind == "impression" else fbs).append(value)
    return tuple(imps), tuple(fbs)


@lru_cache(maxsize=None)
def sim_events(partitions: int = 6) -> tuple[tuple[int, dict], ...]:
    """Validated events in event-time order with their Kafka partition."""
    imps, fbs = sim_lines()
    now = SIM.end_ms
    evs = [validate_impression(v, now) for v in imps] + [validate_feedback(v, now) for v in fbs]
    evs.sort(key=lambda e: (e["event_time"], e["type"], e["event_id"]))
    return tuple((partition_for(e["advertiser_id"].encode(), partitions), e) for e in evs)


def run(events, engine: RiskEngine) -> list:
    out = []
    for p, ev in events:
        out.extend(engine.process(ev, p))
    return out


def signature(outputs) -> dict[str, list]:
    """Outputs per advertiser, in order (the order that matters: one key, one partition)."""
    per_key: dict[str, list] = {}
    for o in outputs:
        per_key.setdefault(o.key, []).append((o.kind, orjson.dumps(o.record)))
    return per_key


def test_checkpoint_and_restore_resumes_exactly():
    events = sim_events()
    eng = RiskEngine(CFG, DictStore())
    uninterrupted = run(events, eng) + eng.flush()
    eng.checkpoint()
    assert any(o.kind == "alert" for o in uninterrupted)

    # the same stream, split at two checkpoints, each part on a fresh engine over one store
    store = DictStore()
    cuts = [0, len(events) // 3, 2 * len(events) // 3, len(events)]
    resumed = []
    last = None
    for a, b in zip(cuts, cuts[1:]):
        last = RiskEngine(CFG, store)
        resumed += run(events[a:b], last)
        last.checkpoint()
    resumed += last.flush()
    last.checkpoint()
    assert signature(resumed) == signature(uninterrupted)
    alerts = sorted((o.record["alert_id"], o.record["risk_score"])
                    for o in resumed if o.kind == "alert")
    assert alerts == sorted((o.record["alert_id"], o.record["risk_score"])
                            for o in uninterrupted if o.kind == "alert")
    assert store.data == eng.store.data  # same state at the end, too


def test_uncheckpointed_events_are_lost_on_restart():
    """The contract the agents rely on: only what was checkpointed survives (they replay the
    rest from the last committed offset)."""
    events = sim_events()[:2000]
    store = DictStore()
    first = RiskEngine(CFG, store)
    run(events[:1000], first)
    first.checkpoint()
    run(events[1000:], first)  # not checkpointed
    again = RiskEngine(CFG, store)
    p, ev = events[999]
    st = again.state_of(p, ev["advertiser_id"])
    w = st.windows[window_start(ev["event_time"], W)]
    expected = RiskEngine(CFG, DictStore())
    run(events[:1000], expected)
    want = expected.state_of(p, ev["advertiser_id"]).windows[w.start]
    assert w.snapshot() == want.snapshot()


def test_revoke_drops_partition_state_and_reloads_from_store():
    events = sim_events()
    parts = sorted({p for p, _ in events})
    assert len(parts) >= 2
    gone, kept = parts[0], parts[1]
    head, tail = events[:3000], events[3000:6000]
    eng = RiskEngine(CFG, DictStore())
    run(head, eng)
    eng.checkpoint()
    # uncheckpointed progress on both partitions
    run(tail, eng)
    adv_gone = next(e["advertiser_id"] for p, e in tail if p == gone)
    adv_kept = next(e["advertiser_id"] for p, e in tail if p == kept)
    before_kept = orjson.loads(eng.state_of(kept, adv_kept).dumps())
    eng.revoke([gone])
    assert all(st.partition != gone for st in eng.iter_states())
    # partition `kept` is untouched, partition `gone` comes back as checkpointed
    assert orjson.loads(eng.state_of(kept, adv_kept).dumps()) == before_kept
    ref = RiskEngine(CFG, DictStore())
    run(head, ref)
    got, want = eng.state_of(gone, adv_gone), ref.state_of(gone, adv_gone)
    assert (got is None) == (want is None)
    if want is not None:
        assert orjson.loads(got.dumps()) == orjson.loads(want.dumps())
    # replaying the revoked partition's unacknowledged events gives the uninterrupted result
    out = run([(p, e) for p, e in tail if p == gone], eng)
    ref_out = run([(p, e) for p, e in tail if p == gone], ref)
    assert signature(out) == signature(ref_out)
    assert orjson.loads(eng.state_of(gone, adv_gone).dumps()) == \
        orjson.loads(ref.state_of(gone, adv_gone).dumps())


# -- alert contract --------------------------------------------------------------------------
@lru_cache(maxsize=None)
def sim_replay():
    imps, fbs = sim_lines()
    return replay(imps, fbs, engine_config=CFG, partitions=6)


def test_alerts_and_scores_validate_against_schemas():
    res = sim_replay()
    alerts = res.alerts()
    assert alerts, "the click_spam incident must alert"
    for a in alerts:
        assert_valid("risk-alert.v1.json", a)
        assert a["mode"] == "enforce" and a["detector"] == "risk:robust-baseline"
        assert a["alert_id"] == alert_id_for(a["advertiser_id"], a["window"]["start"],
                                             a["window"]["end"], a["detector"], a["status"])
    opened = [a for a in alerts if a["status"] == "open"]
    assert opened and all(a["episode"]["opened_alert_id"] == a["alert_id"] for a in opened)
    scores = [o.record for o in res.outputs if o.kind == "score"]
    assert len(scores) == res.engine.stats["windows_closed"]
    for s in scores[:200]:
        assert_valid("risk-score.v1.json", s)


def test_shadow_spec_decides_as_it_would_enforcing():
    """robust-baseline in shadow next to another enforce spec: its alerts go to the shadow
    output, marked shadow, and are the very alerts (ids, scores) it gives when enforcing."""
    imps, fbs = sim_lines()
    res = replay(imps, fbs, engine_config=CFG, partitions=6,
                 model_config=ModelConfig(1, "gaussian-sad", ("robust-baseline",)))
    shadow = res.alerts("shadow_alert")
    enforcing = sim_replay().alerts()
    assert shadow and [(a["alert_id"], a["risk_score"]) for a in shadow] == \
        [(a["alert_id"], a["risk_score"]) for a in enforcing]
    for a in shadow:
        assert_valid("risk-alert.v1.json", a)
        assert a["mode"] == "shadow" and a["detector"] == "risk:robust-baseline"
        assert a["model"]["config_version"] == 1
    for a in res.alerts():
        assert_valid("risk-alert.v1.json", a)
        assert a["mode"] == "enforce" and a["detector"] == "risk:gaussian-sad"
    # scores are published for the enforce spec only
    assert {o.record["model"]["name"] for o in res.outputs if o.kind == "score"} == \
        {"gaussian-sad"}


def test_alert_ids_are_deterministic_across_runs():
    imps, fbs = sim_lines()
    again = replay(list(imps), list(fbs), engine_config=CFG, partitions=6)
    first = sim_replay()
    assert [a["alert_id"] for a in again.alerts()] == [a["alert_id"] for a in first.alerts()]
    assert [o.record for o in again.outputs] == [o.record for o in first.outputs]
    # ids are unique within a run
    ids = [a["alert_id"] for a in first.alerts()]
    assert len(ids) == len(set(ids))
