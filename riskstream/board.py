"""The risk board's data: a bounded in-memory view of the whole platform, fed by ``risk-scores``
and ``risk-alerts``.

Every worker reads both topics *outside* the consumer group, so any worker can show every
advertiser, whatever partitions it owns. Per advertiser the view keeps one small
:class:`AdvertiserTrack`: the latest window's score, severity, rules and full features (float32),
a short history of the risk score and a few key rates (the sparkline), and the open alert if any.
The last few full alert records per advertiser are kept for the lookup API's reasons.
Memory is bounded: at most ``max_advertisers`` tracks (the least recently updated go first),
``max_alerts`` alerts in the feed.

Ranking ("riskiest now"): advertisers with an open alert first, by the alert's severity, then by
the latest window's risk score. ``top()`` runs ``heapq.nlargest`` over the tracks and caches the
ranked prefix per filter for ``cache_s`` seconds, so a board polled by many browsers costs one
pass over 100k advertisers a second at most.

>>> b = RiskBoard(clock=lambda: 0.0)
>>> b.add_score({"advertiser_id": "adv-1", "window": {"start": 0, "end": 60000},
...              "model": {"name": "robust-baseline", "version": "1", "config_version": 0},
...              "risk_score": 0.93, "flagged": True, "severity": "medium",
...              "rules": ["click_spam_fast_clicks"], "metrics": {"ctr": 0.2}})
True
>>> page = b.top(10)
>>> page["total"], page["rows"][0]["advertiser_id"], page["rows"][0]["kind"]
(1, 'adv-1', 'click_fraud')
"""

from __future__ import annotations

import heapq
import math
import sys
import time
import uuid
from array import array
from collections import deque
from typing import Any, Callable, Iterable

from riskstream.alerts import iso_ms
from riskstream.decision import SEVERITIES, SEVERITY_RANK
from riskstream.features import FEATURE_NAMES

# The sparkline: the risk score and the rates that tell the incident kinds apart.
SERIES = ("risk_score", "impressions", "ctr", "fast_click_share", "impressions_per_user",
          "report_rate", "scam_report_rate", "complaint_rate")
HISTORY = 12  # windows kept per advertiser (as many as the engine's per-advertiser state keeps)
ALERTS_PER_ADVERTISER = 5
MAX_PAGE = 100       # rows per page
MAX_DEPTH = 1000     # how far down the ranking one may page
FILTER_SEVERITIES = SEVERITIES + ("none",)
SEVERITY_NAME = {s: s for s in SEVERITIES}  # one shared string object per severity

# Incident kinds, from the codes of an alert's reasons or a score's rules (first match wins:
# rules come first, then features by deviation).
KINDS: dict[str, tuple[str, ...]] = {
    "click_fraud": ("click_spam_fast_clicks", "ctr", "clicks", "fast_click_share",
                    "short_dwell_share", "median_click_delay_ms", "mean_dwell_ms"),
    "bot_traffic": ("impressions_per_user", "top_region_share", "impressions", "unique_users",
                    "regions"),
    "scam_or_harm": ("scam_reports", "report_rate_above_floor", "report_rate", "reports",
                     "scam_report_rate", "hide_rate", "not_interested_rate", "harm_rate"),
    "complaints": ("complaints_per_conversion", "complaint_rate", "complaints",
                   "refund_requests", "complaints_per_impression", "low_rating_share",
                   "mean_rating"),
}
KIND_NAMES = tuple(KINDS) + ("other", "none")
_KIND_OF = {code: kind for kind, codes in KINDS.items() for code in codes}


