"""``riskstream bench``: throughput, latency, state size and recovery figures, in one bounded run.

What one run does (``--quick``: 3-4 min on 2 cores, full: ~10 min; see docs/performance.md):

1. starts Apache Kafka (app.brokers, in a temp dir; always stopped at the end) unless
   ``--bootstrap`` is given, and pre-produces ONE topic set (unique prefix) with simulated traffic
   (``riskstream.simulate``, as fast as possible, event times ending at "now");
2. over those same topics, in turn (never two at once: 2 cores):
   * ``bare_loop``   -- confluent-kafka ``consume(1000)`` + ``orjson.loads`` + a counter;
   * ``faust_noop``  -- a minimal Faust app (:func:`noop_app`: default settings, aiokafka,
     memory store, one agent over both inputs that only counts) as a subprocess worker;
   * ``worker``      -- the real ``riskstream worker`` subprocess, read through ``/metrics``;
   each from its first event to the N-th (start-up and group join excluded), in events per
   wall second and per CPU-second of that process (steadier on a shared machine);
3. ``recovery``: that worker, once everything is committed, is SIGKILLed; more traffic arrives
   while it is down; a replacement with the same app id is started: seconds to ``/readyz`` 200
   (table recovered, partitions assigned) and to caught up;
4. ``latency``: a worker on a fresh prefix with 5 s windows and 1 s allowed lateness, fed live
   traffic (event time = wall clock) at a modest fixed rate; for every risk-scores record,
   latency = wall time it is consumed - its window end;
5. ``state``: in-process (one subprocess per size, for a clean RSS): a RiskEngine on a DictStore
   with N advertisers that each learned a few windows and have one open: mean
   ``AdvertiserState.dumps()`` bytes and RSS growth per advertiser; plus the steady-state size
   (32 learned windows: the score history is full) at 1000 advertisers;
6. ``backtest``: ``riskstream.backtest.replay`` over N simulated events, in-process.

Every figure function is importable (``bare_loop``, ``faust_noop``, ``worker_throughput``,
``recovery``, ``latency``, ``measure_state``, ``backtest_throughput``); ``run_bench(args,
settings, profile=...)`` runs them all. ``python -m app.bench noop|state ...`` are the helper
subprocesses; ``python -m app.bench backtest [--against REV]`` measures the backtest figure alone
(no broker), optionally against a git revision's code in the same run (``--sparse A``: the
sparse-advertiser replay instead, A advertisers with a window per event); ``python -m app.bench
worker [--against REV]`` the worker figure alone over one topic set, likewise alternating.
Every process the harness starts is stopped (SIGTERM, then SIGKILL) by PID, also on
errors and Ctrl-C; they also get SIGTERM from the kernel if the harness dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
INPUTS = ("ad-impressions", "user-feedback")
STATE_TABLE = "advertiser-state"  # app/factory.py: the changelog is <app_id>-<table>-changelog

#: Keys every JSON report has (None when that part failed; see "errors").
REQUIRED_KEYS = ("ratio_vs_faust_noop", "ratio_vs_bare_loop", "latency_p50_ms", "latency_p99_ms",
                 "bytes_per_advertiser", "recovery_s", "backtest_events_per_s",
                 "bare_loop_events_per_s", "faust_noop_events_per_s", "worker_events_per_s",
                 "scale_out_ratio_2v1")

#: The issue's targets: key -> (comparison, value, text).
TARGETS: dict[str, tuple[str, float, str]] = {
    "ratio_vs_faust_noop": (">=", 0.9, "worker >= 0.9 x Faust no-op agent"),
    "ratio_vs_bare_loop": (">=", 0.06, "worker >= 0.06 x bare consumer loop (aim 0.25)"),
    "backtest_events_per_s": (">=", 100_000, "backtest >= 100k events/s"),
}
STATE_TARGET_BYTES = 4096


@dataclass(frozen=True)
class Profile:
    """Sizes of one run. ``events``: the pre-produced topic set (impressions + feedback)."""

    name: str
    events: int
    advertisers: int = 1000
    base_rate: float = 500.0          # impressions per event-time second (sets windows per adv)
    recovery_extra_events: int = 10_000  # produced while the killed worker is down
    latency_seconds: float = 40.0     # live traffic for the latency figure
    latency_rate: float = 200.0       # impressions per wall second
    latency_advertisers: int = 200
    latency_window_s: int = 5
    latency_lateness_s: int = 1
    state_sizes: tuple[int, ...] = (1000, 10_000)
    state_optional: tuple[int, ...] = ()  # only while the run stays within total_budget_s
    state_windows: int = 3            # learned (closed) windows per advertiser, + 1 open
    state_events: int = 4             # events per advertiser per window
    state_steady_advertisers: int = 1000  # steady state: score history (30) full
    state_steady_windows: int = 32
    backtest_events: int = 200_000
    scale_events: int = 100_000       # per run of 1 and of 2 workers (0: skip)
    poll_s: float = 0.2               # how often a worker's /metrics is read while measured
    stock_transport_worker: bool = True  # also the worker on Faust's stock kafka:// transport
    many_advertisers: int = 100_000   # the worker over this many advertisers at once (0: skip)
    many_events_per_advertiser: int = 3
    session_timeout_ms: int = 10_000  # worker default (RISKSTREAM_SESSION_TIMEOUT_MS)
    worker_env: tuple[tuple[str, str], ...] = ()  # extra settings of every worker started
    startup_timeout_s: float = 90.0
    total_budget_s: float = 900.0     # optional parts are skipped beyond this


PROFILES = {
    "smoke": Profile("smoke", events=4000, advertisers=50, base_rate=100.0,
                     recovery_extra_events=500, latency_seconds=6.0, latency_rate=100.0,
                     latency_advertisers=20, latency_window_s=2, state_sizes=(100,),
                     state_windows=2, state_events=2, state_steady_advertisers=50,
                     backtest_events=4000, scale_events=4000, poll_s=0.05,
                     stock_transport_worker=False, many_advertisers=0,
                     session_timeout_ms=6000, startup_timeout_s=60.0,
                     # several batches even from 4000 events, so a rate can be read
                     worker_env=(("RISKSTREAM_CHECKPOINT_MAX_EVENTS", "400"),),
                     total_budget_s=60.0),
    "quick": Profile("quick", events=200_000, recovery_extra_events=10_000,
                     latency_seconds=40.0, state_sizes=(1000, 10_000), state_optional=(100_000,),
                     backtest_events=200_000, many_advertisers=10_000,
                     total_budget_s=240.0),
    "full": Profile("full", events=1_000_000, recovery_extra_events=50_000,
                    latency_seconds=90.0, state_sizes=(1000, 10_000, 100_000),
                    backtest_events=1_000_000, scale_events=400_000, total_budget_s=900.0),
    # the 100k-advertiser worst case alone (docs/performance.md, "100k advertisers on one
    # worker"), with a small main figure for its ratio: ~5 min
    "many-100k": Profile("many-100k", events=30_000, scale_events=0,
                         stock_transport_worker=False, many_advertisers=100_000,
                         state_sizes=(1000,), latency_seconds=6.0, total_budget_s=1200.0),
}


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _deadline_loop(timeout: float, interval: float, what: str) -> Iterator[float]:
    """Yields the elapsed seconds every ``interval`` until the caller breaks; raises BenchError
    after ``timeout`` seconds."""
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        if elapsed > timeout:
            raise BenchError(f"{what}: not done within {timeout:.0f}s")
        yield elapsed
        time.sleep(interval)


# -- processes ---------------------------------------------------------------------------------
class Processes:
    """Every subprocess the harness starts; ``stop_all`` stops each by PID (SIGTERM, SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path
              ) -> subprocess.Popen:
        from app.brokers import _pdeathsig_preexec

        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True,
                                    preexec_fn=_pdeathsig_preexec())
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, timeout: float = 20.0) -> int | None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"pid {proc.pid} still running {timeout:.0f}s after SIGTERM: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        return proc.returncode

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                log(f"could not stop pid {proc.pid}: {exc}")


def _log_tail(path: Path, lines: int = 12) -> str:
    """The first few ERROR/CRITICAL lines of a log, then its last ``lines`` lines."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    errors = [ln for ln in text if '"level":"ERROR"' in ln or '"level":"CRITICAL"' in ln
              or ln.startswith("Traceback")][:3]
    parts = [f"--- {path}"]
    if errors:
        parts += ["first errors:", *(ln[:2000] for ln in errors), "last lines:"]
    return "\n".join(parts + [ln[:500] for ln in text[-lines:]])


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None if unreadable."""
    from app.brokers import proc_stat_fields

    fields = proc_stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_share(c0: float | None, c1: float | None, secs: float) -> float | None:
    if c0 is None or c1 is None or secs <= 0:
        return None
    return round((c1 - c0) / secs, 2)


def free_port() -> int:
    from app.brokers import free_port as _free_port

    return _free_port(HOST)


# -- Kafka helpers -----------------------------------------------------------------------------
def _consumer(bootstrap: str, group: str | None = None, **extra: Any) -> Any:
    from confluent_kafka import Consumer

    return Consumer({"bootstrap.servers": bootstrap,
                     "group.id": group or f"bench-{uuid.uuid4().hex}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False,
                     "enable.partition.eof": False, "log_level": 3, **extra})


def _partitions(consumer: Any, topics: list[str]) -> list[Any]:
    from confluent_kafka import TopicPartition

    md = consumer.list_topics(timeout=30)
    out = []
    for t in topics:
        tm = md.topics.get(t)
        if tm is None or tm.error is not None:
            raise BenchError(f"topic {t} not found")
        out += [TopicPartition(t, p) for p in sorted(tm.partitions)]
    return out


