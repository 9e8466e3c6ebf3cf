"""The worker's ``/metrics`` with real tools: ``promtool check metrics`` (Prometheus' own linter:
names, units, ``_total`` suffixes, help text) passes on a live worker's output, and a real
Prometheus server on loopback scrapes the worker and answers queries with the values the
worker reports.

Both tools come from the Debian ``prometheus`` package; the tests skip without them unless
``RISKSTREAM_REQUIRE_TOOLS=1`` (CI), where a missing tool fails.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import (free_port, labelled_metrics, produce, require_tool, timed_case,
                            wait_until)

pytestmark = pytest.mark.integration

# Issue 6.1's list, by series name: every one must be exposed by a worker that has processed
# traffic (histograms as _bucket/_sum/_count, counters with _total).
REQUIRED = [
    "riskstream_events_consumed_total", "riskstream_events_invalid_total",
    "riskstream_events_late_total", "riskstream_batch_processing_seconds_bucket",
    "riskstream_event_to_alert_seconds_bucket", "riskstream_window_close_lag_seconds",
    "riskstream_alerts_total", "riskstream_scoring_seconds_bucket",
    "riskstream_active_advertisers", "riskstream_model_state_bytes",
    "riskstream_consumer_lag_messages", "riskstream_rebalances_total",
    "riskstream_recovery_remaining_messages", "riskstream_assigned_partitions",
    "riskstream_ready",
]


@pytest.fixture
def busy_worker(kafka_broker, kafka_topics, worker, tmp_path):
    """A worker that has processed a small simulated stream (with an alert) plus two bad
    records and one late one, so every labelled series has samples."""
    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    case = timed_case(seed=91, advertisers=4, duration_s=1200, spam_start_s=600, rate_per_s=4)
    assert case.expected_alerts(), "test design: the incident must alert offline"
    for topic, records in case.records_by_topic(prefix).items():
        produce(bootstrap, topic, records)
    _kind, key, first = next(e for e in case.events if e[0] == "impression")
    produce(bootstrap, f"{prefix}ad-impressions", [(key, b"{not json"), (key, b"[]")])
    w = worker(prefix)
    n = len(case.events) + 2
    wait_until(lambda: w.metrics().get("riskstream_events_consumed_total", 0) >= n
               and w.metrics().get("riskstream_alerts_total", 0) > 0, 60,
               "the stream processed and alerting", on_timeout=w.log_tail)
    # an event for a long-closed window: late
    produce(bootstrap, f"{prefix}ad-impressions", [(key, first)])
    wait_until(lambda: w.metrics().get("riskstream_events_late_total", 0) == 1, 30,
               "the late event counted", on_timeout=w.log_tail)
    # the once-a-second input tracker has exported the lag of all 12 owned input partitions
    wait_until(lambda: sum(1 for name, _ in labelled_metrics(w)
                           if name == "riskstream_consumer_lag_messages") == 12, 30,
               "lag series of every input partition", on_timeout=w.log_tail)
    w.expected_consumed = n + 1  # type: ignore[attr-defined]
    return w


ALERT_RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``prometheus(target_port)`` starts the Debian prometheus binary on 127.0.0.1,
    scraping ``127.0.0.1:<target_port>`` every second; stopped (by PID) at teardown."""
    binary = require_tool("prometheus", "prometheus")
    procs: list[subprocess.Popen] = []

    def start(target_port: int) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files: ['{ALERT_RULES}']\n"
            "scrape_configs:\n  - job_name: riskstream\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n")
        log = open(tmp_path / "prometheus.log", "wb")
        procs.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        log.close()
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _api(base: str, path: str) -> dict | None:
    """The ``data`` of a Prometheus HTTP API answer; None while it is not listening yet."""
    try:
        with urllib.request.urlopen(f"{base}/api/v1/{path}", timeout=2) as resp:
            answer = json.loads(resp.read())
    except OSError:
        return None
    assert answer["status"] == "success", answer
    return answer["data"]


def _query(base: str, promql: str) -> list[dict]:
    data = _api(base, "query?" + urllib.parse.urlencode({"query": promql}))
    return data["result"] if data else []


def _rules(base: str) -> list[dict]:
    data = _api(base, "rules")
    return [r for g in data["groups"] for r in g["rules"]] if data else []


def test_promtool_passes_and_a_real_prometheus_scrapes_the_worker(busy_worker, prometheus,
                                                                   tmp_path):
    """One worker for both tools (a worker with traffic costs ~8 s to set up)."""
    promtool = require_tool("promtool", "prometheus")
    status, body = busy_worker.get("/metrics")
    assert status == 200
    names = {name for name, _ in labelled_metrics(busy_worker)}
    missing = [n for n in REQUIRED if n not in names]
    assert not missing, f"series of issue 6.1 missing from /metrics: {missing}"
    res = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                         timeout=30)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), \
        f"promtool check metrics: rc {res.returncode}\n{res.stdout.decode()}" \
        f"{res.stderr.decode()}"

    base = prometheus(busy_worker.port)
    log = lambda: (tmp_path / "prometheus.log").read_text(errors="replace")[-2000:]  # noqa: E731
    up = wait_until(lambda: _query(base, 'up{job="riskstream"} == 1'), 60,
                    "Prometheus scraping the worker (up == 1)", on_timeout=log)
    assert up[0]["metric"]["instance"] == f"127.0.0.1:{busy_worker.port}"
    # the series of issue 6.1 all arrive, with the worker's values
    for name in REQUIRED:
        wait_until(lambda: _query(base, name), 30, f"series {name} in Prometheus",
                   on_timeout=log)
    consumed = _query(base, "sum(riskstream_events_consumed_total)")
    assert float(consumed[0]["value"][1]) == busy_worker.expected_consumed
    invalid = {r["metric"]["reason"]: float(r["value"][1])
               for r in _query(base, "riskstream_events_invalid_total")}
    assert invalid == {"bad_json": 1, "not_an_object": 1, "late_event": 1}
    owned = _query(base, 'riskstream_assigned_partitions{topic=~".*ad-impressions"}')
    assert float(owned[0]["value"][1]) == 6  # one worker owns every input partition
    p99 = _query(base, "histogram_quantile(0.99, riskstream_batch_processing_seconds_bucket)")
    assert p99 and float(p99[0]["value"][1]) > 0
    lag = _query(base, "sum(riskstream_consumer_lag_messages)")
    assert float(lag[0]["value"][1]) == 0  # everything processed, as the worker says
    # the alerting rules of deploy/prometheus load and evaluate on the worker's live series;
    # a healthy worker with every event processed raises none of them
    rules = wait_until(lambda: [r for r in _rules(base) if r.get("lastEvaluation", "")[:4]
                                not in ("", "0001")] or None, 30,
                       "the alerting rules evaluated", on_timeout=log)
    assert {r["name"] for r in rules} >= {"RiskstreamConsumerLagHigh", "RiskstreamInputStalled",
                                          "RiskstreamDeadLetters", "RiskstreamNotReady"}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError"))
                                                      for r in rules]
    assert not [r["name"] for r in rules if r["state"] != "inactive"]
    print(f"\nprometheus: {len(REQUIRED)} series scraped; batch p99 "
          f"{float(p99[0]['value'][1]):.4f}s")
