"""``riskstream demo``: the whole product on one machine, alerts shown live.

Starts (or reuses) a local broker, applies topics.yaml, starts one worker and the simulator
(live mode, event time sped up so incidents happen within a minute or two), prints the risk
board's address (``/board`` on the worker) and one line per alert as enforcement would receive
it. ``--duration`` ends it by itself; Ctrl-C stops everything it started, in reverse order, and
waits for each process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from app.settings import Settings
from riskstream.alerts import render_line

DEMO_WINDOW_SECONDS = 60
DEMO_SESSION_TIMEOUT_MS = 6000  # Tansu answers a group join after half of it (see README)


def _popen(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen | None, name: str, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"demo: {name} did not stop in {timeout:.0f}s; killing it", file=sys.stderr)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def run_demo(args: Any, settings: Settings) -> int:
    from confluent_kafka import Consumer

    from app import brokers
    from app.topics import apply_topics

    work = Path(tempfile.mkdtemp(prefix="riskstream-demo-"))
    started_broker = None
    worker = simulator = None
    deadline = time.monotonic() + args.duration if args.duration else None
    stop_requested = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bootstrap = settings.bootstrap_servers
        if not bootstrap:
            if args.broker == "apache":
                started_broker = brokers.start_apache_kafka(work / "broker")
            else:
                started_broker = brokers.start_embedded(work / "broker")
            bootstrap = started_broker.bootstrap
            print(f"demo: {started_broker.kind} broker on {bootstrap} (pid {started_broker.pid})")
        created = apply_topics(bootstrap, settings.topic_prefix)
        print(f"demo: topics ready ({len(created)} created)")
        app_id = f"riskstream-demo-{int(time.time())}"
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, RISKSTREAM_APP_ID=app_id,
                   RISKSTREAM_DATA_DIR=str(work / "worker"),
                   RISKSTREAM_SESSION_TIMEOUT_MS=str(DEMO_SESSION_TIMEOUT_MS),
                   # Tansu reports a batch's end offset wrongly; one record per batch keeps
                   # changelog recovery exact (see app/brokers.py).
                   RISKSTREAM_PRODUCER_MAX_BATCH_SIZE="1" if started_broker is not None
                   and started_broker.kind == "embedded" else
                   str(settings.producer_max_batch_size),
                   RISKSTREAM_WEB_PORT=os.environ.get("RISKSTREAM_WEB_PORT", "6066"),
                   RISKSTREAM_LOG_LEVEL=os.environ.get("RISKSTREAM_LOG_LEVEL", "WARNING"))
        riskstream = [sys.executable, "-m", "app.cli"]
        worker = _popen(riskstream + ["worker"], env, work / "worker.log")
        port = env["RISKSTREAM_WEB_PORT"]
        print(f"demo: worker started (pid {worker.pid}); metrics http://127.0.0.1:{port}/metrics,"
              f" health http://127.0.0.1:{port}/readyz; log {work / 'worker.log'}")
        print(f"demo: risk board at http://127.0.0.1:{port}/board (open it in a browser; "
              f"lookups: http://127.0.0.1:{port}/advertisers/<id>)", flush=True)
        # One simulated day of traffic at the chosen speed; incidents start after ~30 minutes of
        # event time (half a minute at x60) and keep coming through the run.
        sim_seconds = args.duration if args.duration else 24 * 3600 / args.speedup
        simulator = _popen(riskstream + [
            "simulate", "--live", "--speedup", str(args.speedup),
            "--duration", str(max(sim_seconds * args.speedup, 3600)),
            "--warmup-fraction", str(min(0.3, 1800 / max(sim_seconds * args.speedup, 3600))),
            "--advertisers", str(args.advertisers), "--base-rate", str(args.advertisers / 4),
            "--max-seconds", str(sim_seconds), "--seed", "2026",
            "--incidents", "click_spam:2,bot_burst:2,scam_ad:2,slow_ramp,benign_launch",
            "--truth", str(work / "truth.jsonl"), "--bootstrap", bootstrap,
        ], env, work / "simulator.log")
        print(f"demo: simulator started (pid {simulator.pid}): {args.advertisers} advertisers, "
              f"event time x{args.speedup:g}; incidents will be injected. Ctrl-C stops.")
        print("demo: waiting for alerts on risk-alerts ...")
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{app_id}-viewer",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "session.timeout.ms": DEMO_SESSION_TIMEOUT_MS})
        consumer.subscribe([settings.topic("risk-alerts")])
        seen: set[str] = set()
        t0 = time.monotonic()
        try:
            while not stop_requested and (deadline is None or time.monotonic() < deadline):
                if worker.poll() is not None:
                    print(f"demo: worker exited with {worker.returncode}; see {work / 'worker.log'}",
                          file=sys.stderr)
                    return 1
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                alert = orjson.loads(msg.value())
                if alert["alert_id"] in seen:
                    continue  # at-least-once delivery: idempotent by alert_id
                seen.add(alert["alert_id"])
                if len(seen) == 1:
                    print(f"demo: first alert after {time.monotonic() - t0:.1f}s")
                print(render_line(alert), flush=True)
        finally:
            consumer.close()
        print(f"demo: {len(seen)} alert(s). Stopping.")
        return 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted; stopping.")
        return 0
    finally:
        _stop(simulator, "simulator")
        _stop(worker, "worker", timeout=30)
        if started_broker is not None:
            brokers.stop(started_broker)
        print(f"demo: stopped. Logs in {work}")
