// The risk board: polls the worker's /board/api (top-N every 2 s, new alerts every second).
"use strict";

(() => {
  const { el, sparkline, badge, fmt, time, getJSON, lookupHref, setStatus, KEY_RATE } = RS;
  const PAGE = 25;
  const state = { offset: 0, total: 0, severities: new Set(), kind: "", lastSeq: 0, board: null, maxAlerts: 200 };

  function query(extra) {
    const p = new URLSearchParams(extra);
    if (state.severities.size) p.set("severity", [...state.severities].join(","));
    if (state.kind) p.set("kind", state.kind);
    return p.toString();
  }

  async function setupFilters() {
    const s = await getJSON("/board/api/summary");
    const sev = document.getElementById("severity-filter");
    for (const name of s.severities) {
      const box = el("input", { type: "checkbox", value: name, name: "severity" });
      box.addEventListener("change", () => {
        if (box.checked) state.severities.add(name); else state.severities.delete(name);
        resetAndRefresh();
      });
      sev.append(el("label", { class: "check" }, box, badge(name)));
    }
    const kind = document.getElementById("kind-filter");
    for (const name of s.kinds) kind.append(el("option", { value: name, text: name.replace(/_/g, " ") }));
    kind.addEventListener("change", () => { state.kind = kind.value; resetAndRefresh(); });
    renderSummary(s);
  }

  function resetAndRefresh() {
    state.offset = 0;
    state.lastSeq = 0;
    document.getElementById("alerts").replaceChildren();
    refreshTop();
    refreshAlerts();
  }

  function renderSummary(s) {
    const box = document.getElementById("summary");
    const parts = [el("span", { class: "stat" }, el("b", { text: s.advertisers }), " advertisers"),
      el("span", { class: "stat" }, el("b", { text: s.open_alerts }), " open alerts")];
    for (const name of ["critical", "high", "medium", "low"]) {
      parts.push(el("span", { class: "stat" }, badge(name), " ", el("b", { text: s.by_severity[name] || 0 })));
    }
    box.replaceChildren(...parts);
  }

  function row(r, i) {
    const h = r.history, rate = KEY_RATE[r.kind] || "ctr";
    const link = el("a", { href: lookupHref(r.advertiser_id), text: r.advertiser_id, class: "adv" });
    return el("tr", { "data-advertiser-id": r.advertiser_id, class: r.open_alert ? "has-alert" : "" },
      el("td", { class: "num", text: state.offset + i + 1 }),
      el("td", {}, link),
      el("td", {}, badge(r.severity)),
      el("td", { text: r.kind.replace(/_/g, " ") }),
      el("td", { class: "num", text: r.risk_score.toFixed(3) }),
      el("td", {}, sparkline(h.risk_score, { min: 0, max: 1, label: "risk score", cls: "risk" })),
      el("td", {}, sparkline(h[rate] || [], { min: 0, label: rate }), el("span", { class: "rate-name", text: rate })),
      el("td", { text: time(r.window.end_iso) }));
  }

  async function refreshTop() {
    try {
      const page = await getJSON("/board/api/top?" + query({ limit: PAGE, offset: state.offset }));
      state.total = Math.min(page.total, page.max_depth);
      document.getElementById("top-rows").replaceChildren(...page.rows.map(row));
      const last = Math.min(state.offset + page.rows.length, page.total);
      document.getElementById("page-info").textContent =
        page.total ? `${state.offset + 1}–${last} of ${page.total}` : "no advertisers match";
      document.getElementById("prev").disabled = state.offset === 0;
      document.getElementById("next").disabled = state.offset + PAGE >= state.total;
      renderSummary(await getJSON("/board/api/summary"));
      setStatus("live · updated " + new Date().toISOString().slice(11, 19) + " UTC");
    } catch (e) {
      setStatus("cannot reach the worker: " + e.message, true);
    }
  }

  function alertItem(a) {
    return el("li", { "data-alert-id": a.alert_id, "data-advertiser-id": a.advertiser_id, class: `alert sev-${a.severity}` },
      el("div", { class: "alert-head" }, badge(a.severity), " ",
        el("span", { class: `status-${a.status}`, text: a.status }), " ",
        el("a", { href: lookupHref(a.advertiser_id), text: a.advertiser_id, class: "adv" }), " ",
        el("span", { class: "kind", text: a.kind.replace(/_/g, " ") }), " ",
        el("span", { class: "num", text: "risk " + a.risk_score.toFixed(3) })),
      el("div", { class: "alert-when", text: time(a.window.start_iso) + " → " + time(a.window.end_iso) }),
      el("ul", { class: "reasons" }, ...a.reasons.map((m) => el("li", { text: m }))));
  }

  async function refreshAlerts() {
    try {
      let feed = await getJSON("/board/api/alerts?" + query({ after: state.lastSeq, limit: 100 }));
      const list = document.getElementById("alerts");
      if (feed.board !== state.board) {
        // another board instance (worker restarted, or another worker): its sequence numbers
        // are not ours, so start the feed again
        state.board = feed.board;
        list.replaceChildren();
        if (state.lastSeq !== 0) {
          state.lastSeq = 0;
          feed = await getJSON("/board/api/alerts?" + query({ after: 0, limit: 100 }));
        }
      }
      // newest first: the answer is newest first, so insert it above what is shown, in order
      const items = feed.alerts.map(alertItem);
      list.prepend(...items);
      while (list.children.length > state.maxAlerts) list.lastElementChild.remove();
      state.lastSeq = feed.last_seq;
    } catch (e) {
      setStatus("cannot reach the worker: " + e.message, true);
    }
  }

  document.getElementById("prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE); refreshTop();
  });
  document.getElementById("next").addEventListener("click", () => {
    state.offset += PAGE; refreshTop();
  });
  document.getElementById("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = document.getElementById("lookup-id").value.trim();
    if (id) window.location.href = lookupHref(id);
  });

  setupFilters().catch((e) => setStatus("cannot reach the worker: " + e.message, true))
    .finally(() => {
      refreshTop(); refreshAlerts();
      setInterval(refreshTop, 2000);
      setInterval(refreshAlerts, 1000);
    });
})();
