"""Offline replay (riskstream.backtest) over simulated traffic, and `riskstream backtest`."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import orjson
import pytest

from app.factory import engine_config
from app.settings import Settings
from riskstream.backtest import partition_for, read_lines, replay
from riskstream.evaluation import evaluate
from riskstream.simulate import IncidentSpec, SimConfig, generate, ground_truth, write_jsonl
from tests.conftest import assert_valid

# ~30 advertisers, 1.5 h of event time, one blatant click-spam incident (CTR x10, machine-fast
# clicks) on an advertiser the simulator picks among those with enough traffic.
SIM = SimConfig(seed=5, advertisers=30, duration_s=5400, base_rate_per_s=10,
                incidents=(IncidentSpec("click_spam", params=(("ctr_x", 10.0),)),))
GRACE_WINDOWS = 30


@lru_cache(maxsize=None)
def lines() -> tuple[list[bytes], list[bytes]]:
    imps, fbs = [], []
    for kind, _key, value in generate(SIM):
        (imps if kind == "impression" else fbs).append(value)
    return imps, fbs


@lru_cache(maxsize=None)
def result():
    imps, fbs = lines()
    return replay(imps, fbs, engine_config=engine_config(Settings()), partitions=6)


def incident_alerts(alerts: list[dict], truth: dict, window_ms: int) -> list[dict]:
    return [a for a in alerts
            if a["advertiser_id"] == truth["advertiser_id"]
            and a["status"] in ("open", "escalated")
            and a["window"]["end"] > truth["start_ms"]
            and a["window"]["start"] <= truth["end_ms"] + GRACE_WINDOWS * window_ms]


def test_replay_alerts_on_the_incident_advertiser():
    (truth,) = ground_truth(SIM)
    assert truth["kind"] == "click_spam" and truth["expected_alert"]
    res = result()
    imps, fbs = lines()
    assert res.events == len(imps) + len(fbs) and res.invalid == {}
    alerts = res.alerts()
    hits = incident_alerts(alerts, truth, 60_000)
    assert hits, (f"no alert for {truth['advertiser_id']} in the incident; alerts: "
                  f"{[(a['advertiser_id'], a['status']) for a in alerts]}")
    first = min(hits, key=lambda a: a["window"]["start"])
    assert first["mode"] == "enforce"
    assert first["severity"] in ("medium", "high", "critical")
    assert first["reasons"], "an alert explains itself"
    for a in alerts:
        assert_valid("risk-alert.v1.json", a)
    # the incident is the only one: most advertisers stay quiet
    assert len({a["advertiser_id"] for a in alerts if a["status"] == "open"}) <= 5


def test_replay_closes_windows_of_every_active_advertiser():
    res = result()
    scores = [o.record for o in res.outputs if o.kind == "score"]
    advertisers = {orjson.loads(v)["advertiser_id"] for v in lines()[0]}
    assert {s["advertiser_id"] for s in scores} == advertisers
    for s in scores[:100]:
        assert_valid("risk-score.v1.json", s)
    # each (advertiser, window) is scored once
    keys = [(s["advertiser_id"], s["window"]["start"]) for s in scores]
    assert len(keys) == len(set(keys))


def test_replay_counts_invalid_lines_and_ignores_them():
    imps, fbs = lines()
    bad = [b"{", b"[]", b'{"event_id": "x"}']
    res = replay(imps[:2000] + bad, fbs[:50] + [b'{"kind": "like"}'], partitions=6)
    assert res.invalid == {"bad_json": 1, "not_an_object": 1, "missing_field": 2}
    clean = replay(imps[:2000], fbs[:50], partitions=6)
    assert [o.record for o in res.outputs] == [o.record for o in clean.outputs]


# Kafka's own test vectors for Utils.murmur2 (clients UtilsTest), as signed Java ints
JAVA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482,
                b"a-little-bit-long-string": -985981536,
                b"a-little-bit-longer-string": -1486304829,
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
                b"abc": 479470107}


@pytest.mark.parametrize("key", list(JAVA_MURMUR2))
def test_partition_for_matches_the_java_partitioner(key):
    for n in (1, 6, 7, 12):
        assert partition_for(key, n) == (JAVA_MURMUR2[key] & 0x7FFFFFFF) % n


def test_partition_for_spreads_advertisers():
    spread = {partition_for(f"adv-{i:05d}".encode(), 6) for i in range(60)}
    assert spread == set(range(6))


def test_evaluate_matches_incidents_by_advertiser_and_time():
    t = {"advertiser_id": "a", "kind": "click_spam", "start_ms": 600_000, "end_ms": 1_200_000,
         "expected_alert": True}
    benign = {"advertiser_id": "b", "kind": "benign_launch", "start_ms": 0, "end_ms": 600_000,
              "expected_alert": False}

    def alert(adv, start, status="open"):
        return {"advertiser_id": adv, "status": status,
                "window": {"start": start, "end": start + 60_000}}

    ev = evaluate([alert("a", 660_000), alert("a", 720_000, "escalated"), alert("b", 60_000),
                   alert("c", 60_000)], [t, benign], window_ms=60_000, grace_ms=0,
                  advertiser_hours=10.0)
    assert ev["incidents"] == 1 and ev["detected"] == 1 and ev["incident_recall"] == 1.0
    assert ev["alert_episodes"] == 3 and ev["true_episodes"] == 1
    assert ev["alerts_on_benign"] == 1
    assert ev["median_delay_windows"] == 2.0  # first alert window ends 2 windows after start
    missed = evaluate([alert("a", 0)], [t], window_ms=60_000, grace_ms=0, advertiser_hours=1.0)
    assert missed["detected"] == 0 and missed["incident_recall"] == 0.0

    # trailing signals: an alert after end + grace but before the incident's signal_end_ms (late
    # complaints of a cloaked page) is the incident's detection, not a false positive
    late = [alert("a", 3_000_000)]
    fixed = evaluate(late, [t], window_ms=60_000, grace_ms=600_000, advertiser_hours=1.0)
    assert fixed["detected"] == 0 and fixed["true_episodes"] == 0
    trailing = evaluate(late, [{**t, "signal_end_ms": 3_600_000}], window_ms=60_000,
                        grace_ms=600_000, advertiser_hours=1.0)
    assert trailing["detected"] == 1 and trailing["true_episodes"] == 1


def test_backtest_cli_writes_alerts_and_report(tmp_path: Path):
    imp_path, fb_path, truth_path = (tmp_path / n for n in
                                     ("imps.jsonl", "fb.jsonl", "truth.jsonl"))
    counts = write_jsonl(SIM, str(imp_path), str(fb_path), str(truth_path))
    assert counts["incidents"] == 1
    assert read_lines(imp_path) == lines()[0]  # the files hold exactly the generated stream
    out, report_dir = tmp_path / "out" / "alerts.jsonl", tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKSTREAM_", "KAFKA_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "backtest", "--impressions", str(imp_path),
         "--feedback", str(fb_path), "--truth", str(truth_path), "--out", str(out),
         "--report", str(report_dir), "--thresholds", "0.8,0.99,0.05"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = [orjson.loads(line) for line in read_lines(out)]
    assert alerts, proc.stdout
    for a in alerts:
        assert_valid("risk-alert.v1.json", a)
    # the CLI runs the very replay of the library (same settings, topics.yaml partitions)
    assert [a["alert_id"] for a in alerts] == [a["alert_id"] for a in result().alerts()]

    report = orjson.loads((report_dir / "report.json").read_bytes())
    assert report["input"] == {"impressions": counts["impressions"],
                               "feedback": counts["feedback"]}
    entry = report["models"][Settings().model_spec]
    assert entry["alerts"] == len(alerts) and entry["events"] == counts["events"]
    assert entry["invalid"] == {}
    ev = entry["evaluation"]
    for key in ("incidents", "detected", "incident_recall", "alert_episodes", "true_episodes",
                "episode_precision", "benign_lookalikes", "alerts_on_benign",
                "median_delay_windows", "p90_delay_windows", "alerts_total",
                "alerts_per_1000_advertiser_hours", "per_kind"):
        assert key in ev, key
    assert ev["incidents"] == 1 and ev["detected"] == 1 and ev["incident_recall"] == 1.0
    assert ev["per_kind"] == {"click_spam": {"incidents": 1, "detected": 1}}
    assert ev["alerts_total"] == len(alerts)
    # per incident: its delay as evaluated, and the evidence it left over its span
    (row,) = entry["incidents"]
    assert row["kind"] == "click_spam" and row["delay_windows"] == ev["delays_windows"][0]
    assert row["evidence"]["clicks"] > 0 and row["evidence"]["fast_clicks"] > 0
    assert row["reasons"] and all(isinstance(r, str) for r in row["reasons"])
    # click spam: far more (fast) clicks than the advertiser's own earlier rate allows
    assert row["surprise"]["stream"] in ("clicks", "fast_clicks")
    assert row["surprise"]["observed"] > row["surprise"]["expected"]
    assert row["surprise"]["p"] < 1e-6
    assert row["honest_rank"] == 0.0  # no advertiser without incidents comes close
    page = (report_dir / f"report-{Settings().model_spec}.html").read_text()
    assert "Missed and late incidents" in page
    # the operating curve: at the run's own threshold, exactly the run's evaluation
    at_run, strict, loose = entry["operating_curve"]
    assert [p["threshold"] for p in (at_run, strict, loose)] == [0.8, 0.99, 0.05]
    assert {k: at_run[k] for k in ev if k in at_run} == {k: ev[k] for k in at_run if k in ev}
    assert loose["alert_episodes"] > at_run["alert_episodes"] >= strict["alert_episodes"]
    assert "Operating curve" in page and "at threshold 0.05: recall" in proc.stdout


@pytest.mark.parametrize("extra, message", [
    ([], "--thresholds needs --truth"),
    (["--truth", "t.jsonl"], "expected comma-separated numbers"),
])
def test_backtest_thresholds_are_checked(tmp_path: Path, extra: list, message: str):
    (tmp_path / "i.jsonl").write_text("")
    (tmp_path / "f.jsonl").write_text("")
    (tmp_path / "t.jsonl").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKSTREAM_", "KAFKA_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "backtest", "--impressions", "i.jsonl", "--feedback",
         "f.jsonl", "--out", "a.jsonl", "--thresholds", "0.8,x" if extra else "0.8", *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "a.jsonl").exists()


def test_backtest_cli_needs_inputs(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKSTREAM_", "KAFKA_"))}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "backtest", "--out",
                           str(tmp_path / "a.jsonl")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--impressions" in proc.stderr
    assert not (tmp_path / "a.jsonl").exists()


def test_report_lists_missed_and_late_incidents_with_their_evidence(tmp_path: Path):
    from riskstream.report import write_html

    def row(adv: str, delay: float | None) -> dict:
        return {"kind": "cloaking", "advertiser_id": adv, "impressions_per_min": 52.8,
                "minutes": 37.0, "delay_windows": delay,
                "reasons": None if delay is None else ["deception_rate"],
                "evidence": {"impressions": 7302.0, "deception": 1.0}}

    path = tmp_path / "r.html"
    missed = row("adv-<1>", None) | {"surprise": {"stream": "deception", "observed": 2,
                                                  "expected": 1.1, "p": 0.3},
                                     "honest_rank": 0.25}
    write_html(path, "m", [], [], [], None, 0.8,
               incidents=[missed, row("adv-2", 12.0), row("adv-3", 2.0)])
    page = path.read_text()
    assert "<td>deception 2 (1.1)</td><td>0.3</td><td>0.250</td>" in page
    assert "1 of the 1 missed incidents left evidence that at least 1 in 20" in page
    assert "2 of 3 incidents missed or found after more than 3 windows" in page
    assert "adv-&lt;1&gt;" in page and "<td>missed</td>" in page  # escaped
    assert "<td>adv-2</td>" in page and "<td>12</td>" in page
    assert "adv-3" not in page  # found within 3 windows


def testsurprise_names_the_least_likely_count_at_the_advertisers_own_earlier_rate():
    from riskstream.evaluation import EVIDENCE, poisson_tail, surprise

    before = dict.fromkeys(EVIDENCE, 0.0) | {"impressions": 100_000.0, "clicks": 1_000.0,
                                             "deception": 5.5, "reports": 39.5}
    during = dict.fromkeys(EVIDENCE, 0.0) | {"impressions": 10_000.0, "clicks": 100.0,
                                             "deception": 6.0, "reports": 4.0}
    sp = surprise(during, before)
    # deception: 6 where (5.5 + 0.5) / 100k x 10k = 0.6 were expected; reports 4 of 4 expected
    assert sp == {"stream": "deception", "observed": 6, "expected": 0.6,
                  "p": poisson_tail(6, 0.6)}
    assert 1e-5 < sp["p"] < 1e-4
    assert surprise(during, dict.fromkeys(EVIDENCE, 0.0)) is None  # no history
    assert poisson_tail(4, 4.0) > 0.5 > poisson_tail(10, 4.0)
