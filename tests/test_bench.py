"""The benchmark harness (app/bench.py): its helpers, and a smoke run of every measurement.

The smoke run uses the session broker and tiny sizes: it checks that every figure is produced
and numeric, never its value (that is what docs/performance.md is for).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time

import pytest

from app import bench


def _numeric(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- helpers (no broker) -------------------------------------------------------------------------
def test_parse_metrics_sums_label_sets():
    text = ("# HELP riskstream_events_consumed_total x\n"
            'riskstream_events_consumed_total{topic="a"} 10.0\n'
            'riskstream_events_consumed_total{topic="b"} 5.0\n'
            "riskstream_ready 1.0\n")
    assert bench.parse_metrics(text) == {"riskstream_events_consumed_total": 15.0,
                                         "riskstream_ready": 1.0}


def test_percentile_nearest_rank():
    values = sorted(float(i) for i in range(1, 101))
    assert bench.percentile(values, 0.5) == 50.0
    assert bench.percentile(values, 0.99) == 99.0
    assert bench.percentile([3.0], 0.99) == 3.0
    with pytest.raises(ValueError):
        bench.percentile([], 0.5)


def test_targets_and_table_with_missing_figures():
    r = {k: None for k in bench.REQUIRED_KEYS}
    r.update(bytes_per_advertiser={"1000": {"state_bytes": 1700.0, "rss_bytes": 9000.0}},
             ratio_vs_faust_noop=0.95, latency_p99_ms=2500.0, latency_target_p99_ms=8000,
             state_bytes_steady=5000.0, errors={"recovery": "BenchError: boom"})
    t = bench.evaluate_targets(r)
    assert t["ratio_vs_faust_noop"] is True
    assert t["ratio_vs_bare_loop"] is None
    assert t["latency_p99_ms"] is True
    assert t["state_bytes"] is False  # the steady-state size counts too
    r["targets"] = t
    out = io.StringIO()
    bench.print_table(r, out)
    text = out.getvalue()
    assert "ratio_vs_faust_noop" in text and "ERROR in recovery" in text


def test_measure_state_in_process():
    res = bench.measure_state(50, windows=2, events_per_window=2)
    assert res["advertisers"] == 50
    assert 0 < res["state_bytes"] < 256 * 1024
    assert _numeric(res["rss_bytes"])


def test_processes_are_stopped_by_pid(tmp_path):
    import sys

    procs = bench.Processes()
    p = procs.start([sys.executable, "-c", "import time; time.sleep(60)"], env={},
                    cwd=tmp_path, log_path=tmp_path / "sleep.log")
    procs.stop_all()
    assert p.poll() is not None


# -- the whole harness, tiny -------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_bench_smoke_reports_every_figure(kafka_broker, tmp_path):
    out = tmp_path / "bench.json"
    args = argparse.Namespace(quick=False, smoke=True, json_path=str(out),
                              bootstrap=kafka_broker.bootstrap, broker_kind=kafka_broker.kind)
    t0 = time.monotonic()
    code = bench.run_bench(args, None)
    elapsed = time.monotonic() - t0
    r = json.loads(out.read_text())
    assert r["errors"] == {}, r["errors"]
    assert code == 0
    for key in bench.REQUIRED_KEYS:
        assert key in r, key
        if key == "bytes_per_advertiser":
            assert r[key], "no advertiser count measured"
            for n, entry in r[key].items():
                assert int(n) > 0
                assert _numeric(entry["state_bytes"]) and _numeric(entry["rss_bytes"]), entry
        else:
            assert _numeric(r[key]), (key, r[key])
    assert _numeric(r["N"]) and r["N"] > 0
    # the 2-worker run really ran as two members, each owning input partitions
    assert r["details"]["scale_2"]["workers"] == 2
    assert all(n > 0 for n in r["details"]["scale_2"]["partitions_per_worker"])
    assert r["machine"]["cpu_count"] and r["machine"]["python_version"]
    assert "git_commit" in r and r["command"]
    print(f"smoke bench: {elapsed:.1f}s")


def test_backtest_against_a_revision_runs_both_trees_alternately():
    """``python -m app.bench backtest --against REV``: the same figure from REV's code (here
    HEAD, so the same replay) in the other rounds, and the ratios of the two."""
    res = bench.backtest_against("HEAD", 3000, 20, 50.0, rounds=1)
    (ours,), (theirs,) = res["runs"]["this tree"], res["runs"]["HEAD"]
    assert ours["events"] == theirs["events"] == 3000
    assert (ours["alerts"], ours["windows_closed"]) == (theirs["alerts"], theirs["windows_closed"])
    for key in ("ratio_events_per_s", "ratio_events_per_cpu_s"):
        (ratio,) = res[key]["per_round"]
        assert ratio > 0 and res[key]["median"] == ratio


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_worker_against_a_revision_runs_both_workers_over_one_topic_set(kafka_broker):
    """``python -m app.bench worker --against REV``: the real worker of this tree and of REV's
    code (here HEAD) in turn over one pre-produced topic set, each from its first event to the
    N-th, and the ratios of the two."""
    res = bench.worker_against("HEAD", 20_000, 50, 500.0, rounds=1,
                               bootstrap=kafka_broker.bootstrap, broker_kind=kafka_broker.kind)
    (ours,), (theirs,) = res["runs"]["this tree"], res["runs"]["HEAD"]
    assert res["events"] == 20_000
    assert ours["events"] >= 20_000 and theirs["events"] >= 20_000
    assert ours["app_id"] != theirs["app_id"]  # a fresh group each: both read it all
    (ratio,) = res["ratio_events_per_s"]["per_round"]
    assert ratio > 0 and res["ratio_events_per_s"]["median"] == ratio


def test_backtest_sparse_replays_a_window_per_event_in_both_trees():
    """``--sparse A``: A advertisers x 3 events, each event in a window of its own; the first
    two windows of each advertiser close within the replay (the last is not due by its end) --
    from this tree and from REV's."""
    res = bench.backtest_against("HEAD", 0, 0, 0.0, rounds=1, sparse=40)
    (ours,), (theirs,) = res["runs"]["this tree"], res["runs"]["HEAD"]
    assert ours["events"] == theirs["events"] == 120
    assert ours["windows_closed"] == theirs["windows_closed"] == 80
    assert res["sparse"] == 40 and res["ratio_events_per_cpu_s"]["median"] > 0
