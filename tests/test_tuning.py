"""riskstream.tuning: replaying recorded window features gives exactly the engine's alerts."""

from __future__ import annotations

from functools import lru_cache

import orjson
import pytest

from app.factory import engine_config
from app.settings import Settings
from models import baseline
from riskstream.simulate import SimConfig, generate, ground_truth, write_truth
from riskstream.tuning import (
    Run,
    capture,
    combine,
    constants,
    engine_alert_summary,
    incident_rows,
    main,
    read_features,
    replay_features,
    run_honest_ranks,
    sweep,
    write_features,
)

# 40 advertisers, 2 h of event time (past the drifts' 60-window warm-up), one incident of each
# alerting kind and a benign launch: a few dozen alerts, opens, escalations and resolves.
SIM = SimConfig(seed=41, advertisers=40, duration_s=7200, base_rate_per_s=40,
                incidents=("click_spam", "scam_ad", "cloaking", "slow_ramp", "bot_burst",
                           "benign_launch"))
ECFG = engine_config(Settings())


@lru_cache(maxsize=None)
def captured():
    imps, fbs = [], []
    for kind, _key, value in generate(SIM):
        (imps if kind == "impression" else fbs).append(value)
    return capture(imps, fbs, engine_config=ECFG, partitions=6)


def key(a: dict) -> tuple:
    return a["advertiser_id"], a["window"]["start"], a["status"]


def engine_alerts() -> list[dict]:
    return sorted((engine_alert_summary(a) for a in captured()[1].alerts()), key=key)


def test_capture_records_every_closed_window_once():
    windows, result = captured()
    assert len(windows) == result.engine.stats["windows_closed"]
    assert len({(adv, start) for adv, start, _end, _x in windows}) == len(windows)


def test_feature_replay_gives_exactly_the_engines_alerts():
    windows, _result = captured()
    expected = engine_alerts()
    statuses = {a["status"] for a in expected}
    assert {"open", "resolved"} <= statuses, statuses  # the lifecycle is exercised
    assert sorted(replay_features(windows, decision=ECFG.decision), key=key) == expected


def test_features_file_round_trips_exactly(tmp_path):
    windows, _result = captured()
    path = tmp_path / "features.jsonl"
    write_features(path, windows, ECFG)
    header, loaded = read_features(path)
    assert header["window_ms"] == ECFG.window_ms
    assert loaded == windows
    assert sorted(replay_features(loaded, decision=ECFG.decision), key=key) == engine_alerts()


def test_constants_change_the_replay_and_are_restored():
    windows, _result = captured()
    with constants([("models.baseline", "CUSUM_RATIOS", {})]):
        assert baseline.CUSUM_RATIOS == {}
        without_drift = replay_features(windows, decision=ECFG.decision)
    assert baseline.CUSUM_RATIOS == {"ctr": 3.0, "deception_rate": 10.0}
    assert sorted(without_drift, key=key) != engine_alerts()
    with pytest.raises(AttributeError):
        with constants([("models.baseline", "NO_SUCH_CONSTANT", 1)]):
            pass


def test_replay_command_evaluates_against_the_truth(tmp_path, capsys):
    windows, _result = captured()
    write_features(tmp_path / "f.jsonl", windows, ECFG)
    write_truth(ground_truth(SIM), str(tmp_path / "truth.jsonl"))
    assert main(["replay", "--features", str(tmp_path / "f.jsonl"),
                 "--truth", str(tmp_path / "truth.jsonl"), "--set", "CUSUM_OFFSET=3.0",
                 "--json", str(tmp_path / "ev.json"), "--alerts", str(tmp_path / "a.jsonl")]) == 0
    ev = orjson.loads((tmp_path / "ev.json").read_bytes())
    assert ev["incidents"] == 5 and ev["benign_lookalikes"] == 1
    assert f"recall {ev['detected']}/5" in capsys.readouterr().out
    replayed = [orjson.loads(line) for line in (tmp_path / "a.jsonl").read_bytes().splitlines()]
    assert sorted(replayed, key=key) == engine_alerts()


@pytest.fixture
def run(tmp_path):
    windows, _result = captured()
    write_features(tmp_path / "features.jsonl", windows, ECFG)
    write_truth(ground_truth(SIM), str(tmp_path / "truth.jsonl"))
    return Run.load(tmp_path / "features.jsonl", tmp_path / "truth.jsonl")


