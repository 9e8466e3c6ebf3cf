"""Input events: the contract of ``ad-impressions`` and ``user-feedback``, and their validation.

Every raw message is decoded once, here. A valid one becomes a plain ``dict`` with normalised
types (``event_time`` in epoch milliseconds, UTC); an invalid one raises :class:`InvalidEvent`
carrying a stable reason code, which the agents turn into a dead-letter record and a metric.

>>> ev = validate_impression(b'{"event_id":"e1","event_time":1700000000000,"advertiser_id":"adv-1",'
...     b'"campaign_id":"c","ad_id":"a","user_id":"u","region":"US","placement":"feed",'
...     b'"cost_micros":1500,"clicked":true,"click_delay_ms":800,"converted":false,"dwell_ms":4000}',
...     now_ms=1700000000000)
>>> ev["advertiser_id"], ev["clicked"]
('adv-1', True)
>>> validate_feedback(b'{"kind":"report"}', now_ms=0)
Traceback (most recent call last):
...
riskstream.events.InvalidEvent: missing_field: event_id
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Callable, Union

import msgspec
import orjson

IMPRESSIONS = "impression"
FEEDBACK = "feedback"

FEEDBACK_KINDS = frozenset(
    {"report", "hide", "not_interested", "complaint", "refund_request", "satisfaction"}
)
# Reasons are an open vocabulary upstream; unknown ones are kept and counted as "other".
FEEDBACK_REASONS = frozenset(
    {"scam", "misleading", "offensive", "counterfeit", "irrelevant", "repetitive",
     "not_received", "quality", "other"}
)
FEEDBACK_CHANNELS = frozenset({"in_app", "support", "survey", "email"})

# Reason codes are part of the dead-letter contract (docs/contracts.md); never rename one.
REASONS = (
    "oversized",
    "bad_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "unknown_kind",
    "future_event_time",
    "too_old",
    "late_event",
)

ID_MAX_LEN = 128
DEAD_LETTER_ORIGINAL_BYTES = 64 * 1024
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01: anything earlier is a unit mistake
_MAX_AMOUNT = 1e15  # bound of every non-negative amount (cost, delays, dwell)
_NUMBER = (int, float)  # exact types (not bool) the fast paths accept for numbers
_UNRATED = object()  # the rating of a feedback kind other than satisfaction (not read)
_loads = orjson.loads
# The fields the fast paths read, in one C call each (KeyError when one is missing).
_IMPRESSION_FIELDS = ("event_id", "event_time", "advertiser_id", "user_id", "campaign_id", "ad_id",
                      "region", "placement", "cost_micros", "clicked", "click_delay_ms",
                      "converted", "dwell_ms")
_impression_fields = operator.itemgetter(*_IMPRESSION_FIELDS)
_feedback_fields = operator.itemgetter(
    "event_id", "event_time", "advertiser_id", "kind", "ad_id", "user_id", "reason", "channel")
_JSONDecodeError = orjson.JSONDecodeError


# The typed decode of an impression (see validate_impression): the contract's 13 fields, each
# with the type and bounds the checked path (``_impression``) accepts, and no other field. The
# bounds msgspec cannot state (isprintable, the clock) are left to validate_impression.
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LEN)]
_Text = Annotated[str, msgspec.Meta(max_length=ID_MAX_LEN)]
# int and float kept apart, as orjson returns them; int(1e15) == 1e15, so the bounds are equal
_Amount = Union[Annotated[int, msgspec.Meta(ge=0, le=int(_MAX_AMOUNT))],
                Annotated[float, msgspec.Meta(ge=0.0, le=_MAX_AMOUNT)]]


class _TypedImpression(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    event_id: _Id
    event_time: Annotated[int, msgspec.Meta(ge=MIN_EVENT_TIME_MS)]
    advertiser_id: _Id
    campaign_id: _Text
    ad_id: _Text
    user_id: _Id
    region: _Text
    placement: _Text
    cost_micros: _Amount
    clicked: bool
    click_delay_ms: _Amount
    converted: bool
    dwell_ms: _Amount


_decode_typed_impression = msgspec.json.Decoder(_TypedImpression).decode
_typed_fields = msgspec.structs.asdict
_TypedDecodeError = msgspec.DecodeError  # also the base of msgspec.ValidationError


class InvalidEvent(ValueError):
    """A message that breaks the input contract. ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class Limits:
    """Validation bounds; built from settings so tests and the replay share them."""

    max_message_bytes: int = 64 * 1024
    max_future_ms: int = 5 * 60 * 1000
    max_age_ms: int = 7 * 24 * 3600 * 1000


