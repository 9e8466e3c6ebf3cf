"""The validators' fast path (riskstream/events.py) against their checked path: for any input,
the same event (same fields, values and types) or the same reason and detail.

The fast path inlines the checks for the common shape of an event; the checked path applies
each rule in turn and names the reason. Both must agree on everything, so the property here is
equality of outcomes, over inputs built to sit on each boundary (lengths, bounds, types, nulls).
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from riskstream.events import (ID_MAX_LEN, MIN_EVENT_TIME_MS, InvalidEvent, Limits, _decode,
                               _feedback, _impression, validate_feedback, validate_impression)

NOW = 1_767_571_200_000
LIMITS = Limits()
REPLAY = Limits(max_age_ms=1 << 62)

ID_EDGES = ["", "a", "x" * ID_MAX_LEN, "x" * (ID_MAX_LEN + 1), "adv\x00", "u\u202e", "adv-00040"]
AMOUNT_EDGES = [0, 0.0, -1, -0.0, 1e15, 10**15, 10**15 + 1, 1e15 + 1e3, 2**63 - 1, 1.5]
TIME_EDGES = [MIN_EVENT_TIME_MS - 1, MIN_EVENT_TIME_MS, NOW, NOW + LIMITS.max_future_ms,
              NOW + LIMITS.max_future_ms + 1, NOW - LIMITS.max_age_ms, NOW - LIMITS.max_age_ms - 1,
              float(NOW), "2026-01-05T00:00:00Z", "2026-01-05T00:00:00", 1_700_000_000]
OTHER_EDGES = [None, True, False, 0, 1, 2.5, "", "x", [], {}]
ids = st.one_of(st.sampled_from(ID_EDGES), st.text(max_size=ID_MAX_LEN + 2))
amounts = st.one_of(st.sampled_from(AMOUNT_EDGES), st.integers(-10, 10**16),
                    st.floats(allow_nan=False, allow_infinity=False))
times = st.one_of(st.sampled_from(TIME_EDGES), st.integers(NOW - 10**10, NOW + 10**7))
others = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 7),
                   st.text(max_size=4), st.lists(st.integers(-5, 5), max_size=2),
                   st.dictionaries(st.text(max_size=2), st.integers(-5, 5), max_size=1))


VALID_IMPRESSION = {"event_id": "e1", "event_time": NOW, "advertiser_id": "adv-1",
                    "campaign_id": "c", "ad_id": "a", "user_id": "u", "region": "US",
                    "placement": "feed", "cost_micros": 1500, "clicked": True,
                    "click_delay_ms": 800, "converted": False, "dwell_ms": 4000}
VALID_FEEDBACK = {"event_id": "f1", "event_time": NOW, "advertiser_id": "adv-1", "ad_id": "a",
                  "user_id": "u", "kind": "satisfaction", "rating": 4, "reason": "quality",
                  "channel": "in_app"}
IMPRESSION_FIELDS = {
    "event_id": ids, "event_time": times, "advertiser_id": ids, "user_id": ids,
    "campaign_id": ids, "ad_id": ids, "region": ids, "placement": ids, "cost_micros": amounts,
    "clicked": st.booleans(), "click_delay_ms": amounts, "converted": st.booleans(),
    "dwell_ms": amounts, "extra": others,
}
FEEDBACK_FIELDS = {
    "event_id": ids, "event_time": times, "advertiser_id": ids, "user_id": ids, "ad_id": ids,
    "kind": st.sampled_from(["report", "hide", "not_interested", "complaint", "refund_request",
                             "satisfaction", "bogus", ""]),
    "rating": st.sampled_from([0, 1, 1.0, 2.5, 5, 5.0, 5.01, 6]),
    "reason": st.sampled_from(["", "scam", "quality", "other", "made-up"]),
    "channel": st.sampled_from(["in_app", "email", "carrier pigeon", ""]),
}


@st.composite
def near(draw, valid: dict, fields: dict) -> dict:
    """A valid event with a few fields changed (to a boundary value, another JSON type or
    null) or removed: about half of these are still valid, which exercises both outcomes."""
    obj = dict(valid)
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
        change = draw(st.sampled_from(["value", "value", "other", "drop"]))
        if change == "drop":
            obj.pop(name, None)
        else:
            obj[name] = draw(fields[name] if change == "value" else others)
    return obj


def anything(fields: dict) -> st.SearchStrategy:
    return st.fixed_dictionaries({}, optional={k: st.one_of(v, others) for k, v in fields.items()})


impressions = st.one_of(near(VALID_IMPRESSION, IMPRESSION_FIELDS), anything(IMPRESSION_FIELDS))
feedbacks = st.one_of(near(VALID_FEEDBACK, FEEDBACK_FIELDS), anything(FEEDBACK_FIELDS))


def outcome(validate, raw: bytes, limits: Limits) -> tuple:
    try:
        ev = validate(raw, NOW, limits)
    except InvalidEvent as exc:
        return ("invalid", exc.reason, exc.detail)
    return ("valid", {k: (type(v), v) for k, v in ev.items()})


def checked(path):
    return lambda raw, now_ms, limits: path(_decode(raw, limits), now_ms, limits)


@pytest.mark.parametrize("limits", [LIMITS, REPLAY], ids=["live", "replay"])
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=impressions)
@example(obj=VALID_IMPRESSION)
@example(obj={**VALID_IMPRESSION, "clicked": False, "click_delay_ms": "not checked"})
def test_impression_fast_path_agrees_with_checked_path(limits: Limits, obj: dict) -> None:
    raw = orjson.dumps(obj)
    assert outcome(validate_impression, raw, limits) == outcome(checked(_impression), raw, limits)


@pytest.mark.parametrize("limits", [LIMITS, REPLAY], ids=["live", "replay"])
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=feedbacks)
@example(obj=VALID_FEEDBACK)
@example(obj={**VALID_FEEDBACK, "kind": "report", "rating": "ignored"})
def test_feedback_fast_path_agrees_with_checked_path(limits: Limits, obj: dict) -> None:
    raw = orjson.dumps(obj)
    assert outcome(validate_feedback, raw, limits) == outcome(checked(_feedback), raw, limits)


def edges(valid: dict, extra: dict[str, list]) -> list:
    """Every field of a valid event set to every edge value of its kind, or removed."""
    kinds = {"event_time": TIME_EDGES, "cost_micros": AMOUNT_EDGES,
             "click_delay_ms": AMOUNT_EDGES, "dwell_ms": AMOUNT_EDGES, **extra}
    cases = []
    for name in sorted(set(valid) | set(extra)):
        for value in kinds.get(name, ID_EDGES) + OTHER_EDGES + [_DROP]:
            cases.append({k: v for k, v in {**valid, name: value}.items() if v is not _DROP})
    return cases


_DROP = object()
BOOL_EDGES = [True, False]
FEEDBACK_EDGES = {"kind": ["report", "satisfaction", "bogus"],
                  "rating": [0, 1, 1.0, 2.5, 5, 5.0, 5.01, 6],
                  "reason": ["", "scam", "made-up"], "channel": ["in_app", "carrier pigeon"]}


@pytest.mark.parametrize("obj", edges(VALID_IMPRESSION, {"clicked": BOOL_EDGES,
                                                         "converted": BOOL_EDGES}))
def test_impression_edges_agree(obj: dict) -> None:
    raw = orjson.dumps(obj)
    for limits in (LIMITS, REPLAY):
        assert outcome(validate_impression, raw, limits) == outcome(checked(_impression), raw,
                                                                    limits)


@pytest.mark.parametrize("obj", edges(VALID_FEEDBACK, FEEDBACK_EDGES)
                         + edges({**VALID_FEEDBACK, "kind": "report"}, FEEDBACK_EDGES))
def test_feedback_edges_agree(obj: dict) -> None:
    raw = orjson.dumps(obj)
    for limits in (LIMITS, REPLAY):
        assert outcome(validate_feedback, raw, limits) == outcome(checked(_feedback), raw, limits)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b'"x"', b"{}", b"x" * 70_000,
                                 b'{"event_id":"e","event_time":NaN}'])
def test_undecodable_or_non_object_inputs_agree(raw: bytes) -> None:
    for validate, path in ((validate_impression, _impression), (validate_feedback, _feedback)):
        assert outcome(validate, raw, LIMITS) == outcome(checked(path), raw, LIMITS)
        assert outcome(validate, raw, LIMITS)[0] == "invalid"


def test_fast_path_is_taken_for_the_common_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the speed-up itself: a well-formed event must not fall through to the checked
    path (whose result would be the same, only slower)."""
    import riskstream.events as events

    def fail(*_args):
        raise AssertionError("checked path used for a well-formed event")

    monkeypatch.setattr(events, "_impression", fail)
    monkeypatch.setattr(events, "_feedback", fail)
    assert validate_impression(orjson.dumps(VALID_IMPRESSION), NOW)["cost_micros"] == 1500
    assert validate_feedback(orjson.dumps(VALID_FEEDBACK), NOW)["rating"] == 4
