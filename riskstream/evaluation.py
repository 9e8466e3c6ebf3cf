"""Evaluation against ground truth: incident recall, episode precision and detection delay
(``evaluate``), and per incident the evidence it left and how surprising it was
(``incident_evidence``), shared by ``riskstream backtest``, ``riskstream tune`` and ``riskstream
models compare``. Pure functions of alerts (the contract's or the tuning replay's), the
simulator's ground truth and closed windows' features."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Iterable

from models.baseline import window_counts


# An alert up to this many windows after an incident's end counts for it (``incident_span``):
# the grace of ``riskstream backtest``, ``riskstream tune`` and ``riskstream models compare``.
GRACE_WINDOWS = 30
# An incident whose honest rank (``honest_ranks``) is at least this left evidence that 1 in 20
# advertisers without incidents match: no detector could catch it on that evidence alone
# without flagging them too.
PLAIN_RANK = 0.05


def incident_span(t: dict, grace_ms: int) -> tuple[int, int]:
    """The event time ``[start, end]`` in which an alert of incident ``t``'s advertiser counts
    for it: from its start to ``max(end + grace, signal_end)`` (see ``evaluate``)."""
    return t["start_ms"], max(t["end_ms"] + grace_ms, t.get("signal_end_ms", 0))


def _in_span(a: dict, t: dict, grace_ms: int) -> bool:
    lo, hi = incident_span(t, grace_ms)
    return (a["advertiser_id"] == t["advertiser_id"] and a["window"]["end"] > lo
            and a["window"]["start"] <= hi)


def incident_detections(alerts: list[dict], truth: list[dict], *, window_ms: int,
                        grace_ms: int) -> list[tuple[dict, float | None, dict | None]]:
    """Per incident that expects an alert: ``(incident, delay in windows or None, first alert
    or None)``, the delay from its start to the end of the first enforce alert (open or
    escalated) in its span, as ``evaluate`` counts them."""
    flagged = [a for a in alerts if a["status"] in ("open", "escalated")]
    out = []
    for t in truth:
        if not t.get("expected_alert", True):
            continue
        hits = [a for a in flagged if _in_span(a, t, grace_ms)]
        if not hits:
            out.append((t, None, None))
            continue
        first = min(hits, key=lambda a: a["window"]["end"])
        out.append((t, max(first["window"]["end"] - t["start_ms"], 0) / window_ms, first))
    return out


# The evidence an incident left (``incident_evidence``): models.baseline's ``window_counts``
# summed over the incident's span.
EVIDENCE = ("impressions", "clicks", "fast_clicks", "conversions", "reports", "scam_reports",
            "hides", "deception", "low_ratings")


# (numerator, denominator) of the evidence whose surprise ``incident_evidence`` measures
SURPRISE_STREAMS = (("clicks", "impressions"), ("fast_clicks", "clicks"),
                    ("conversions", "clicks"), ("reports", "impressions"),
                    ("scam_reports", "impressions"), ("hides", "impressions"),
                    ("deception", "impressions"), ("low_ratings", "impressions"))


def poisson_tail(k: float, lam: float) -> float:
    """``P(X >= k)`` for ``X ~ Poisson(lam)``, ``k`` rounded to a whole count.

    >>> poisson_tail(0, 3.0), poisson_tail(2, 0.0)
    (1.0, 0.0)
    >>> round(poisson_tail(3, 0.5), 4)  # 1 - e^-0.5 (1 + 0.5 + 0.125)
    0.0144
    """
    n = round(k)
    if n <= 0:
        return 1.0
    if lam <= 0.0:
        return 0.0
    # imported here: workers import this module (through riskstream.backtest) but never call
    # this, and scipy.special costs ~250 ms and ~24 MB at start (measured here)
    from scipy.special import gammainc

    return float(gammainc(n, lam))  # the regularised lower incomplete gamma: P(X >= n)


def surprise(during: dict[str, float], before: dict[str, float]) -> dict[str, Any] | None:
    """The stream of ``SURPRISE_STREAMS`` whose count over an incident's span is least likely
    at the advertiser's own rate before the incident (its events + 0.5 over its denominator):
    ``{"stream", "observed", "expected", "p"}``, or None without history."""
    best = None
    for num, den in SURPRISE_STREAMS:
        if before[den] <= 0 or during[den] <= 0:
            continue
        expected = (before[num] + 0.5) / before[den] * during[den]
        p = poisson_tail(during[num], expected)
        if best is None or p < best["p"]:
            best = {"stream": num, "observed": round(during[num]),
                    "expected": round(expected, 2), "p": p}
    return best


def span_counts(windows: Iterable[tuple[int, int, dict[str, float]]], lo: int,
                hi: int) -> tuple[dict[str, float], dict[str, float]]:
    """``EVIDENCE`` summed over one advertiser's windows ``(start, end, features)`` in the span
    ``[lo, hi]`` (as ``incident_span``) and over those before it."""
    during = dict.fromkeys(EVIDENCE, 0.0)
    before = dict.fromkeys(EVIDENCE, 0.0)
    for start, end, x in windows:
        into = during if end > lo and start <= hi else before if end <= lo else None
        if into is not None:
            counts = window_counts(x)
            for name in EVIDENCE:
                into[name] += counts[name]
    return during, before


def honest_ranks(windows: Iterable[tuple[str, int, int, dict[str, float]]], truth: list[dict],
                 rows: list[dict[str, Any]], *, grace_ms: int) -> None:
    """Add ``honest_rank`` to each incident row of ``incident_evidence(windows, truth, ...)``:
    the share of the advertisers without any incident (of at least half the incident's
    impressions over the same span) whose least likely count over that span (``surprise``) is
    at least as unlikely as the incident's. A detector that caught the incident on its evidence
    would flag about that share of honest advertisers too: 0.2 is one in five; None, no
    advertiser to compare with. (Per advertiser, prefix sums of its window counts: a span is two
    bisections, not a pass over its windows.)"""
    involved = {t["advertiser_id"] for t in truth}
    by_adv: dict[str, list[tuple[int, int, dict[str, float]]]] = {}
    for adv, start, end, x in windows:
        if adv not in involved:
            by_adv.setdefault(adv, []).append((start, end, window_counts(x)))
    honest = []
    for ws in by_adv.values():
        ws.sort(key=lambda w: w[0])
        sums = [[0.0] * len(EVIDENCE)]
        for _start, _end, counts in ws:
            sums.append([a + counts[n] for a, n in zip(sums[-1], EVIDENCE)])
        honest.append(([w[0] for w in ws], [w[1] for w in ws], sums))
    expecting = [t for t in truth if t.get("expected_alert", True)]
    for t, row in zip(expecting, rows):
        lo, hi = incident_span(t, grace_ms)
        p = row["surprise"]["p"] if row["surprise"] else 1.0
        at_least = compared = 0
        for starts, ends, sums in honest:
            i = bisect_right(ends, lo)  # windows before i end at or before the span's start
            j = max(bisect_right(starts, hi), i)  # windows i..j-1 overlap the span
            before = dict(zip(EVIDENCE, sums[i]))
            during = {n: b - a for n, a, b in zip(EVIDENCE, sums[i], sums[j])}
            if during["impressions"] < 0.5 * row["evidence"]["impressions"]:
                continue
            sp = surprise(during, before)
            if sp is not None:
                compared += 1
                at_least += sp["p"] <= p
        row["honest_rank"] = round(at_least / compared, 3) if compared else None


def incident_evidence(windows: Iterable[tuple[str, int, int, dict[str, float]]],
                      truth: list[dict], alerts: list[dict], *, window_ms: int,
                      grace_ms: int) -> list[dict[str, Any]]:
    """Per incident that expects an alert: kind, advertiser, its baseline volume and length,
    the delay in windows (None when missed), the first alert's reasons, and the evidence it left
    over its span (``EVIDENCE`` summed over the closed windows ``(advertiser, start, end,
    features)`` inside ``incident_span``), and its ``surprise``: the count least likely at the
    advertiser's own rate before the incident, with that probability (``surprise``). What to
    read when asking why an incident was missed or found late: a miss with a tiny ``p`` is the
    model's failure; a cloaked page that drew 2 deception signals in three hours where 1 was
    expected (p ~ 0.26) left nothing a detector could tell from an honest page."""
    by_adv: dict[str, list[tuple[int, int, dict[str, float]]]] = {}
    for adv, start, end, x in windows:
        by_adv.setdefault(adv, []).append((start, end, x))
    rows = []
    for t, delay, first in incident_detections(alerts, truth, window_ms=window_ms,
                                               grace_ms=grace_ms):
        lo, hi = incident_span(t, grace_ms)
        evidence, before = span_counts(by_adv.get(t["advertiser_id"], ()), lo, hi)
        rows.append({
            "kind": t["kind"], "advertiser_id": t["advertiser_id"],
            "impressions_per_min": t.get("baseline_impressions_per_min"),
            "minutes": (t["end_ms"] - t["start_ms"]) / 60_000, "delay_windows": delay,
            "reasons": [_reason_name(r) for r in first["reasons"]
                        if not isinstance(r, dict) or r.get("type") != "lifecycle"]
            if first else None,
            "evidence": {k: round(v, 1) for k, v in evidence.items()},
            "surprise": surprise(evidence, before)})
    return rows


def missed_or_late(rows: list[dict[str, Any]], slower_than: float) -> list[dict[str, Any]]:
    """The incident rows missed, or found after more than ``slower_than`` windows."""
    return [r for r in rows if r["delay_windows"] is None or r["delay_windows"] > slower_than]


def plain_misses(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(missed incidents, those of them with an honest rank of at least ``PLAIN_RANK``)."""
    missed = [r for r in rows if r["delay_windows"] is None]
    return len(missed), sum(1 for r in missed if (r.get("honest_rank") or 0.0) >= PLAIN_RANK)


