"""Property: whatever bytes arrive on an input topic, validation either returns an event the
engine accepts or raises InvalidEvent with a documented reason code, and the dead-letter record
for it is valid. Nothing crashes, nothing is silently dropped."""

from __future__ import annotations

import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskstream.engine import DictStore, EngineConfig, RiskEngine
from riskstream.events import (REASONS, InvalidEvent, dead_letter_record, validate_feedback,
                               validate_impression)
from tests.conftest import assert_valid

NOW = 1_767_571_200_000

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=300))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20)
FIELDS = ["event_id", "event_time", "advertiser_id", "user_id", "cost_micros", "clicked",
          "click_delay_ms", "converted", "dwell_ms", "region", "kind", "reason", "rating",
          "channel"]
plausible_times = st.one_of(st.integers(NOW - 10**10, NOW + 10**9), st.just("2026-01-05T00:00:00Z"),
                            st.text(max_size=30), st.floats(), json_values)
events = st.fixed_dictionaries({}, optional={
    **{f: json_values for f in FIELDS},
    "event_time": plausible_times,
    "kind": st.sampled_from(["report", "hide", "not_interested", "complaint", "refund_request",
                             "satisfaction", "bogus", ""]),
    "rating": st.one_of(st.integers(-2, 8), st.floats(), st.none()),
    "advertiser_id": st.one_of(st.text(min_size=0, max_size=200), json_values),
})


def _check(raw: bytes) -> None:
    engine = RiskEngine(EngineConfig(), DictStore())
    for validate in (validate_impression, validate_feedback):
        try:
            ev = validate(raw, NOW)
        except InvalidEvent as exc:
            assert exc.reason in REASONS
            rec = orjson.loads(dead_letter_record(raw, exc, topic="t", partition=0, offset=1,
                                                  at_ms=NOW))
            assert_valid("dead-letter.v1.json", rec)
            continue
        assert isinstance(ev["advertiser_id"], str) and ev["advertiser_id"]
        assert isinstance(ev["event_time"], int)
        for key in ("cost_micros", "click_delay_ms", "dwell_ms"):
            if key in ev:
                assert math.isfinite(ev[key]) and ev[key] >= 0
        try:
            engine.process(ev, 0)
        except InvalidEvent as exc:  # only possible outcome besides success
            assert exc.reason == "late_event"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_structured_json_with_wrong_and_missing_fields(obj: dict) -> None:
    _check(orjson.dumps(obj))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=400), st.integers(0, 399))
def test_truncated_json(tail: bytes, cut: int) -> None:
    good = orjson.dumps({"event_id": "e", "event_time": NOW, "advertiser_id": "a",
                         "user_id": "u", "cost_micros": 1, "kind": "report"}) + tail
    _check(good[:cut])


def test_deep_nesting_and_nan_literals() -> None:
    _check(b"[" * 100_000 + b"]" * 100_000)
    _check(b'{"event_id":"e","event_time":NaN,"advertiser_id":"a"}')
    _check(b'{"event_id":"e","event_time":1e400,"advertiser_id":"a","user_id":"u",'
           b'"cost_micros":1}')
    _check('{"event_id":"\u202e\u0000","event_time":1,"advertiser_id":"\ud7ff"}'.encode())
