"""``riskstream models compare``: champion vs challengers on the live alert topics.

A challenger runs in shadow mode (``riskstream models shadow SPEC``): it scores the same
windows as the enforce spec and its alerts go to ``risk-alerts-shadow`` with ``mode=shadow``,
never to enforcement. This command reads a range of ``risk-alerts``, ``risk-alerts-shadow``
and ``risk-enforcement-decisions`` (from ``--since``, default the beginning, up to their
current end; no consumer group, nothing committed) and reports, per model:

* alert volume: records, episodes (``open``), escalations, alerted advertisers, episodes per
  hour of the range;
* agreement with the champion: advertisers both alerted (Jaccard), those only one alerted,
  and the lead time on the shared ones (challenger's first open minus the champion's, in
  windows; negative = the challenger was earlier);
* precision where labels exist: enforcement decisions label advertisers (confirmed bad, or
  dismissed); a model's labelled precision is confirmed / labelled among the advertisers it
  alerted, and ``confirmed_missed`` counts confirmed advertisers it never alerted. Decisions
  are made on the champion's alerts, so a challenger's advertisers outside the champion's are
  unlabelled: read its precision next to its ``labelled`` count;
* with ``--truth FILE`` (a simulator's ground truth, when the traffic was simulated): incident
  recall, episode precision and delay per model, as ``riskstream backtest`` reports them.

Alert records are de-duplicated by ``alert_id`` first (delivery is at-least-once).
"""

from __future__ import annotations

import statistics
import sys
from typing import Any, Iterable

import orjson

ALERT_TOPICS = ("risk-alerts", "risk-alerts-shadow")
DECISIONS_TOPIC = "risk-enforcement-decisions"


def _first_open(alerts: Iterable[dict]) -> dict[str, int]:
    first: dict[str, int] = {}
    for a in alerts:
        if a["status"] in ("open", "escalated"):
            adv, start = a["advertiser_id"], a["window"]["start"]
            if start < first.get(adv, start + 1):
                first[adv] = start
    return first


def labels_from_decisions(decisions: Iterable[dict]) -> dict[str, str]:
    """advertiser -> "confirmed" if any of its alerts was confirmed, else "dismissed"."""
    labels: dict[str, str] = {}
    for d in decisions:
        adv, decision = d.get("advertiser_id"), d.get("decision")
        if not isinstance(adv, str) or decision not in ("confirmed", "dismissed"):
            continue
        if decision == "confirmed" or adv not in labels:
            labels[adv] = decision
    return labels


def compare_models(alerts: Iterable[dict], decisions: Iterable[dict] = (), *,
                   champion: str | None = None, window_ms: int = 60_000,
                   truth: list[dict] | None = None) -> dict[str, Any]:
    """The comparison report (a JSON-able dict) over alert records of any models.

    ``champion`` defaults to the model that enforced under the highest config version seen.
    """
    unique: dict[str, dict] = {}
    for a in alerts:
        unique.setdefault(a["alert_id"], a)
    by_model: dict[str, list[dict]] = {}
    enforce_versions: dict[str, int] = {}
    for a in unique.values():
        name = a["model"]["name"]
        by_model.setdefault(name, []).append(a)
        if a.get("mode") == "enforce":
            v = int(a["model"].get("config_version", 0))
            enforce_versions[name] = max(enforce_versions.get(name, v), v)
    if champion is None and enforce_versions:
        champion = max(enforce_versions, key=lambda n: (enforce_versions[n], n))
    labels = labels_from_decisions(decisions)
    confirmed = {adv for adv, lab in labels.items() if lab == "confirmed"}
    starts = [a["window"]["start"] for a in unique.values()]
    ends = [a["window"]["end"] for a in unique.values()]
    hours = (max(ends) - min(starts)) / 3_600_000 if unique else 0.0
    first = {name: _first_open(rows) for name, rows in by_model.items()}
    champ_first = first.get(champion or "", {})

    models: dict[str, Any] = {}
    for name in sorted(by_model, key=lambda n: (n != champion, n)):
        rows = by_model[name]
        alerted = set(first[name])
        episodes = sum(1 for a in rows if a["status"] == "open")
        labelled = [adv for adv in alerted if adv in labels]
        hits = sum(1 for adv in labelled if labels[adv] == "confirmed")
        entry: dict[str, Any] = {
            "role": "champion" if name == champion else "challenger",
            "modes": sorted({a.get("mode", "?") for a in rows}),
            "versions": sorted({str(a["model"].get("version")) for a in rows}),
            "alert_records": len(rows),
            "episodes": episodes,
            "escalations": sum(1 for a in rows if a["status"] == "escalated"),
            "alerted_advertisers": len(alerted),
            "episodes_per_hour": round(episodes / hours, 3) if hours > 0 else None,
            "labelled": len(labelled),
            "labelled_precision": round(hits / len(labelled), 4) if labelled else None,
            "confirmed_missed": len(confirmed - alerted),
        }
        if name != champion and champion in first:
            both = alerted & set(champ_first)
            union = alerted | set(champ_first)
            leads = [(first[name][adv] - champ_first[adv]) / window_ms for adv in sorted(both)]
            entry["vs_champion"] = {
                "both": len(both),
                "jaccard": round(len(both) / len(union), 4) if union else 1.0,
                "only_challenger": sorted(alerted - set(champ_first))[:20],
                "only_champion": sorted(set(champ_first) - alerted)[:20],
                "median_lead_windows": statistics.median(leads) if leads else None,
            }
        if truth is not None:
            from riskstream.evaluation import GRACE_WINDOWS, evaluate

            as_enforced = [{**a, "mode": "enforce"} for a in rows]
            ev = evaluate(as_enforced, truth, window_ms=window_ms, grace_ms=GRACE_WINDOWS * window_ms,
                          advertiser_hours=0.0)
            entry["truth"] = {k: ev[k] for k in (
                "incident_recall", "episode_precision", "median_delay_windows",
                "alerts_on_benign", "incidents", "detected")}
        models[name] = entry
    return {"champion": champion, "hours": round(hours, 3), "alerts": len(unique),
            "labelled_advertisers": len(labels), "confirmed_advertisers": len(confirmed),
            "models": models}


