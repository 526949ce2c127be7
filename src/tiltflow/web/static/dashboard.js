// The session dashboard: polls /api/watch/state and redraws; a series' tilts and reconstruction on click.
"use strict";

const POLL_MS = 2000;
let selected = null;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function verdict(status, extra) {
  if (!status) return el("span", { class: "muted" }, "–");
  return el("span", { class: `v-${status}` }, status + (extra ? ` ${extra}` : ""));
}

function fmt(x, digits = 2) { return x === null || x === undefined ? "" : Number(x).toFixed(digits); }

function drawSummary(st) {
  const c = st.counts || {};
  const busy = (c.processing || 0) + (c.queued || 0);
  const parts = [
    `${st.series.length} series seen`, `${c.collecting || 0} collecting`, `${busy} processing`,
    `${c.done || 0} done`, `${(c.failed || 0) + (c.aborted || 0)} failed/aborted`,
    `${st.tilts_done || 0} tilts`, `${st.movies_per_min ?? 0} movies/min`,
    `queue: ${st.queue ? st.queue.tilts : 0} tilts, ${st.queue ? st.queue.series : 0} series`,
  ];
  if (st.lag_s) parts.push(`lag last tilt → tomogram: ${fmt(st.lag_s.last, 0)} s (median ${fmt(st.lag_s.median, 0)} s)`);
  document.getElementById("summary").replaceChildren(...parts.map((p) => el("span", {}, p)));
}

function drawSeries(st) {
  const rows = st.series.map((s) => {
    const v = s.verdicts || {};
    const tilts = `${s.in}/${s.listed}` + (s.expected ? ` of ${s.expected}` : "");
    const align = v.alignment ? verdict(v.alignment, v.residual_px != null ? `(${fmt(v.residual_px)} px)` : "") : verdict(null);
    const tr = el("tr", { class: "series" + (s.ts === selected ? " selected" : ""), "data-ts": s.ts, "data-state": s.state },
      el("td", {}, s.ts), el("td", {}, el("span", { class: `state s-${s.state.split(" ")[0]}` }, s.state)),
      el("td", {}, tilts), el("td", {}, String(s.tilts_done) + (s.tilts_failed ? ` (${s.tilts_failed} bad)` : "")),
      el("td", {}, fmt(s.motion_px)), el("td", {}, fmt(s.defocus_um)), el("td", {}, verdict(v.ctf)),
      el("td", {}, align), el("td", {}, fmt(s.lag_s, 0)), el("td", { class: "muted" }, s.error || s.reason || ""));
    tr.addEventListener("click", () => { selected = s.ts; drawDetail(); refresh(); });
    return tr;
  });
  document.getElementById("series").replaceChildren(...rows);
}

async function drawDetail() {
  if (!selected) return;
  const ts = encodeURIComponent(selected);
  document.getElementById("detail-title").textContent = `${selected}: tilts as processed`;
  let tilts = [];
  try { tilts = await getJSON(`/api/watch/series/${ts}/tilts`); } catch (e) { /* not yet */ }
  const cards = tilts.map((t) => el("div", { class: "tilt" + (t.error ? " bad" : ""), title: t.error || t.name },
    el("img", { src: `/api/watch/series/${ts}/tilts/${encodeURIComponent(t.name)}/thumb.png`, alt: t.name, loading: "lazy" }),
    `${fmt(t.angle_deg, 1)}° · ${fmt(t.motion_px)} px`, el("br"),
    t.defocus_um != null ? `${fmt(t.defocus_um)} µm · ${fmt(t.seconds, 1)} s` : `${fmt(t.seconds, 1)} s`));
  document.getElementById("tilts").replaceChildren(...cards);
  const fig = document.getElementById("preview");
  const r = await fetch(`/api/watch/series/${ts}/preview.png?t=${Date.now()}`, { cache: "no-store" });
  if (r.ok) {
    const kind = r.headers.get("X-Tiltflow-Picture") || "preview";
    fig.querySelector("img").src = URL.createObjectURL(await r.blob());
    fig.querySelector("figcaption").textContent = kind === "tomogram" ? "tomogram, central XY slice"
      : "coarse live reconstruction (XY above XZ): binned, mdoc geometry, coarse shifts";
    fig.hidden = false;
  } else {
    fig.hidden = true;
  }
}

async function refresh() {
  let st;
  try { st = await getJSON("/api/watch/state"); } catch (e) {
    document.getElementById("updated").textContent = `cannot reach the viewer (${e.message})`;
    return;
  }
  const upd = document.getElementById("updated");
  if (!st.watching) {
    upd.textContent = st.detail;
  } else {
    document.getElementById("folder").textContent = `${st.folder} → ${st.project}`;
    upd.textContent = `updated ${fmt(st.age_s, 0)} s ago`;
    upd.className = st.age_s > 120 ? "stale" : "";
    if (st.age_s > 120) upd.textContent += " — the watch is not running";
  }
  drawSummary(st);
  drawSeries(st);
  document.getElementById("lines").textContent = (st.lines || []).slice().reverse().join("\n");
}

refresh();
setInterval(() => { refresh(); if (selected) drawDetail(); }, POLL_MS);
