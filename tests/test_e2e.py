"""End to end: `riskstream simulate` produces to Kafka while a `riskstream worker` runs; the
injected incident comes out as an enforce alert, and the worker's metrics show the traffic."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from riskstream.backtest import read_lines
from tests.conftest import assert_valid, consume_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# 50 advertisers, 1.5 h of event time at 5 impressions/s (~38k events). Seed 13 puts one
# bot burst on an advertiser with ~50 impressions/min: x14 volume from 6 users in one region,
# for 20 minutes -- blatant (checked below from the ground truth, not assumed).
SIM_ARGS = ["--advertisers", "50", "--duration", "5400", "--base-rate", "5", "--seed", "13",
            "--incidents", "bot_burst:1", "--max-seconds", "120"]
WINDOW_MS = 60_000


def test_simulated_incident_is_alerted_by_a_live_worker(kafka_broker, kafka_topics, worker,
                                                         tmp_path):
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    w = worker(prefix)
    truth_path = tmp_path / "truth.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKSTREAM_", "KAFKA_"))}
    sim = subprocess.run(
        [sys.executable, "-m", "app.cli", "simulate", "--bootstrap", bootstrap,
         "--topic-prefix", prefix, "--truth", str(truth_path), *SIM_ARGS],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert sim.returncode == 0, sim.stdout + sim.stderr
    assert "stopped by exhausted" in sim.stdout, sim.stdout  # the whole run was produced

    (truth,) = [orjson.loads(line) for line in read_lines(truth_path)]
    assert truth["kind"] == "bot_burst" and truth["expected_alert"]
    assert truth["params"]["volume_x"] >= 10 and truth["params"]["pool_size"] <= 10, truth
    adv = truth["advertiser_id"]

    def incident_alert(records) -> bool:
        for r in records:
            a = r.json()
            if (a["advertiser_id"] == adv and a["mode"] == "enforce"
                    and a["status"] in ("open", "escalated")
                    and a["window"]["end"] > truth["start_ms"]
                    and a["window"]["start"] <= truth["end_ms"] + 10 * WINDOW_MS):
                return True
        return False

    records = consume_until(bootstrap, f"{prefix}risk-alerts", incident_alert, 150,
                            f"an enforce alert for {adv} during its {truth['description']}",
                            on_timeout=w.log_tail)
    hit = next(r for r in records if r.json()["advertiser_id"] == adv)
    assert hit.key == adv.encode()
    for r in records:
        assert_valid("risk-alert.v1.json", r.json())
    # an alert explains itself
    first = min((r.json() for r in records if r.json()["advertiser_id"] == adv),
                key=lambda a: a["window"]["start"])
    assert first["reasons"]

    # the worker counts an alert as it hands it to the producer, before it can be read back
    m = w.metrics()
    assert m.get("riskstream_events_consumed_total", 0) > 0, m
    assert m.get("riskstream_alerts_total", 0) > 0, m
    assert m.get("riskstream_windows_closed_total", 0) > 0, m
