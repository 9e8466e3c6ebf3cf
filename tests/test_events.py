"""Input validation (riskstream.events): every dead-letter reason code, accepted variants, and the
dead-letter record contract (schemas/dead-letter.v1.json)."""

from __future__ import annotations

import orjson
import pytest

from riskstream.events import (
    REASONS,
    InvalidEvent,
    Limits,
    dead_letter_record,
    parse_event_time,
    validate_feedback,
    validate_impression,
)
from tests.conftest import assert_valid

NOW = 1_700_000_000_000  # 2023-11-14T22:13:20Z
DAY = 86_400_000


def impression(**changes) -> dict:
    ev = {"event_id": "e1", "event_time": NOW - 1000, "advertiser_id": "adv-1",
          "campaign_id": "c1", "ad_id": "a1", "user_id": "u1", "region": "US",
          "placement": "feed", "cost_micros": 1500, "clicked": True, "click_delay_ms": 800,
          "converted": False, "dwell_ms": 4000}
    return _changed(ev, changes)


def feedback(**changes) -> dict:
    ev = {"event_id": "f1", "event_time": NOW - 1000, "advertiser_id": "adv-1", "ad_id": "a1",
          "user_id": "u1", "kind": "report", "reason": "scam", "channel": "in_app"}
    return _changed(ev, changes)


def _changed(ev: dict, changes: dict) -> dict:
    """``ev`` with ``changes`` applied; a value of ``_DROP`` removes the field."""
    for k, v in changes.items():
        if v is _DROP:
            ev.pop(k, None)
        else:
            ev[k] = v
    return ev


_DROP = object()


def raw(obj) -> bytes:
    return orjson.dumps(obj)


def reason_of(validate, data: bytes, limits: Limits = Limits()) -> str:
    with pytest.raises(InvalidEvent) as info:
        validate(data, NOW, limits)
    assert info.value.reason in REASONS
    return info.value.reason


# -- accepted ----------------------------------------------------------------------------------
def test_valid_impression_is_normalised():
    ev = validate_impression(raw(impression()), NOW)
    assert ev["type"] == "impression"
    assert ev["event_time"] == NOW - 1000
    assert (ev["advertiser_id"], ev["user_id"], ev["clicked"]) == ("adv-1", "u1", True)
    assert ev["click_delay_ms"] == 800 and ev["dwell_ms"] == 4000


def test_optional_fields_default():
    ev = validate_impression(raw({"event_id": "e", "event_time": NOW, "advertiser_id": "a",
                                  "user_id": "u", "cost_micros": 0}), NOW)
    assert ev["region"] == "unknown" and ev["placement"] == "unknown"
    assert ev["clicked"] is False and ev["converted"] is False
    assert ev["click_delay_ms"] == 0.0 and ev["dwell_ms"] == 0.0


def test_click_delay_ignored_without_click():
    ev = validate_impression(raw(impression(clicked=False, click_delay_ms=50)), NOW)
    assert ev["click_delay_ms"] == 0.0


@pytest.mark.parametrize("text, expected", [
    ("2023-11-14T22:13:20Z", 1_700_000_000_000),
    ("2023-11-14T22:13:20.250Z", 1_700_000_000_250),
    ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
    ("2023-11-14T17:13:20-05:00", 1_700_000_000_000),
    ("2023-11-14t22:13:20z", 1_700_000_000_000),
])
def test_rfc3339_event_time_accepted(text, expected):
    assert parse_event_time(text) == expected
    ev = validate_impression(raw(impression(event_time=text)), NOW)
    assert ev["event_time"] == expected
    fb = validate_feedback(raw(feedback(event_time=text)), NOW)
    assert fb["event_time"] == expected


def test_unknown_extra_fields_accepted():
    data = raw(impression(experiment={"arm": "B", "n": [1, 2]}, zz_new_field=3.5))
    ev = validate_impression(data, NOW)
    assert ev["event_id"] == "e1" and ev["advertiser_id"] == "adv-1"
    fb = validate_feedback(raw(feedback(client_version="9.1", extra_list=[None])), NOW)
    assert fb["kind"] == "report"


def test_unknown_feedback_reason_and_channel_are_kept_as_other():
    fb = validate_feedback(raw(feedback(reason="brand_new_reason", channel="carrier_pigeon")),
                           NOW)
    assert fb["reason"] == "other" and fb["channel"] == "other"


