// The lookup page: GET /advertisers/{id} (any worker answers; it is routed to the owner).
"use strict";

(() => {
  const { el, sparkline, badge, fmt, time, getJSON, setStatus } = RS;
  const id = new URLSearchParams(window.location.search).get("id") || "";
  const api = "/advertisers/" + encodeURIComponent(id);
  document.getElementById("adv-id").textContent = id;
  document.title = "riskstream · " + id;
  const raw = document.getElementById("raw-link");
  raw.href = api;
  raw.textContent = api;

  function dd(term, ...value) {
    return [el("dt", { text: term }), el("dd", {}, ...value)];
  }

  function renderOverview(d) {
    const latest = d.latest || {};
    const items = [
      ...dd("severity", badge(d.severity)),
      ...dd("latest risk score", latest.risk_score === undefined ? "–" : fmt(latest.risk_score)),
      ...dd("latest window", latest.window ? time(latest.window.start_iso) + " → " + time(latest.window.end_iso) : "–"),
      ...dd("incident kind", (d.kind || "none").replace(/_/g, " ")),
      ...dd("rules hit", (latest.rules && latest.rules.length) ? latest.rules.join(", ") : "none"),
      ...dd("model", d.model.name + (d.model.scored_by ? ` v${d.model.scored_by.version} (config ${d.model.scored_by.config_version})` : "") +
        (d.model.windows_seen !== undefined ? `, ${d.model.windows_seen} windows learned` : "")),
      ...dd("enforcement", d.enforced_by ? "confirmed (" + d.enforced_by + ")" : "none"),
      ...dd("served by", `${d.served_by} (partition ${d.partition})`),
    ];
    document.getElementById("overview").replaceChildren(...items);
    const recent = d.recent_windows;
    const trends = [el("div", { class: "trend" }, el("span", { text: "risk score" }),
      sparkline(recent.map((w) => w.risk_score), { min: 0, max: 1, width: 240, height: 36, cls: "risk", label: "risk score" }))];
    const withFeatures = recent.filter((w) => w.features);
    if (withFeatures.length) {
      for (const name of Object.keys(withFeatures[0].features)) {
        trends.push(el("div", { class: "trend" }, el("span", { text: name.replace(/_/g, " ") }),
          sparkline(withFeatures.map((w) => w.features[name]), { min: 0, width: 240, height: 36, label: name })));
      }
    }
    document.getElementById("trends").replaceChildren(...trends);
  }

  function reasonItem(r) {
    const extra = r.type === "feature" ? ` (value ${fmt(r.value)}, baseline ${fmt(r.baseline)})`
      : r.type === "rule" ? ` (value ${fmt(r.value)}, threshold ${fmt(r.threshold)})` : "";
    return el("li", { class: "reason", "data-code": r.code },
      el("span", { class: "reason-type", text: r.type }), " ", r.message + extra);
  }

  function renderOpenAlerts(d) {
    const box = document.getElementById("open-alerts");
    if (!d.open_alerts.length) {
      box.replaceChildren(el("p", { class: "hint", text: "No open alert." }));
      return;
    }
    box.replaceChildren(...d.open_alerts.map((a) => el("article", { class: "open-alert", "data-alert-id": a.opened_alert_id || "" },
      el("h3", {}, badge(a.severity), " ", (a.kind || "").replace(/_/g, " "), " ",
        el("span", { class: "hint", text: `${a.detector || ""} · ${a.flagged_windows || "?"} flagged window(s)` })),
      a.latest_alert ? el("p", { class: "hint", text: `latest alert ${a.latest_alert.alert_id} (${a.latest_alert.status}), risk ${fmt(a.latest_alert.risk_score)}, window ${time(a.latest_alert.window.start_iso)}` }) : null,
      a.reasons ? el("ul", { class: "reasons" }, ...a.reasons.map(reasonItem))
        : el("p", { class: "hint", text: "Reasons not on this worker's board (alert older than its look-back)." }))));
  }

  function renderBaseline(d) {
    const body = document.querySelector("#baseline tbody");
    const note = document.getElementById("baseline-note");
    if (!d.baseline) {
      note.textContent = "No baseline yet (no model state or no window to compare).";
      body.replaceChildren();
      return;
    }
    note.textContent = "Compared on the " + d.baseline.computed_on + "; positive deviation = riskier.";
    body.replaceChildren(...d.baseline.features.map((f) => el("tr", { class: f.deviation >= 3 ? "hot" : "" },
      el("td", { text: f.feature }), el("td", { class: "num", text: fmt(f.value) }),
      el("td", { class: "num", text: fmt(f.baseline) }), el("td", { class: "num", text: fmt(f.deviation) }))));
  }

  function renderWindows(d) {
    const recent = d.recent_windows.slice().reverse();
    const names = recent.find((w) => w.features) ? Object.keys(recent.find((w) => w.features).features) : [];
    document.querySelector("#recent thead").replaceChildren(el("tr", {},
      el("th", { text: "window start" }), el("th", { text: "severity" }), el("th", { class: "num", text: "risk" }),
      ...names.map((n) => el("th", { class: "num", text: n.replace(/_/g, " ") }))));
    document.querySelector("#recent tbody").replaceChildren(...recent.map((w) => el("tr", {},
      el("td", { text: time(w.window_start_iso) }), el("td", {}, badge(w.severity)),
      el("td", { class: "num", text: fmt(w.risk_score) }),
      ...names.map((n) => el("td", { class: "num", text: w.features ? fmt(w.features[n]) : "–" })))));
    const current = document.getElementById("current");
    if (!d.current_windows.length) {
      current.replaceChildren(el("p", { class: "hint", text: "No open window (no recent traffic, or every window closed)." }));
      return;
    }
    current.replaceChildren(...d.current_windows.map((w) => el("details", {},
      el("summary", { text: time(w.window.start_iso) + " → " + time(w.window.end_iso) + ` · ${w.features.impressions} impressions so far` }),
      el("table", {}, el("tbody", {}, ...Object.entries(w.features).map(([k, v]) =>
        el("tr", {}, el("td", { text: k }), el("td", { class: "num", text: fmt(v) }))))))));
  }

  function renderRecentAlerts(d) {
    document.getElementById("recent-alerts").replaceChildren(...d.recent_alerts.map((a) =>
      el("li", { class: `alert sev-${a.severity}`, "data-alert-id": a.alert_id },
        el("div", { class: "alert-head" }, badge(a.severity), " ", el("span", { class: `status-${a.status}`, text: a.status }),
          " ", el("span", { text: time(a.window.start_iso) }), " ", el("span", { class: "num", text: "risk " + fmt(a.risk_score) })),
        el("ul", { class: "reasons" }, ...a.reasons.map(reasonItem)))));
  }

  async function refresh() {
    try {
      const d = await getJSON(api);
      renderOverview(d);
      renderOpenAlerts(d);
      renderBaseline(d);
      renderWindows(d);
      renderRecentAlerts(d);
      setStatus("live · updated " + new Date().toISOString().slice(11, 19) + " UTC" + (d.worker_ready ? "" : " (worker recovering)"));
    } catch (e) {
      setStatus(e.status === 404 ? "Unknown advertiser: " + id : e.status === 400 ? "Invalid advertiser id: " + e.message : "Cannot load: " + e.message, true);
      if (e.status === 404 || e.status === 400) return true;
    }
    return false;
  }

  refresh().then((stop) => { if (!stop) setInterval(refresh, 5000); });
})();