def rank_cell(row: dict[str, Any]) -> str:
    """An incident row's honest rank as a table cell."""
    rank = row.get("honest_rank")
    return "-" if rank is None else f"{rank:.3f}"


def parse_thresholds(text: str) -> list[float]:
    """Comma-separated alert thresholds, each in (0, 1].

    >>> parse_thresholds("0.6,0.8")
    [0.6, 0.8]
    """
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(0.0 < v <= 1.0 for v in values):
        raise ValueError(f"each must be in (0, 1], got {text!r}")
    return values


def surprise_cells(row: dict[str, Any]) -> tuple[str, str]:
    """An incident row's surprise as two table cells: "stream observed (expected)" and p."""
    sp = row.get("surprise")
    if sp is None:
        return "-", "-"
    return f"{sp['stream']} {sp['observed']} ({sp['expected']:g})", f"{sp['p']:.2g}"


def _reason_name(reason: Any) -> str:
    """A reason as a name: the explaining feature or the rule's code (alerts of the contract
    carry objects, the tuning replay's plain names)."""
    if isinstance(reason, str):
        return reason
    return reason.get("feature") or reason.get("code") or str(reason)


def evaluate(alerts: list[dict], truth: list[dict], *, window_ms: int, grace_ms: int,
             advertiser_hours: float) -> dict[str, Any]:
    """Incident recall, episode precision, detection delay (windows) and alert volume.

    An incident counts as detected when an enforce alert (open or escalated) of its advertiser
    falls in ``[start, max(end + grace, signal_end)]``: grace covers signals that trail the
    incident, and ``signal_end_ms`` (in the simulator's ground truth) is when the incident's own
    trailing signals stop -- complaints and refunds arrive hours after a cloaked conversion, and
    an alert on them is caused by the incident. An alert episode (status ``open``) is a true
    positive when it overlaps an incident that expects an alert, else a false positive (benign
    look-alikes included).
    """
    bad = [t for t in truth if t.get("expected_alert", True)]
    benign = [t for t in truth if not t.get("expected_alert", True)]
    opens = [a for a in alerts if a["status"] == "open"]

    detected, delays = 0, []
    per_kind: dict[str, dict[str, int]] = {}
    for t, delay, _first in incident_detections(alerts, bad, window_ms=window_ms,
                                                grace_ms=grace_ms):
        k = per_kind.setdefault(t["kind"], {"incidents": 0, "detected": 0})
        k["incidents"] += 1
        if delay is not None:
            detected += 1
            k["detected"] += 1
            delays.append(delay)
    tp = sum(1 for a in opens if any(_in_span(a, t, grace_ms) for t in bad))
    benign_alerts = sum(1 for a in opens if any(_in_span(a, t, grace_ms) for t in benign))
    out = _figures(
        {"incidents": len(bad), "detected": detected, "alert_episodes": len(opens),
         "true_episodes": tp, "benign_lookalikes": len(benign),
         "alerts_on_benign": benign_alerts, "alerts_total": len(alerts)},
        delays, per_kind)
    out["alerts_per_1000_advertiser_hours"] = (1000 * len(opens) / advertiser_hours
                                               if advertiser_hours else None)
    return out


