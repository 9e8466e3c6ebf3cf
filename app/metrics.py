"""Prometheus metrics of one worker. The registry is passed in, so tests read their own.

Names follow Prometheus conventions: ``riskstream_`` prefix, ``_total`` for counters, base units
(seconds, bytes) in the name.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
E2E_BUCKETS = (1, 5, 10, 20, 30, 45, 60, 75, 90, 120, 180, 300, 600)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events_consumed = Counter(
            "riskstream_events_consumed_total", "Input events consumed", ["topic"],
            registry=registry)
        self.events_invalid = Counter(
            "riskstream_events_invalid_total", "Input events dead-lettered, by reason",
            ["topic", "reason"], registry=registry)
        self.events_replayed_skipped = Counter(
            "riskstream_events_replayed_skipped_total",
            "Redelivered events already reflected in the restored state (skipped, not recounted)",
            registry=registry)
        self.input_gaps = Counter(
            "riskstream_input_gaps_total",
            "Input events delivered past an offset the state expected, by what followed: "
            "refetched (the partition was fetched again from the expected offset) or missing "
            "(those offsets do not exist: retention, transaction markers); stalled: a partition "
            "with unread offsets from which nothing came for 10 s, sought again to the next "
            "offset its state needs.",
            ["topic", "outcome"], registry=registry)
        self.events_late = Counter(
            "riskstream_events_late_total", "Events whose window had already closed", ["topic"],
            registry=registry)
        self.batch_seconds = Histogram(
            "riskstream_batch_processing_seconds", "Time to process one batch of events",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.event_to_alert_seconds = Histogram(
            "riskstream_event_to_alert_seconds",
            "Wall time from a window's last event to its alert being produced",
            buckets=E2E_BUCKETS, registry=registry)
        self.windows_closed = Counter(
            "riskstream_windows_closed_total", "Advertiser windows closed and scored",
            registry=registry)
        self.window_close_lag_seconds = Gauge(
            "riskstream_window_close_lag_seconds",
            "Wall clock minus the event-time end of the last closed window", registry=registry)
        self.alerts = Counter(
            "riskstream_alerts_total", "Alerts produced", ["severity", "mode", "status"],
            registry=registry)
        self.alerts_suppressed = Counter(
            "riskstream_alerts_suppressed_total",
            "Flagged windows folded into an already open alert (cooldown)", registry=registry)
        self.scoring_seconds = Histogram(
            "riskstream_scoring_seconds", "Time to score and decide one closed window",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.active_advertisers = Gauge(
            "riskstream_active_advertisers", "Advertisers with state in memory", registry=registry)
        self.model_state_bytes = Gauge(
            "riskstream_model_state_bytes", "Bytes of advertiser state written at the last "
            "checkpoint", registry=registry)
        self.checkpoints = Counter(
            "riskstream_checkpoints_total", "State checkpoints written", registry=registry)
        self.checkpoint_writes = Counter(
            "riskstream_checkpoint_writes_total", "Changelog records written by checkpoints",
            registry=registry)
        self.consumer_lag = Gauge(
            "riskstream_consumer_lag_messages", "Highwater minus next offset, per owned partition",
            ["topic", "partition"], registry=registry)
        self.assigned_partitions = _ScrapeTimeGauge(
            "riskstream_assigned_partitions",
            "Partitions of each topic assigned to this worker's consumer (inputs: the ones it "
            "processes; table changelogs: actives and standbys)", ["topic"], registry=registry)
        self.recovery_remaining = _ScrapeTimeGauge(
            "riskstream_recovery_remaining_messages",
            "Changelog records still to restore into the table (active: blocks readiness; "
            "standby: replicas kept warm for failover)", ["kind"], registry=registry)
        self.rebalances = Counter(
            "riskstream_rebalances_total", "Consumer group rebalances seen", registry=registry)
        self.ready = Gauge(
            "riskstream_ready", "1 once table recovery has finished", registry=registry)
        self.enforcement_decisions = Counter(
            "riskstream_enforcement_decisions_total",
            "Enforcement decisions on alerts read from risk-enforcement-decisions",
            ["decision"], registry=registry)
        self.detector_precision = Gauge(
            "riskstream_detector_precision_ratio",
            "Live precision per detector: confirmed / (confirmed + dismissed) since start",
            ["detector"], registry=registry)
        self.model_config_version = Gauge(
            "riskstream_model_config_version", "Model config version in force", registry=registry)

    def track_runtime(self, assignment: Callable[[], Iterable[Any]],
                      recovery_remaining: Callable[[], dict[str, int]]) -> None:
        """Feed the scrape-time gauges from the running consumer (they can never go stale):
        ``assignment()`` returns the owned topic partitions (objects with ``.topic``),
        ``recovery_remaining()`` the changelog records still to restore, by kind
        (``active``, ``standby``)."""
        def owned() -> dict[tuple[str, ...], float]:
            counts: dict[tuple[str, ...], float] = {}
            for tp in assignment():
                counts[(tp.topic,)] = counts.get((tp.topic,), 0) + 1
            return counts

        def remaining() -> dict[tuple[str, ...], float]:
            values = recovery_remaining()
            return {(kind,): float(values.get(kind, 0)) for kind in ("active", "standby")}

        self.assigned_partitions.refresh = owned
        self.recovery_remaining.refresh = remaining


class _ScrapeTimeGauge(Gauge):
    """A labelled gauge whose samples are replaced from ``refresh()`` (labels -> value) each
    time it is collected; left as they were when ``refresh`` fails (consumer not started yet,
    being replaced)."""

    refresh: Callable[[], dict[tuple[str, ...], float]] | None = None

    def collect(self) -> Any:
        if self.refresh is not None:
            try:
                values = self.refresh()
            except Exception:  # noqa: BLE001 - a scrape must never fail on this
                values = None
            if values is not None:
                self.clear()
                for labels, value in values.items():
                    self.labels(*labels).set(value)
        return super().collect()
