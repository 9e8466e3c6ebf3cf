// Shared helpers of the risk board pages. No framework, no build step. Data is only ever
// inserted as text (textContent), never as HTML: advertiser ids and reasons come from traffic.
"use strict";

const RS = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  // The rate that tells each incident kind apart (the second sparkline of a row).
  const KEY_RATE = {
    click_fraud: "fast_click_share", bot_traffic: "impressions_per_user",
    scam_or_harm: "report_rate", complaints: "complaint_rate", other: "ctr", none: "ctr",
  };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function sparkline(values, opts) {
    const w = (opts && opts.width) || 120, h = (opts && opts.height) || 24;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h);
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("class", "spark" + (opts && opts.cls ? " " + opts.cls : ""));
    const title = document.createElementNS(SVG, "title");
    title.textContent = (opts && opts.label ? opts.label + ": " : "") +
      values.map((v) => fmt(v)).join(", ");
    svg.append(title);
    if (!values.length) return svg;
    const lo = opts && opts.min !== undefined ? opts.min : Math.min(...values);
    let hi = opts && opts.max !== undefined ? opts.max : Math.max(...values);
    if (hi <= lo) hi = lo + 1;
    const step = values.length > 1 ? (w - 4) / (values.length - 1) : 0;
    const pts = values.map((v, i) => {
      const x = 2 + i * step, y = h - 2 - ((v - lo) / (hi - lo)) * (h - 4);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.append(line);
    const last = pts[pts.length - 1].split(",");
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", last[0]); dot.setAttribute("cy", last[1]); dot.setAttribute("r", "2");
    svg.append(dot);
    return svg;
  }

  function badge(severity) {
    const s = severity || "none";
    return el("span", { class: `badge sev-${s}`, text: s });
  }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1000) return v.toFixed(0);
    if (a >= 1) return v.toFixed(2);
    return v.toPrecision(3);
  }

  function time(iso) {
    return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : "–";
  }

  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      const err = new Error((body && body.error) || `${resp.status} ${resp.statusText}`);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  function lookupHref(id) {
    return "/board/advertiser?id=" + encodeURIComponent(id);
  }

  function setStatus(text, bad) {
    const s = document.getElementById("status");
    s.textContent = text;
    s.classList.toggle("bad", !!bad);
  }

  return { el, sparkline, badge, fmt, time, getJSON, lookupHref, setStatus, KEY_RATE };
})();
