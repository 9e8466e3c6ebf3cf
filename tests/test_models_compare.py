"""Champion vs challenger (`riskstream models compare`), and the offline replay of a topic
range (`riskstream backtest --from-topics`): the comparison as a pure function, then one live
round trip -- a worker with a shadow challenger, an enforcement decision read back by the
worker, the comparison over the real alert topics, and the replay of the input topics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest

from app.model_compare import compare_models, labels_from_decisions, render
from app.settings import Settings
from app.topic_range import parse_time
from tests.conftest import TopicReader, produce_lines, simulated_case

W = 60_000


def _alert(model: str, adv: str, start_w: int, status: str = "open", mode: str = "enforce",
           cfg_version: int = 0) -> dict[str, Any]:
    return {"alert_id": f"{model}-{adv}-{start_w}-{status}", "advertiser_id": adv,
            "status": status, "mode": mode,
            "window": {"start": start_w * W, "end": (start_w + 1) * W},
            "model": {"name": model, "version": "1", "config_version": cfg_version}}


def test_compare_agreement_lead_and_labelled_precision() -> None:
    alerts = [
        _alert("champ", "a1", 10), _alert("champ", "a1", 11, "escalated"),
        _alert("champ", "a2", 20), _alert("champ", "a3", 30),
        _alert("chall", "a1", 8, mode="shadow"), _alert("chall", "a2", 23, mode="shadow"),
        _alert("chall", "a4", 40, mode="shadow"),
    ]
    alerts.append(dict(alerts[0]))  # an at-least-once duplicate is counted once
    decisions = [
        {"alert_id": "x", "advertiser_id": "a1", "decision": "confirmed"},
        {"alert_id": "y", "advertiser_id": "a3", "decision": "dismissed"},
        {"alert_id": "z", "advertiser_id": "a5", "decision": "confirmed"},  # nobody alerted a5
    ]
    rep = compare_models(alerts, decisions, window_ms=W)
    assert rep["champion"] == "champ"
    assert rep["alerts"] == 7
    champ, chall = rep["models"]["champ"], rep["models"]["chall"]
    assert (champ["episodes"], champ["escalations"], champ["alerted_advertisers"]) == (3, 1, 3)
    assert champ["labelled"] == 2 and champ["labelled_precision"] == 0.5
    assert champ["confirmed_missed"] == 1  # a5
    assert chall["labelled"] == 1 and chall["labelled_precision"] == 1.0
    vs = chall["vs_champion"]
    assert vs["both"] == 2 and vs["jaccard"] == 0.5
    assert vs["only_challenger"] == ["a4"] and vs["only_champion"] == ["a3"]
    assert vs["median_lead_windows"] == 0.5  # a1: 2 windows earlier, a2: 3 later
    table = render(rep)
    assert "champ" in table and "chall" in table and "champion: champ" in table


def test_champion_is_the_latest_enforce_spec_and_truth_gives_recall() -> None:
    alerts = [_alert("old", "a1", 1, cfg_version=1), _alert("new", "a1", 5, cfg_version=2),
              _alert("old", "a2", 6, mode="shadow", cfg_version=2)]
    truth = [{"advertiser_id": "a2", "kind": "scam_ad", "start_ms": 5 * W, "end_ms": 9 * W,
              "expected_alert": True}]
    rep = compare_models(alerts, [], truth=truth, window_ms=W)
    assert rep["champion"] == "new"
    assert rep["models"]["new"]["truth"]["incident_recall"] == 0.0
    assert rep["models"]["old"]["truth"]["incident_recall"] == 1.0
    assert "recall" in render(rep)


def test_decision_labels_confirmed_wins_and_bad_records_are_ignored() -> None:
    labels = labels_from_decisions([
        {"advertiser_id": "a", "decision": "dismissed"},
        {"advertiser_id": "a", "decision": "confirmed"},
        {"advertiser_id": "b", "decision": "dismissed"},
        {"advertiser_id": 7, "decision": "confirmed"}, {"decision": "confirmed"}, {},
    ])
    assert labels == {"a": "confirmed", "b": "dismissed"}


def test_parse_time_rejects_garbage() -> None:
    assert parse_time("2026-11-26T10:00:00+01:00") == parse_time("2026-11-26T09:00Z")
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")


def _cli(*args: str, cwd: Any, prefix: str = "") -> subprocess.CompletedProcess:
    """``riskstream ARGS`` in a subprocess, with the test's topic prefix and nothing else of
    this environment's riskstream or Kafka settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKSTREAM_", "KAFKA_"))}
    env["RISKSTREAM_TOPIC_PREFIX"] = prefix
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.integration
def test_shadow_challenger_decision_loop_compare_and_topic_replay(kafka_broker, kafka_topics,
                                                                   worker, tmp_path):
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    case = simulated_case(tmp_path, seed=21, advertisers=15, duration_s=1800, spam_start_s=900)
    exp_alerts = {a["alert_id"]: a for a in case.expected.alerts()}
    assert exp_alerts, "test design: the incident must alert offline"
    produce_lines(bootstrap, f"{prefix}ad-impressions", case.impressions)
    produce_lines(bootstrap, f"{prefix}user-feedback", case.feedback)
    w = worker(prefix, RISKSTREAM_SHADOW_MODELS="gaussian-sad")

    def all_expected(records: list) -> bool:
        return set(exp_alerts) <= {r.json()["alert_id"] for r in records}

    with TopicReader(bootstrap, f"{prefix}risk-alerts") as alerts:
        alerts.wait_for(all_expected, 120, f"{len(exp_alerts)} enforce alerts",
                        on_timeout=w.log_tail)
        enforce = [r.json() for r in alerts.records]
    assert {a["mode"] for a in enforce} == {"enforce"}  # shadows never reach enforcement
    opened = sorted((a for a in enforce if a["status"] == "open"),
                    key=lambda a: a["window"]["start"])
    target = opened[0]

    # an enforcement team confirms the first episode; the worker reads it back
    dec = _cli("alerts", "decide", "--bootstrap", bootstrap, "--alert-id", target["alert_id"],
               "--advertiser", target["advertiser_id"], "--decision", "confirmed",
               cwd=tmp_path, prefix=prefix)
    assert dec.returncode == 0, dec.stderr
    deadline, m = time.monotonic() + 60, {}
    while time.monotonic() < deadline and w.proc.poll() is None:
        m = w.metrics()
        if m.get("riskstream_enforcement_decisions_total", 0) >= 1:
            break
        time.sleep(0.2)  # poll interval of a bounded wait on the condition above
    assert m.get("riskstream_enforcement_decisions_total") == 1, \
        f"worker did not count the decision; log tail:\n{w.log_tail()}"
    assert m.get("riskstream_detector_precision_ratio") == 1.0, m

    # the shadow challenger scored the same windows on its own topic
    with TopicReader(bootstrap, f"{prefix}risk-alerts-shadow") as shadow:
        shadow.poll(2.0)
        for r in shadow.records:
            a = r.json()
            assert a["mode"] == "shadow" and a["model"]["name"] == "gaussian-sad", a

    # champion vs challenger over the live topics
    out_json = tmp_path / "compare.json"
    cmp = _cli("models", "compare", "--bootstrap", bootstrap, "--json", str(out_json),
               cwd=tmp_path, prefix=prefix)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    rep = orjson.loads(out_json.read_bytes())
    champ = rep["models"]["robust-baseline"]
    assert rep["champion"] == "robust-baseline" and champ["role"] == "champion"
    assert champ["alert_records"] == len(exp_alerts)
    assert champ["labelled"] == 1 and champ["labelled_precision"] == 1.0
    assert champ["confirmed_missed"] == 0
    assert "robust-baseline" in cmp.stdout
    print(cmp.stdout)

    # replaying the recorded topic range offline gives the live alert ids
    out = tmp_path / "replayed.jsonl"
    bt = _cli("backtest", "--from-topics", "--bootstrap", bootstrap, "--out", str(out),
              cwd=tmp_path, prefix=prefix)
    assert bt.returncode == 0, bt.stdout + bt.stderr
    replayed = {orjson.loads(line)["alert_id"] for line in out.read_bytes().splitlines()}
    assert replayed == set(exp_alerts)
    assert f"reading {prefix}ad-impressions: {len(case.impressions):,}/" in bt.stderr


def test_backtest_needs_exactly_one_input(tmp_path) -> None:
    res = _cli("backtest", "--from-topics", "--impressions", "x.jsonl", "--out", "o.jsonl",
               cwd=tmp_path)
    assert res.returncode == 2 and "--from-topics" in res.stderr
    res = _cli("backtest", "--out", "o.jsonl", cwd=tmp_path)
    assert res.returncode == 2


def test_settings_topic_prefix_used_for_compare_topics() -> None:
    assert Settings(topic_prefix="t1.").topic("risk-alerts-shadow") == "t1.risk-alerts-shadow"