def test_a_sweep_point_is_the_replay_at_that_threshold(run):
    at_capture, strict, loose = sweep([run], [ECFG.decision.threshold, 0.99, 0.05])
    expected = run.evaluate(replay_features(run.windows, decision=ECFG.decision))
    assert {k: v for k, v in at_capture.items() if k != "threshold"} == combine([expected])
    assert at_capture["threshold"] == ECFG.decision.threshold
    # the threshold is applied: more episodes at 0.05 than at 0.99
    assert loose["alert_episodes"] > at_capture["alert_episodes"] >= strict["alert_episodes"]
    assert run.decision(0.99).warmup_threshold == 0.99  # never below the threshold
    assert run.decision(0.05).warmup_threshold == ECFG.decision.warmup_threshold


def test_combine_sums_runs_and_pools_delays(run):
    ev = run.evaluate(replay_features(run.windows, decision=ECFG.decision))
    both = combine([ev, ev])
    assert both["incidents"] == 2 * ev["incidents"] and both["detected"] == 2 * ev["detected"]
    assert both["delays_windows"] == sorted(ev["delays_windows"] * 2)
    assert both["incident_recall"] == ev["incident_recall"]
    assert both["median_delay_windows"] == ev["median_delay_windows"]
    assert all(both["per_kind"][k]["incidents"] == 2 * v["incidents"]
               for k, v in ev["per_kind"].items())


def test_incident_rows_give_evaluates_delays_and_the_evidence_in_the_span(run):
    alerts = replay_features(run.windows, decision=ECFG.decision)
    rows = incident_rows(run, alerts)
    ev = run.evaluate(alerts)
    assert len(rows) == ev["incidents"] == 5
    assert sorted(r["delay_windows"] for r in rows if r["delay_windows"] is not None) == (
        ev["delays_windows"])
    assert all((r["reasons"] is None) == (r["delay_windows"] is None) for r in rows)
    spam = next(r for r in rows if r["kind"] == "click_spam")
    t = next(t for t in run.truth if t["kind"] == "click_spam")
    lo, hi = t["start_ms"], max(t["end_ms"] + 30 * run.window_ms, t["signal_end_ms"])
    clicks = sum(x["clicks"] for adv, start, end, x in run.windows
                 if adv == t["advertiser_id"] and end > lo and start <= hi)
    assert clicks > 0 and spam["evidence"]["clicks"] == round(clicks, 1)
    assert spam["evidence"]["fast_clicks"] > 0


def test_sweep_and_incidents_commands(run, capsys, tmp_path):
    files = [f"{tmp_path}/features.jsonl", f"{tmp_path}/truth.jsonl"]
    assert main(["sweep", "--run", *files, "--run", *files, "--thresholds", "0.8,0.95",
                 "--against", "gaussian-sad", "--json", str(tmp_path / "sweep.json")]) == 0
    out = capsys.readouterr().out
    curves = orjson.loads((tmp_path / "sweep.json").read_bytes())
    assert list(curves) == ["robust-baseline", "gaussian-sad"]
    assert "model gaussian-sad" in out
    assert curves["gaussian-sad"] != curves["robust-baseline"]  # each spec replayed
    points = curves["robust-baseline"]
    assert [p["threshold"] for p in points] == [0.8, 0.95]
    assert points[0]["incidents"] == 10  # two runs of five
    assert f"| 0.8 | {points[0]['incident_recall']:.3f} (" in out
    from app.cli import main as riskstream  # `riskstream tune ...` is this module's CLI

    assert riskstream(["tune", "incidents", "--run", *files, "--all", "--honest-rank", "--json",
                 str(tmp_path / "incidents.json")]) == 0
    out = capsys.readouterr().out
    rows = orjson.loads((tmp_path / "incidents.json").read_bytes())
    assert {r["kind"] for r in rows} == {"click_spam", "scam_ad", "cloaking", "slow_ramp",
                                         "bot_burst"}
    assert all(f"| {r['advertiser_id']} |" in out for r in rows)
    assert "| honest rank |" in out and all("honest_rank" in r for r in rows)


def test_honest_ranks_compare_an_incident_with_the_advertisers_without_incidents(run):
    rows = incident_rows(run, replay_features(run.windows, decision=ECFG.decision))
    run_honest_ranks(run, rows)
    assert all(r["honest_rank"] is None or 0.0 <= r["honest_rank"] <= 1.0 for r in rows)
    # click spam's fast clicks are beyond every honest advertiser's least likely count
    spam = next(r for r in rows if r["kind"] == "click_spam")
    assert spam["surprise"]["p"] < 1e-6 and spam["honest_rank"] == 0.0
    # an incident with no surprise at all (p = 1) is matched by every honest advertiser
    flat = dict(spam, surprise=None)
    run_honest_ranks(run, [flat if r is spam else r for r in rows])
    assert flat["honest_rank"] == 1.0
