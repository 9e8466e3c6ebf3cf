"""Fuzz through a live worker: hundreds of malformed records -- random bytes, truncated JSON,
wrong types, missing fields, huge strings, deep nesting, unicode edge cases, NaN/Infinity, extreme timestamps,
non-objects -- interleaved with a simulated stream on both input topics. Every bad record ends in
``risk-dead-letter`` with the reason the validator gives it (count equality, position by
position), the worker never stops, and the good events around them still produce exactly the
replay's scores and alerts.

The generator is seeded (a failure replays); each candidate is classified offline with the
worker's validation limits and only rejected ones are kept, so "bad" is never a guess. The
validation-level property test is tests/test_fuzz_inputs.py (hypothesis); this one checks the
path through Kafka, the agent and the dead-letter producer.
"""

from __future__ import annotations

import random
import time

import orjson
import pytest

from app.factory import limits_for
from app.settings import Settings
from riskstream.events import REASONS, InvalidEvent, validate_feedback, validate_impression
from tests.conftest import TopicReader, assert_valid, produce, timed_case

pytestmark = pytest.mark.integration

PER_TOPIC = 300
DAY_MS = 86_400_000


def _mutants(good: dict, rng: random.Random, now: int) -> list[bytes]:
    """One candidate of every kind, derived from a good event of the topic."""
    raw = orjson.dumps(good)
    field = rng.choice(sorted(good))
    deep = rng.randint(1100, 20_000)
    timestamp = rng.choice([0, -1, 1, 2**63 - 1, 2**64, 10**20, 1.5e300, now // 1000,
                            now + 2 * DAY_MS, now - 30 * DAY_MS, "9999-12-31T23:59:59Z",
                            "0001-01-01T00:00:00Z", "2026-13-45T99:00:00Z", "yesterday",
                            "2026-01-01T00:00:00"])
    swap = {**good, field: rng.choice([None, [], {}, [1, 2], {"a": 1}, True, "x", -1, 1e308])}
    return [
        rng.randbytes(rng.randint(0, 400)),                                   # random bytes
        raw[:rng.randint(0, len(raw) - 1)],                                   # truncated JSON
        orjson.dumps(swap),                                                   # wrong type
        orjson.dumps({**good, field: "x" * rng.choice([129, 5_000, 60_000])}),  # long string
        orjson.dumps({**good, "pad": "y" * rng.randint(70_000, 300_000)}),    # oversized
        orjson.dumps({k: v for k, v in good.items() if k != field}),          # missing field
        b"[" * deep + b"]" * deep,                                            # deep nesting
        raw[:-1] + b',"nested":' + b'{"a":' * deep + b"1" + b"}" * deep + b"}",
        raw.replace(b'"event_id":"', b'"event_id":"\\ud800', 1),              # lone surrogate
        raw.replace(b'"event_id":"', b'"event_id":"\xc0\xaf\xff', 1),         # invalid UTF-8
        b"\xef\xbb\xbf" + raw,                                                # BOM
        orjson.dumps({**good, "event_id": "\u0000\u202e"}),                  # NUL + RTL id
        raw.replace(orjson.dumps(good["event_time"]), b"NaN", 1),            # NaN literal
        raw.replace(orjson.dumps(good["event_time"]), b"1e999", 1),          # overflows to inf
        raw.replace(orjson.dumps(good["event_time"]),                        # extreme time
                    orjson.dumps(timestamp) if isinstance(timestamp, str)
                    else str(timestamp).encode(), 1),
        rng.choice([b"[]", b'"event"', b"42", b"null", b"true", b"", b" "]),  # not an object
    ]


def _fuzz(case, prefix: str, seed: int, now: int) -> dict[str, list[tuple[bytes, bytes, str]]]:
    """Per input topic: rejected candidates as (key, value, reason), ``PER_TOPIC`` each."""
    rng = random.Random(seed)
    limits = limits_for(Settings())
    keys = sorted({key for _, key, _ in case.events})
    out: dict[str, list[tuple[bytes, bytes, str]]] = {}
    for kind, validate in (("impression", validate_impression), ("feedback", validate_feedback)):
        goods = [orjson.loads(v) for k, _, v in case.events if k == kind]
        picked: list[tuple[bytes, bytes, str]] = []
        while len(picked) < PER_TOPIC:
            for value in _mutants(rng.choice(goods), rng, now):
                try:
                    validate(value, now, limits)
                except InvalidEvent as exc:
                    key = rng.choice(keys + [None, rng.randbytes(8)])
                    picked.append((key, value, exc.reason))
        out[kind] = picked[:PER_TOPIC]
    return out


def test_live_worker_dead_letters_every_fuzzed_record_and_keeps_alerting(
        kafka_broker, kafka_topics, worker):
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    case = timed_case(seed=71, advertisers=10, duration_s=1800, spam_start_s=900)
    assert case.expected_alerts(), "test design: the incident must alert offline"
    now = int(time.time() * 1000)
    bad = _fuzz(case, prefix, seed=7, now=now)
    rng = random.Random(8)
    expected_dead: dict[tuple[str, int, int], str] = {}
    for kind in ("impression", "feedback"):
        topic = f"{prefix}{'ad-impressions' if kind == 'impression' else 'user-feedback'}"
        records: list[tuple[bytes | None, bytes, str | None]] = [
            (key, v, None) for k, key, v in case.events if k == kind]
        for item in bad[kind]:  # interleaved at random places
            records.insert(rng.randint(0, len(records)), item)
        positions = produce(bootstrap, topic, [(key, value) for key, value, _ in records])
        for (_key, _value, reason), (p, o) in zip(records, positions):
            if reason is not None:
                expected_dead[(topic, p, o)] = reason
    n_bad = sum(len(v) for v in bad.values())
    assert len(expected_dead) == n_bad
    kinds = sorted({r for _, _, r in bad["impression"] + bad["feedback"]})

    w = worker(prefix)
    with TopicReader(bootstrap, f"{prefix}risk-dead-letter") as dead:
        dead.wait_for(n_bad, 90, f"{n_bad} dead letters", on_timeout=w.log_tail)
        dead.poll(1.0)
        got: dict[tuple[str, int, int], str] = {}
        for r in dead.records:
            rec = r.json()
            assert_valid("dead-letter.v1.json", rec)
            assert rec["reason"] in REASONS
            src = rec["source"]
            got[(src["topic"], src["partition"], src["offset"])] = rec["reason"]
    assert len(dead.records) == n_bad  # each bad record exactly once
    assert got == expected_dead  # the same records, each with the validator's reason
    out = case.assert_live_output(bootstrap, prefix, on_timeout=w.log_tail)
    assert w.proc.poll() is None and w.get("/livez")[0] == 200  # never stopped
    m = w.metrics()
    assert m["riskstream_events_invalid_total"] == n_bad
    assert m["riskstream_events_consumed_total"] == len(case.events) + n_bad
    print(f"\nfuzz live: {n_bad} bad records ({', '.join(kinds)}) among {len(case.events)} "
          f"good; all dead-lettered with their reason; outputs equal the replay: {out}")