def changelog_stats(bootstrap: str, topic: str, timeout: float = 120.0) -> dict[str, Any]:
    """Records in a changelog topic, and its compacted content: distinct advertiser keys
    (``a:<p>:<id>``) and the bytes of their latest values."""
    from confluent_kafka import OFFSET_BEGINNING

    c = _consumer(bootstrap)
    try:
        tps = _partitions(c, [topic])
        remaining = {}
        for tp in tps:
            lo, hi = c.get_watermark_offsets(tp, timeout=10)
            if hi > lo:
                remaining[tp.partition] = hi
            tp.offset = OFFSET_BEGINNING
        records = 0
        latest: dict[bytes, int] = {}
        c.assign(tps)
        deadline = time.monotonic() + timeout
        while remaining:
            if time.monotonic() > deadline:
                raise BenchError(f"reading {topic}: not done within {timeout:.0f}s")
            for m in c.consume(1000, 0.5):
                if m.error() is not None:
                    continue
                records += 1
                key, value = m.key() or b"", m.value()
                if value is None:
                    latest.pop(key, None)
                else:
                    latest[key] = len(value)
                if m.offset() + 1 >= remaining.get(m.partition(), 0):
                    remaining.pop(m.partition(), None)
        adv = [n for k, n in latest.items() if k.startswith(b'"a:')]
        return {"changelog_records": records, "advertisers_in_state": len(adv),
                "state_bytes_total": sum(adv),
                "state_bytes_mean": round(sum(adv) / len(adv), 1) if adv else None}
    finally:
        c.close()


def group_lag(bootstrap: str, group: str, topics: list[str]) -> tuple[int, int]:
    """(committed offsets summed, highwaters summed) of ``group`` over ``topics``. Reads offsets
    only (OffsetFetch): the group is not joined."""
    c = _consumer(bootstrap, group)
    try:
        tps = _partitions(c, topics)
        committed = c.committed(tps, timeout=10)
        com = sum(max(tp.offset, 0) for tp in committed)
        hw = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        return com, hw
    finally:
        c.close()


def produce_topic_set(bootstrap: str, prefix: str, events: int, *, advertisers: int,
                      base_rate: float, seed: int = 11, start_ms: int | None = None,
                      max_seconds: float = 600.0) -> dict[str, Any]:
    """``events`` simulated events (as fast as possible) into ``prefix``'s input topics; event
    times end at about now (or start at ``start_ms``), so the worker's age check passes."""
    from riskstream import simulate

    duration = max(events / base_rate, 1.0) * 1.5  # generate() yields ~base_rate/s: margin
    if start_ms is None:
        now = int(time.time() * 1000)
        start_ms = now - now % 60_000 - int(duration * 1000)
    cfg = simulate.SimConfig(seed=seed, advertisers=advertisers, duration_s=duration,
                             base_rate_per_s=base_rate, start_ms=start_ms)
    res = simulate.produce(cfg, bootstrap, prefix + INPUTS[0], prefix + INPUTS[1],
                           max_events=events, max_seconds=max_seconds)
    if res["failed"] or res["undelivered"]:
        raise BenchError(f"produce to {prefix}*: {res}")
    res["end_ms"] = cfg.end_ms
    return res


# -- 1. bare consumer loop ---------------------------------------------------------------------
def bare_loop(bootstrap: str, topics: list[str], n: int, timeout: float = 300.0
              ) -> dict[str, Any]:
    """confluent-kafka ``consume(1000)`` + ``orjson.loads`` + a counter over ``topics`` (fresh
    group, earliest) until ``n`` events are read; rate from the first batch to the n-th event."""
    import orjson

    c = _consumer(bootstrap)
    loads = orjson.loads
    try:
        c.subscribe(list(topics))
        count = 0
        t_first = None
        cpu_first = 0.0
        deadline = time.monotonic() + timeout
        while count < n:
            if time.monotonic() > deadline:
                raise BenchError(f"bare loop: {count}/{n} events within {timeout:.0f}s")
            msgs = c.consume(1000, 1.0)
            if not msgs:
                continue
            if t_first is None:
                t_first = time.perf_counter()
                cpu_first = time.process_time()  # includes librdkafka's threads
            for m in msgs:
                if m.error() is not None:
                    continue
                loads(m.value())
                count += 1
        secs = time.perf_counter() - t_first
        cpu_s = time.process_time() - cpu_first
    finally:
        c.close()
    return {"events": count, "seconds": round(secs, 3), "events_per_s": round(count / secs, 1),
            "cpu_seconds": round(cpu_s, 2), "cpu_share": round(cpu_s / secs, 2),
            "events_per_cpu_s": round(count / cpu_s, 1) if cpu_s > 0 else None}


# -- 2. Faust no-op agent ----------------------------------------------------------------------
def noop_app(app_id: str, bootstrap: str, topics: list[str], target: int, status_path: Path,
             *, datadir: str, web_port: int) -> Any:
    """The minimal Faust app a new user writes: default settings (aiokafka transport, memory
    store), one agent over both topics that only counts. Raw values (no codec): the floor of
    Faust's own per-event cost. Writes ``{"count", "t_first", "t_last", "cpu_first",
    "cpu_last"}`` (wall time, process CPU time) to ``status_path`` at the first event, every
    10k events, and at the ``target``-th."""
    import faust

    app = faust.App(app_id, broker=[f"kafka://{hp.strip()}" for hp in bootstrap.split(",")],
                    store="memory://", datadir=datadir, web_port=web_port, web_host=HOST,
                    web_bind=HOST)
    # The baseline stays Faust's default: never the worker's riskstream:// transport
    assert type(app.transport).__module__.startswith("faust."), type(app.transport)
    topic = app.topic(*topics, key_serializer="raw", value_serializer="raw")
    status: dict[str, Any] = {"count": 0, "t_first": None, "t_last": None,
                              "cpu_first": None, "cpu_last": None}

    def write() -> None:
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, status_path)

    @app.agent(topic, name="count")
    async def count(stream: Any) -> None:
        async for _value in stream:
            n = status["count"] = status["count"] + 1
            if n == 1:
                status["t_first"] = time.time()
                status["cpu_first"] = time.process_time()  # all threads of the process
                write()
            elif n == target:
                status["t_last"] = time.time()
                status["cpu_last"] = time.process_time()
                write()
            elif not n % 10_000:
                write()

    return app


def _noop_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m app.bench noop")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topics", required=True, help="comma-separated")
    p.add_argument("--app-id", required=True)
    p.add_argument("--target", type=int, required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--datadir", required=True)
    p.add_argument("--web-port", type=int, default=0)
    a = p.parse_args(argv)
    import faust

    app = noop_app(a.app_id, a.bootstrap, a.topics.split(","), a.target, Path(a.status),
                   datadir=a.datadir, web_port=a.web_port or free_port())
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, override_logging=False,
                          redirect_stdouts=False)  # as app/worker.py runs the real one
    worker.execute_from_commandline()
    return 0


def faust_noop(bootstrap: str, topics: list[str], n: int, workdir: Path, procs: Processes,
               timeout: float = 300.0, startup_timeout: float = 90.0) -> dict[str, Any]:
    """Run :func:`noop_app` as a subprocess worker until it counted ``n`` events."""
    workdir.mkdir(parents=True, exist_ok=True)
    status_path = workdir / "status.json"
    app_id = f"bench-noop-{uuid.uuid4().hex[:10]}"
    cmd = [sys.executable, "-m", "app.bench", "noop", "--bootstrap", bootstrap,
           "--topics", ",".join(topics), "--app-id", app_id, "--target", str(n),
           "--status", str(status_path), "--datadir", str(workdir / "data"),
           "--web-port", str(free_port())]
    log_path = workdir / "noop.log"
    wall_start = time.time()
    proc = procs.start(cmd, env=_child_env(), cwd=workdir, log_path=log_path)
    try:
        status: dict[str, Any] = {}
        for elapsed in _deadline_loop(startup_timeout + timeout, 0.2, "faust no-op"):
            if proc.poll() is not None:
                raise BenchError(f"faust no-op exited with {proc.returncode}:\n"
                                 f"{_log_tail(log_path)}")
            with contextlib.suppress(OSError, ValueError):
                status = json.loads(status_path.read_text())
            if status.get("t_last"):
                break
            if not status.get("t_first") and elapsed > startup_timeout:
                raise BenchError(f"faust no-op: no event within {startup_timeout:.0f}s:\n"
                                 f"{_log_tail(log_path)}")
        secs = status["t_last"] - status["t_first"]
        cpu_s = status["cpu_last"] - status["cpu_first"]
        return {"events": n, "seconds": round(secs, 3),
                "events_per_s": round((n - 1) / secs, 1),
                "cpu_seconds": round(cpu_s, 2),
                "cpu_share": round(cpu_s / secs, 2),
                "events_per_cpu_s": round((n - 1) / cpu_s, 1) if cpu_s > 0 else None,
                "start_to_first_event_s": round(status["t_first"] - wall_start, 2),
                "value_serializer": "raw", "app_id": app_id}
    finally:
        procs.stop(proc)


