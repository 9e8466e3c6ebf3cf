"""The replay feeds impressions as it reads them (riskstream/backtest.py ``_replay``); its result
must be the one of the plain definition: per partition, in partition order, ``heapq.merge`` of
that partition's impressions and feedback (file order, keyed on event time), each source's last
event fed as caught up. The definition is written out here and both are compared on inputs that
stress the merge: out-of-order and tied event times, late events, partitions with one source
only, invalid lines.
"""

from __future__ import annotations

import heapq
import operator
import random

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskstream.backtest import REPLAY_LIMITS, partition_for, replay
from riskstream.engine import DictStore, EngineConfig, ModelConfig, RiskEngine
from riskstream.events import InvalidEvent, validate_feedback, validate_impression
from riskstream.simulate import SimConfig, generate

T0 = 1_767_571_200_000
# short windows: many closes, and lateness that out-of-order input actually crosses
CFG = EngineConfig(window_ms=1_000, lateness_ms=300)


def sequential_replay(imps, fbs, *, engine_config=CFG, partitions=6,
                      model_config=ModelConfig()):
    engine = RiskEngine(engine_config, DictStore(), model_config)
    per_partition: dict[int, dict[str, list[dict]]] = {}
    invalid: dict[str, int] = {}
    for source, lines, validate in (("impression", imps, validate_impression),
                                    ("feedback", fbs, validate_feedback)):
        for raw in lines:
            try:
                ev = validate(raw, 1 << 62, REPLAY_LIMITS)
            except InvalidEvent as exc:
                invalid[exc.reason] = invalid.get(exc.reason, 0) + 1
                continue
            p = partition_for(ev["advertiser_id"].encode(), partitions)
            per_partition.setdefault(p, {"impression": [], "feedback": []})[source].append(ev)
    outputs, events = [], 0
    for p in sorted(per_partition):
        by_source = per_partition[p]
        for source, evs in by_source.items():
            if not evs:
                outputs.extend(engine.set_caught_up(p, source, True))
        lasts = [evs[-1] for evs in by_source.values() if evs]
        for ev in heapq.merge(by_source["impression"], by_source["feedback"],
                              key=operator.itemgetter("event_time")):
            events += 1
            try:
                outputs.extend(engine.process(ev, p, any(ev is last for last in lasts)))
            except InvalidEvent as exc:
                invalid[exc.reason] = invalid.get(exc.reason, 0) + 1
    engine.checkpoint()
    return outputs, invalid, events, engine.store.data, engine.stats


def assert_same(imps, fbs, **kw):
    res = replay(imps, fbs, engine_config=kw.get("engine_config", CFG), **{
        k: v for k, v in kw.items() if k != "engine_config"})
    outputs, invalid, events, store, stats = sequential_replay(imps, fbs, **kw)
    assert [(o.kind, o.key, o.record) for o in res.outputs] == \
        [(o.kind, o.key, o.record) for o in outputs]
    assert list(res.invalid.items()) == list(invalid.items())  # same reasons, same order
    assert res.events == events
    assert res.engine.store.data == store
    assert res.engine.stats == stats
    return res


def impression(adv: str, t: int, i: int, clicked: bool = False) -> bytes:
    return orjson.dumps({"event_id": f"i{i}", "event_time": t, "advertiser_id": adv,
                         "campaign_id": "c", "ad_id": "a", "user_id": f"u{i % 7}",
                         "region": "US", "placement": "feed", "cost_micros": 1000 + i,
                         "clicked": clicked, "click_delay_ms": 120 if clicked else 0,
                         "converted": False, "dwell_ms": 900 if clicked else 0})


def feedback(adv: str, t: int, i: int, kind: str = "report") -> bytes:
    return orjson.dumps({"event_id": f"f{i}", "event_time": t, "advertiser_id": adv,
                         "ad_id": "a", "user_id": f"u{i}", "kind": kind, "reason": "scam",
                         "channel": "in_app"})


ADVERTISERS = [f"adv-{i}" for i in range(9)]
timed = st.tuples(st.sampled_from(ADVERTISERS), st.integers(0, 8_000), st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(imps=st.lists(timed, max_size=120), fbs=st.lists(timed, max_size=40),
       junk=st.lists(st.sampled_from([b"{", b"[]", b'{"event_id":"x"}', b""]), max_size=3))
def test_streaming_replay_is_the_sequential_merge(imps, fbs, junk):
    """Few advertisers over a few windows, times in any order and often tied: late events,
    feedback before, between and after impressions, partitions with one source only."""
    imp_lines = [impression(a, T0 + t, i, c) for i, (a, t, c) in enumerate(imps)]
    fb_lines = [feedback(a, T0 + t, i) for i, (a, t, _c) in enumerate(fbs)]
    assert_same(imp_lines + junk, junk + fb_lines)


def test_streaming_replay_on_shuffled_simulated_traffic():
    """Simulated traffic with windows of 1 s, locally shuffled: every kind of output."""
    imps, fbs = [], []
    sim = SimConfig(seed=3, advertisers=12, duration_s=120, base_rate_per_s=40)
    for kind, _key, value in generate(sim):
        (imps if kind == "impression" else fbs).append(value)
    rng = random.Random(7)
    for lines in (imps, fbs):
        for i in range(0, len(lines) - 8, 5):
            chunk = lines[i:i + 8]
            rng.shuffle(chunk)
            lines[i:i + 8] = chunk
    res = assert_same(imps, fbs)
    assert res.invalid.get("late_event") and any(o.kind == "score" for o in res.outputs)


def test_one_source_only():
    imps = [impression("adv-1", T0 + 10 * i, i) for i in range(50)]
    fbs = [feedback("adv-2", T0 + 10 * i, i) for i in range(20)]
    assert_same(imps, [])
    assert_same([], fbs)
    assert_same([], [])
