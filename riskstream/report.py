"""The backtest's HTML report: one self-contained page (inline SVG, no plotting dependency) for
people who would rather look than read: score timelines of flagged advertisers with incidents
shaded, recall per incident kind, the detection-delay distribution, the operating curve (with
``--thresholds``), and the missed and late incidents with the evidence each left."""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path
from typing import Any

from riskstream.evaluation import missed_or_late, plain_misses, rank_cell, surprise_cells

W, H, PAD = 720, 120, 4


def _timeline(scores: list[tuple[int, float]], incidents: list[dict], alerts: list[dict],
              threshold: float) -> str:
    t0, t1 = scores[0][0], scores[-1][0] or 1
    span = max(t1 - t0, 1)

    def x(t: int) -> float:
        return PAD + (W - 2 * PAD) * (t - t0) / span

    def y(v: float) -> float:
        return H - PAD - (H - 2 * PAD) * v

    parts = [f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">',
             f'<rect width="{W}" height="{H}" fill="#fafafa" stroke="#ddd"/>']
    for inc in incidents:
        colour = "#fdd" if inc.get("expected_alert", True) else "#dfd"
        x0, x1 = x(max(inc["start_ms"], t0)), x(min(inc["end_ms"], t1))
        parts.append(f'<rect x="{x0:.1f}" y="0" width="{max(x1 - x0, 1):.1f}" height="{H}" '
                     f'fill="{colour}"><title>{html.escape(inc["kind"])}</title></rect>')
    parts.append(f'<line x1="0" x2="{W}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" '
                 'stroke="#c00" stroke-dasharray="4 3"/>')
    points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in scores)
    parts.append(f'<polyline points="{points}" fill="none" stroke="#246" stroke-width="1.2"/>')
    for a in alerts:
        if a["status"] in ("open", "escalated"):
            cx = x(a["window"]["start"])
            parts.append(f'<circle cx="{cx:.1f}" cy="{y(a["risk_score"]):.1f}" r="3" fill="#c00">'
                         f'<title>{a["status"]} {a["severity"]}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _bars(rows: list[tuple[str, float]], unit: str = "") -> str:
    height = 22 * len(rows) + 8
    parts = [f'<svg width="{W}" height="{height}" role="img">']
    top = max((v for _k, v in rows), default=1.0) or 1.0
    for i, (label, value) in enumerate(rows):
        width = (W - 260) * value / top
        parts.append(f'<text x="0" y="{22 * i + 18}" font-size="12">{html.escape(label)}</text>'
                     f'<rect x="200" y="{22 * i + 6}" width="{width:.1f}" height="16" fill="#468"/>'
                     f'<text x="{205 + width:.1f}" y="{22 * i + 18}" font-size="12">'
                     f'{value:.3g}{unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _curve_table(curve: list[dict[str, Any]], threshold: float) -> str:
    """The operating curve: per alert threshold, recall, precision, benign alerts and delay
    (the row of the run's own threshold in bold)."""
    out = ["<h2>Operating curve</h2><p>The same run at other alert thresholds (each a replay of "
           "its recorded window features). Lower catches more and sooner, at the cost of "
           "false episodes.</p><table><tr><th>threshold</th><th>incident recall</th>"
           "<th>episode precision</th><th>alerts on benign look-alikes</th>"
           "<th>median delay (windows)</th><th>p90 delay</th></tr>"]
    for p in curve:
        style = " style='font-weight:bold'" if p["threshold"] == threshold else ""
        cells = [f"{p['threshold']:g}", f"{p['detected']}/{p['incidents']}",
                 f"{p['true_episodes']}/{p['alert_episodes']}",
                 f"{p['alerts_on_benign']}/{p['benign_lookalikes']}",
                 str(p["median_delay_windows"]), str(p["p90_delay_windows"])]
        out.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                   + "</tr>")
    return "".join(out) + "</table>"


def _incident_table(incidents: list[dict[str, Any]], slower_than: float) -> str:
    """Missed incidents and those found later than ``slower_than`` windows, with the evidence
    each left over its span (``evaluation.incident_evidence``)."""
    rows = missed_or_late(incidents, slower_than)
    head = (f"<h2>Missed and late incidents: the evidence they left</h2><p>{len(rows)} of "
            f"{len(incidents)} incidents missed or found after more than {slower_than:g} windows. "
            "Evidence: counts summed over the incident's span (its start to 30 windows after its "
            "end, or to the end of its trailing complaints). p: how likely the least likely of "
            "its counts is at the advertiser's own rate before the incident. Honest rank: the "
            "share of advertisers without incidents (of at least half its volume) whose least "
            "likely count over the same span is as unlikely.</p>")
    missed, plain = plain_misses(incidents)
    if plain:
        head += (f"<p>{plain} of the {missed} missed incidents left evidence that at "
                 "least 1 in 20 advertisers without incidents match over the same span (honest "
                 "rank &ge; 0.05): a detector that caught them on it would flag at least that "
                 "share of honest advertisers too.</p>")
    if not rows:
        return head
    names = list(rows[0]["evidence"])
    ranked = any("honest_rank" in r for r in rows)
    cells = ["kind", "advertiser", "impressions/min", "minutes", "delay (windows)", *names,
             "least likely count (expected at its own earlier rate)", "p",
             *(["honest rank"] if ranked else []), "first alert's reasons"]
    out = [head, "<div style='overflow-x:auto'><table><tr>"
           + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>"]
    for r in rows:
        values = [r["kind"], r["advertiser_id"],
                  "" if r["impressions_per_min"] is None else f"{r['impressions_per_min']:.1f}",
                  f"{r['minutes']:g}",
                  "missed" if r["delay_windows"] is None else f"{r['delay_windows']:g}",
                  *(f"{r['evidence'][n]:g}" for n in names), *surprise_cells(r),
                  *([rank_cell(r)] if ranked else []),
                  ", ".join(r["reasons"] or ())]
        out.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>")
    return "".join(out) + "</table></div>"


def write_html(path: Path, spec: str, scores: list[dict], alerts: list[dict],
               truth: list[dict] | None, evaluation: dict[str, Any] | None,
               threshold: float, max_advertisers: int = 40,
               incidents: list[dict[str, Any]] | None = None,
               slower_than: float = 3.0, curve: list[dict[str, Any]] | None = None) -> None:
    by_adv: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for s in scores:
        by_adv[s["advertiser_id"]].append((s["window"]["start"], s["risk_score"]))
    alerts_by_adv: dict[str, list[dict]] = defaultdict(list)
    for a in alerts:
        alerts_by_adv[a["advertiser_id"]].append(a)
    truth_by_adv: dict[str, list[dict]] = defaultdict(list)
    for t in truth or []:
        truth_by_adv[t["advertiser_id"]].append(t)
    shown = sorted(set(alerts_by_adv) | set(truth_by_adv))[:max_advertisers]
    out = [f"<!doctype html><meta charset='utf-8'><title>riskstream backtest: {html.escape(spec)}"
           "</title><style>body{font:14px system-ui,sans-serif;margin:24px;max-width:760px}"
           "h2{margin-top:28px}td,th{padding:2px 10px;text-align:left}</style>",
           f"<h1>Backtest: {html.escape(spec)}</h1>"]
    if evaluation:
        keys = ("incidents", "detected", "incident_recall", "alert_episodes",
                "episode_precision", "alerts_on_benign", "median_delay_windows",
                "p90_delay_windows", "alerts_per_1000_advertiser_hours")
        out.append("<table>" + "".join(
            f"<tr><th>{k}</th><td>{evaluation.get(k)}</td></tr>" for k in keys) + "</table>")
        per_kind = evaluation.get("per_kind", {})
        if per_kind:
            out.append("<h2>Recall by incident kind</h2>")
            out.append(_bars([(k, v["detected"] / v["incidents"] if v["incidents"] else 0.0)
                              for k, v in sorted(per_kind.items())]))
        delays = evaluation.get("delays_windows") or []
        if delays:
            buckets: dict[str, int] = defaultdict(int)
            for d in delays:
                buckets[f"{int(d)} windows" if d < 10 else ">= 10 windows"] += 1
            out.append("<h2>Detection delay</h2>")
            out.append(_bars(sorted(buckets.items(), key=lambda kv: (len(kv[0]), kv[0]))))
    if curve:
        out.append(_curve_table(curve, threshold))
    if incidents is not None:
        out.append(_incident_table(incidents, slower_than))
    out.append("<h2>Score timelines</h2><p>Red shading: incidents that must alert; green: benign "
               "look-alikes that must not. Dashed line: alert threshold; dots: alerts.</p>")
    for adv in shown:
        if adv not in by_adv:
            continue
        kinds = ", ".join(t["kind"] for t in truth_by_adv.get(adv, [])) or "no injected incident"
        out.append(f"<h3>{html.escape(adv)} <small>({html.escape(kinds)})</small></h3>")
        out.append(_timeline(by_adv[adv], truth_by_adv.get(adv, []), alerts_by_adv.get(adv, []),
                             threshold))
    path.write_text("\n".join(out))