# -- the real worker ---------------------------------------------------------------------------
def _child_env(**overrides: str) -> dict[str, str]:
    """Environment for subprocesses: nothing riskstream or Kafka reads is inherited, except the
    model choice (so a run can bench another spec)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKSTREAM_", "KAFKA_"))}
    for k in ("RISKSTREAM_MODEL", "RISKSTREAM_SHADOW_MODELS"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass
class WorkerProc:
    proc: subprocess.Popen
    port: int
    log_path: Path
    app_id: str
    prefix: str
    data_dir: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)
    started: float = 0.0  # monotonic, just before Popen

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}{path}",
                                        timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metrics_text(self) -> str | None:
        """The ``/metrics`` page; None while not answering."""
        try:
            status, body = self.get("/metrics")
        except (OSError, urllib.error.URLError):
            return None
        return body.decode() if status == 200 else None

    def metrics(self) -> dict[str, float] | None:
        """``/metrics`` samples summed over labels by metric name; None while not answering."""
        text = self.metrics_text()
        return None if text is None else parse_metrics(text)

    def ready(self) -> bool:
        try:
            return self.get("/readyz", timeout=1.0)[0] == 200
        except (OSError, urllib.error.URLError):
            return False

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"worker {self.app_id} exited with {self.proc.returncode}:\n"
                             f"{_log_tail(self.log_path)}")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {metric name: sum over label sets}.

    >>> parse_metrics('# HELP x\\nx_total{topic="a"} 2.0\\nx_total{topic="b"} 3.0\\ny 1\\n')
    {'x_total': 5.0, 'y': 1.0}
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def start_worker(procs: Processes, bootstrap: str, prefix: str, workdir: Path, *,
                 app_id: str | None = None, data_dir: Path | None = None,
                 broker_kind: str = "apache", session_timeout_ms: int = 10_000,
                 **settings_env: str) -> WorkerProc:
    """``riskstream worker`` (``python -m app.cli worker``) as a subprocess."""
    workdir.mkdir(parents=True, exist_ok=True)
    app_id = app_id or f"bench-worker-{uuid.uuid4().hex[:10]}"
    data_dir = data_dir or workdir / "data"
    port = free_port()
    env = _child_env(KAFKA_BOOTSTRAP_SERVERS=bootstrap, RISKSTREAM_TOPIC_PREFIX=prefix,
                     RISKSTREAM_APP_ID=app_id, RISKSTREAM_DATA_DIR=str(data_dir),
                     RISKSTREAM_WEB_PORT=str(port),
                     RISKSTREAM_SESSION_TIMEOUT_MS=str(session_timeout_ms),
                     RISKSTREAM_LOG_LEVEL="INFO", **settings_env)
    if broker_kind == "embedded":  # see app.brokers.faust_settings
        env["RISKSTREAM_PRODUCER_MAX_BATCH_SIZE"] = "1"
    log_path = workdir / f"worker-{app_id}-{port}.log"
    started = time.monotonic()
    proc = procs.start([sys.executable, "-m", "app.cli", "worker"], env=env, cwd=workdir,
                       log_path=log_path)
    return WorkerProc(proc, port, log_path, app_id, prefix, data_dir, env, started)


def wait_ready(w: WorkerProc, timeout: float) -> float:
    """Seconds from the worker's start to ``/readyz`` 200."""
    for _ in _deadline_loop(timeout, 0.1, f"worker {w.app_id} /readyz"):
        w.check_alive()
        if w.ready():
            return time.monotonic() - w.started
    raise AssertionError("unreachable")


def wait_consumed(w: WorkerProc, n: int, timeout: float, startup_timeout: float = 90.0,
                  interval: float = 0.2) -> dict[str, Any]:
    """Poll ``riskstream_events_consumed_total`` until it reaches ``n``: rate from the first
    nonzero reading to the first reading >= n (both at the poll's time)."""
    first: tuple[float, float] | None = None
    last = 0.0
    cpu0 = cpu1 = None
    m: dict[str, float] = {}
    for elapsed in _deadline_loop(startup_timeout + timeout, interval,
                                  f"worker {w.app_id}: {n} events consumed"):
        w.check_alive()
        m = w.metrics() or m
        consumed = m.get("riskstream_events_consumed_total", 0.0)
        now = time.monotonic()
        if consumed > 0 and first is None:
            first = (now, consumed)
            cpu0 = proc_cpu_seconds(w.proc.pid)
        if consumed >= n:
            last = now
            cpu1 = proc_cpu_seconds(w.proc.pid)
            break
        if first is None and elapsed > startup_timeout:
            raise BenchError(f"worker {w.app_id}: no event consumed within "
                             f"{startup_timeout:.0f}s:\n{_log_tail(w.log_path)}")
    assert first is not None
    if last <= first[0]:  # everything in one batch: no rate measurable
        raise BenchError(f"worker {w.app_id}: all {n} events arrived in one poll; use more events")
    secs = last - first[0]
    return {"events": int(m.get("riskstream_events_consumed_total", 0)),
            "seconds": round(secs, 3),
            "events_per_s": round((n - first[1]) / secs, 1),
            "start_to_first_count_s": round(first[0] - w.started, 2),
            "cpu_seconds": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2),
            "cpu_share": _cpu_share(cpu0, cpu1, secs),
            "events_per_cpu_s": (round((n - first[1]) / (cpu1 - cpu0), 1)
                                 if cpu0 is not None and cpu1 is not None and cpu1 > cpu0
                                 else None),
            "invalid_events": int(m.get("riskstream_events_invalid_total", 0)),
            "windows_closed": int(m.get("riskstream_windows_closed_total", 0)),
            "alerts": int(m.get("riskstream_alerts_total", 0)),
            "checkpoints": int(m.get("riskstream_checkpoints_total", 0)),
            "metrics": m}


def worker_throughput(procs: Processes, bootstrap: str, prefix: str, n: int, workdir: Path, *,
                      broker_kind: str = "apache", session_timeout_ms: int = 10_000,
                      timeout: float | None = None, startup_timeout: float = 90.0,
                      worker_env: dict[str, str] | None = None, poll_s: float = 0.2
                      ) -> tuple[dict[str, Any], WorkerProc]:
    """The real worker over ``prefix`` until it consumed ``n`` events. Returns the figures and
    the (still running) worker: the caller stops it (or SIGKILLs it, see :func:`recovery`)."""
    w = start_worker(procs, bootstrap, prefix, workdir, broker_kind=broker_kind,
                     session_timeout_ms=session_timeout_ms, **(worker_env or {}))
    res = wait_consumed(w, n, timeout or max(120.0, n / 1000), startup_timeout, interval=poll_s)
    res.pop("metrics", None)
    res["app_id"] = w.app_id
    return res, w


# -- 2a. many advertisers on one worker -------------------------------------------------------
def produce_many_advertisers(bootstrap: str, prefix: str, advertisers: int, per_advertiser: int,
                             window_s: int = 60) -> int:
    """``per_advertiser`` impressions for each of ``advertisers`` advertisers, round-robin, in
    event-time order over ``per_advertiser + 2`` windows ending about now: every advertiser is
    active at once and each of its impressions falls in a window of its own, so windows close,
    models learn and all the advertisers' states are held together. Synthetic records (the
    simulator's profiles cost ~0.2 ms per event to generate); the same input schema."""
    import orjson

    from riskstream.simulate import _make_producer, producer_settings

    producer, _ = _make_producer(producer_settings(bootstrap))
    n = advertisers * per_advertiser
    now = int(time.time() * 1000)
    start = now - now % (window_s * 1000) - (per_advertiser + 2) * window_s * 1000
    span = per_advertiser * window_s * 1000
    failed = [0]

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failed[0] += 1

    topic = prefix + INPUTS[0]
    for i in range(n):
        adv = f"many-{i % advertisers:06d}"
        rec = {"event_id": f"m{i}", "event_time": start + span * i // n, "advertiser_id": adv,
               "campaign_id": f"{adv}-c1", "ad_id": f"{adv}-c1-a1",
               "user_id": f"u{i * 7919 % 99991}",
               "region": "US", "placement": "feed", "cost_micros": 1000 + i % 500,
               "clicked": i % 50 == 0, "click_delay_ms": 4000 if i % 50 == 0 else 0,
               "converted": False, "dwell_ms": 9000 if i % 50 == 0 else 0}
        while True:
            try:
                producer.produce(topic, key=adv.encode(), value=orjson.dumps(rec),
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if not i % 1000:
            producer.poll(0)
    left = producer.flush(120)
    if left or failed[0]:
        raise BenchError(f"produce to {topic}: {failed[0]} failed, {left} undelivered")
    return n


def many_advertisers(procs: Processes, bootstrap: str, workdir: Path, *, advertisers: int,
                     per_advertiser: int, broker_kind: str, session_timeout_ms: int,
                     startup_timeout: float, worker_env: dict[str, str], poll_s: float
                     ) -> dict[str, Any]:
    """The worker's rate with ``advertisers`` advertisers active at once (vs the main figure's
    1,000), and its memory once it holds them all."""
    from app.topics import apply_topics

    prefix = f"bench-{uuid.uuid4().hex[:8]}-many-"
    apply_topics(bootstrap, prefix)
    t0 = time.monotonic()
    n = produce_many_advertisers(bootstrap, prefix, advertisers, per_advertiser)
    produce_s = time.monotonic() - t0
    res, w = worker_throughput(procs, bootstrap, prefix, n, workdir, broker_kind=broker_kind,
                               session_timeout_ms=session_timeout_ms,
                               startup_timeout=startup_timeout, worker_env=worker_env,
                               poll_s=poll_s)
    try:
        m = w.metrics() or {}
        rss = _rss_of(w.proc.pid)
    finally:
        procs.stop(w.proc)
    res.update({"advertisers": advertisers, "produce_s": round(produce_s, 1),
                "active_advertisers": m.get("riskstream_active_advertisers"),
                "rss_bytes": rss,
                "rss_bytes_per_advertiser": round(rss / advertisers) if rss else None})
    return res


def _rss_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# -- 2b. scale-out: 2 worker processes vs 1 ---------------------------------------------------
def owned_input_partitions(w: WorkerProc) -> set[tuple[str, str]] | None:
    """The input partitions a worker owns: the label sets of its consumer-lag gauge (set for
    every owned input partition once a second, removed on revocation)."""
    text = w.metrics_text()
    if text is None:
        return None
    owned = set()
    for line in text.splitlines():
        if line.startswith("riskstream_consumer_lag_messages{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:
                                                          line.index("}")].split(","))
            owned.add((labels["topic"].strip('"'), labels["partition"].strip('"')))
    return owned