# the counts of an evaluation: summed over runs by ``combine``
COUNTS = ("incidents", "detected", "alert_episodes", "true_episodes", "benign_lookalikes",
          "alerts_on_benign", "alerts_total")


def _figures(counts: dict[str, int], delays: list[float],
             per_kind: dict[str, dict[str, int]]) -> dict[str, Any]:
    """An evaluation from its counts (``COUNTS``), delays and per-kind counts: recall,
    precision, and the median and p90 of the sorted delays."""
    delays = sorted(delays)
    return {
        "delays_windows": delays,
        **counts,
        "incident_recall": counts["detected"] / counts["incidents"]
        if counts["incidents"] else None,
        "episode_precision": counts["true_episodes"] / counts["alert_episodes"]
        if counts["alert_episodes"] else None,
        "median_delay_windows": delays[len(delays) // 2] if delays else None,
        "p90_delay_windows": delays[int(len(delays) * 0.9)] if delays else None,
        "per_kind": per_kind,
    }


def combine(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    """One evaluation of several runs (``evaluate``'s): counts summed, delays pooled (median and
    p90 of all detected incidents), per-kind figures summed; no alert rate (the runs' hours
    differ)."""
    per_kind: dict[str, dict[str, int]] = {}
    for ev in evaluations:
        for kind, k in ev["per_kind"].items():
            into = per_kind.setdefault(kind, {"incidents": 0, "detected": 0})
            into["incidents"] += k["incidents"]
            into["detected"] += k["detected"]
    return _figures({k: sum(ev[k] for ev in evaluations) for k in COUNTS},
                    [d for ev in evaluations for d in ev["delays_windows"]], per_kind)
