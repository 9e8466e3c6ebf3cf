"""Bytes per advertiser for each registered model spec (fast), and a table for docs/models.md.

The advertiser record is measured where it is made: one advertiser's events for 101 one-minute
windows go through :class:`riskstream.engine.RiskEngine` with the spec enforcing, 100 windows
close (score, decide, learn unless flagged) and the last stays open; ``checkpoint()`` writes the
record to a :class:`DictStore`. The test asserts the 4 KiB target for ``robust-baseline`` only;
timing is reported, never asserted.

Print the table (sizes, and learn+score microseconds per window over 2000 windows)::

    .venv/bin/python -m tests.test_model_state_size
"""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
import orjson
import pytest

from models.registry import REGISTRY, create
from riskstream import engine as engine_mod
from riskstream.engine import DictStore, EngineConfig, ModelConfig, RiskEngine, advertiser_key
from tests.test_model_conformance import T0, WINDOW_MS, normal_windows, window_events

ADVERTISER = "adv-1"
TARGET_RECORD_BYTES = 4096  # the per-advertiser state target (app/bench.py STATE_TARGET_BYTES)
SPECS = sorted(REGISTRY)


@lru_cache(maxsize=None)
def _events(windows: int, seed: int = 7) -> tuple[dict, ...]:
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for i in range(windows):
        out.extend(window_events(rng, T0 + i * WINDOW_MS, advertiser_id=ADVERTISER))
    return tuple(out)


@lru_cache(maxsize=None)
def measure_sizes(spec: str, closed_windows: int = 100) -> dict[str, int]:
    """Model state bytes and advertiser record bytes after ``closed_windows`` closed windows
    with one more window open."""
    eng = RiskEngine(EngineConfig(window_ms=WINDOW_MS, lateness_ms=10_000), DictStore(),
                     ModelConfig(version=1, enforce=spec))
    eng.set_caught_up(0, "feedback", True)  # the watermark follows impressions
    for ev in _events(closed_windows + 1):
        eng.process(dict(ev), 0, caught_up=ev["type"] == "feedback")
    eng.checkpoint()
    st = eng.state_of(0, ADVERTISER)
    assert eng.stats["windows_closed"] == closed_windows and len(st.windows) == 1, eng.stats
    record = eng.store.get(advertiser_key(0, ADVERTISER))
    return {
        "state_bytes": len(orjson.dumps(st.models[spec].state())),
        "record_bytes": len(record),
        "windows_seen": st.models[spec].windows_seen,
    }


def measure_us_per_window(spec: str, windows: int = 2000) -> float:
    """Mean wall time of ``score_one`` + ``learn_one`` per window (features precomputed)."""
    xs = normal_windows(windows)
    m = create(spec)
    t = time.perf_counter()
    for x in xs:
        m.score_one(x)
        m.learn_one(x)
    return (time.perf_counter() - t) / windows * 1e6


@pytest.mark.parametrize("spec", SPECS)
def test_advertiser_record_fits(spec: str) -> None:
    sizes = measure_sizes(spec)
    assert sizes["state_bytes"] < sizes["record_bytes"] < engine_mod.MAX_STATE_BYTES, sizes


def test_robust_baseline_record_under_4kib() -> None:
    sizes = measure_sizes("robust-baseline")
    assert sizes["record_bytes"] < TARGET_RECORD_BYTES, \
        f"robust-baseline advertiser record {sizes} >= {TARGET_RECORD_BYTES} bytes"


def table(windows: int = 2000) -> str:
    rows = ["| spec | version | model state bytes | advertiser record bytes | us per window |",
            "|---|---|---:|---:|---:|"]
    for spec in SPECS:
        s = measure_sizes(spec)
        us = measure_us_per_window(spec, windows)
        rows.append(f"| {spec} | {REGISTRY[spec].version} | {s['state_bytes']} | "
                    f"{s['record_bytes']} | {us:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