def group_throughput(procs: Processes, bootstrap: str, workers: int, n: int, workdir: Path, *,
                     advertisers: int, base_rate: float, broker_kind: str = "apache",
                     session_timeout_ms: int = 10_000, startup_timeout: float = 90.0,
                     timeout: float | None = None, worker_env: dict[str, str] | None = None,
                     poll_s: float = 0.2) -> dict[str, Any]:
    """``workers`` worker processes in one group on a fresh, empty topic set: once the group
    has settled (every input partition owned by exactly one of them), ``n`` events are produced
    and the rate is read from the sum of their consumed counters, first event to the n-th. No
    rebalance happens while it is measured; the producer runs for the first ~1-2 s of it, in
    both the 1- and the 2-worker run."""
    from app.topics import apply_topics

    prefix = f"bench-scale{workers}-{uuid.uuid4().hex[:8]}-"
    apply_topics(bootstrap, prefix)
    expected = 0
    app_id = f"bench-scale{workers}-{uuid.uuid4().hex[:10]}"
    ws = []
    try:
        for i in range(workers):
            ws.append(start_worker(procs, bootstrap, prefix, workdir / f"w{i}", app_id=app_id,
                                   data_dir=workdir / f"w{i}" / "data", broker_kind=broker_kind,
                                   session_timeout_ms=session_timeout_ms, **(worker_env or {})))
        for w in ws:
            wait_ready(w, startup_timeout)
        owned: list[set[tuple[str, str]]] = []
        for _ in _deadline_loop(startup_timeout, 0.25, f"{workers} workers: group settled"):
            for w in ws:
                w.check_alive()
            owned = [owned_input_partitions(w) or set() for w in ws]
            union = set().union(*owned)
            expected = len(union)
            if (expected and all(owned) and sum(len(o) for o in owned) == expected
                    and all(w.ready() for w in ws)):
                break
        produced = produce_topic_set(bootstrap, prefix, n, advertisers=advertisers,
                                     base_rate=base_rate)
        first: tuple[float, float] | None = None
        cpu0: list[float | None] = []
        count = 0.0
        for _ in _deadline_loop(timeout or max(120.0, n / 1000), poll_s,
                                f"{workers} workers: {n} events consumed"):
            counts = []
            for w in ws:
                w.check_alive()
                counts.append((w.metrics() or {}).get("riskstream_events_consumed_total", 0.0))
            count = sum(counts)
            now = time.monotonic()
            if count > 0 and first is None:
                first = (now, count)
                cpu0 = [proc_cpu_seconds(w.proc.pid) for w in ws]
            if count >= produced["events"]:
                break
        assert first is not None
        secs = time.monotonic() - first[0]
        if secs <= 0:
            raise BenchError(f"{workers} workers: all events in one poll; use more events")
        cpu1 = [proc_cpu_seconds(w.proc.pid) for w in ws]
        cpu = sum((b - a) for a, b in zip(cpu0, cpu1) if a is not None and b is not None)
        return {"workers": workers, "events": int(count), "seconds": round(secs, 3),
                "events_per_s": round((produced["events"] - first[1]) / secs, 1),
                "cpu_seconds": round(cpu, 2), "cpu_share": round(cpu / secs, 2),
                "partitions_per_worker": [len(o) for o in owned], "app_id": app_id}
    finally:
        for w in ws:
            procs.stop(w.proc)


# -- 3. recovery -------------------------------------------------------------------------------
def recovery(procs: Processes, bootstrap: str, w: WorkerProc, workdir: Path, *,
             extra_events: int, advertisers: int, base_rate: float, extra_start_ms: int,
             broker_kind: str = "apache", timeout: float = 180.0) -> dict[str, Any]:
    """SIGKILL a worker that has committed everything, produce ``extra_events`` while it is down,
    start a replacement with the same app id: seconds from its start to ``/readyz`` 200 (table
    recovered) and to having consumed the extra events (caught up)."""
    inputs = [w.prefix + t for t in INPUTS]
    # 1. everything processed, checkpointed and committed (acks follow the checkpoint)
    com = hw = 0
    for _ in _deadline_loop(60.0, 0.25, f"worker {w.app_id}: commit of every input offset"):
        w.check_alive()
        com, hw = group_lag(bootstrap, w.app_id, inputs)
        if com >= hw:
            break
    state = changelog_stats(bootstrap, f"{w.app_id}-{STATE_TABLE}-changelog")
    # 2. crash
    t_kill = time.monotonic()
    procs.kill(w.proc)
    # 3. traffic keeps arriving while no worker runs
    extra = produce_topic_set(bootstrap, w.prefix, extra_events, advertisers=advertisers,
                              base_rate=base_rate, seed=12, start_ms=extra_start_ms)
    down_s = time.monotonic() - t_kill
    # 4. replacement: same app id (consumer group, changelog), same data dir
    same = {k: v for k, v in w.env.items() if k.startswith("RISKSTREAM_") and k not in (
        "RISKSTREAM_TOPIC_PREFIX", "RISKSTREAM_APP_ID", "RISKSTREAM_DATA_DIR",
        "RISKSTREAM_WEB_PORT", "RISKSTREAM_SESSION_TIMEOUT_MS", "RISKSTREAM_LOG_LEVEL")}
    w2 = start_worker(procs, bootstrap, w.prefix, workdir, app_id=w.app_id,
                      data_dir=w.data_dir, broker_kind=broker_kind,
                      session_timeout_ms=int(w.env["RISKSTREAM_SESSION_TIMEOUT_MS"]), **same)
    try:
        ready_s = wait_ready(w2, timeout)
        caught_up_s = None
        for _ in _deadline_loop(timeout, 0.1, f"replacement {w2.app_id}: catch up"):
            w2.check_alive()
            mm = w2.metrics() or {}
            if mm.get("riskstream_events_consumed_total", 0) >= extra["events"]:
                caught_up_s = time.monotonic() - w2.started
                break
        return {"recovery_s": round(ready_s, 2),
                "recovery_caught_up_s": round(caught_up_s, 2),
                **state,
                "committed_before_kill": com, "highwater_before_kill": hw,
                "events_while_down": extra["events"], "seconds_down": round(down_s, 2),
                "session_timeout_ms": int(w.env["RISKSTREAM_SESSION_TIMEOUT_MS"])}
    finally:
        procs.stop(w2.proc)


