"""Security basics. Unit level (fakes for the network clients): SASL/SCRAM and TLS settings from
the environment reach every Kafka client riskstream builds -- the Faust app (aiokafka), the
worker's model-control reader, and the confluent-kafka producers/consumers/admin behind
``riskstream topics``, ``simulate``, ``models`` and ``alerts`` -- and the password never shows
in logs, reprs or ``riskstream settings``; the web server binds where it is told. For real: an
Apache Kafka SASL_PLAINTEXT listener with a SCRAM-SHA-512 user refuses a wrong password, and the
CLI (``topics apply``, ``simulate``) and a worker work through it without logging the password.
"""

from __future__ import annotations

import io
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest

from app import cli
from app.settings import Settings

SECRET = "s3cr3t-Pa55-never-logged"
CAFILE = "/etc/ssl/certs/ca-certificates.crt"
ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # nothing listens: no client may get that far
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "riskstream-svc",
    "KAFKA_SASL_PASSWORD": SECRET,
    "KAFKA_SSL_CAFILE": CAFILE,
}
CONFLUENT_EXPECTED = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                      "sasl.username": "riskstream-svc", "sasl.password": SECRET,
                      "ssl.ca.location": CAFILE}


@pytest.fixture
def secure_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Settings:
    import os

    if not os.path.exists(CAFILE):
        pytest.skip(f"no CA bundle at {CAFILE}")
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RISKSTREAM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return Settings.from_env()


class _Built(Exception):
    """Raised by the fake clients once they have recorded their configuration."""


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """confluent-kafka Producer/Consumer/AdminClient replaced by recorders."""
    import confluent_kafka
    import confluent_kafka.admin

    configs: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, conf: dict[str, Any], *_: Any, **__: Any) -> None:
            configs.append(dict(conf))
            raise _Built

    for module, name in ((confluent_kafka, "Producer"), (confluent_kafka, "Consumer"),
                         (confluent_kafka.admin, "AdminClient")):
        monkeypatch.setattr(module, name, Recorder)
    return configs


@pytest.mark.parametrize("argv", [
    ["topics", "apply"],
    ["topics", "check"],
    ["simulate", "--advertisers", "3", "--duration", "60", "--max-events", "5"],
    ["models", "set", "robust-baseline"],
    ["alerts", "decide", "--alert-id", "ra1-x", "--advertiser", "adv-1",
     "--decision", "confirmed"],
    ["alerts", "follow", "--max-messages", "1", "--max-seconds", "1"],
], ids=lambda argv: " ".join(argv[:2]))
def test_every_cli_kafka_client_gets_sasl_and_tls(secure_env, captured, argv):
    try:
        cli.main(argv)
    except _Built:
        pass
    assert captured, f"riskstream {' '.join(argv)} built no Kafka client"
    for conf in captured:
        missing = {k: v for k, v in CONFLUENT_EXPECTED.items() if conf.get(k) != v}
        assert not missing, f"riskstream {' '.join(argv)}: client config lacks {missing}"


