"""App factory: settings in, a wired Faust worker out. Nothing registers at import time.

``create_app(settings)`` builds one Faust app with:

* one input channel over the co-partitioned ``ad-impressions`` and ``user-feedback`` topics
  (raw bytes: validation is ours, so bad input is dead-lettered rather than crashing a codec);
* ``advertiser-state``: a changelog-backed table holding each advertiser's windows, model states
  and alert lifecycle, written only at checkpoints (see ``riskstream.engine``);
* a reader of ``risk-model-control`` outside the consumer group, so *every* worker sees every
  model config (a Faust GlobalTable on a pre-declared topic hung the assignor in a trial);
* web pages ``/livez``, ``/readyz``, ``/metrics``, the lookup API and the risk board
  (agents/web.py) on the configured loopback address.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from app.metrics import Metrics
from app.settings import Settings
from app.topics import load_topics
from app.transport import SCHEME, QuietMonitor, RawSchema, keep_queued_events_on_resume
from riskstream.decision import DecisionConfig
from riskstream.engine import EngineConfig, ModelConfig, RiskEngine
from riskstream.events import Limits

log = logging.getLogger("riskstream.worker")


@dataclass
class RiskApp:
    faust_app: faust.App
    engine: RiskEngine
    metrics: Metrics
    settings: Settings
    topics: dict[str, Any]
    state_table: Any
    bootstrap: str
    limits: Limits
    ready: bool = False
    board: Any = None  # riskstream.board.RiskBoard, set by agents.web.register_web


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        window_ms=settings.window_seconds * 1000,
        lateness_ms=settings.allowed_lateness_seconds * 1000,
        decision=DecisionConfig(
            threshold=settings.alert_threshold,
            warmup_windows=settings.warmup_windows,
            resolve_after=settings.cooldown_windows,
        ),
        advertiser_ttl_ms=settings.advertiser_ttl_s * 1000,
    )


def limits_for(settings: Settings) -> Limits:
    return Limits(
        max_message_bytes=settings.max_message_bytes,
        max_future_ms=settings.max_future_s * 1000,
        max_age_ms=settings.max_event_age_s * 1000,
    )


def initial_model_config(settings: Settings) -> ModelConfig:
    shadows = tuple(s.strip() for s in settings.shadow_models.split(",") if s.strip())
    return ModelConfig.from_json({"version": 0, "enforce": settings.model_spec,
                                  "shadows": shadows})


def broker_credentials(settings: Settings) -> Any:
    """SASL/TLS settings for Faust's aiokafka transport (secrets stay in memory only)."""
    proto = settings.security_protocol.upper()
    if proto == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if proto.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username, password=settings.sasl_password,
            mechanism=settings.sasl_mechanism or "SCRAM-SHA-512",
            ssl_context=context if proto == "SASL_SSL" else None)
    return faust.SSLCredentials(context)


def _timed(fn: Any, histogram: Any) -> Any:
    """``fn`` observing its wall time in ``histogram`` (instance-level wrapper: the engine
    stays free of metrics)."""
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            histogram.observe(time.perf_counter() - started)
    return timed


def recovery_remaining(faust_app: faust.App) -> dict[str, int]:
    """Changelog records still to restore, by kind (the ``riskstream_recovery_*`` series)."""
    recovery = faust_app.tables.recovery
    return {"active": recovery.active_remaining_total(),
            "standby": recovery.standby_remaining_total()}


def transport_scheme(settings: Settings) -> str:
    """``riskstream`` (app/transport.py: see docs/performance.md) by default; ``kafka``
    (Faust's stock aiokafka transport) on request and always with exactly_once."""
    if settings.transport not in ("kafka", SCHEME):
        raise ValueError(f"RISKSTREAM_TRANSPORT: {settings.transport!r} is not one of "
                         f"'kafka', {SCHEME!r}")
    if settings.processing_guarantee == "exactly_once":
        return "kafka"
    return settings.transport


def create_app(settings: Settings, bootstrap: str, *,
               registry: CollectorRegistry | None = None) -> RiskApp:
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    declared = {t.name: t for t in load_topics()}
    partitions = declared["ad-impressions"].partitions
    scheme = transport_scheme(settings)
    faust_app = faust.App(
        settings.app_id,
        broker=[f"{scheme}://{hp.strip()}" for hp in bootstrap.split(",") if hp.strip()],
        Monitor=QuietMonitor,
        broker_credentials=broker_credentials(settings),
        store="memory://",
        datadir=settings.data_dir,
        topic_partitions=partitions,
        topic_replication_factor=1,
        processing_guarantee=settings.processing_guarantee,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(settings.session_timeout_ms / 1000 / 5, 0.5),
        broker_commit_interval=settings.checkpoint_interval_s,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=settings.standby_replicas,
        web_enabled=True,
        # web_host makes the worker's canonical URL: an IPv6 literal needs brackets there
        web_host=f"[{settings.web_host}]" if ":" in settings.web_host else settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        canonical_url=settings.web_advertised_url or None,
        producer_acks=-1,
        producer_max_batch_size=settings.producer_max_batch_size,
        producer_linger=settings.producer_linger_ms / 1000,
        topic_allow_declare=True,
    )
    # mode's flow control empties the agent's queue on every resume, even when the flow already
    # runs: events fetched at the end of a table recovery were lost (docs/faults.md)
    keep_queued_events_on_resume(faust_app.flow_control)
    metrics = Metrics(registry or CollectorRegistry())
    metrics.track_runtime(lambda: faust_app.consumer.assignment(),
                          lambda: recovery_remaining(faust_app))
    t = settings.topic
    def raw() -> dict[str, Any]:  # bytes as they are: the engine encodes, validation decodes
        return {"schema": RawSchema()}

    # Enforcement decisions are co-partitioned with the inputs (key advertiser_id), so a
    # decision reaches the worker that holds that advertiser's state.
    inputs = faust_app.topic(t("ad-impressions"), t("user-feedback"),
                             t("risk-enforcement-decisions"), **raw())
    topics = {
        "impressions": t("ad-impressions"),
        "feedback": t("user-feedback"),
        "decisions": t("risk-enforcement-decisions"),
        "inputs": inputs,
        "alerts": faust_app.topic(t("risk-alerts"), **raw()),
        "shadow_alerts": faust_app.topic(t("risk-alerts-shadow"), **raw()),
        "scores": faust_app.topic(t("risk-scores"), **raw()),
        "dead_letter": faust_app.topic(t("risk-dead-letter"), **raw()),
        "model_control": t("risk-model-control"),
    }
    # value_type=bytes makes Faust's changelog serializer "raw": the engine stores its own
    # versioned JSON (a Schema alone is overridden by the table's default json serializer).
    state_table = faust_app.Table(
        "advertiser-state", default=None, partitions=partitions, key_type=str,
        value_type=bytes)

    from agents.store import TableStore  # agents own the Faust-facing adapters
    engine = RiskEngine(engine_config(settings), TableStore(state_table),
                        initial_model_config(settings))
    # riskstream_scoring_seconds: features, score, decide and learn for one closed window
    engine._close_window = _timed(engine._close_window, metrics.scoring_seconds)
    risk_app = RiskApp(faust_app, engine, metrics, settings, topics, state_table, bootstrap,
                       limits_for(settings))
    metrics.model_config_version.set(engine.model_config.version)

    from agents.events import register_agents
    from agents.web import register_web

    register_agents(risk_app)
    register_web(risk_app)
    return risk_app
