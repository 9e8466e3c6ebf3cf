"""The typed decode of impressions (msgspec, riskstream/events.py) against the checked path.

``validate_impression`` first tries to decode a message straight into the contract's typed
schema (``_TypedImpression``); whatever that declines goes through the orjson fast path and the
checked path (``_impression``), which give the reasons. The property pinned here: when the
typed path accepts a message, the checked path accepts it too and gives the same event (same
fields, values and types); and for every message, typed or not, the outcome (event, or reason
and detail) is the checked path's.

msgspec and orjson are two JSON parsers, so the inputs are JSON *text*, built token by token:
numbers in every spelling (exponents, ``-0``, integers past 64 bits, out of float range),
strings with escapes, DEL, non-ASCII and lone surrogates, duplicate and extra keys, nulls,
whitespace -- the places where two parsers or the two schemas could disagree.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import riskstream.events as events
from riskstream.events import (ID_MAX_LEN, MIN_EVENT_TIME_MS, Limits, _impression,
                               validate_impression)
from tests.test_events_fast_path import LIMITS, NOW, REPLAY, checked, outcome

DECLINED = object()  # what the typed path "returns" when it hands a message on

# A well-formed impression, as JSON text tokens (the simulator's shape).
VALID = {"event_id": '"i1.695aff00.1"', "event_time": str(NOW), "advertiser_id": '"adv-00194"',
         "campaign_id": '"adv-00194-c1"', "ad_id": '"adv-00194-c1-a2"', "user_id": '"u5480350"',
         "region": '"KR"', "placement": '"video"', "cost_micros": "4218", "clicked": "true",
         "click_delay_ms": "800", "converted": "false", "dwell_ms": "4000"}
IDS = ("event_id", "advertiser_id", "user_id")  # 1-128 printable characters
TEXTS = ("campaign_id", "ad_id", "region", "placement")  # at most 128 characters
AMOUNTS = ("cost_micros", "click_delay_ms", "dwell_ms")  # finite, 0 to 1e15

NUMBER_EDGES = ["0", "-0", "0.0", "-0.0", "1", "-1", "1.5", "1e3", "1E3", "1.0e2", "0.1e1",
                "1000000000000000", "1000000000000001", "1e15", "1.0000000000000002e15",
                "1e16", "9223372036854775807", "18446744073709551615", "18446744073709551616",
                "99999999999999999999999", "1e400", "-1e400", "1e-400", "-1e-400",
                str(MIN_EVENT_TIME_MS - 1), str(MIN_EVENT_TIME_MS), str(NOW), f"{NOW}.0",
                f"{NOW}.5", "1.7675712e12", str(NOW + LIMITS.max_future_ms),
                str(NOW + LIMITS.max_future_ms + 1), str(NOW - LIMITS.max_age_ms - 1),
                str((1 << 62) + 300_001), "1700000000"]
STRING_EDGES = ['""', '"a"', '"' + "x" * ID_MAX_LEN + '"', '"' + "x" * (ID_MAX_LEN + 1) + '"',
                '"adv\x7f"', '"\\u0041dv"', '"adv\\u0000"', '"a\\"b"', '"a\\\\b"', '"\\ud800"',
                '"\u00e9t\u00e9"', '"u\u202e"', '"\u00a0"', '"2026-01-05T00:00:00Z"',
                '"' + "\u00e9" * ID_MAX_LEN + '"', '"' + "\u00e9" * (ID_MAX_LEN + 1) + '"']
OTHER_EDGES = ["null", "true", "false", "[]", "{}", '[1,"x"]', '{"a":1e400}', "[1e400]"]

strings = st.one_of(st.sampled_from(STRING_EDGES),
                    st.text(max_size=ID_MAX_LEN + 2).map(lambda s: orjson.dumps(s).decode()),
                    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7F),
                            max_size=ID_MAX_LEN + 2).map(lambda s: orjson.dumps(s).decode()))
numbers = st.one_of(st.sampled_from(NUMBER_EDGES), st.integers(-10, 2**70).map(str),
                    st.integers(NOW - 10**10, NOW + 10**7).map(str),
                    st.floats(allow_nan=False, allow_infinity=False).map(repr))
tokens = st.one_of(strings, numbers, st.sampled_from(OTHER_EDGES))
space = st.sampled_from(["", "", "", " ", "\n", "\t", "  "])


def token_for(name: str) -> st.SearchStrategy:
    """A token of the field's own kind most of the time, any token otherwise."""
    own = (strings if name in IDS + TEXTS else
           st.sampled_from(["true", "false"]) if name in ("clicked", "converted") else numbers)
    return st.one_of(own, own, own, tokens)