def parse_event_time(value: Any) -> int:
    """Epoch milliseconds, from an int/float of ms or an RFC 3339 string (UTC if no offset).

    >>> parse_event_time("2023-11-14T22:13:20Z")
    1700000000000
    >>> parse_event_time(1700000000000.0)
    1700000000000
    """
    if isinstance(value, bool):
        raise InvalidEvent("wrong_type", "event_time")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEvent("bad_value", "event_time is not finite")
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidEvent("bad_value", "event_time is not RFC 3339") from None
        if parsed.tzinfo is None:
            raise InvalidEvent("bad_value", "event_time has no UTC offset")
        ms = int(parsed.timestamp() * 1000)
    else:
        raise InvalidEvent("wrong_type", "event_time")
    if ms < MIN_EVENT_TIME_MS:
        raise InvalidEvent("bad_value", "event_time before 2000-01-01 (seconds, not ms?)")
    return ms


def _id(obj: dict, name: str) -> str:
    try:
        value = obj[name]
    except KeyError:
        raise InvalidEvent("missing_field", name) from None
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"{name} must be a string")
    if not value or len(value) > ID_MAX_LEN or not value.isprintable():
        raise InvalidEvent("bad_value", f"{name} must be 1-{ID_MAX_LEN} printable characters")
    return value


def _opt_str(obj: dict, name: str, default: str = "") -> str:
    value = obj.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"{name} must be a string")
    if len(value) > ID_MAX_LEN:
        raise InvalidEvent("bad_value", f"{name} longer than {ID_MAX_LEN}")
    return value


def _bool(obj: dict, name: str) -> bool:
    value = obj.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidEvent("wrong_type", f"{name} must be a boolean")
    return value


def _non_negative(obj: dict, name: str, *, required: bool = False) -> float:
    if name not in obj or obj[name] is None:
        if required:
            raise InvalidEvent("missing_field", name)
        return 0.0
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent("wrong_type", f"{name} must be a number")
    if not math.isfinite(value) or value < 0 or value > _MAX_AMOUNT:
        raise InvalidEvent("bad_value", f"{name} must be finite, >= 0 and <= 1e15")
    return value