def test_the_worker_clients_get_sasl_and_tls(secure_env):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from agents.events import aiokafka_security
    from app.factory import create_app

    ra = create_app(secure_env, "127.0.0.1:9")
    auth = credentials_to_aiokafka_auth(ra.faust_app.conf.broker_credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("riskstream-svc",
                                                                          SECRET)
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # TLS verifies the broker
    # the worker's own aiokafka consumer of risk-model-control
    reader = aiokafka_security(secure_env)
    assert reader["security_protocol"] == "SASL_SSL"
    assert reader["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (reader["sasl_plain_username"], reader["sasl_plain_password"]) == (
        "riskstream-svc", SECRET)
    assert isinstance(reader["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize("protocol,tls,sasl", [("SSL", True, False),
                                               ("SASL_PLAINTEXT", False, True),
                                               ("PLAINTEXT", False, False)])
def test_each_protocol_maps_to_matching_client_settings(protocol, tls, sasl):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from agents.events import aiokafka_security
    from app.factory import broker_credentials

    s = Settings(security_protocol=protocol, sasl_mechanism="SCRAM-SHA-256" if sasl else "",
                 sasl_username="u" if sasl else "", sasl_password=SECRET if sasl else "")
    faust_auth = credentials_to_aiokafka_auth(broker_credentials(s))
    reader = aiokafka_security(s) or {"security_protocol": "PLAINTEXT"}
    conf = cli.client_config(s)
    for auth in (faust_auth, reader):
        assert auth["security_protocol"] == protocol
        assert (auth.get("ssl_context") is not None) == tls
        assert (auth.get("sasl_mechanism") == "SCRAM-SHA-256") == sasl
    assert conf.get("security.protocol", "PLAINTEXT") == protocol
    assert ("sasl.password" in conf) == sasl


def test_secrets_never_reach_logs_reprs_or_the_settings_command(secure_env, capsys):
    from app.factory import create_app
    from app.logs import JsonFormatter

    assert SECRET not in repr(secure_env)
    assert secure_env.redacted()["sasl_password"] == "***"
    assert cli.main(["settings"]) == 0
    assert SECRET not in capsys.readouterr().out
    # building the worker with every logger at DEBUG: nothing prints the password
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level, root.level = root.level, logging.DEBUG
    root.addHandler(handler)
    try:
        ra = create_app(secure_env, "127.0.0.1:9")
        logging.getLogger("riskstream.worker").info("settings %r", ra.settings)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = stream.getvalue()
    assert "settings Settings(" in text  # the log line was written, redacted
    assert SECRET not in text


def test_web_server_binds_to_the_configured_address(tmp_path):
    from app.factory import create_app

    s = Settings(web_host="::1", web_port=16066, data_dir=str(tmp_path / "d"))
    conf = create_app(s, "127.0.0.1:9").faust_app.conf
    assert (conf.web_bind, conf.web_port) == ("::1", 16066)
    assert str(conf.canonical_url) == "http://[::1]:16066"


# -- the real thing: SCRAM-SHA-512 on an Apache Kafka SASL listener ---------------------------
SCRAM_USER, SCRAM_PASSWORD = "riskstream-svc", "scram-Pa55-" + "x" * 12


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory):
    """Apache Kafka with a second listener, SASL_PLAINTEXT + SCRAM-SHA-512, and one SCRAM user
    (created over the PLAINTEXT listener). ``.bootstrap`` is the SASL listener."""
    from dataclasses import replace

    from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialUpsertion)

    from app import brokers
    from tests.conftest_brokers import broker_selection

    kind, reason = broker_selection()
    if kind != "apache":
        pytest.skip(f"needs a local Apache Kafka with a SASL listener ({reason})")
    host = brokers.HOST
    port = brokers.free_port()
    controller = brokers.free_port(exclude={port})
    sasl = brokers.free_port(exclude={port, controller})
    config = {
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller},"
                     f"SASL_PLAINTEXT://{host}:{sasl}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port},SASL_PLAINTEXT://{host}:{sasl}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
                                          "SASL_PLAINTEXT:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
    }
    info = brokers.start_apache_kafka(Path(tmp_path_factory.mktemp("kafka-scram")), port,
                                      controller_port=controller, config=config,
                                      die_with_parent=True)
    try:
        admin = AdminClient({"bootstrap.servers": info.bootstrap})
        futures = admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
            SCRAM_USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
            SCRAM_PASSWORD.encode())])
        for f in futures.values():
            f.result(30)
        yield replace(info, bootstrap=f"{host}:{sasl}")
    finally:
        brokers.stop(info)


def _scram_env(bootstrap: str, password: str = SCRAM_PASSWORD) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": SCRAM_USER,
            "KAFKA_SASL_PASSWORD": password}


@pytest.mark.integration
def test_worker_and_cli_talk_scram_to_apache_kafka_and_never_log_the_password(
        kafka_broker, worker, topic_prefix):
    import os
    import subprocess
    import sys

    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from tests.conftest import wait_until

    bootstrap = kafka_broker.bootstrap
    # the listener really demands the password: a wrong one is refused
    wrong = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0,
                         **cli.client_config(Settings.from_env(_scram_env(bootstrap, "nope"))),
                         })
    with pytest.raises(KafkaException):
        wrong.list_topics(timeout=5)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "RISKSTREAM_"))}
    env.update(_scram_env(bootstrap), RISKSTREAM_TOPIC_PREFIX=topic_prefix)

    def run(*argv: str) -> str:
        res = subprocess.run([sys.executable, "-m", "app.cli", *argv], env=env,
                             capture_output=True, text=True, timeout=120)
        out = res.stdout + res.stderr
        assert res.returncode == 0, f"riskstream {' '.join(argv)}: {out[-2000:]}"
        assert SCRAM_PASSWORD not in out
        return out

    assert "created" in run("topics", "apply")
    out = run("simulate", "--advertisers", "3", "--duration", "300", "--base-rate", "5",
              "--max-events", "200", "--max-seconds", "60", "--incidents", "none")
    assert "0 failed" in out
    w = worker(topic_prefix, **_scram_env(bootstrap))
    wait_until(lambda: w.metrics().get("riskstream_events_consumed_total", 0) >= 200, 60,
               "the worker consuming over SASL", on_timeout=w.log_tail)
    log = w.log_path.read_text(errors="replace")
    assert SCRAM_PASSWORD not in log
    assert "Authentication failed" not in log and "SaslAuthentication" not in log