def incident_kind(codes: Iterable[str]) -> str:
    """The kind of incident a list of reason/rule codes points at.

    >>> incident_kind(["ctr_above_baseline", "report_rate_above_baseline"])
    'click_fraud'
    >>> incident_kind(["scam_reports"]), incident_kind([]), incident_kind(["spend_x"])
    ('scam_or_harm', 'none', 'other')
    """
    seen = False
    for code in codes:
        seen = True
        kind = _KIND_OF.get(code)
        if kind is None:
            for suffix in ("_above_baseline", "_below_baseline"):
                if code.endswith(suffix):
                    kind = _KIND_OF.get(code[: -len(suffix)])
        if kind is not None:
            return kind
    return "other" if seen else "none"


def _round(v: float) -> float:
    """float32 storage carries ~7 digits; show 6 significant ones (and no NaN in JSON)."""
    if not math.isfinite(v):
        return 0.0
    return float(f"{v:.6g}")


class AdvertiserTrack:
    """What the board knows about one advertiser (about 1 KB with the default history)."""

    __slots__ = ("advertiser_id", "risk", "severity", "window_start", "window_end", "rules",
                 "model", "metrics", "starts", "hist", "alert", "kind", "rank")

    def __init__(self, advertiser_id: str) -> None:
        self.advertiser_id = advertiser_id
        self.risk = 0.0
        self.severity: str | None = None  # the latest window's, when it was flagged
        self.window_start = -1
        self.window_end = -1
        self.rules: tuple[str, ...] = ()
        self.model: tuple[str, str, int] = ("", "", 0)
        self.metrics = array("f")          # the latest window's features, FEATURE_NAMES order
        self.starts = array("q")           # window starts of the history, oldest first
        self.hist = array("f")             # len(SERIES) values per window in starts
        self.alert: tuple[str, str, str] | None = None  # open alert: (severity, alert_id, kind)
        self.kind = "none"
        self.rank = 0.0

    def board_severity(self) -> str:
        if self.alert is not None:
            return self.alert[0]
        return self.severity or "none"

    def rerank(self) -> None:
        # An open alert outranks any score: 10 + 10 * severity rank, plus the latest risk.
        base = 10.0 + 10.0 * SEVERITY_RANK[self.alert[0]] if self.alert is not None else 0.0
        self.rank = base + self.risk
        self.kind = self.alert[2] if self.alert is not None else incident_kind(self.rules)

    def history(self) -> dict[str, Any]:
        n = len(SERIES)
        return {
            "window_start": list(self.starts),
            **{name: [_round(self.hist[i * n + j]) for i in range(len(self.starts))]
               for j, name in enumerate(SERIES)},
        }

    def latest_metrics(self) -> dict[str, float]:
        return {name: _round(v) for name, v in zip(FEATURE_NAMES, self.metrics)}

    def row(self) -> dict[str, Any]:
        return {
            "advertiser_id": self.advertiser_id,
            "rank_score": round(self.rank, 6),
            "risk_score": round(self.risk, 6),
            "severity": self.board_severity(),
            "window_severity": self.severity,
            "kind": self.kind,
            "open_alert": None if self.alert is None else
            {"severity": self.alert[0], "alert_id": self.alert[1], "kind": self.alert[2]},
            "rules": list(self.rules),
            "window": {"start": self.window_start, "end": self.window_end,
                       "end_iso": iso_ms(self.window_end) if self.window_end >= 0 else None},
            "model": {"name": self.model[0], "version": self.model[1],
                      "config_version": self.model[2]},
            "history": self.history(),
        }


def alert_summary(seq: int, alert: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "seq": seq,
        "alert_id": alert["alert_id"],
        "advertiser_id": alert["advertiser_id"],
        "status": alert["status"],
        "severity": alert["severity"],
        "kind": kind,
        "risk_score": alert["risk_score"],
        "window": alert["window"],
        "model": alert["model"],
        "reasons": [r.get("message", r.get("code", "")) for r in alert.get("reasons", [])[:3]],
        "emitted_at": alert.get("emitted_at"),
    }


class BoardFilterError(ValueError):
    """A filter value the board does not know (the web layer answers 400)."""