def _decode(raw: bytes, limits: Limits) -> dict:
    if len(raw) > limits.max_message_bytes:
        raise InvalidEvent("oversized", f"{len(raw)} bytes > {limits.max_message_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("bad_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not_an_object", type(obj).__name__)
    return obj


def _json_object(raw: bytes, limits: Limits) -> dict | None:
    """The message as a dict when it is a JSON object within the size limit, else None (and
    ``_decode`` names the reason)."""
    if len(raw) <= limits.max_message_bytes:
        try:
            obj = _loads(raw)
        except _JSONDecodeError:
            return None
        if type(obj) is dict:
            return obj
    return None


def _common(obj: dict, now_ms: int, limits: Limits) -> tuple[str, int, str]:
    event_id = _id(obj, "event_id")
    if "event_time" not in obj:
        raise InvalidEvent("missing_field", "event_time")
    event_time = parse_event_time(obj["event_time"])
    if event_time > now_ms + limits.max_future_ms:
        raise InvalidEvent("future_event_time", f"{event_time - now_ms} ms ahead of now")
    if event_time < now_ms - limits.max_age_ms:
        raise InvalidEvent("too_old", f"{now_ms - event_time} ms old")
    return event_id, event_time, _id(obj, "advertiser_id")


def validate_impression(raw: bytes, now_ms: int, limits: Limits = Limits()) -> dict:
    """Decode and check one impression; unknown extra fields are accepted (and not used)."""
    # Typed path, per event in the worker and the replay: msgspec decodes the usual message (the
    # contract's 13 fields, none null, ASCII without escapes) straight into _TypedImpression,
    # checking types and bounds as it parses. ASCII without a backslash or DEL means every
    # string is printable (JSON forbids raw control characters) and its length is its bytes.
    # Anything else -- a missing, extra or null field, a wrong type, a bound crossed, non-ASCII
    # or escaped text, bad JSON -- fails here and goes through _validate_impression_untyped,
    # which gives the reason; tests/test_events_typed_path.py holds both to the same outcome.
    if (type(raw) is bytes and len(raw) <= limits.max_message_bytes and raw.isascii()
            and 0x5C not in raw and 0x7F not in raw):  # no backslash, no DEL (int: memchr)
        try:
            typed = _decode_typed_impression(raw)
        except _TypedDecodeError:
            pass
        else:
            if now_ms - limits.max_age_ms <= typed.event_time <= now_ms + limits.max_future_ms:
                event = _typed_fields(typed)
                event["type"] = IMPRESSIONS
                if not typed.clicked:
                    event["click_delay_ms"] = 0.0  # not read by _impression either
                return event
    return _validate_impression_untyped(raw, now_ms, limits)


def _validate_impression_untyped(raw: bytes, now_ms: int, limits: Limits) -> dict:
    """validate_impression with orjson: its fast path for the usual shape, else the checked
    path."""
    # Fast path: the checks of ``_impression`` inlined for the usual shape (every field present
    # and not null, an integer event_time). It accepts only what ``_impression`` accepts and
    # builds the same dict; anything else (a missing or null field, an RFC 3339 time, a wrong
    # type, a bound crossed, bad JSON) goes through ``_impression``, which decides it and names
    # the reason. tests/test_events_fast_path.py holds the two paths to the same outcome.
    obj = _json_object(raw, limits)
    if obj is None:
        return _impression(_decode(raw, limits), now_ms, limits)
    try:
        (event_id, t, adv, user, campaign, ad, region, placement, cost, clicked, delay, converted,
         dwell) = _impression_fields(obj)
    except KeyError:
        return _impression(obj, now_ms, limits)
    if clicked is False:
        delay = 0.0  # not read by _impression either
    if (type(event_id) is str and 0 < len(event_id) <= ID_MAX_LEN and event_id.isprintable()
            and type(adv) is str and 0 < len(adv) <= ID_MAX_LEN and adv.isprintable()
            and type(t) is int and MIN_EVENT_TIME_MS <= t
            and now_ms - limits.max_age_ms <= t <= now_ms + limits.max_future_ms
            and type(user) is str and 0 < len(user) <= ID_MAX_LEN and user.isprintable()
            and type(campaign) is str and len(campaign) <= ID_MAX_LEN
            and type(ad) is str and len(ad) <= ID_MAX_LEN
            and type(region) is str and len(region) <= ID_MAX_LEN
            and type(placement) is str and len(placement) <= ID_MAX_LEN
            and type(cost) in _NUMBER and 0 <= cost <= _MAX_AMOUNT
            and (clicked is False or clicked is True)
            and type(delay) in _NUMBER and 0 <= delay <= _MAX_AMOUNT
            and (converted is False or converted is True)
            and type(dwell) in _NUMBER and 0 <= dwell <= _MAX_AMOUNT):
        if len(obj) == len(_IMPRESSION_FIELDS):
            # exactly the contract's fields, each as _impression would return it: the decoded
            # dict is the event (its keys in the message's order), instead of a copy
            obj["type"] = IMPRESSIONS
            obj["click_delay_ms"] = delay
            return obj
        return {
            "type": IMPRESSIONS,
            "event_id": event_id,
            "event_time": t,
            "advertiser_id": adv,
            "campaign_id": campaign,
            "ad_id": ad,
            "user_id": user,
            "region": region,
            "placement": placement,
            "cost_micros": cost,
            "clicked": clicked,
            "click_delay_ms": delay,
            "converted": converted,
            "dwell_ms": dwell,
        }
    return _impression(obj, now_ms, limits)


def _impression(obj: dict, now_ms: int, limits: Limits) -> dict:
    """The checked path of :func:`validate_impression`: each rule in turn, with its reason."""
    event_id, event_time, advertiser_id = _common(obj, now_ms, limits)
    clicked = _bool(obj, "clicked")
    event = {
        "type": IMPRESSIONS,
        "event_id": event_id,
        "event_time": event_time,
        "advertiser_id": advertiser_id,
        "campaign_id": _opt_str(obj, "campaign_id"),
        "ad_id": _opt_str(obj, "ad_id"),
        "user_id": _id(obj, "user_id"),
        "region": _opt_str(obj, "region", "unknown"),
        "placement": _opt_str(obj, "placement", "unknown"),
        "cost_micros": _non_negative(obj, "cost_micros", required=True),
        "clicked": clicked,
        "click_delay_ms": _non_negative(obj, "click_delay_ms") if clicked else 0.0,
        "converted": _bool(obj, "converted"),
        "dwell_ms": _non_negative(obj, "dwell_ms"),
    }
    return event


def validate_feedback(raw: bytes, now_ms: int, limits: Limits = Limits()) -> dict:
    """Decode and check one feedback event (report, hide, complaint, satisfaction, ...)."""
    # Fast path as in validate_impression (``rating`` is only read for satisfaction, as in
    # ``_feedback``); ``_feedback`` decides everything else.
    obj = _json_object(raw, limits)
    if obj is None:
        return _feedback(_decode(raw, limits), now_ms, limits)
    try:
        event_id, t, adv, kind, ad, user, reason, channel = _feedback_fields(obj)
        rating = obj["rating"] if kind == "satisfaction" else _UNRATED
    except KeyError:
        return _feedback(obj, now_ms, limits)
    if (type(event_id) is str and 0 < len(event_id) <= ID_MAX_LEN and event_id.isprintable()
            and type(adv) is str and 0 < len(adv) <= ID_MAX_LEN and adv.isprintable()
            and type(t) is int and MIN_EVENT_TIME_MS <= t
            and now_ms - limits.max_age_ms <= t <= now_ms + limits.max_future_ms
            and type(kind) is str and kind in FEEDBACK_KINDS
            and (rating is _UNRATED or type(rating) in _NUMBER and 1 <= rating <= 5)
            and type(ad) is str and len(ad) <= ID_MAX_LEN
            and type(user) is str and len(user) <= ID_MAX_LEN
            and type(reason) is str and len(reason) <= ID_MAX_LEN
            and type(channel) is str and len(channel) <= ID_MAX_LEN):
        return {
            "type": FEEDBACK,
            "event_id": event_id,
            "event_time": t,
            "advertiser_id": adv,
            "ad_id": ad,
            "user_id": user,
            "kind": kind,
            "reason": reason if reason in FEEDBACK_REASONS or not reason else "other",
            "rating": None if rating is _UNRATED else rating,
            "channel": channel if channel in FEEDBACK_CHANNELS else "other",
        }
    return _feedback(obj, now_ms, limits)


def _feedback(obj: dict, now_ms: int, limits: Limits) -> dict:
    """The checked path of :func:`validate_feedback`."""
    event_id, event_time, advertiser_id = _common(obj, now_ms, limits)
    kind = obj.get("kind")
    if kind is None:
        raise InvalidEvent("missing_field", "kind")
    if not isinstance(kind, str):
        raise InvalidEvent("wrong_type", "kind must be a string")
    if kind not in FEEDBACK_KINDS:
        raise InvalidEvent("unknown_kind", kind[:40])
    rating = obj.get("rating")
    if kind == "satisfaction":
        if isinstance(rating, bool) or not isinstance(rating, (int, float)):
            raise InvalidEvent("wrong_type" if rating is not None else "missing_field", "rating")
        if not (1 <= rating <= 5):
            raise InvalidEvent("bad_value", "rating must be 1-5")
    else:
        rating = None
    reason = _opt_str(obj, "reason", "")
    channel = _opt_str(obj, "channel", "in_app")
    return {
        "type": FEEDBACK,
        "event_id": event_id,
        "event_time": event_time,
        "advertiser_id": advertiser_id,
        "ad_id": _opt_str(obj, "ad_id"),
        "user_id": _opt_str(obj, "user_id"),
        "kind": kind,
        "reason": reason if reason in FEEDBACK_REASONS or not reason else "other",
        "rating": rating,
        "channel": channel if channel in FEEDBACK_CHANNELS else "other",
    }


ENFORCEMENT_DECISIONS = frozenset({"confirmed", "dismissed"})


def validate_decision(raw: bytes, now_ms: int, limits: Limits = Limits()) -> dict:
    """An enforcement team's verdict on an alert (``risk-enforcement-decisions``)."""
    obj = _decode(raw, limits)
    decision = obj.get("decision")
    if decision is None:
        raise InvalidEvent("missing_field", "decision")
    if decision not in ENFORCEMENT_DECISIONS:
        raise InvalidEvent("bad_value", "decision must be confirmed or dismissed")
    return {
        "type": "decision",
        "alert_id": _id(obj, "alert_id"),
        "advertiser_id": _id(obj, "advertiser_id"),
        "decision": decision,
    }


VALIDATORS: dict[str, Callable[[bytes, int, Limits], dict]] = {
    IMPRESSIONS: validate_impression,
    FEEDBACK: validate_feedback,
    "decision": validate_decision,
}


def dead_letter_record(
    raw: bytes, error: InvalidEvent, *, topic: str, partition: int, offset: int, at_ms: int
) -> bytes:
    """The value written to ``risk-dead-letter``: original bytes (UTF-8 where possible).

    At most ``DEAD_LETTER_ORIGINAL_BYTES`` of the original are kept (hex doubles, JSON escaping
    can sextuple): a huge poison message must not become a dead letter too large to produce,
    which would stop the partition. The source offset always locates the full original.
    """
    kept = raw[:DEAD_LETTER_ORIGINAL_BYTES]
    try:
        original: Any = kept.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        original = kept.hex()
        encoding = "hex"
    return orjson.dumps(
        {
            "schema_version": 1,
            "reason": error.reason,
            "detail": error.detail,
            "source": {"topic": topic, "partition": partition, "offset": offset},
            "original": original,
            "original_encoding": encoding,
            "original_size": len(raw),
            "original_truncated": len(kept) < len(raw),
            "dead_lettered_at": at_ms,
        }
    )
