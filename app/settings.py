"""Settings: the one place that reads the environment.

Every setting is a field with its environment variable and a documented default.
``Settings.from_env()`` is called by the CLI and the app factory, never at import time,
so tests build ``Settings(...)`` directly with the values they need.

>>> s = Settings.from_env({"RISKSTREAM_WINDOW_SECONDS": "30"})
>>> s.window_seconds, s.allowed_lateness_seconds
(30, 10)
>>> Settings.from_env({"RISKSTREAM_WINDOW_SECONDS": "soon"})
Traceback (most recent call last):
...
app.settings.SettingsError: RISKSTREAM_WINDOW_SECONDS: expected int, got 'soon'
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping


class SettingsError(ValueError):
    pass


def _setting(default: Any, env: str, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc, "secret": secret})


@dataclass(frozen=True)
class Settings:
    # Kafka
    bootstrap_servers: str = _setting(
        "", "KAFKA_BOOTSTRAP_SERVERS",
        "External Kafka cluster (host:port,...). Empty: use the local broker started by "
        "`riskstream broker start` (its address is read from the broker state file).",
    )
    security_protocol: str = _setting(
        "PLAINTEXT", "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: str = _setting("", "KAFKA_SASL_MECHANISM", "e.g. SCRAM-SHA-512.")
    sasl_username: str = _setting("", "KAFKA_SASL_USERNAME", "SASL user.")
    sasl_password: str = _setting("", "KAFKA_SASL_PASSWORD", "SASL password (never logged).",
                                  secret=True)
    ssl_cafile: str = _setting("", "KAFKA_SSL_CAFILE", "CA bundle for TLS.")
    topic_prefix: str = _setting(
        "", "RISKSTREAM_TOPIC_PREFIX",
        "Prefix for every topic name (lets tests and tenants share a cluster).")
    app_id: str = _setting(
        "riskstream", "RISKSTREAM_APP_ID",
        "Faust app id: the consumer group and the prefix of changelog topics.")
    session_timeout_ms: int = _setting(
        10_000, "RISKSTREAM_SESSION_TIMEOUT_MS",
        "Consumer session timeout. Tansu holds a join reply for half of it, so keep it small "
        "for local runs; 10 s is also a fine production value.")
    processing_guarantee: str = _setting(
        "at_least_once", "RISKSTREAM_PROCESSING_GUARANTEE",
        "at_least_once (alert ids are idempotent) or exactly_once (Kafka transactions).")
    transport: str = _setting(
        "riskstream", "RISKSTREAM_TRANSPORT",
        "Faust transport of the worker: riskstream (app/transport.py: Faust's aiokafka "
        "transport without its per-message tasks, ~3x faster, see docs/performance.md) or "
        "kafka (Faust's stock aiokafka transport). exactly_once always uses kafka.")
    producer_linger_ms: int = _setting(
        5, "RISKSTREAM_PRODUCER_LINGER_MS",
        "How long the producer waits to fill a batch (scores, alerts, changelog records). 0 "
        "(Faust's default) sends each as soon as the sender is free: many small requests, "
        "~10 % of a busy worker's CPU in socket writes (docs/performance.md).")
    producer_max_batch_size: int = _setting(
        16384, "RISKSTREAM_PRODUCER_MAX_BATCH_SIZE",
        "Faust producer batch size in bytes. The embedded Tansu broker needs 1: it reports a "
        "batch's end offset wrongly, which cuts changelog recovery short.")
    # Worker
    data_dir: str = _setting(".riskstream/worker", "RISKSTREAM_DATA_DIR",
                             "Worker data directory (Faust table metadata).")
    web_host: str = _setting("127.0.0.1", "RISKSTREAM_WEB_HOST",
                             "Bind address of the web server (health, metrics, lookup API, risk board).")
    web_port: int = _setting(6066, "RISKSTREAM_WEB_PORT",
                             "Port of /metrics, /livez, /readyz, /advertisers/{id}, /board.")
    web_advertised_url: str = _setting(
        "", "RISKSTREAM_WEB_ADVERTISED_URL",
        "URL other workers use to reach this one (lookups are forwarded to the advertiser's "
        "owner). Empty: http://<RISKSTREAM_WEB_HOST>:<RISKSTREAM_WEB_PORT>; set it (e.g. to "
        "the pod IP) when binding 0.0.0.0.")
    board_max_advertisers: int = _setting(
        200_000, "RISKSTREAM_BOARD_MAX_ADVERTISERS",
        "Advertisers the risk board keeps in memory (~1 KB each; least recently scored go "
        "first). 0 disables the board's topic readers.")
    board_lookback_s: int = _setting(
        3600, "RISKSTREAM_BOARD_LOOKBACK_S",
        "How far back in risk-scores the board starts reading when a worker starts.")
    board_alerts_lookback_s: int = _setting(
        86_400, "RISKSTREAM_BOARD_ALERTS_LOOKBACK_S",
        "How far back in risk-alerts the board starts reading (open alerts' reasons).")
    log_level: str = _setting("INFO", "RISKSTREAM_LOG_LEVEL", "DEBUG, INFO, WARNING, ERROR.")
    checkpoint_interval_s: float = _setting(
        1.0, "RISKSTREAM_CHECKPOINT_INTERVAL_S",
        "How often in-memory state is written to the changelog table and offsets committed.")
    checkpoint_max_events: int = _setting(
        50_000, "RISKSTREAM_CHECKPOINT_MAX_EVENTS",
        "Checkpoint early after this many events (bounds replay after a crash and the events "
        "held unacknowledged in memory).")
    standby_replicas: int = _setting(1, "RISKSTREAM_STANDBY_REPLICAS",
                                     "Standby table replicas for fast failover.")
    # Windows and validation
    window_seconds: int = _setting(60, "RISKSTREAM_WINDOW_SECONDS", "Tumbling window size.")
    allowed_lateness_seconds: int = _setting(
        10, "RISKSTREAM_ALLOWED_LATENESS_SECONDS",
        "A window closes once event time passes its end plus this.")
    max_event_age_s: int = _setting(
        7 * 24 * 3600, "RISKSTREAM_MAX_EVENT_AGE_S",
        "Events older than this (vs wall clock) are dead-lettered as too_old.")
    max_future_s: int = _setting(
        300, "RISKSTREAM_MAX_FUTURE_S",
        "Events further ahead of the wall clock are dead-lettered as future_event_time.")
    max_message_bytes: int = _setting(65_536, "RISKSTREAM_MAX_MESSAGE_BYTES",
                                      "Larger messages are dead-lettered as oversized.")
    # Models and decisions
    model_spec: str = _setting("robust-baseline", "RISKSTREAM_MODEL",
                               "Registered model spec that runs in enforce mode.")
    shadow_models: str = _setting("", "RISKSTREAM_SHADOW_MODELS",
                                  "Comma-separated specs that score in shadow mode.")
    alert_threshold: float = _setting(0.8, "RISKSTREAM_ALERT_THRESHOLD",
                                      "Risk score at or above which the model alone alerts.")
    warmup_windows: int = _setting(
        5, "RISKSTREAM_WARMUP_WINDOWS",
        "Windows a new advertiser model learns before its score alone may alert.")
    cooldown_windows: int = _setting(
        30, "RISKSTREAM_COOLDOWN_WINDOWS",
        "An open alert resolves after this many consecutive normal windows.")
    advertiser_ttl_s: int = _setting(
        7 * 24 * 3600, "RISKSTREAM_ADVERTISER_TTL_S",
        "Idle advertisers' state expires after this much event time without traffic.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in env and env[name] != "":
                values[f.name] = _coerce(name, env[name], type(f.default))
        values.update(overrides)
        return cls(**values)

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked: what logs and /settings may show."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.metadata["secret"] and value else value
        return out

    def __repr__(self) -> str:  # keep secrets out of tracebacks and logs
        return f"Settings({self.redacted()!r})"


def _coerce(env_name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{env_name}: expected {kind.__name__}, got {raw!r}") from None


def settings_table() -> list[tuple[str, str, str]]:
    """(env var, default, description) for every setting: the source of docs/configuration.md."""
    return [
        (f.metadata["env"], repr(f.default), f.metadata["doc"]) for f in dataclasses.fields(Settings)
    ]