# -- 4. latency --------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list.

    >>> percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.99), percentile([5.0], 0.5)
    (10, 5.0)
    """
    if not sorted_values:
        raise ValueError("no values")
    k = max(math.ceil(q * len(sorted_values)) - 1, 0)
    return sorted_values[min(k, len(sorted_values) - 1)]


def latency(procs: Processes, bootstrap: str, workdir: Path, *, seconds: float, rate: float,
            advertisers: int, window_s: int = 5, lateness_s: int = 1,
            broker_kind: str = "apache", session_timeout_ms: int = 10_000,
            startup_timeout: float = 90.0, worker_env: dict[str, str] | None = None
            ) -> dict[str, Any]:
    """Window-close latency at a steady rate: a worker with ``window_s`` windows and
    ``lateness_s`` allowed lateness on a fresh prefix, live traffic (event time = wall clock)
    for ``seconds``; per risk-scores record: wall time consumed - window end."""
    import orjson
    from confluent_kafka import OFFSET_BEGINNING

    from app.topics import apply_topics
    from riskstream import simulate

    prefix = f"bench-lat-{uuid.uuid4().hex[:8]}-"
    apply_topics(bootstrap, prefix)
    w = start_worker(procs, bootstrap, prefix, workdir, broker_kind=broker_kind,
                     session_timeout_ms=session_timeout_ms,
                     **{**(worker_env or {}),
                        "RISKSTREAM_WINDOW_SECONDS": str(window_s),
                        "RISKSTREAM_ALLOWED_LATENESS_SECONDS": str(lateness_s)})
    consumer = None
    producer_thread = None
    produced: dict[str, Any] = {}
    try:
        wait_ready(w, startup_timeout)
        consumer = _consumer(bootstrap, **{"fetch.wait.max.ms": 10})
        tps = _partitions(consumer, [prefix + "risk-scores"])
        for tp in tps:
            tp.offset = OFFSET_BEGINNING
        consumer.assign(tps)
        now = int(time.time() * 1000)
        cfg = simulate.SimConfig(seed=13, advertisers=advertisers, duration_s=seconds + 5,
                                 base_rate_per_s=rate, start_ms=now, incidents="none")

        def run_producer() -> None:
            try:
                produced.update(simulate.produce(
                    cfg, bootstrap, prefix + INPUTS[0], prefix + INPUTS[1], max_seconds=seconds,
                    live_speedup=1.0, producer_config={"linger.ms": 5}))
            except Exception as exc:  # reported by the main thread
                produced["error"] = repr(exc)

        producer_thread = threading.Thread(target=run_producer, name="bench-live-producer",
                                           daemon=True)
        producer_thread.start()
        lat_ms: list[float] = []
        settle = window_s + lateness_s + 3.0
        t_end = time.monotonic() + seconds + settle
        while time.monotonic() < t_end:
            w.check_alive()
            msgs = consumer.consume(500, 0.1)
            t_ms = time.time() * 1000
            for m in msgs:
                if m.error() is not None or m.value() is None:
                    continue
                rec = orjson.loads(m.value())
                end = rec["window"]["end"]
                if end > now:  # windows of this run only
                    lat_ms.append(t_ms - end)
        producer_thread.join(timeout=30)
        if "error" in produced:
            raise BenchError(f"live producer failed: {produced['error']}")
        if not lat_ms:
            raise BenchError(f"latency: no risk-scores record within {seconds + settle:.0f}s:\n"
                             f"{_log_tail(w.log_path)}")
        lat_ms.sort()
        return {"latency_p50_ms": round(percentile(lat_ms, 0.50), 1),
                "latency_p99_ms": round(percentile(lat_ms, 0.99), 1),
                "latency_max_ms": round(lat_ms[-1], 1),
                "latency_min_ms": round(lat_ms[0], 1),
                "latency_samples": len(lat_ms),
                "latency_window_s": window_s, "latency_lateness_s": lateness_s,
                "latency_window_plus_lateness_ms": (window_s + lateness_s) * 1000,
                "latency_target_p99_ms": (window_s + lateness_s + 2) * 1000,
                "latency_events": produced.get("events"),
                "latency_rate_events_per_s": produced.get("events_per_s"),
                "latency_definition": "wall time a risk-scores record is consumed - window end"}
    finally:
        if consumer is not None:
            consumer.close()
        procs.stop(w.proc)


# -- 5. state bytes per advertiser -------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_state(advertisers: int, windows: int = 3, events_per_window: int = 4,
                  partitions: int = 6) -> dict[str, Any]:
    """A RiskEngine on a DictStore with ``advertisers`` advertisers that each learned
    ``windows`` closed windows (``events_per_window`` events each: impressions with clicks and
    a feedback event) and have one open window, as a live worker holds them. Returns the mean
    ``AdvertiserState.dumps()`` bytes and the RSS growth per advertiser (in-memory states +
    the serialized checkpoint in the store, like the worker's memory table). Best run in a fresh
    process (``python -m app.bench state N``)."""
    import orjson

    from riskstream.backtest import partition_for
    from riskstream.engine import SOURCES, DictStore, EngineConfig, ModelConfig, RiskEngine
    from riskstream.events import Limits, validate_feedback, validate_impression

    cfg = EngineConfig()
    limits = Limits(max_age_ms=1 << 62)
    wms, late = cfg.window_ms, cfg.lateness_ms
    now = int(time.time() * 1000)
    base = now - now % wms - (windows + 2) * wms
    ids = [f"adv-{i:06d}" for i in range(advertisers)]
    parts = [partition_for(a.encode(), partitions) for a in ids]
    regions = ("US", "GB", "DE", "FR", "BR", "IN")
    dumps = orjson.dumps
    gc.collect()
    rss0 = rss_bytes()
    store = DictStore()
    engine = RiskEngine(cfg, store, ModelConfig())
    for p in range(partitions):
        for s in SOURCES:
            engine.set_caught_up(p, s, True)
    t0 = time.perf_counter()
    n_events = outputs = 0
    for k in range(windows + 1):  # the last window stays open
        t_base = base + k * wms + late + 1  # the first event of window k closes window k-1
        for i, (adv, p) in enumerate(zip(ids, parts)):
            for j in range(events_per_window):
                t = t_base + j
                if j == events_per_window - 1 and j > 0 and (i + k) % 3 == 0:
                    raw = dumps({"event_id": f"f{k}-{i}-{j}", "event_time": t,
                                 "advertiser_id": adv, "user_id": f"u{i * 7 + j}",
                                 "kind": "hide" if (i + k) % 2 else "satisfaction",
                                 "rating": 4, "channel": "in_app"})
                    ev = validate_feedback(raw, now, limits)
                else:
                    clicked = (i + j + k) % 4 == 0
                    raw = dumps({"event_id": f"i{k}-{i}-{j}", "event_time": t,
                                 "advertiser_id": adv, "campaign_id": f"c{i % 5}",
                                 "ad_id": f"ad{i % 11}", "user_id": f"u{i * 131 + j * 17 + k}",
                                 "region": regions[(i + j) % len(regions)], "placement": "feed",
                                 "cost_micros": 1000 + (i * 37 + j) % 9000, "clicked": clicked,
                                 "click_delay_ms": 900 + j * 100 if clicked else 0,
                                 "converted": clicked and j % 2 == 0,
                                 "dwell_ms": 15000 + j * 1000 if clicked else 0})
                    ev = validate_impression(raw, now, limits)
                outputs += len(engine.process(ev, p, caught_up=True))
                n_events += 1
        engine.checkpoint()
    secs = time.perf_counter() - t0
    gc.collect()
    rss1 = rss_bytes()
    sizes = sorted(len(st.dumps()) for st in engine.iter_states())
    open_windows = [len(dumps(w.snapshot())) for st in engine.iter_states()
                    for w in st.windows.values()]
    stored = [len(v) for k, v in store.data.items() if k.startswith("a:")]
    result = {
        "advertisers": advertisers,
        "state_bytes": round(sum(sizes) / len(sizes), 1),
        "state_bytes_p50": sizes[len(sizes) // 2],
        "state_bytes_max": sizes[-1],
        "open_window_bytes": round(sum(open_windows) / max(len(open_windows), 1), 1),
        "stored_bytes": round(sum(stored) / max(len(stored), 1), 1),
        "rss_bytes": round((rss1 - rss0) / advertisers, 1),
        "learned_windows": windows, "events_per_window": events_per_window,
        "events": n_events, "outputs": outputs, "seconds": round(secs, 2),
    }
    del engine, store
    return result


def state_subprocess(advertisers: int, windows: int, events: int, procs: Processes,
                     workdir: Path, timeout: float) -> dict[str, Any]:
    """:func:`measure_state` in a fresh interpreter (clean RSS), bounded by ``timeout``."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"state-{advertisers}.json"
    log_path = workdir / f"state-{advertisers}.log"
    proc = procs.start([sys.executable, "-m", "app.bench", "state", str(advertisers),
                        "--windows", str(windows), "--events", str(events), "--out", str(out)],
                       env=_child_env(), cwd=workdir, log_path=log_path)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"state bench with {advertisers} advertisers: not done within "
                         f"{timeout:.0f}s") from None
    finally:
        procs.stop(proc)
    if proc.returncode != 0 or not out.exists():
        raise BenchError(f"state bench with {advertisers} advertisers failed "
                         f"({proc.returncode}):\n{_log_tail(log_path)}")
    return json.loads(out.read_text())


def _state_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m app.bench state")
    p.add_argument("advertisers", type=int)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--events", type=int, default=4)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    res = measure_state(a.advertisers, a.windows, a.events)
    text = json.dumps(res)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0


# -- 6. backtest -------------------------------------------------------------------------------
def backtest_throughput(n: int, advertisers: int = 1000, base_rate: float = 500.0
                        ) -> dict[str, Any]:
    """``riskstream.backtest.replay`` over ``n`` simulated events (bytes in memory); the replay
    itself is timed (decode + validate + route + engine), not the generation."""
    import itertools

    from riskstream import simulate
    from riskstream.backtest import replay

    cfg = simulate.SimConfig(seed=17, advertisers=advertisers,
                             duration_s=max(n / base_rate, 1.0) * 1.5,
                             base_rate_per_s=base_rate)
    imps: list[bytes] = []
    fbs: list[bytes] = []
    for kind, _key, value in itertools.islice(simulate.generate(cfg), n):
        (imps if kind == simulate.IMPRESSION else fbs).append(value)
    cpu0 = time.process_time()
    res = replay(imps, fbs)
    cpu_s = time.process_time() - cpu0
    out = {"events": res.events, "seconds": round(res.seconds, 3),
           "events_per_s": round(res.events_per_s, 1),
           "events_per_cpu_s": round(res.events / cpu_s, 1) if cpu_s > 0 else None,
           "windows_closed": sum(1 for o in res.outputs if o.kind == "score"),
           "alerts": len(res.alerts()), "invalid": sum(res.invalid.values())}
    del imps, fbs, res
    gc.collect()
    return out


# Run in a subprocess per measurement, from the root of the tree measured (this one or a git
# revision's): ``backtest_throughput`` has had this signature since the figure was introduced.
_BACKTEST_CHILD = ("import json, sys; from app.bench import backtest_throughput; "
                   "print(json.dumps(backtest_throughput(int(sys.argv[1]), int(sys.argv[2]), "
                   "float(sys.argv[3]))))")
