"""One advertiser at a glance: what ``GET /advertisers/{id}`` answers.

Two sources, joined here so the web layer only routes and serialises:

* the advertiser's state on the worker that owns its partition (open windows and their
  features so far, the enforce model and its baseline, recent scores, open alert lifecycles,
  whether enforcement confirmed an alert);
* the risk board's view of ``risk-scores`` and ``risk-alerts`` (the latest closed window's
  features, a short history of key rates, and the last alert records with their reasons, since
  the state keeps an alert's lifecycle but not its reasons).

Either may be missing: a new advertiser has state before its first window closes; an advertiser
whose state expired by TTL may still be on the board. Neither: unknown (the API answers 404).
"""

from __future__ import annotations

from typing import Any

from riskstream.alerts import iso_ms
from riskstream.board import AdvertiserTrack, RiskBoard, incident_kind
from riskstream.engine import AdvertiserState
from riskstream.events import InvalidEvent, _id
from riskstream.features import window_features


class BadAdvertiserId(ValueError):
    """Not a valid advertiser id (the same rule as input events: 1-128 printable characters)."""


def parse_advertiser_id(raw: Any) -> str:
    """Validate an id from a URL exactly as input events' ``advertiser_id`` is validated.

    >>> parse_advertiser_id("adv-7")
    'adv-7'
    >>> parse_advertiser_id("adv\\n7")
    Traceback (most recent call last):
    ...
    riskstream.lookup.BadAdvertiserId: advertiser_id must be 1-128 printable characters
    """
    try:
        return _id({"advertiser_id": raw}, "advertiser_id")
    except InvalidEvent as exc:
        raise BadAdvertiserId(exc.detail) from None


def _window(start: int, end: int) -> dict[str, Any]:
    return {"start": start, "end": end, "start_iso": iso_ms(start), "end_iso": iso_ms(end)}


def _features(x: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in x.items()}


def _baseline(model: Any, x: dict[str, float], source: str) -> dict[str, Any] | None:
    """Value, the advertiser's baseline and the deviation per feature the model judges, as of
    now (models that cannot explain themselves give an empty list)."""
    deviations = getattr(model, "deviations", None)
    contributions = deviations(x) if deviations is not None else model.explain(x, top=99)
    rows = sorted(contributions, key=lambda c: c.deviation, reverse=True)
    return {
        "computed_on": source,
        "features": [{"feature": c.feature, "value": round(c.value, 6),
                      "baseline": round(c.baseline, 6), "deviation": round(c.deviation, 3)}
                     for c in rows],
    }


def _recent(state: AdvertiserState | None, track: AdvertiserTrack | None) -> list[dict]:
    by_start: dict[int, dict[str, Any]] = {}
    if state is not None:
        for start, risk, severity in state.recent:
            by_start[start] = {"window_start": start, "window_start_iso": iso_ms(start),
                               "risk_score": risk, "severity": severity, "features": None}
    if track is not None:
        hist = track.history()
        for i, start in enumerate(hist["window_start"]):
            row = by_start.setdefault(start, {"window_start": start,
                                              "window_start_iso": iso_ms(start),
                                              "risk_score": hist["risk_score"][i],
                                              "severity": None})
            row["features"] = {name: hist[name][i] for name in hist
                               if name not in ("window_start", "risk_score")}
    return [by_start[s] for s in sorted(by_start)]


