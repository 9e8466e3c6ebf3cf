"""``riskstream models`` (app/model_control.py): the next-config rules, the control-topic
reader, and publishing to real brokers (and a real worker applying it)."""

from __future__ import annotations

import time
from argparse import Namespace
from typing import Any

import orjson
import pytest

from app.model_control import (ControlError, ControlLog, next_config, read_control,
                               run_models_command, settings_config)
from app.settings import Settings
from models.registry import REGISTRY, UnknownModel

VALID = ", ".join(sorted(REGISTRY))
from riskstream.engine import ModelConfig
from tests.conftest import assert_valid, consume_until

V1 = ModelConfig(1, "robust-baseline", ("hst",))


# -- unit: next_config ---------------------------------------------------------------------------
def test_set_keeps_the_shadows_and_bumps_the_version():
    assert next_config(V1, "set", ["gaussian-sad"]) == ModelConfig(2, "gaussian-sad", ("hst",))
    # a shadow that becomes the enforce spec leaves the shadow list
    assert next_config(V1, "set", ["hst"]) == ModelConfig(2, "hst", ())


def test_first_config_starts_from_the_workers_settings():
    default = settings_config(Settings(model_spec="robust-baseline",
                                       shadow_models="hst, gaussian-sad"))
    assert default == ModelConfig(0, "robust-baseline", ("hst", "gaussian-sad"))
    assert next_config(None, "set", ["hst"], default) == ModelConfig(1, "hst", ("gaussian-sad",))
    assert next_config(None, "promote", ["gaussian-sad"], default) == \
        ModelConfig(1, "gaussian-sad", ("hst",))


def test_version_is_above_every_version_seen():
    assert next_config(V1, "set", ["hst"], last_version=7).version == 8


def test_shadow_sets_the_list_and_no_args_clears_it():
    assert next_config(V1, "shadow", ["gaussian-sad", "hst", "gaussian-sad"]) == \
        ModelConfig(2, "robust-baseline", ("gaussian-sad", "hst"))
    assert next_config(V1, "shadow", []) == ModelConfig(2, "robust-baseline", ())
    with pytest.raises(ControlError, match="robust-baseline is the enforce spec"):
        next_config(V1, "shadow", ["robust-baseline"])


def test_promote_moves_a_shadow_to_enforce_and_drops_the_old_one():
    cfg = ModelConfig(4, "robust-baseline", ("hst", "gaussian-sad"))
    assert next_config(cfg, "promote", ["gaussian-sad"]) == ModelConfig(5, "gaussian-sad", ("hst",))
    with pytest.raises(ControlError, match="gaussian-sad is not a current shadow"):
        next_config(V1, "promote", ["gaussian-sad"])


@pytest.mark.parametrize("action, specs", [("set", []), ("set", ["hst", "gaussian-sad"]),
                                           ("promote", []), ("rollback", ["hst"])])
def test_wrong_arguments_are_usage_errors(action, specs):
    with pytest.raises(ControlError):
        next_config(V1, action, specs)


@pytest.mark.parametrize("action", ["set", "shadow", "promote"])
def test_unknown_specs_fail_listing_the_valid_ones(action):
    with pytest.raises(UnknownModel, match=f"valid: {VALID}"):
        next_config(V1, action, ["nope"])


# -- unit: reading the control log, the command without a broker ----------------------------------
def test_control_log_keeps_the_highest_valid_version():
    log = ControlLog()
    log.add(0, orjson.dumps({"version": 1, "enforce": "hst", "shadows": []}))
    log.add(1, orjson.dumps({"version": 3, "enforce": "gaussian-sad", "shadows": ["hst"]}))
    log.add(2, orjson.dumps({"version": 2, "enforce": "robust-baseline", "shadows": []}))
    log.add(3, orjson.dumps({"version": 5, "enforce": "no-such-model", "shadows": []}))
    log.add(4, b"garbage")
    log.add(5, None)
    assert log.latest == ModelConfig(3, "gaussian-sad", ("hst",))
    assert log.last_version == 5 and log.records == 6
    assert len(log.invalid) == 2 and "no-such-model" in log.invalid[0]