def parse_filter(raw: str | None, allowed: tuple[str, ...], what: str) -> frozenset[str] | None:
    """``"high,critical"`` -> ``{"high", "critical"}``; empty or None -> no filter.

    >>> sorted(parse_filter("high, critical", FILTER_SEVERITIES, "severity"))
    ['critical', 'high']
    >>> parse_filter("", FILTER_SEVERITIES, "severity") is None
    True
    """
    if not raw:
        return None
    values = frozenset(v.strip() for v in raw.split(",") if v.strip())
    unknown = sorted(values - set(allowed))
    if unknown:
        raise BoardFilterError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(allowed)}")
    return values or None


class RiskBoard:
    def __init__(self, *, max_advertisers: int = 200_000, max_alerts: int = 2000,
                 cache_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_advertisers = max_advertisers
        self.cache_s = cache_s
        self._clock = clock
        self._tracks: dict[str, AdvertiserTrack] = {}  # least recently updated first
        self._alerts: deque[dict[str, Any]] = deque(maxlen=max_alerts)  # feed, oldest first
        self._alert_ids: dict[str, None] = {}  # ids in the feed (at-least-once: dedup)
        self._by_advertiser: dict[str, deque[dict[str, Any]]] = {}  # full alert records
        self._seq = 0
        # Sequence numbers are per board instance: a browser that sees another instance (worker
        # restarted, or another worker behind a load balancer) starts its feed again from 0.
        self.instance = uuid.uuid4().hex[:12]
        self._cache: dict[tuple, tuple[float, int, list[AdvertiserTrack]]] = {}
        self.stats = {"scores": 0, "alerts": 0, "duplicates": 0, "evicted": 0}

    # -- feeding ------------------------------------------------------------------------------
    def _track(self, advertiser_id: str) -> AdvertiserTrack:
        t = self._tracks.pop(advertiser_id, None)
        if t is None:
            t = AdvertiserTrack(advertiser_id)
            while len(self._tracks) >= self.max_advertisers:
                gone = next(iter(self._tracks))
                del self._tracks[gone]
                self._by_advertiser.pop(gone, None)
                self.stats["evicted"] += 1
        self._tracks[advertiser_id] = t  # most recently updated last
        return t

    def add_score(self, record: dict[str, Any]) -> bool:
        """One ``risk-scores`` record. Returns False for a replayed or out-of-order window."""
        t = self._track(record["advertiser_id"])
        start = int(record["window"]["start"])
        if start <= t.window_start:
            self.stats["duplicates"] += 1
            return False
        self.stats["scores"] += 1
        metrics = record.get("metrics") or {}
        t.risk = float(record["risk_score"])
        sev = record.get("severity") if record.get("flagged") else None
        t.severity = SEVERITY_NAME.get(sev, sev)
        t.window_start, t.window_end = start, int(record["window"]["end"])
        # Interned: a few distinct values shared by 100k tracks (decoded strings are new objects)
        t.rules = tuple(sys.intern(str(r)) for r in record.get("rules") or ())
        m = record.get("model") or {}
        model = (sys.intern(str(m.get("name", ""))), sys.intern(str(m.get("version", ""))),
                 int(m.get("config_version", 0)))
        if model != t.model:
            t.model = model
        t.metrics = array("f", [float(metrics.get(name, 0.0)) for name in FEATURE_NAMES])
        t.starts.append(start)
        t.hist.extend([t.risk] + [float(metrics.get(name, 0.0)) for name in SERIES[1:]])
        if len(t.starts) > HISTORY:
            del t.starts[0]
            del t.hist[: len(SERIES)]
        t.rerank()
        return True

    def add_alert(self, alert: dict[str, Any]) -> bool:
        """One ``risk-alerts`` record (enforce mode). Returns False for a duplicate id."""
        aid = alert["alert_id"]
        if aid in self._alert_ids:
            self.stats["duplicates"] += 1
            return False
        self.stats["alerts"] += 1
        kind = incident_kind(r.get("code", "") for r in alert.get("reasons", ()))
        adv = alert["advertiser_id"]
        t = self._track(adv)
        if alert["status"] in ("open", "escalated"):
            t.alert = (alert["severity"], aid, kind)
        elif alert["status"] == "resolved":
            t.alert = None
        t.rerank()
        self._by_advertiser.setdefault(adv, deque(maxlen=ALERTS_PER_ADVERTISER)).append(alert)
        self._seq += 1
        if len(self._alerts) == self._alerts.maxlen:
            self._alert_ids.pop(self._alerts[0]["alert_id"], None)
        self._alerts.append(alert_summary(self._seq, alert, kind))
        self._alert_ids[aid] = None
        return True

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._tracks)

    def track(self, advertiser_id: str) -> AdvertiserTrack | None:
        return self._tracks.get(advertiser_id)

    def alerts_of(self, advertiser_id: str) -> list[dict[str, Any]]:
        """The last few full alert records of one advertiser, oldest first."""
        return list(self._by_advertiser.get(advertiser_id, ()))

    def _ranked(self, severities: frozenset[str] | None,
                kinds: frozenset[str] | None) -> tuple[int, list[AdvertiserTrack]]:
        key = (severities, kinds)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1], hit[2]
        tracks: Iterable[AdvertiserTrack] = self._tracks.values()
        if severities is not None or kinds is not None:
            tracks = [t for t in tracks
                      if (severities is None or t.board_severity() in severities)
                      and (kinds is None or t.kind in kinds)]
        else:
            tracks = list(tracks)
        ranked = heapq.nlargest(MAX_DEPTH, tracks, key=lambda t: t.rank)
        if len(self._cache) > 64:  # bounded: one entry per filter combination in use
            self._cache.clear()
        self._cache[key] = (now, len(tracks), ranked)
        return len(tracks), ranked

    def top(self, n: int = 50, offset: int = 0, *, severities: frozenset[str] | None = None,
            kinds: frozenset[str] | None = None) -> dict[str, Any]:
        """One page of the riskiest advertisers (``n`` at most MAX_PAGE, within MAX_DEPTH)."""
        n = max(1, min(int(n), MAX_PAGE))
        offset = max(0, min(int(offset), MAX_DEPTH))
        total, ranked = self._ranked(severities, kinds)
        return {
            "total": total,
            "advertisers": len(self._tracks),
            "offset": offset,
            "limit": n,
            "max_depth": MAX_DEPTH,
            "rows": [t.row() for t in ranked[offset: offset + n]],
        }

    def alerts_after(self, after: int = 0, limit: int = 100, *,
                     severities: frozenset[str] | None = None,
                     kinds: frozenset[str] | None = None) -> dict[str, Any]:
        """Alerts with ``seq > after``, newest first (at most ``limit``). A browser polls with
        the ``last_seq`` of its previous answer and gets only what arrived since."""
        limit = max(1, min(int(limit), 500))
        out = []
        for a in reversed(self._alerts):
            if a["seq"] <= after or len(out) >= limit:
                break
            if (severities is None or a["severity"] in severities) and \
                    (kinds is None or a["kind"] in kinds):
                out.append(a)
        return {"board": self.instance, "last_seq": self._seq, "alerts": out}

    def summary(self) -> dict[str, Any]:
        """Counts over every advertiser (cached like the ranking: one pass a second at most)."""
        now = self._clock()
        hit = self._cache.get(("summary",))
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[2]
        by_severity = {s: 0 for s in FILTER_SEVERITIES}
        open_alerts = 0
        for t in self._tracks.values():
            by_severity[t.board_severity()] += 1
            open_alerts += t.alert is not None
        out = {"advertisers": len(self._tracks), "open_alerts": open_alerts,
               "by_severity": by_severity, "alerts_seen": self._seq, **self.stats}
        self._cache[("summary",)] = (now, 0, out)  # type: ignore[assignment]
        return out