# ``--sparse A``: the sparse-advertiser case of docs/performance.md ("100k advertisers on one
# worker") offline: 3 events per advertiser, one in each of 3 consecutive 60 s windows, so every
# event opens a window of its own (the first two close within the replay, the last is not due by
# its end). Self-contained (only ``replay``), so that it
# runs from any revision's tree; prints the keys ``backtest_throughput`` does.
_SPARSE_CHILD = """
import json, sys, time
import orjson
from riskstream.backtest import replay
advertisers, per, window_ms = int(sys.argv[1]), 3, 60_000
n = advertisers * per
now = 1_800_000_000_000
start = now - now % window_ms - (per + 2) * window_ms
lines = []
for i in range(n):
    adv = f"many-{i % advertisers:06d}"
    lines.append(orjson.dumps({
        "event_id": f"m{i}", "event_time": start + per * window_ms * i // n,
        "advertiser_id": adv, "campaign_id": f"{adv}-c1", "ad_id": f"{adv}-c1-a1",
        "user_id": f"u{i * 7919 % 99991}", "region": "US", "placement": "feed",
        "cost_micros": 1000 + i % 500, "clicked": i % 50 == 0,
        "click_delay_ms": 4000 if i % 50 == 0 else 0, "converted": False,
        "dwell_ms": 9000 if i % 50 == 0 else 0}))
cpu0 = time.process_time()
res = replay(lines, [], partitions=6)
cpu_s = time.process_time() - cpu0
print(json.dumps({"events": res.events, "seconds": round(res.seconds, 3),
                  "events_per_s": round(res.events_per_s, 1),
                  "events_per_cpu_s": round(res.events / cpu_s, 1),
                  "windows_closed": sum(1 for o in res.outputs if o.kind == "score"),
                  "alerts": len(res.alerts()), "invalid": sum(res.invalid.values())}))
"""


def backtest_against(rev: str | None, n: int, advertisers: int, base_rate: float,
                     rounds: int, sparse: int = 0) -> dict[str, Any]:
    """The backtest figure of this tree, and with ``rev`` the same of that git revision's code
    (``git archive`` into a temp dir), alternating round by round so that both see the same
    machine load; ratios are this tree's figure over the revision's, per round and median.
    ``sparse`` > 0: the sparse-advertiser replay (``_SPARSE_CHILD``) of that many advertisers
    instead of the simulated ``n`` events."""
    child = ([_SPARSE_CHILD, str(sparse)] if sparse else
             [_BACKTEST_CHILD, str(n), str(advertisers), str(base_rate)])

    def measure(tree: Path) -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out = subprocess.run([sys.executable, "-c", *child], cwd=tree, env=env,
                             check=True, capture_output=True, text=True, timeout=900)
        return json.loads(out.stdout.strip().splitlines()[-1])

    result: dict[str, Any] = {"events": n, "advertisers": advertisers, "base_rate": base_rate,
                              "sparse": sparse}
    result.update(alternate_trees(rev, rounds, measure))
    return result