def render(report: dict[str, Any]) -> str:
    """A fixed-width table for the terminal."""
    cols = ["model", "role", "episodes", "ep/h", "advertisers", "labelled", "precision",
            "missed", "jaccard", "lead(w)"]
    if any("truth" in m for m in report["models"].values()):
        cols += ["recall", "truth prec", "delay(w)", "benign"]
    rows = [cols]

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    for name, m in report["models"].items():
        vs = m.get("vs_champion", {})
        row = [name, m["role"], m["episodes"], m["episodes_per_hour"], m["alerted_advertisers"],
               m["labelled"], m["labelled_precision"], m["confirmed_missed"],
               vs.get("jaccard"), vs.get("median_lead_windows")]
        if "truth" in m:
            t = m["truth"]
            row += [t["incident_recall"], t["episode_precision"], t["median_delay_windows"],
                    t["alerts_on_benign"]]
        elif len(cols) > 10:
            row += [None] * 4
        rows.append([fmt(v) for v in row])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"champion: {report['champion'] or '-'}; {report['alerts']} alerts over "
                 f"{report['hours']} h; {report['labelled_advertisers']} advertisers labelled by "
                 f"enforcement decisions ({report['confirmed_advertisers']} confirmed)")
    return "\n".join(lines)


def run_compare(args: Any, settings: Any, bootstrap: str) -> int:
    """The command: read the topics, compare, print the table (and --json)."""
    from app.cli import client_config
    from app.topic_range import TopicRangeError, parse_time, read_topic_range

    try:
        since = parse_time(getattr(args, "since", None))
    except ValueError as exc:
        print(f"riskstream models compare: {exc}", file=sys.stderr)
        return 2
    timeout = float(getattr(args, "read_timeout", None) or 120.0)
    conf = client_config(settings)
    alerts: list[dict] = []
    decisions: list[dict] = []
    skipped = 0
    try:
        for name in ALERT_TOPICS + (DECISIONS_TOPIC,):
            for r in read_topic_range(bootstrap, settings.topic(name), client_config=conf,
                                      since_ms=since, timeout=timeout):
                try:
                    rec = orjson.loads(r.value or b"")
                    if name == DECISIONS_TOPIC:
                        decisions.append(rec)
                    else:
                        rec["model"]["name"], rec["alert_id"], rec["window"]["start"]
                        alerts.append(rec)
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    skipped += 1
    except TopicRangeError as exc:
        print(f"riskstream models compare: {exc}", file=sys.stderr)
        return 1
    truth = None
    if getattr(args, "truth", None):
        from riskstream.backtest import read_lines

        truth = [orjson.loads(line) for line in read_lines(args.truth)]
    report = compare_models(alerts, decisions, champion=getattr(args, "champion", None),
                            window_ms=settings.window_seconds * 1000, truth=truth)
    report["unreadable_records"] = skipped
    print(render(report))
    if skipped:
        print(f"WARNING: {skipped} unreadable records skipped", file=sys.stderr)
    if getattr(args, "json_path", None):
        with open(args.json_path, "wb") as fh:
            fh.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0