def test_satisfaction_needs_a_rating_1_to_5():
    ok = validate_feedback(raw(feedback(kind="satisfaction", rating=2)), NOW)
    assert ok["rating"] == 2
    assert reason_of(validate_feedback, raw(feedback(kind="satisfaction", rating=_DROP))) \
        == "missing_field"
    assert reason_of(validate_feedback, raw(feedback(kind="satisfaction", rating=9))) \
        == "bad_value"
    assert reason_of(validate_feedback, raw(feedback(kind="satisfaction", rating="5"))) \
        == "wrong_type"


# -- one test per reason code -----------------------------------------------------------------
def test_oversized():
    limits = Limits(max_message_bytes=400)
    data = raw(impression(pad="x" * 600))
    assert reason_of(validate_impression, data, limits) == "oversized"
    assert reason_of(validate_feedback, raw(feedback(pad="y" * 600)), limits) == "oversized"
    # the limit is inclusive, and checked before parsing (an oversized non-JSON is oversized)
    exact = raw(impression(pad=""))
    exact = raw(impression(pad="z" * (400 - len(exact))))
    assert len(exact) == 400
    assert validate_impression(exact, NOW, limits)["event_id"] == "e1"
    assert reason_of(validate_impression, b"\xff" * 401, limits) == "oversized"


@pytest.mark.parametrize("data", [b"", b"{", b'{"event_id": "e1",}', b"not json", b"\xff\xfe{}",
                                  b'{"a": NaN}'])
def test_bad_json(data):
    assert reason_of(validate_impression, data) == "bad_json"
    assert reason_of(validate_feedback, data) == "bad_json"