def test_list_marks_the_default_spec(capsys):
    settings = Settings(model_spec="hst")
    assert run_models_command(Namespace(action="list", spec=[]), settings, None) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = [line for line in lines if line.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[1] == "hst", lines
    assert {line.split()[0] for line in lines if line.startswith("  ")} == set(REGISTRY) - {"hst"}


def test_unknown_spec_exits_2_before_touching_the_broker(capsys):
    # nothing listens on port 1: the spec check must fail first
    code = run_models_command(Namespace(action="set", spec=["nope"]), Settings(), "127.0.0.1:1")
    assert code == 2
    assert f"unknown model spec 'nope'; valid: {VALID}" in \
        capsys.readouterr().err


# -- integration ---------------------------------------------------------------------------------
def _models(settings: Settings, bootstrap: str, action: str, *specs: str) -> int:
    return run_models_command(Namespace(action=action, spec=list(specs)), settings, bootstrap)


@pytest.mark.integration
def test_set_shadow_promote_publish_versions(kafka_broker, kafka_topics, capsys):
    bootstrap = kafka_broker.bootstrap
    settings = Settings(topic_prefix=kafka_topics)
    topic = settings.topic("risk-model-control")

    assert _models(settings, bootstrap, "show") == 0
    assert "no model config" in capsys.readouterr().out
    assert _models(settings, bootstrap, "set", "hst") == 0
    assert _models(settings, bootstrap, "shadow", "gaussian-sad") == 0
    assert _models(settings, bootstrap, "promote", "gaussian-sad") == 0
    out = capsys.readouterr().out
    assert "published v3: enforce=gaussian-sad shadows=-" in out, out

    records = consume_until(bootstrap, topic, 3, 30, "3 model configs")
    assert [r.key for r in records] == [b"config"] * 3
    for r in records:
        assert_valid("model-control.v1.json", r.json())
    assert [r.json() for r in records] == [
        {"version": 1, "enforce": "hst", "shadows": []},
        {"version": 2, "enforce": "hst", "shadows": ["gaussian-sad"]},
        {"version": 3, "enforce": "gaussian-sad", "shadows": []},
    ]

    # errors publish nothing
    assert _models(settings, bootstrap, "promote", "hst") == 2
    assert "hst is not a current shadow" in capsys.readouterr().err
    assert _models(settings, bootstrap, "set", "gaussian-sad") == 0  # unchanged: not published
    assert "unchanged" in capsys.readouterr().out
    log = read_control(bootstrap, settings, timeout=30)
    assert log.records == 3 and log.latest == ModelConfig(3, "gaussian-sad", ())

    assert _models(settings, bootstrap, "show") == 0
    assert "v3: enforce=gaussian-sad shadows=-" in capsys.readouterr().out


@pytest.mark.integration
def test_missing_control_topic_is_an_error(kafka_broker, topic_prefix, capsys):
    settings = Settings(topic_prefix=topic_prefix)  # topics never created
    assert _models(settings, kafka_broker.bootstrap, "set", "hst") == 1
    assert "riskstream topics apply" in capsys.readouterr().err


@pytest.mark.integration
def test_a_running_worker_applies_the_published_config(kafka_broker, kafka_topics, worker):
    w = worker(kafka_topics)
    version = "riskstream_model_config_version"
    assert w.metrics()[version] == 0  # the settings' config, nothing published yet

    settings = Settings(topic_prefix=kafka_topics)
    assert _models(settings, kafka_broker.bootstrap, "set", "hst") == 0
    assert _models(settings, kafka_broker.bootstrap, "shadow", "gaussian-sad") == 0

    deadline = time.monotonic() + 60
    seen: Any = None
    while time.monotonic() < deadline and w.proc.poll() is None:
        seen = w.metrics().get(version)
        if seen == 2:
            break
        time.sleep(0.2)  # poll interval of a bounded wait on the condition above
    assert seen == 2, f"worker's {version} is {seen}, expected 2; log tail:\n{w.log_tail()}"
    assert "model config v2 applied: enforce=hst shadows=gaussian-sad" in w.log_tail(400)
