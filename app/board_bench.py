"""Risk board figures at scale: ``python -m app.board_bench --advertisers 100000``.

Feeds a :class:`riskstream.board.RiskBoard` with ``--windows`` score records per advertiser
(a few flagged, a few alerts), then reports: ingest rate, memory per advertiser (tracemalloc),
the uncached top-N latency (what the first poll after the ~1 s cache expires pays), the cached
latency, a filtered ranking, and the JSON size of one page. Bounded: at most
advertisers x windows records, one process, no network.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import tracemalloc
from typing import Any

import orjson

from riskstream.board import HISTORY, RiskBoard
from riskstream.features import FEATURE_NAMES

T0 = 1_700_000_000_000


def _score(adv: str, w: int, rnd: random.Random) -> dict[str, Any]:
    risk = rnd.betavariate(1.2, 12)
    flagged = risk > 0.8
    start = T0 + w * 60_000
    return {"advertiser_id": adv, "window": {"start": start, "end": start + 60_000},
            "model": {"name": "robust-baseline", "version": "3", "config_version": 0},
            "risk_score": risk, "flagged": flagged, "severity": "medium" if flagged else None,
            "rules": [], "metrics": {name: rnd.random() for name in FEATURE_NAMES}}


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    return (f"p50 {statistics.median(s) * 1e3:.1f} ms, "
            f"p99 {s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3:.1f} ms")


def _feed(board: RiskBoard, ids: list[str], windows: int, rnd: random.Random) -> int:
    """Decode + add, as the board reader does (a pool of encoded records, re-keyed)."""
    pool = [orjson.dumps(_score("x", 0, rnd)) for _ in range(1000)]
    n = 0
    for w in range(windows):
        window = {"start": T0 + w * 60_000, "end": T0 + (w + 1) * 60_000}
        for i, a in enumerate(ids):
            rec = orjson.loads(pool[(i + w) % len(pool)])
            rec["advertiser_id"] = a
            rec["window"] = window
            board.add_score(rec)
            n += 1
    return n


def memory_per_advertiser(sample: int, rnd: random.Random) -> float:
    """tracemalloc over ``sample`` advertisers with a full history (HISTORY windows each)."""
    board = RiskBoard(max_advertisers=sample)
    ids = [f"adv-{i:07d}" for i in range(sample)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _feed(board, ids, HISTORY, rnd)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / sample


def run(advertisers: int, windows: int, repeats: int, seed: int = 7) -> dict[str, Any]:
    rnd = random.Random(seed)
    clock = [0.0]
    board = RiskBoard(max_advertisers=max(advertisers, 1), clock=lambda: clock[0])
    ids = [f"adv-{i:07d}" for i in range(advertisers)]
    started = time.perf_counter()
    n = _feed(board, ids, windows, rnd)
    ingest_s = time.perf_counter() - started
    for i in range(0, advertisers, max(advertisers // 200, 1)):  # 0.5 % with an open alert
        board.add_alert({"alert_id": f"ra1-{i}", "advertiser_id": ids[i], "status": "open",
                         "severity": "high", "risk_score": 0.99, "detector": "risk:x",
                         "window": {"start": T0, "end": T0 + 60_000}, "model": {},
                         "reasons": [{"code": "ctr_above_baseline", "message": "ctr"}]})
    cold, warm, filtered = [], [], []
    for _ in range(repeats):
        clock[0] += 2.0  # past the cache: a full ranking pass
        t = time.perf_counter()
        page = board.top(25)
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        board.top(25, offset=25)
        warm.append(time.perf_counter() - t)
        t = time.perf_counter()
        board.top(25, severities=frozenset({"high", "critical"}),
                  kinds=frozenset({"click_fraud"}))
        filtered.append(time.perf_counter() - t)
    clock[0] += 2.0
    t = time.perf_counter()
    board.summary()
    summary_s = time.perf_counter() - t
    return {
        "advertisers": advertisers, "score_records": n,
        "ingest_per_s": n / ingest_s,
        "bytes_per_advertiser": memory_per_advertiser(min(advertisers, 10_000), rnd),
        "top_uncached": _ms(cold), "top_cached": _ms(warm), "top_filtered": _ms(filtered),
        "summary_ms": summary_s * 1e3,
        "page_json_bytes": len(orjson.dumps(page)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--advertisers", type=int, default=100_000)
    ap.add_argument("--windows", type=int, default=3, help="score records per advertiser")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    res = run(max(args.advertisers, 1), max(min(args.windows, 50), 1),
              max(min(args.repeats, 200), 1))
    print(f"board bench: {res['advertisers']} advertisers, {res['score_records']} score records")
    print(f"  ingest (decode + add): {res['ingest_per_s']:,.0f} records/s")
    print(f"  memory: {res['bytes_per_advertiser']:,.0f} bytes per advertiser with a full "
          f"{HISTORY}-window history (tracemalloc, 10k advertisers)")
    print(f"  top 25, ranking recomputed: {res['top_uncached']}")
    print(f"  top 25, cached ranking (within ~1 s): {res['top_cached']}")
    print(f"  top 25 filtered (high,critical x click_fraud), recomputed: {res['top_filtered']}")
    print(f"  summary pass: {res['summary_ms']:.1f} ms; one page of JSON: "
          f"{res['page_json_bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
