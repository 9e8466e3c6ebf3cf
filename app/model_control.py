"""``riskstream models``: list model specs, and publish model configs to running workers.

The control plane is one compacted, single-partition topic, ``risk-model-control`` (key
``"config"``, value ``schemas/model-control.v1.json``). Every worker reads it from the beginning
without a consumer group and applies a config only if its ``version`` is higher than the one in
force, so publishing is the whole deployment: no restart, and a restarted worker gets the
latest config from the topic.

Each command reads the topic up to its high watermark, derives the next config from the
latest one (version + 1) and publishes it with ``acks=all``:

* ``set SPEC``            SPEC enforces; the shadows stay (minus SPEC);
* ``shadow [SPEC ...]``   the shadow list becomes exactly these (none: clear it);
* ``promote SPEC``        a current shadow enforces; the old enforce spec is dropped;
* ``show``                print the latest config; ``list`` prints the registered specs.

Before anything is published, the workers run the config of their settings
(``RISKSTREAM_MODEL``, ``RISKSTREAM_SHADOW_MODELS``) as version 0.

Two operators publishing at the same moment can both write the same version; workers keep the
first one they read. Run these commands from one place (a deploy job) to avoid that.

>>> v1 = next_config(None, "set", ["hst"])
>>> v1
ModelConfig(version=1, enforce='hst', shadows=())
>>> next_config(next_config(v1, "shadow", ["gaussian-sad"]), "promote", ["gaussian-sad"])
ModelConfig(version=3, enforce='gaussian-sad', shadows=())
>>> next_config(v1, "promote", ["robust-baseline"])
Traceback (most recent call last):
...
app.model_control.ControlError: robust-baseline is not a current shadow (shadows: none); add it with `riskstream models shadow robust-baseline` first, or use `riskstream models set robust-baseline`
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import orjson

from models.registry import REGISTRY, UnknownModel, get_spec
from riskstream.engine import ModelConfig

CONTROL_TOPIC = "risk-model-control"
CONTROL_KEY = b"config"
ACTIONS = ("list", "show", "set", "shadow", "promote")


class ControlError(ValueError):
    """A usage error (exit code 2): wrong arguments, or a change that does not apply."""


class ControlIOError(RuntimeError):
    """The control topic could not be read or written (exit code 1)."""


# -- pure helpers ----------------------------------------------------------------------------
def settings_config(settings: Any) -> ModelConfig:
    """The config workers run before any is published (version 0, from their settings)."""
    shadows = tuple(s.strip() for s in settings.shadow_models.split(",") if s.strip())
    return ModelConfig(0, settings.model_spec, shadows)


def check_specs(specs: Sequence[str]) -> None:
    """Raise UnknownModel (listing the valid names) for the first unregistered spec."""
    for name in specs:
        get_spec(name)


def next_config(current: ModelConfig | None, action: str, specs: Sequence[str],
                default: ModelConfig | None = None, last_version: int = 0) -> ModelConfig:
    """The config that ``action`` publishes after ``current`` (the latest on the topic, None if
    it is empty; then ``default``, the workers' settings, is the starting point). The version
    is one more than both ``current.version`` and ``last_version`` (the highest version seen on
    the topic, valid or not)."""
    specs = list(specs)
    check_specs(specs)
    base = current or default or ModelConfig()
    version = max(current.version if current else 0, last_version) + 1
    if action == "set":
        if len(specs) != 1:
            raise ControlError(f"`models set` takes exactly one spec, got {len(specs)}")
        spec = specs[0]
        return ModelConfig(version, spec, tuple(s for s in base.shadows if s != spec))
    if action == "shadow":
        shadows = tuple(dict.fromkeys(specs))  # de-duplicated, order kept
        if base.enforce in shadows:
            raise ControlError(f"{base.enforce} is the enforce spec; it cannot also be a shadow")
        return ModelConfig(version, base.enforce, shadows)
    if action == "promote":
        if len(specs) != 1:
            raise ControlError(f"`models promote` takes exactly one spec, got {len(specs)}")
        spec = specs[0]
        if spec not in base.shadows:
            raise ControlError(
                f"{spec} is not a current shadow (shadows: {', '.join(base.shadows) or 'none'}); "
                f"add it with `riskstream models shadow {spec}` first, or use "
                f"`riskstream models set {spec}`")
        return ModelConfig(version, spec, tuple(s for s in base.shadows if s != spec))
    raise ControlError(f"unknown models action {action!r} (expected one of {', '.join(ACTIONS)})")


def describe(cfg: ModelConfig) -> str:
    return f"v{cfg.version}: enforce={cfg.enforce} shadows={','.join(cfg.shadows) or '-'}"


@dataclass
class ControlLog:
    """What the control topic holds: the latest valid config and the highest version seen."""

    latest: ModelConfig | None = None
    last_version: int = 0
    records: int = 0
    invalid: list[str] = field(default_factory=list)

    def add(self, offset: int, value: bytes | None) -> None:
        self.records += 1
        if value is None:
            return  # a tombstone
        try:
            data = orjson.loads(value)
            self.last_version = max(self.last_version, int(data["version"]))
            cfg = ModelConfig.from_json(data)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            # workers ignore such a record too (UnknownModel is a KeyError)
            self.invalid.append(f"offset {offset}: {exc}")
            return
        if self.latest is None or cfg.version > self.latest.version:
            self.latest = cfg


# -- Kafka -----------------------------------------------------------------------------------
def _client_config(settings: Any) -> dict[str, Any]:
    from app.cli import client_config

    return client_config(settings)


def read_control(bootstrap: str, settings: Any, timeout: float = 30.0) -> ControlLog:
    """Read partition 0 of the control topic from the beginning up to its high watermark
    (``app.topic_range``: assigned, no consumer group). Raises ControlIOError if the topic is
    missing or not read to the end within ``timeout`` seconds."""
    from confluent_kafka import KafkaException

    from app.topic_range import TopicRangeError, read_topic_range

    topic = settings.topic(CONTROL_TOPIC)
    log = ControlLog()
    try:
        records = read_topic_range(bootstrap, topic, client_config=_client_config(settings),
                                   timeout=timeout)
    except TopicRangeError as exc:
        raise ControlIOError(str(exc)) from None
    except KafkaException as exc:
        raise ControlIOError(f"cannot read {topic} at {bootstrap}: {exc}") from None
    for r in records:
        if r.partition == 0:
            log.add(r.offset, r.value)
    return log


def publish(bootstrap: str, settings: Any, cfg: ModelConfig, timeout: float = 30.0
            ) -> tuple[int, int]:
    """Produce ``cfg`` to the control topic (key ``config``, acks=all); ``(partition, offset)``."""
    from confluent_kafka import Producer

    topic = settings.topic(CONTROL_TOPIC)
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        **_client_config(settings),
    })
    result: list[tuple[int, int]] = []
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            result.append((msg.partition(), msg.offset()))

    producer.produce(topic, key=CONTROL_KEY, value=orjson.dumps(cfg.to_json()),
                     on_delivery=on_delivery)
    producer.flush(timeout)
    if errors or not result:
        raise ControlIOError(f"model config {describe(cfg)} not published to {topic}: "
                             f"{errors[0] if errors else f'no acknowledgement within {timeout}s'}")
    return result[0]


# -- the command -----------------------------------------------------------------------------
def list_specs(settings: Any) -> list[str]:
    lines = []
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        mark = "*" if name == settings.model_spec else " "
        lines.append(f"{mark} {name:16} v{spec.version:4} {spec.description}")
    lines.append(f"(* = default enforce spec, RISKSTREAM_MODEL={settings.model_spec})")
    return lines


def run_models_command(args: Any, settings: Any, bootstrap: str | None,
                       timeout: float = 30.0) -> int:
    action = args.action
    specs = list(getattr(args, "spec", None) or [])
    try:
        if action == "list":
            if specs:
                raise ControlError("`models list` takes no spec")
            print("\n".join(list_specs(settings)))
            return 0
        if action not in ACTIONS:
            raise ControlError(f"unknown models action {action!r}")
        if action == "show" and specs:
            raise ControlError("`models show` takes no spec")
        check_specs(specs)  # before touching the broker
        if bootstrap is None:
            raise ControlError(f"`models {action}` needs a broker")
        topic = settings.topic(CONTROL_TOPIC)
        log = read_control(bootstrap, settings, timeout)
        for problem in log.invalid:
            print(f"WARNING: ignoring invalid record on {topic}: {problem}", file=sys.stderr)
        if action == "show":
            if log.latest is None:
                print(f"no model config on {topic}; workers run their settings: "
                      f"{describe(settings_config(settings))} (RISKSTREAM_MODEL, "
                      f"RISKSTREAM_SHADOW_MODELS)")
            else:
                print(f"{topic} {describe(log.latest)}")
            return 0
        cfg = next_config(log.latest, action, specs, settings_config(settings), log.last_version)
        if log.latest is not None and (cfg.enforce, cfg.shadows) == (log.latest.enforce,
                                                                     log.latest.shadows):
            print(f"unchanged, nothing published: {topic} {describe(log.latest)}")
            return 0
        partition, offset = publish(bootstrap, settings, cfg, timeout)
        print(f"published {describe(cfg)} to {topic} [{partition}]@{offset}"
              + (f" (was {describe(log.latest)})" if log.latest else ""))
        return 0
    except (UnknownModel, ControlError) as exc:
        print(f"riskstream models: {exc}", file=sys.stderr)
        return 2
    except ControlIOError as exc:
        print(f"riskstream models: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from confluent_kafka import KafkaException

        if not isinstance(exc, KafkaException):
            raise
        print(f"riskstream models: Kafka error: {exc}", file=sys.stderr)
        return 1