def _open_alerts(state: AdvertiserState | None, track: AdvertiserTrack | None,
                 alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Open alert episodes (the owner's lifecycle state is the truth), each with the reasons of
    its latest alert record (the opening one, or the escalation)."""
    def latest_record(detector: str | None, opened_id: str | None) -> dict[str, Any] | None:
        for a in reversed(alerts):
            if a["status"] == "resolved" or (detector and a.get("detector") != detector):
                continue
            if opened_id is None or a["alert_id"] == opened_id or \
                    (a.get("episode") or {}).get("opened_alert_id") == opened_id:
                return a
        return None

    episodes: list[tuple[str | None, dict[str, Any]]] = []
    if state is not None:
        episodes = [(d, lc) for d, lc in sorted(state.lifecycle.items())]
    elif track is not None and track.alert is not None:  # no state here: the board's view
        episodes = [(None, {"severity": track.alert[0], "opened_alert_id": track.alert[1]})]
    out = []
    for detector, lc in episodes:
        rec = latest_record(detector, lc.get("opened_alert_id"))
        out.append({
            "detector": detector or (rec or {}).get("detector"),
            "severity": lc.get("severity"),
            "opened_alert_id": lc.get("opened_alert_id"),
            "opened_window_start": lc.get("opened_window_start"),
            "flagged_windows": lc.get("flagged_windows"),
            "normal_streak": lc.get("normal_streak"),
            "kind": incident_kind(r.get("code", "") for r in rec["reasons"]) if rec else None,
            "latest_alert": None if rec is None else {
                "alert_id": rec["alert_id"], "status": rec["status"],
                "severity": rec["severity"], "risk_score": rec["risk_score"],
                "window": rec["window"], "emitted_at": rec.get("emitted_at")},
            # None: the alert record is older than the board's look-back (reasons unknown here)
            "reasons": rec["reasons"] if rec else None,
        })
    return out


def advertiser_lookup(advertiser_id: str, partition: int, state: AdvertiserState | None,
                      board: RiskBoard, *, enforce_spec: str,
                      served_by: str = "") -> dict[str, Any] | None:
    """The lookup document, or None when neither the state nor the board knows the advertiser."""
    track = board.track(advertiser_id)
    if state is None and track is None:
        return None
    current = []
    if state is not None:
        for w in sorted(state.windows.values(), key=lambda w: w.start):
            current.append({"window": _window(w.start, w.end), "features":
                            _features(window_features(w))})
    latest = None
    if track is not None and track.window_start >= 0:
        latest = {"window": _window(track.window_start, track.window_end),
                  "risk_score": round(track.risk, 6), "severity": track.severity,
                  "flagged": track.severity is not None, "rules": list(track.rules),
                  "kind": incident_kind(track.rules), "features": track.latest_metrics()}
    elif state is not None and state.recent:
        start, risk, severity = state.recent[-1]
        latest = {"window": {"start": start, "start_iso": iso_ms(start)}, "risk_score": risk,
                  "severity": severity, "flagged": severity is not None, "rules": None,
                  "kind": None, "features": None}
    model_doc: dict[str, Any] = {"name": enforce_spec}
    baseline = None
    model = state.models.get(enforce_spec) if state is not None else None
    if model is not None:
        model_doc["windows_seen"] = model.windows_seen
        if current:
            baseline = _baseline(model, window_features(state.windows[current[-1]["window"]
                                                                      ["start"]]),
                                 f"open window from {current[-1]['window']['start_iso']}")
        elif latest is not None and latest["features"] is not None:
            baseline = _baseline(model, latest["features"],
                                 f"last closed window from {latest['window']['start_iso']}")
    if track is not None and track.model[0]:
        model_doc.update(scored_by={"name": track.model[0], "version": track.model[1],
                                    "config_version": track.model[2]})
    alerts = board.alerts_of(advertiser_id)
    return {
        "advertiser_id": advertiser_id,
        "partition": partition,
        "served_by": served_by,
        "sources": {"state": state is not None, "board": track is not None},
        "severity": track.board_severity() if track is not None else None,
        "kind": track.kind if track is not None else None,  # the open alert's, else the rules'
        "latest": latest,
        "current_windows": current,
        "recent_windows": _recent(state, track),
        "baseline": baseline,
        "model": model_doc,
        "open_alerts": _open_alerts(state, track, alerts),
        "recent_alerts": [{"alert_id": a["alert_id"], "status": a["status"],
                           "severity": a["severity"], "risk_score": a["risk_score"],
                           "window": a["window"], "reasons": a["reasons"],
                           "emitted_at": a.get("emitted_at")} for a in reversed(alerts)],
        "enforced_by": state.enforced_by if state is not None else None,
    }