@contextlib.contextmanager
def _trees(rev: str | None) -> Iterator[dict[str, Path]]:
    """{"this tree": its root}, and with ``rev`` first {rev: a ``git archive`` of it in a temp
    dir}, removed afterwards."""
    root = Path(__file__).resolve().parents[1]
    if not rev:
        yield {"this tree": root}
        return
    tmp = Path(tempfile.mkdtemp(prefix="riskstream-bench-rev-"))
    try:
        archive = subprocess.run(["git", "-C", str(root), "archive", rev], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        yield {rev: tmp, "this tree": root}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def alternate_trees(rev: str | None, rounds: int, measure: Callable[[Path], dict[str, Any]]
                    ) -> dict[str, Any]:
    """``measure(tree)`` for this tree and (with ``rev``) that revision's, alternating round by
    round so both see the same machine load: ``{"runs": {name: [figures]}}`` and with ``rev``
    ``ratio_events_per_s`` / ``ratio_events_per_cpu_s`` (this tree / rev, per round sorted, and
    the median)."""
    with _trees(rev) as trees:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for i in range(rounds):
            for name, tree in trees.items():
                fig = measure(tree)
                runs[name].append(fig)
                log(f"round {i + 1} {name}: {fig['events_per_s']:,.0f} events/s, "
                    f"{fig['events_per_cpu_s'] or 0:,.0f} events/CPU-s")
    result: dict[str, Any] = {"runs": runs}
    if rev:
        for key in ("events_per_s", "events_per_cpu_s"):
            ratios = sorted(new[key] / old[key] for new, old in zip(runs["this tree"], runs[rev])
                            if new[key] and old[key])
            if ratios:
                result[f"ratio_{key}"] = {"per_round": [round(r, 3) for r in ratios],
                                          "median": round(ratios[len(ratios) // 2], 3)}
    return result


def _against_parser(what: str, description: str, events: int) -> argparse.ArgumentParser:
    """The options ``python -m app.bench backtest|worker`` share."""
    quick = PROFILES["quick"]
    p = argparse.ArgumentParser(prog=f"python -m app.bench {what}", description=description)
    p.add_argument("--events", type=int, default=events)
    p.add_argument("--advertisers", type=int, default=quick.advertisers)
    p.add_argument("--base-rate", type=float, default=quick.base_rate)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--against", metavar="REV", help="git revision to compare with")
    p.add_argument("--json", dest="json_path")
    return p


def _backtest_main(argv: list[str]) -> int:
    p = _against_parser("backtest", "only the backtest figure (no broker); with --against REV, "
                        "also that git revision's, alternating, and the ratios",
                        PROFILES["quick"].backtest_events)
    p.add_argument("--sparse", type=int, default=0, metavar="ADVERTISERS",
                   help="instead: the sparse-advertiser replay, 3 events (3 windows) each")
    a = p.parse_args(argv)
    res = backtest_against(a.against, a.events, a.advertisers, a.base_rate, a.rounds,
                           a.sparse)
    _print_against(res, a.json_path)
    return 0


def _print_against(res: dict[str, Any], json_path: str | None) -> None:
    for key in ("ratio_events_per_s", "ratio_events_per_cpu_s"):
        if key in res:
            print(f"{key}: median {res[key]['median']} (rounds {res[key]['per_round']})")
    for name, figs in res["runs"].items():
        best = max(figs, key=lambda f: f["events_per_cpu_s"] or 0)
        eps = sorted(f["events_per_s"] for f in figs)
        cpu = sorted(f["events_per_cpu_s"] or 0 for f in figs)
        print(f"{name}: median {eps[len(eps) // 2]:,.0f} events/s, {cpu[len(cpu) // 2]:,.0f} "
              f"events/CPU-s; best round {best['events_per_s']:,.0f} events/s, "
              f"{best['events_per_cpu_s'] or 0:,.0f} events/CPU-s")
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2) + "\n")


def worker_against(rev: str | None, n: int, advertisers: int, base_rate: float, rounds: int,
                   bootstrap: str | None = None, worker_env: dict[str, str] | None = None,
                   broker_kind: str = "apache") -> dict[str, Any]:
    """The worker figure (:func:`worker_throughput`) of this tree, and with ``rev`` of that git
    revision's code (``PYTHONPATH`` to a ``git archive``), alternating round by round over ONE
    pre-produced topic set, each run a fresh worker (new app id: reads it all from the start).
    Starts Apache Kafka unless ``bootstrap`` is given."""
    from app import brokers
    from app.topics import apply_topics

    workdir = Path(tempfile.mkdtemp(prefix="riskstream-bench-worker-"))
    procs = Processes()
    broker = None
    try:
        if not bootstrap:
            broker = brokers.start_apache_kafka(workdir / "broker", die_with_parent=True)
            bootstrap = broker.bootstrap
        prefix = f"bench-{uuid.uuid4().hex[:8]}-"
        apply_topics(bootstrap, prefix)
        produced = produce_topic_set(bootstrap, prefix, n, advertisers=advertisers,
                                     base_rate=base_rate)
        count = produced["events"]

        def measure(tree: Path) -> dict[str, Any]:
            fig, w = worker_throughput(procs, bootstrap, prefix, count, workdir / "worker",
                                       broker_kind=broker_kind,
                                       worker_env={"PYTHONPATH": str(tree),
                                                   **(worker_env or {})})
            procs.stop(w.proc)
            return fig

        result: dict[str, Any] = {"events": count, "advertisers": advertisers,
                                  "base_rate": base_rate, "worker_env": worker_env or {}}
        result.update(alternate_trees(rev, rounds, measure))
        return result
    finally:
        procs.stop_all()
        if broker is not None:
            brokers.stop(broker)
        shutil.rmtree(workdir, ignore_errors=True)


def _worker_main(argv: list[str]) -> int:
    p = _against_parser("worker", "only the worker figure over one pre-produced topic set; "
                        "with --against REV, also that git revision's worker, alternating, "
                        "and the ratios", PROFILES["quick"].events)
    p.add_argument("--bootstrap", help="a running broker (default: start Apache Kafka)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="a worker setting for every run (repeatable)")
    a = p.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in a.env)
    res = worker_against(a.against, a.events, a.advertisers, a.base_rate, a.rounds,
                         a.bootstrap, env)
    _print_against(res, a.json_path)
    return 0


# -- the run -----------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, Any] = {"cpu_count": os.cpu_count(),
                            "python_version": platform.python_version(),
                            "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError):
        info["sched_affinity"] = len(os.sched_getaffinity(0))
    versions = {}
    for pkg in ("faust-streaming", "aiokafka", "confluent-kafka", "orjson", "river"):
        with contextlib.suppress(PackageNotFoundError):
            versions[pkg] = version(pkg)
    info["packages"] = versions
    return info


def git_commit() -> dict[str, Any]:
    def git(*a: str) -> str | None:
        try:
            r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                               timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table_rows(r: dict[str, Any]) -> list[tuple[str, Any, str]]:
    rows: list[tuple[str, Any, str]] = [
        ("N (pre-produced events)", r.get("N"), "events"),
        ("bare_loop_events_per_s", r.get("bare_loop_events_per_s"), "events/s"),
        ("faust_noop_events_per_s", r.get("faust_noop_events_per_s"), "events/s"),
        ("worker_events_per_s", r.get("worker_events_per_s"), "events/s"),
        ("ratio_vs_faust_noop", r.get("ratio_vs_faust_noop"), "x (target >= 0.9)"),
        ("ratio_vs_bare_loop", r.get("ratio_vs_bare_loop"), "x (target >= 0.06, aim 0.25)"),
        ("bare_loop_events_per_cpu_s", r.get("bare_loop_events_per_cpu_s"), "events/CPU-s"),
        ("faust_noop_events_per_cpu_s", r.get("faust_noop_events_per_cpu_s"), "events/CPU-s"),
        ("worker_events_per_cpu_s", r.get("worker_events_per_cpu_s"), "events/CPU-s"),
        ("cpu_ratio_vs_faust_noop", r.get("cpu_ratio_vs_faust_noop"), "x, per CPU-second"),
        ("cpu_ratio_vs_bare_loop", r.get("cpu_ratio_vs_bare_loop"), "x, per CPU-second"),
        ("worker_kafka_transport_events_per_s", r.get("worker_kafka_transport_events_per_s"),
         "events/s, the worker on Faust's stock transport (RISKSTREAM_TRANSPORT=kafka)"),
        ("ratio_kafka_transport_vs_faust_noop", r.get("ratio_kafka_transport_vs_faust_noop"),
         "x"),
        ("ratio_kafka_transport_vs_bare_loop", r.get("ratio_kafka_transport_vs_bare_loop"), "x"),
        (f"worker_events_per_s @ {_fmt(r.get('many_advertisers'))} advertisers",
         r.get("many_advertisers_events_per_s"), "events/s, all active at once"),
        ("ratio_many_vs_1k_advertisers", r.get("ratio_many_vs_1k_advertisers"), "x"),
        ("rss_bytes per advertiser, live worker",
         r.get("many_advertisers_rss_bytes_per_advertiser"), "bytes (whole process / advertisers)"),
        ("scale_out_ratio_2v1", r.get("scale_out_ratio_2v1"),
         "x, 2 worker processes vs 1 (one group, same machine)"),
        ("latency_p50_ms", r.get("latency_p50_ms"), "ms after window end"),
        ("latency_p99_ms", r.get("latency_p99_ms"),
         f"ms (target < {_fmt(r.get('latency_target_p99_ms'))})"),
    ]
    for n, b in (r.get("bytes_per_advertiser") or {}).items():
        rows.append((f"state_bytes @ {int(n):,} advertisers", b.get("state_bytes"),
                     "bytes/advertiser (target < 4096)"))
        rows.append((f"rss_bytes   @ {int(n):,} advertisers", b.get("rss_bytes"),
                     "bytes/advertiser"))
    rows.append((f"state_bytes steady ({_fmt(r.get('state_steady_windows'))} windows)",
                 r.get("state_bytes_steady"), "bytes/advertiser (target < 4096)"))
    rows += [
        ("recovery_s (start -> /readyz 200)", r.get("recovery_s"), "s"),
        ("recovery_caught_up_s", r.get("recovery_caught_up_s"), "s"),
        ("backtest_events_per_s", r.get("backtest_events_per_s"), "events/s (target >= 100k)"),
    ]
    return rows


def print_table(r: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout
    rows = table_rows(r)
    w = max(len(n) for n, _v, _u in rows)
    vw = max(len(_fmt(v)) for _n, v, _u in rows)
    print(f"{'name':<{w}}  {'value':>{vw}}  unit", file=out)
    print(f"{'-' * w}  {'-' * vw}  {'-' * 4}", file=out)
    for name, value, unit in rows:
        print(f"{name:<{w}}  {_fmt(value):>{vw}}  {unit}", file=out)
    if r.get("targets"):
        print("targets: " + ", ".join(f"{k} {'n/a' if ok is None else 'met' if ok else 'NOT met'}"
                                      for k, ok in r["targets"].items()), file=out)
    loads = [v for pair in (r.get("load_avg_1m") or {}).values() for v in pair]
    cpus = (r.get("machine") or {}).get("cpu_count") or 1
    if loads:
        print(f"load average (1 min) during the parts: {min(loads):.1f}-{max(loads):.1f} on "
              f"{cpus} CPUs" + ("  WARNING: other load on the machine; the events/CPU-s "
                                "figures are the steadier ones" if max(loads) > cpus + 1 else ""),
              file=out)
    for w in r.get("warnings") or []:
        print(f"WARNING: {w}", file=out)
    if r.get("git_commit_end"):
        print(f"WARNING: the checkout changed during the run ({(r.get('git_commit') or '?')[:12]}"
              f" -> {r['git_commit_end'][:12]})", file=out)
    for name, err in (r.get("errors") or {}).items():
        print(f"ERROR in {name}: {err.splitlines()[0] if err else err}", file=out)


def evaluate_targets(r: dict[str, Any]) -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    for key, (_op, value, _text) in TARGETS.items():
        v = r.get(key)
        out[key] = None if v is None else v >= value
    p99, target = r.get("latency_p99_ms"), r.get("latency_target_p99_ms")
    out["latency_p99_ms"] = None if p99 is None or target is None else p99 < target
    sizes = [b.get("state_bytes") for b in (r.get("bytes_per_advertiser") or {}).values()]
    sizes.append(r.get("state_bytes_steady"))
    out["state_bytes"] = (None if not sizes or None in sizes
                          else max(sizes) < STATE_TARGET_BYTES)
    return out


def run_all(bootstrap: str | None, profile: Profile, *, broker_kind: str = "apache",
            workdir: Path, procs: Processes) -> dict[str, Any]:
    """Every measurement of :class:`Profile` in turn; one failing part leaves the others (its
    keys are None and ``errors[part]`` says why)."""
    from app.topics import apply_topics

    r: dict[str, Any] = {k: None for k in REQUIRED_KEYS}
    r.update({"recovery_caught_up_s": None, "bytes_per_advertiser": {}, "errors": {},
              "details": {}, "state_bytes_steady": None, "warnings": []})
    t_run = time.monotonic()
    errors: dict[str, str] = r["errors"]
    details: dict[str, Any] = r["details"]
    timings: dict[str, float] = {}
    r["timings_s"] = timings

    load: dict[str, list[float]] = {}
    r["load_avg_1m"] = load

    def part(name: str, fn: Callable[[], Any]) -> Any:
        log(f"{name} ...")
        t0 = time.monotonic()
        load[name] = [round(os.getloadavg()[0], 2)]
        try:
            return fn()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} FAILED: {exc}")
            traceback.print_exc(file=sys.stderr)
            return None
        finally:
            timings[name] = round(time.monotonic() - t0, 1)
            load[name].append(round(os.getloadavg()[0], 2))
            log(f"{name} done in {timings[name]:.1f}s")

    if bootstrap:
        prefix = f"bench-{uuid.uuid4().hex[:8]}-"
        inputs = [prefix + t for t in INPUTS]

        def produce() -> dict[str, Any]:
            apply_topics(bootstrap, prefix)
            return produce_topic_set(bootstrap, prefix, profile.events,
                                     advertisers=profile.advertisers, base_rate=profile.base_rate)

        produced = part("produce", produce)
        if produced:
            n = produced["events"]
            r["N"] = n
            details["produce"] = produced
            r["topic_prefix"] = prefix
            bare = part("bare_loop", lambda: bare_loop(bootstrap, inputs, n))
            if bare:
                details["bare_loop"] = bare
                r["bare_loop_events_per_s"] = bare["events_per_s"]
            noop = part("faust_noop", lambda: faust_noop(
                bootstrap, inputs, n, workdir / "noop", procs,
                startup_timeout=profile.startup_timeout_s))
            if noop:
                details["faust_noop"] = noop
                r["faust_noop_events_per_s"] = noop["events_per_s"]
            got = part("worker", lambda: worker_throughput(
                procs, bootstrap, prefix, n, workdir / "worker", broker_kind=broker_kind,
                session_timeout_ms=profile.session_timeout_ms,
                startup_timeout=profile.startup_timeout_s, worker_env=dict(profile.worker_env),
                poll_s=profile.poll_s))
            if got:
                wres, wproc = got
                details["worker"] = wres
                r["worker_events_per_s"] = wres["events_per_s"]
                rec = part("recovery", lambda: recovery(
                    procs, bootstrap, wproc, workdir / "worker",
                    extra_events=profile.recovery_extra_events,
                    advertisers=profile.advertisers, base_rate=profile.base_rate,
                    extra_start_ms=produced["end_ms"], broker_kind=broker_kind))
                procs.stop(wproc.proc)  # killed by recovery(), unless it failed before
                if rec:
                    details["recovery"] = rec
                    r["recovery_s"] = rec["recovery_s"]
                    r["recovery_caught_up_s"] = rec["recovery_caught_up_s"]
            if profile.stock_transport_worker:
                got_rs = part("worker_kafka_transport", lambda: worker_throughput(
                    procs, bootstrap, prefix, n, workdir / "worker-riskstream",
                    broker_kind=broker_kind, session_timeout_ms=profile.session_timeout_ms,
                    startup_timeout=profile.startup_timeout_s, poll_s=profile.poll_s,
                    worker_env={**dict(profile.worker_env),
                                "RISKSTREAM_TRANSPORT": "kafka"}))
                if got_rs:
                    procs.stop(got_rs[1].proc)
                    details["worker_kafka_transport"] = got_rs[0]
                    rs_eps = r["worker_kafka_transport_events_per_s"] = got_rs[0]["events_per_s"]
                    if r["faust_noop_events_per_s"]:
                        r["ratio_kafka_transport_vs_faust_noop"] = round(
                            rs_eps / r["faust_noop_events_per_s"], 3)
                    if r["bare_loop_events_per_s"]:
                        r["ratio_kafka_transport_vs_bare_loop"] = round(
                            rs_eps / r["bare_loop_events_per_s"], 4)
            for name in ("bare_loop", "faust_noop", "worker"):
                r[f"{name}_events_per_cpu_s"] = (details.get(name) or {}).get("events_per_cpu_s")
            w_cpu = r["worker_events_per_cpu_s"]
            if w_cpu and r["faust_noop_events_per_cpu_s"]:
                r["cpu_ratio_vs_faust_noop"] = round(w_cpu / r["faust_noop_events_per_cpu_s"], 3)
            if w_cpu and r["bare_loop_events_per_cpu_s"]:
                r["cpu_ratio_vs_bare_loop"] = round(w_cpu / r["bare_loop_events_per_cpu_s"], 4)
            for name in ("faust_noop", "worker"):
                share = (details.get(name) or {}).get("cpu_share")
                if share is not None and share < 0.85:
                    r["warnings"].append(
                        f"{name} got {share:.0%} of a CPU while measured (other load?): its "
                        "events/s understate it; compare the events/CPU-s figures")
            w_eps = r["worker_events_per_s"]
            if w_eps and r["faust_noop_events_per_s"]:
                r["ratio_vs_faust_noop"] = round(w_eps / r["faust_noop_events_per_s"], 3)
            if w_eps and r["bare_loop_events_per_s"]:
                r["ratio_vs_bare_loop"] = round(w_eps / r["bare_loop_events_per_s"], 4)
        if profile.many_advertisers:
            many = part("many_advertisers", lambda: many_advertisers(
                procs, bootstrap, workdir / "many", advertisers=profile.many_advertisers,
                per_advertiser=profile.many_events_per_advertiser, broker_kind=broker_kind,
                session_timeout_ms=profile.session_timeout_ms,
                startup_timeout=profile.startup_timeout_s, worker_env=dict(profile.worker_env),
                poll_s=profile.poll_s))
            if many:
                details["many_advertisers"] = many
                r["many_advertisers"] = many["advertisers"]
                r["many_advertisers_events_per_s"] = many["events_per_s"]
                r["many_advertisers_rss_bytes_per_advertiser"] = many["rss_bytes_per_advertiser"]
                if r["worker_events_per_s"]:
                    r["ratio_many_vs_1k_advertisers"] = round(
                        many["events_per_s"] / r["worker_events_per_s"], 3)
        if profile.scale_events:
            scale: dict[int, Any] = {}
            for k in (1, 2):
                got_k = part(f"scale_{k}", lambda k=k: group_throughput(
                    procs, bootstrap, k, profile.scale_events, workdir / f"scale{k}",
                    advertisers=profile.advertisers, base_rate=profile.base_rate,
                    broker_kind=broker_kind, session_timeout_ms=profile.session_timeout_ms,
                    startup_timeout=profile.startup_timeout_s,
                    worker_env=dict(profile.worker_env), poll_s=profile.poll_s))
                if got_k:
                    details[f"scale_{k}"] = scale[k] = got_k
            if len(scale) == 2:
                r["scale_out_ratio_2v1"] = round(scale[2]["events_per_s"]
                                                 / scale[1]["events_per_s"], 3)
        lat = part("latency", lambda: latency(
            procs, bootstrap, workdir / "latency", seconds=profile.latency_seconds,
            rate=profile.latency_rate, advertisers=profile.latency_advertisers,
            window_s=profile.latency_window_s, lateness_s=profile.latency_lateness_s,
            broker_kind=broker_kind, session_timeout_ms=profile.session_timeout_ms,
            startup_timeout=profile.startup_timeout_s, worker_env=dict(profile.worker_env)))
        if lat:
            details["latency"] = lat
            for k, v in lat.items():
                if k.startswith("latency_"):
                    r[k] = v

    per_adv: dict[str, Any] = r["bytes_per_advertiser"]
    backtest_reserve = 15.0 + profile.backtest_events / 15_000  # its own estimate
    for size in list(profile.state_sizes) + list(profile.state_optional):
        if size in profile.state_optional and per_adv:
            done = max(int(k) for k in per_adv)  # time grows ~linearly with advertisers
            estimate = details[f"state_{done}"]["seconds"] * size / done * 1.3 + 3
            left = profile.total_budget_s - (time.monotonic() - t_run) - backtest_reserve
            if estimate > left:
                log(f"state @ {size:,} advertisers skipped: ~{estimate:.0f}s estimated, "
                    f"{max(left, 0):.0f}s left of the {profile.name} budget")
                r.setdefault("skipped", []).append(f"state_{size}")
                continue
        st = part(f"state_{size}", lambda size=size: state_subprocess(
            size, profile.state_windows, profile.state_events, procs, workdir / "state",
            timeout=max(120.0, size * 0.01 * profile.state_windows)))
        if st:
            details[f"state_{size}"] = st
            per_adv[str(size)] = {"state_bytes": st["state_bytes"], "rss_bytes": st["rss_bytes"],
                                  "learned_windows": st["learned_windows"]}
    n_steady = profile.state_steady_advertisers
    st = part("state_steady", lambda: state_subprocess(
        n_steady, profile.state_steady_windows, 2, procs, workdir / "state-steady",
        timeout=max(120.0, n_steady * 0.01 * profile.state_steady_windows)))
    if st:
        details["state_steady"] = st
        r["state_bytes_steady"] = st["state_bytes"]
        r["state_steady_windows"] = st["learned_windows"]

    bt = part("backtest", lambda: backtest_throughput(profile.backtest_events,
                                                      profile.advertisers, profile.base_rate))
    if bt:
        details["backtest"] = bt
        r["backtest_events_per_s"] = bt["events_per_s"]
    return r


def _profile_for(args: Any, profile: str | Profile | None) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile is None:
        profile = ("smoke" if getattr(args, "smoke", False)
                   else "quick" if getattr(args, "quick", False) else "full")
    return PROFILES[profile]


def run_bench(args: Any, settings: Any = None, profile: str | Profile | None = None) -> int:
    """``riskstream bench``: 0 when every part produced its figures, 1 otherwise.

    ``args``: ``quick``, ``json_path``, ``bootstrap`` (as the CLI parses them); optional
    ``smoke`` (tiny sizes, for the test) and ``broker_kind`` of a given ``bootstrap``.
    ``profile`` (a name of :data:`PROFILES` or a :class:`Profile`) overrides both flags.
    """
    from app import brokers

    prof = _profile_for(args, profile)
    bootstrap = getattr(args, "bootstrap", None)
    broker_kind = getattr(args, "broker_kind", None) or ("external" if bootstrap else "apache")
    workdir = Path(tempfile.mkdtemp(prefix="riskstream-bench-"))
    procs = Processes()
    broker = None
    started = time.time()
    t0 = time.monotonic()
    result: dict[str, Any] = {}
    previous_handler = None

    def on_sigterm(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    ok = False
    git_start = git_commit()  # what is measured: workers import the code as they start
    try:
        log(f"profile {prof.name}: {prof.events:,} events, work dir {workdir}")
        if not bootstrap:
            broker = brokers.start_apache_kafka(workdir / "broker", die_with_parent=True)
            bootstrap = broker.bootstrap
            broker_kind = broker.kind
            log(f"Apache Kafka {brokers.KAFKA_VERSION} at {bootstrap} "
                f"(ready in {broker.startup_seconds}s)")
        result = run_all(bootstrap, prof, broker_kind=broker_kind, workdir=workdir, procs=procs)
        ok = not result["errors"]
    finally:
        procs.stop_all()
        if broker is not None:
            try:
                brokers.stop(broker)
            except Exception as exc:
                log(f"could not stop the broker (pid {broker.pid}): {exc}")
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # keep the logs, not the broker's data (hundreds of MB after a full run)
            shutil.rmtree(workdir / "broker" / "kafka-data", ignore_errors=True)
            log(f"logs kept in {workdir}")
    result.update({
        "profile": prof.name, "profile_settings": asdict(prof),
        "broker": {"kind": broker_kind, "bootstrap": bootstrap,
                   "version": brokers.KAFKA_VERSION if broker_kind == "apache" else None},
        "machine": machine_info(), **git_start,
        "command": " ".join(["riskstream", *sys.argv[1:]])
        if Path(sys.argv[0]).name in ("riskstream", "cli.py") else " ".join(sys.argv),
        "argv": list(sys.argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "total_seconds": round(time.monotonic() - t0, 1),
    })
    git_end = git_commit()
    if git_end["git_commit"] != git_start["git_commit"]:
        result["git_commit_end"] = git_end["git_commit"]
    result["targets"] = evaluate_targets(result)
    print_table(result)
    print(f"(profile {prof.name}, {result['total_seconds']:.0f}s, commit "
          f"{(result.get('git_commit') or '?')[:12]}{' dirty' if result.get('git_dirty') else ''})")
    json_path = getattr(args, "json_path", None)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
        print(f"figures written to {json_path}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "noop":
        return _noop_main(argv[1:])
    if argv and argv[0] == "state":
        return _state_main(argv[1:])
    if argv and argv[0] == "backtest":
        return _backtest_main(argv[1:])
    if argv and argv[0] == "worker":
        return _worker_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m app.bench",
                                description="run the benchmark (same as `riskstream bench`), "
                                            "or a helper: noop ..., state N ..., backtest ..., "
                                            "worker ...")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", dest="json_path")
    p.add_argument("--bootstrap")
    p.add_argument("--broker-kind", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile", choices=sorted(PROFILES),
                   help="a named profile instead of --quick's or the full one "
                        "(many-100k: the 100k-advertiser worst case alone)")
    args = p.parse_args(argv)
    return run_bench(args, profile=args.profile)


if __name__ == "__main__":
    sys.exit(main())