@st.composite
def impression_text(draw) -> bytes:
    """JSON text near a valid impression: fields changed, dropped, repeated or added."""
    pairs = list(VALID.items())
    for name in draw(st.lists(st.sampled_from(sorted(VALID)), max_size=3, unique=True)):
        change = draw(st.sampled_from(["value", "value", "drop", "repeat"]))
        i = next(k for k, (n, _v) in enumerate(pairs) if n == name)
        if change == "drop":
            del pairs[i]
        elif change == "repeat":  # a duplicate key: which occurrence wins must not differ
            pairs.insert(draw(st.integers(0, len(pairs))), (name, draw(token_for(name))))
        else:
            pairs[i] = (name, draw(token_for(name)))
    if draw(st.integers(0, 5)) == 0:
        pairs.insert(draw(st.integers(0, len(pairs))),
                     (draw(st.sampled_from(["extra", "type", "event_id2", ""])), draw(tokens)))
    pairs = draw(st.permutations(pairs)) if draw(st.booleans()) else pairs
    s = draw(space)
    body = f",{s}".join(f'"{n}"{draw(space)}:{s}{v}' for n, v in pairs)
    return f"{draw(space)}{{{s}{body}{s}}}{draw(space)}".encode()


checked_impression = checked(_impression)


def typed(raw: bytes, limits: Limits):
    """The typed path alone: its event, or DECLINED when it hands the message on."""
    untyped = events._validate_impression_untyped
    events._validate_impression_untyped = lambda *_args: DECLINED
    try:
        return validate_impression(raw, NOW, limits)
    finally:
        events._validate_impression_untyped = untyped


def assert_agree(raw: bytes, limits: Limits) -> None:
    expected = outcome(checked_impression, raw, limits)
    ev = typed(raw, limits)
    if ev is not DECLINED:
        assert expected == ("valid", {k: (type(v), v) for k, v in ev.items()}), raw
    assert outcome(validate_impression, raw, limits) == expected, raw


@pytest.mark.parametrize("limits", [LIMITS, REPLAY], ids=["live", "replay"])
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=impression_text())
@example(raw=b'{"extra":1e400,' + orjson.dumps(orjson.loads(
    "{" + ",".join(f'"{k}":{v}' for k, v in VALID.items()) + "}"))[1:])
def test_typed_path_agrees_with_checked_path(limits: Limits, raw: bytes) -> None:
    assert_agree(raw, limits)


def edge_cases() -> list[bytes]:
    """Every field of the valid impression set to every edge token, dropped, or repeated with
    an edge token after it."""
    cases = []
    for name in VALID:
        for value in NUMBER_EDGES + STRING_EDGES + OTHER_EDGES + [None]:
            pairs = {**VALID, name: value}
            body = ",".join(f'"{k}":{v}' for k, v in pairs.items() if v is not None)
            cases.append(("{" + body + "}").encode())
            if value is not None:
                cases.append(("{" + body + f',"{name}":{value}' + "}").encode())
    return cases


@pytest.mark.parametrize("raw", edge_cases())
def test_typed_path_edges_agree(raw: bytes) -> None:
    for limits in (LIMITS, REPLAY):
        assert_agree(raw, limits)


def valid_text(**changes: str) -> bytes:
    return ("{" + ",".join(f'"{k}":{v}' for k, v in {**VALID, **changes}.items()) + "}").encode()


@pytest.mark.parametrize("raw, taken", [
    (valid_text(), True),
    (b" \n" + valid_text() + b"\n", True),
    (valid_text(clicked="false", click_delay_ms="0"), True),
    (valid_text(cost_micros="4218.5", dwell_ms="0.0"), True),
    (valid_text(clicked="false", click_delay_ms='"not read when not clicked"'), False),
    (valid_text(region='"\u00e9"'), False),        # non-ASCII: checked for printability
    (valid_text(event_id='"\\u0041"'), False),     # escaped
    (valid_text(event_id='"i\x7f"'), False),        # DEL: valid JSON, not printable
    (valid_text(event_time=f"{NOW}.0"), False),    # a float time: checked path converts it
    (valid_text(event_time='"2026-01-05T00:00:00Z"'), False),
    (valid_text(dwell_ms="null"), False),
    (valid_text(extra="1"), False),
])
def test_which_messages_the_typed_path_takes(raw: bytes, taken: bool) -> None:
    assert (typed(raw, LIMITS) is not DECLINED) == taken
    assert_agree(raw, LIMITS)


def test_size_limit_is_the_checked_paths() -> None:
    raw = valid_text()
    at_limit = Limits(max_message_bytes=len(raw))
    over_limit = Limits(max_message_bytes=len(raw) - 1)
    assert typed(raw, at_limit) is not DECLINED
    assert typed(raw, over_limit) is DECLINED
    assert outcome(validate_impression, raw, over_limit)[:2] == ("invalid", "oversized")
    for limits in (at_limit, over_limit):
        assert_agree(raw, limits)


def test_the_simulators_impressions_take_the_typed_path() -> None:
    """Guards the speed-up: the usual message must not be handed on (same result, slower)."""
    import itertools

    from riskstream import simulate

    cfg = simulate.SimConfig(seed=9191, advertisers=20, duration_s=60.0)
    lines = [v for kind, _k, v in itertools.islice(simulate.generate(cfg), 2000)
             if kind == simulate.IMPRESSION]
    assert len(lines) > 1000
    for raw in lines:
        ev = typed(raw, REPLAY)
        assert ev is not DECLINED, raw
        assert ev == checked_impression(raw, NOW, REPLAY)
