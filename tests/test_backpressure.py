"""Backpressure: steady traffic, a burst at 10x the steady rate, steady again. The worker absorbs
it: its consumer lag (``riskstream_consumer_lag_messages``, summed over owned partitions) rises
during the burst and drains to zero afterwards, its resident memory stays under a generous
bound, and the outputs still equal the replay (nothing dropped under load).

Figures (peak lag, drain time, RSS before/peak) are printed for docs/faults.md, never asserted
as timings.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.settings import Settings
from tests.conftest import labelled_metrics, timed_case, wait_until

pytestmark = pytest.mark.integration

STEADY = 300           # records/s
BURST = 10 * STEADY
RSS_BOUND_MB = 768     # generous: a worker idles at ~100-150 MB
LATENESS_S = 300       # see tests/test_scale.py: paced traffic, replay parity


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _lag_and_consumed(w) -> tuple[float, float]:
    lag = consumed = 0.0
    for (name, _labels), value in labelled_metrics(w).items():
        if name == "riskstream_consumer_lag_messages":
            lag += value
        elif name == "riskstream_events_consumed_total":
            consumed += value
    return lag, consumed


def test_burst_is_absorbed_lag_drains_memory_bounded(kafka_broker, kafka_topics, worker,
                                                      traffic):
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    case = timed_case(seed=81, advertisers=12, duration_s=1800, spam_start_s=900,
                      settings=Settings(allowed_lateness_seconds=LATENESS_S))
    records = case.records(prefix)
    n = len(records)
    steady_1, burst_end = n // 8, n * 7 // 8  # three quarters come as the burst
    w = worker(prefix, RISKSTREAM_ALLOWED_LATENESS_SECONDS=str(LATENESS_S))
    rss_idle = _rss_mb(w.proc.pid)
    feed = traffic(bootstrap, records, rate=STEADY)
    samples: list[tuple[float, float, float, float]] = []  # (t, lag, consumed, rss)
    t0 = time.monotonic()

    def sample() -> tuple[float, float]:
        lag, consumed = _lag_and_consumed(w)
        samples.append((time.monotonic() - t0, lag, consumed, _rss_mb(w.proc.pid)))
        assert w.proc.poll() is None, f"worker exited:\n{w.log_tail()}"
        return lag, consumed

    feed.release(steady_1)
    wait_until(lambda: sample()[1] >= steady_1, 60, "steady phase processed",
               on_timeout=w.log_tail)
    burst_at = time.monotonic() - t0
    feed.set_rate(BURST)
    feed.release(burst_end)
    wait_until(lambda: feed.sent >= burst_end and sample(), 60, "burst produced")
    feed.set_rate(STEADY)
    burst_done = time.monotonic() - t0
    feed.release_all()
    wait_until(lambda: (lambda lag, consumed: consumed >= n and lag == 0)(*sample()), 120,
               "lag back to zero with everything processed", on_timeout=w.log_tail)
    drained_at = time.monotonic() - t0

    burst_lags = [(lag, t) for t, lag, _, _ in samples if t >= burst_at]
    peak_lag, peak_t = max(burst_lags)
    # drained: back within one second of steady traffic (what 1 s lag updates can resolve)
    drained_t = next(t for lag, t in burst_lags if t > peak_t and lag <= STEADY)
    assert peak_lag > 0, "the burst never showed as lag: it was not a burst for this worker"
    assert samples[-1][1] == 0
    peak_rss = max(rss for *_, rss in samples)
    assert peak_rss < RSS_BOUND_MB, f"worker RSS peaked at {peak_rss:.0f} MB"
    out = case.assert_live_output(bootstrap, prefix, on_timeout=w.log_tail)
    print(f"\nbackpressure: {n} events, steady {STEADY}/s, burst {BURST}/s "
          f"({burst_end - steady_1} records in {burst_done - burst_at:.1f}s); peak lag "
          f"{peak_lag:.0f}, back under {STEADY} {drained_t - burst_done:.1f}s after the burst "
          f"ended, 0 with all processed {drained_at - burst_done:.1f}s after it; "
          f"RSS idle {rss_idle:.0f} MB, peak {peak_rss:.0f} MB; {len(samples)} samples; {out}")
