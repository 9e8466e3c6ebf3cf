"""The alert contract (``risk-alerts`` / ``risk-alerts-shadow``), version 1.

The machine-readable schema is ``schemas/risk-alert.v1.json``; tests validate real output
against it. Alert ids are deterministic: the same advertiser, window, detector and lifecycle
status always give the same id, so a replay or a retried produce yields the same id and
consumers deduplicate by ``alert_id``.

>>> a = alert_id_for("adv-1", 1700000000000, 1700000060000, "risk:robust-baseline", "open")
>>> a == alert_id_for("adv-1", 1700000000000, 1700000060000, "risk:robust-baseline", "open")
True
>>> a.startswith("ra1-"), len(a)
(True, 36)
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "risk-alert.v1.json"


def alert_id_for(advertiser_id: str, window_start: int, window_end: int, detector: str,
                 status: str) -> str:
    digest = hashlib.blake2b(
        f"{advertiser_id}\x1f{window_start}\x1f{window_end}\x1f{detector}\x1f{status}".encode(),
        digest_size=16,
    ).hexdigest()
    return f"ra1-{digest}"


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_alert(
    *,
    advertiser_id: str,
    window_start: int,
    window_end: int,
    detector: str,
    status: str,
    severity: str,
    risk_score: float,
    threshold: float,
    model_name: str,
    model_version: str,
    config_version: int,
    mode: str,
    reasons: list[dict[str, Any]],
    metrics: dict[str, float],
    episode: dict[str, Any],
    emitted_at_ms: int,
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "alert_id": alert_id_for(advertiser_id, window_start, window_end, detector, status),
        "status": status,
        "advertiser_id": advertiser_id,
        "detector": detector,
        "window": {"start": window_start, "end": window_end,
                   "start_iso": iso_ms(window_start), "end_iso": iso_ms(window_end)},
        "severity": severity,
        "risk_score": round(risk_score, 6),
        "threshold": threshold,
        "model": {"name": model_name, "version": model_version, "config_version": config_version},
        "mode": mode,
        "reasons": reasons,
        "metrics": {k: round(v, 6) for k, v in metrics.items()},
        "episode": episode,
        "emitted_at": iso_ms(emitted_at_ms),
    }


def encode(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


def render_line(alert: dict[str, Any]) -> str:
    """One readable line per alert, for the demo and ``riskstream alerts follow``."""
    why = "; ".join(r["message"] for r in alert["reasons"][:3]) or "model score"
    return (f"{alert['window']['start_iso']} {alert['status'].upper():9} "
            f"{alert['severity'].upper():8} {alert['advertiser_id']:>12} "
            f"risk={alert['risk_score']:.3f} [{alert['model']['name']}/{alert['mode']}] {why}")