@pytest.mark.parametrize("data", [b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_not_an_object(data):
    assert reason_of(validate_impression, data) == "not_an_object"
    assert reason_of(validate_feedback, data) == "not_an_object"


@pytest.mark.parametrize("name", ["event_id", "event_time", "advertiser_id", "user_id",
                                  "cost_micros"])
def test_missing_field_impression(name):
    with pytest.raises(InvalidEvent) as info:
        validate_impression(raw(impression(**{name: _DROP})), NOW)
    assert info.value.reason == "missing_field"
    assert name in info.value.detail


@pytest.mark.parametrize("name", ["event_id", "event_time", "advertiser_id", "kind"])
def test_missing_field_feedback(name):
    with pytest.raises(InvalidEvent) as info:
        validate_feedback(raw(feedback(**{name: _DROP})), NOW)
    assert info.value.reason == "missing_field"
    assert name in info.value.detail


@pytest.mark.parametrize("changes", [
    {"event_id": 12}, {"advertiser_id": None}, {"user_id": ["u"]}, {"event_time": True},
    {"event_time": [NOW]}, {"cost_micros": "1500"}, {"cost_micros": True},
    {"clicked": "yes"}, {"converted": 1}, {"dwell_ms": "4s"}, {"region": 5},
])
def test_wrong_type_impression(changes):
    assert reason_of(validate_impression, raw(impression(**changes))) == "wrong_type"


def test_wrong_type_feedback_kind():
    assert reason_of(validate_feedback, raw(feedback(kind=3))) == "wrong_type"


@pytest.mark.parametrize("changes", [
    {"event_id": ""}, {"advertiser_id": "x" * 129}, {"user_id": "tab\there"},
    {"cost_micros": -1}, {"cost_micros": 1e16}, {"dwell_ms": -5},
    {"event_time": 1_700_000_000},                     # seconds, not milliseconds
    {"event_time": "2023-11-14T22:13:20"},             # no UTC offset
    {"event_time": "yesterday"},
    {"campaign_id": "c" * 129},
])
def test_bad_value(changes):
    assert reason_of(validate_impression, raw(impression(**changes))) == "bad_value"


def test_non_finite_event_time_is_bad_value():
    with pytest.raises(InvalidEvent) as info:
        parse_event_time(float("inf"))
    assert info.value.reason == "bad_value"


@pytest.mark.parametrize("kind", ["like", "REPORT", "", "share"])
def test_unknown_kind(kind):
    with pytest.raises(InvalidEvent) as info:
        validate_feedback(raw(feedback(kind=kind)), NOW)
    assert info.value.reason == "unknown_kind"


def test_future_event_time():
    limits = Limits()
    ahead = NOW + limits.max_future_ms
    assert validate_impression(raw(impression(event_time=ahead)), NOW)["event_time"] == ahead
    data = raw(impression(event_time=ahead + 1))
    assert reason_of(validate_impression, data) == "future_event_time"
    assert reason_of(validate_feedback, raw(feedback(event_time=ahead + 1))) \
        == "future_event_time"


def test_too_old():
    limits = Limits()
    oldest = NOW - limits.max_age_ms
    assert validate_impression(raw(impression(event_time=oldest)), NOW)["event_time"] == oldest
    assert reason_of(validate_impression, raw(impression(event_time=oldest - 1))) == "too_old"
    assert reason_of(validate_feedback, raw(feedback(event_time=NOW - 8 * DAY))) == "too_old"
    # a custom bound applies
    short = Limits(max_age_ms=60_000)
    assert reason_of(validate_impression, raw(impression(event_time=NOW - 61_000)), short) \
        == "too_old"


def test_late_event_is_a_reason_code_for_the_engine():
    # raised by the engine, not by validation (see test_engine); it must be a valid code
    assert "late_event" in REASONS
    with pytest.raises(AssertionError):
        InvalidEvent("not_a_reason")


def test_every_reason_code_is_covered_here():
    covered = {"oversized", "bad_json", "not_an_object", "missing_field", "wrong_type",
               "bad_value", "unknown_kind", "future_event_time", "too_old", "late_event"}
    assert set(REASONS) == covered


# -- dead-letter records ----------------------------------------------------------------------
def test_dead_letter_record_utf8():
    data = b'{"event_id": "e1",'
    err = InvalidEvent("bad_json", "unexpected end")
    rec = orjson.loads(dead_letter_record(data, err, topic="ad-impressions", partition=3,
                                          offset=42, at_ms=NOW))
    assert_valid("dead-letter.v1.json", rec)
    assert rec["reason"] == "bad_json" and rec["detail"] == "unexpected end"
    assert rec["source"] == {"topic": "ad-impressions", "partition": 3, "offset": 42}
    assert rec["original"] == data.decode() and rec["original_encoding"] == "utf-8"
    assert rec["dead_lettered_at"] == NOW and rec["schema_version"] == 1


def test_dead_letter_record_non_utf8_is_hex():
    data = b"\xff\xfe\x00{bin\x80"
    with pytest.raises(InvalidEvent) as info:
        validate_impression(data, NOW)
    rec = orjson.loads(dead_letter_record(data, info.value, topic="user-feedback", partition=0,
                                          offset=7, at_ms=NOW + 5))
    assert_valid("dead-letter.v1.json", rec)
    assert rec["original_encoding"] == "hex"
    assert bytes.fromhex(rec["original"]) == data
    assert rec["reason"] == "bad_json"


@pytest.mark.parametrize("reason", REASONS)
def test_dead_letter_record_every_reason_validates(reason):
    rec = orjson.loads(dead_letter_record(b"{}", InvalidEvent(reason), topic="t", partition=0,
                                          offset=0, at_ms=NOW))
    assert_valid("dead-letter.v1.json", rec)
    assert rec["reason"] == reason and rec["detail"] == ""


def test_dead_letter_schema_rejects_a_broken_record():
    # the validator really checks: a record with an unknown reason fails
    rec = orjson.loads(dead_letter_record(b"{}", InvalidEvent("bad_json"), topic="t",
                                          partition=0, offset=0, at_ms=NOW))
    rec["reason"] = "whatever"
    with pytest.raises(AssertionError):
        assert_valid("dead-letter.v1.json", rec)


# aiokafka's default max_request_size (the worker's producer); the broker's default
# message.max.bytes (1048588) lets input records of about this size through
PRODUCER_MAX_REQUEST = 1_048_576


# A poison pill once: the whole original was kept, and the dead letter outgrew a produce request.
@pytest.mark.parametrize("data", [b"\xff" * 700_000, b'"' * 700_000],
                         ids=["non_utf8", "json_escaped"])
def test_dead_letter_of_a_large_input_fits_in_a_produce_request(data):
    with pytest.raises(InvalidEvent) as info:
        validate_impression(data, NOW)
    assert info.value.reason == "oversized"
    rec = dead_letter_record(data, info.value, topic="ad-impressions", partition=0, offset=0,
                             at_ms=NOW)
    assert_valid("dead-letter.v1.json", orjson.loads(rec))
    assert len(rec) < PRODUCER_MAX_REQUEST - 1024  # room for the key and record overhead
    parsed = orjson.loads(rec)
    assert parsed["original_truncated"] is True and parsed["original_size"] == len(data)
