"""Tests of app/brokers.py: state file, port choice, stop semantics; real brokers under
the ``integration`` marker."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from app import brokers
from app.brokers import BrokerInfo

# The session broker fixture ``kafka_broker`` comes from the plugin registered in conftest.py.


def _spawn_group(script: str) -> subprocess.Popen:
    """A process-group leader running ``script`` (python), like a started broker."""
    return subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.PIPE, text=True)


def _record(tmp_path: Path, proc: subprocess.Popen, kind: str = "embedded") -> BrokerInfo:
    info = BrokerInfo(kind=kind, bootstrap="127.0.0.1:1", pid=proc.pid, state_dir=tmp_path,
                      log_file=tmp_path / "broker.log",
                      pid_start=brokers._proc_start_time(proc.pid))
    brokers.write_state(info)
    return info


# -- ports -----------------------------------------------------------------------------------
def test_free_port_is_bindable_on_loopback():
    port = brokers.free_port()
    assert 1024 < port < 65536
    assert brokers.port_is_free(port)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(brokers.socket.socket, "getsockname", lambda self: ("127.0.0.1", port))
        with pytest.raises(brokers.BrokerError):
            brokers.free_port(exclude={port})


def test_port_is_free_sees_listeners():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not brokers.port_is_free(s.getsockname()[1])


# -- state file ------------------------------------------------------------------------------
def test_no_state_means_no_broker(tmp_path):
    assert brokers.status(tmp_path) is None
    assert brokers.local_bootstrap(tmp_path) is None
    assert brokers.stop(tmp_path) is False
    (tmp_path / brokers.STATE_FILE).write_text("{not json")
    assert brokers.status(tmp_path) is None


def test_state_roundtrip_for_a_live_process(tmp_path):
    info = BrokerInfo(kind="apache", bootstrap="127.0.0.1:39092", pid=os.getpid(),
                      state_dir=tmp_path, log_file=tmp_path / "broker.log",
                      startup_seconds=3.2, pid_start=brokers._proc_start_time(os.getpid()))
    brokers.write_state(info)
    assert brokers.read_state(tmp_path) == info
    st = brokers.status(tmp_path)
    assert st is not None and st["running"] is True
    assert (st["kind"], st["bootstrap"], st["pid"]) == ("apache", "127.0.0.1:39092", os.getpid())
    assert brokers.local_bootstrap(tmp_path) == "127.0.0.1:39092"


def test_dead_or_recycled_pid_is_not_running(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _record(tmp_path, proc)
    assert brokers.status(tmp_path) is None
    assert brokers.local_bootstrap(tmp_path) is None
    # a live PID whose start time differs from the recorded one is someone else's process
    brokers.write_state(BrokerInfo(kind="embedded", bootstrap="127.0.0.1:1", pid=os.getpid(),
                                   state_dir=tmp_path, pid_start="1"))
    assert brokers.status(tmp_path) is None
    assert brokers.stop(tmp_path) is False  # and it is never signalled


# -- stop ------------------------------------------------------------------------------------
def test_stop_terminates_the_whole_process_group(tmp_path):
    # a leader with a grandchild, both in the broker's process group
    proc = _spawn_group(
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(60)\n")
    grandchild = int(proc.stdout.readline())
    _record(tmp_path, proc)
    assert brokers.status(tmp_path)["pid"] == proc.pid
    t0 = time.monotonic()
    assert brokers.stop(tmp_path, timeout=10) is True
    assert time.monotonic() - t0 < 5
    assert proc.wait(5) == -signal.SIGTERM
    deadline = time.monotonic() + 5
    while brokers.pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not brokers.pid_alive(grandchild)
    assert not (tmp_path / brokers.STATE_FILE).exists()
    assert brokers.stop(tmp_path) is False


def test_stop_escalates_to_sigkill(tmp_path):
    proc = _spawn_group(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n")
    assert proc.stdout.readline().strip() == "ready"
    info = _record(tmp_path, proc)
    assert brokers.stop(info, timeout=0.5) is True
    assert proc.wait(5) == -signal.SIGKILL


# -- configuration ---------------------------------------------------------------------------
def test_server_properties_single_node_on_loopback(tmp_path):
    text = brokers.server_properties(39092, 39093, tmp_path / "data",
                                     {"num.partitions": 3, "auto.create.topics.enable": False})
    props = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert props["advertised.listeners"].startswith("PLAINTEXT://127.0.0.1:39092,")
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:39093"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["num.partitions"] == "3"  # override wins
    assert props["auto.create.topics.enable"] == "false"
    assert "0.0.0.0" not in text
    (tmp_path / "server.properties").write_text(text)
    assert brokers._previous_ports(tmp_path / "server.properties") == (39092, 39093)
    assert brokers._previous_ports(tmp_path / "missing.properties") is None


def test_log4j2_config_writes_to_the_state_dir(tmp_path):
    text = brokers.log4j2_properties(tmp_path / "broker.log", "WARN")
    assert f"fileName = {tmp_path / 'broker.log'}" in text
    assert "rootLogger.level = WARN" in text
    assert "shutdownHook = disable" in text


def test_cluster_id_is_a_kafka_uuid():
    for _ in range(20):
        cid = brokers.new_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_kafka_libs_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("RISKSTREAM_KAFKA_LIBS", str(tmp_path / "libs"))
    assert brokers.kafka_libs_dir() == tmp_path / "libs"
    monkeypatch.delenv("RISKSTREAM_KAFKA_LIBS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert brokers.kafka_libs_dir() == (tmp_path / "cache" / "riskstream"
                                        / f"kafka-{brokers.KAFKA_VERSION}" / "lib")


def test_missing_jars_without_maven_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(brokers.shutil, "which", lambda name: None)
    with pytest.raises(brokers.BrokerError, match="mvn"):
        brokers.ensure_kafka_libs(tmp_path / "libs")


def test_cached_jars_are_reused_without_maven(monkeypatch, tmp_path):
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / f"kafka_2.13-{brokers.KAFKA_VERSION}.jar").touch()
    (libs / "log4j-slf4j-impl-2.24.3.jar").touch()
    monkeypatch.setattr(brokers.shutil, "which", lambda name: None)
    assert brokers.ensure_kafka_libs(libs) == libs


@pytest.mark.parametrize("tools,expected", [
    ({"java", "mvn"}, "apache"),
    ({"java"}, "embedded"),
    ({"mvn"}, "embedded"),
    (set(), "embedded"),
])
def test_choose_kind_auto(monkeypatch, tmp_path, tools, expected):
    monkeypatch.setenv("RISKSTREAM_KAFKA_LIBS", str(tmp_path / "empty"))
    monkeypatch.setattr(brokers.shutil, "which",
                        lambda name: f"/usr/bin/{name}" if name in tools else None)
    kind, reason = brokers.choose_kind("auto")
    assert kind == expected and reason.startswith("auto")
    assert brokers.choose_kind("embedded") == ("embedded", "requested")
    with pytest.raises(brokers.BrokerError):
        brokers.choose_kind("zookeeper")


def test_faust_settings_per_kind():
    apache = brokers.faust_settings("apache")
    assert apache["broker_session_timeout"] == 10.0
    assert brokers.faust_settings("embedded")["broker_session_timeout"] == 6.0
    assert apache["broker_heartbeat_interval"] < apache["broker_session_timeout"] / 3
    assert "producer_max_batch_size" not in apache
    assert brokers.faust_settings("embedded", 6)["producer_max_batch_size"] == 1
    assert BrokerInfo("external", "h:1").faust_settings() == brokers.faust_settings("external")


def test_import_has_no_side_effects():
    code = ("import threading; "
            "import app.brokers as b; "
            "assert not b._children; assert threading.active_count() == 1; "
            "print('ok')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(brokers.__file__).resolve().parent.parent, env=env)
    assert out.stdout.strip() == "ok", out.stderr


# -- real brokers ----------------------------------------------------------------------------
def _roundtrip(bootstrap: str) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"rt-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, 6, 1)]).values():
        fut.result(30)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(20):
        producer.produce(topic, key=str(i).encode(), value=b"v%d" % i)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic,
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    seen: set[bytes] = set()
    deadline = time.monotonic() + 60
    try:
        while len(seen) < 20 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                seen.add(msg.value())
    finally:
        consumer.close()
    assert len(seen) == 20


@pytest.mark.integration
def test_session_broker_roundtrip(kafka_broker):
    assert kafka_broker.kind in ("apache", "embedded", "external")
    _roundtrip(kafka_broker.bootstrap)


@pytest.mark.integration
def test_embedded_start_status_stop(tmp_path):
    info = brokers.start_embedded(tmp_path, die_with_parent=True)
    try:
        assert info.kind == "embedded" and info.bootstrap.startswith("127.0.0.1:")
        assert info.startup_seconds is not None and info.startup_seconds < 10
        assert brokers.local_bootstrap(tmp_path) == info.bootstrap
        with pytest.raises(brokers.BrokerAlreadyRunning):
            brokers.start_embedded(tmp_path)
        _roundtrip(info.bootstrap)
    finally:
        assert brokers.stop(tmp_path) is True
    assert brokers.status(tmp_path) is None
    assert not brokers.pid_alive(info.pid)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("java") is None, reason="the apache broker needs java")
def test_apache_start_restart_keeps_data_and_port(tmp_path):
    info = brokers.start_apache_kafka(tmp_path, die_with_parent=True)
    try:
        assert info.kind == "apache"
        assert (tmp_path / "broker.log").is_file()
        _roundtrip(info.bootstrap)
        from confluent_kafka.admin import AdminClient

        topics = set(AdminClient({"bootstrap.servers": info.bootstrap})
                     .list_topics(timeout=10).topics)
    finally:
        assert brokers.stop(info) is True
    assert brokers.local_bootstrap(tmp_path) is None
    again = brokers.start_apache_kafka(tmp_path, die_with_parent=True)
    try:
        assert again.bootstrap == info.bootstrap  # port=0 reuses the previous port
        from confluent_kafka.admin import AdminClient

        after = set(AdminClient({"bootstrap.servers": again.bootstrap})
                    .list_topics(timeout=10).topics)
        assert topics <= after
    finally:
        brokers.stop(again)
    assert not brokers.pid_alive(again.pid)
