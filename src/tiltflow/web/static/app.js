"use strict";
/* Shared by the viewer's pages: API calls, tabs, the project page, status line, keys, Save dialog. */
const TF = {
  tab: "project",
  tomoOutput: null,   // pointer of the tilt-series set in the TomoViewer
  ctfOutput: null,    // pointer of the CTF set in the CTF viewer
  tomogramOutput: null,  // pointer of the tomogram set in the tomogram viewer
  pages: {},          // tab -> {show(), key(event)} registered by tomo.js / ctf.js
};

const TABS = ["project", "tomo", "ctf", "tomogram"];   // keys 1-4
const VIEWER_NAMES = {tomo: "TomoViewer", ctf: "CTF viewer", tomogram: "tomogram viewer"};
const $ = sel => document.querySelector(sel);
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
function fmt(v, digits, unit) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const s = v.toFixed(digits);
  return (/^-0(\.0*)?$/.test(s) ? s.slice(1) : s) + (unit || "");   // no "-0.0"
}
const um = a => fmt(a === null || a === undefined ? NaN : a / 1e4, 2, " µm");

function status(text, kind) {
  const s = $("#status");
  s.textContent = text || "";
  s.className = kind || "";
  s.title = text || "";
}

function outputUrl(pointer, rest) {
  return `/api/outputs/${encodeURIComponent(pointer)}${rest || ""}`;
}

async function api(path, options) {
  const opts = Object.assign({credentials: "same-origin"}, options || {});
  if (opts.json !== undefined) {
    opts.method = opts.method || "POST";
    opts.headers = {"Content-Type": "application/json"};
    opts.body = JSON.stringify(opts.json);
    delete opts.json;
  }
  const r = await fetch(path, opts);
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
    if (r.status === 403 && !String(detail).includes("tiltflow view")) detail += " (open the URL that `tiltflow view` printed)";
    const err = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    err.status = r.status;
    throw err;
  }
  return opts.raw ? r : r.json();
}

function report(err) {
  console.error(err);
  status(err.message || String(err), "error");
}

function showTab(name) {
  TF.tab = name;
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const t of TABS) $(`#tab-${t}`).hidden = t !== name;
  const pointer = {tomo: TF.tomoOutput, ctf: TF.ctfOutput, tomogram: TF.tomogramOutput}[name] || null;
  $("#current-set").textContent = pointer || "";
  const page = TF.pages[name];
  if (page) page.show().catch(report);
  else if (name === "project") loadProject().catch(report);
  const hash = pointer ? `#${name}/${encodeURIComponent(pointer)}` : `#${name}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

function openOutput(o) {
  if (o.viewer === "tomo") { TF.tomoOutput = o.pointer; showTab("tomo"); }
  else if (o.viewer === "ctf") { TF.ctfOutput = o.pointer; showTab("ctf"); }
  else if (o.viewer === "tomogram") { TF.tomogramOutput = o.pointer; showTab("tomogram"); }
}

async function loadProject() {
  const p = await api("/api/project");
  $("#project-root").textContent = p.root;
  loadWatchState();
  const box = $("#runs");
  if (!p.runs.length) { box.innerHTML = '<p class="muted">No runs yet.</p>'; return p; }
  box.innerHTML = p.runs.map(r => `
    <div class="run">
      <div class="run-head"><span class="id">${r.id}</span><span class="step">${esc(r.step)}</span>
        <span class="status-${esc(r.status)}">${esc(r.status)}</span>
        <span class="muted">${r.duration_s !== null ? fmt(r.duration_s, 1, " s") : ""}</span>
        <span class="muted">${esc(r.label || "")}</span>
        ${r.error ? `<span class="status-failed">${esc(r.error)}</span>` : ""}</div>
      ${r.outputs.map(o => `
        <div class="output"><span class="pointer">${esc(o.pointer)}</span><span>${esc(o.summary)}</span>
          ${o.viewer ? `<button data-pointer="${esc(o.pointer)}" data-viewer="${o.viewer}">open in ${VIEWER_NAMES[o.viewer]}</button>` : ""}
        </div>`).join("")}
    </div>`).join("");
  for (const b of box.querySelectorAll("button[data-pointer]")) {
    b.addEventListener("click", () => openOutput({pointer: b.dataset.pointer, viewer: b.dataset.viewer}));
  }
  return p;
}

/* The project page's line under its link to the session dashboard: what a watch on this project did. */
async function loadWatchState() {
  const line = $("#watch-state");
  try {
    const w = await api("/api/watch/state");
    const counts = Object.entries(w.counts || {}).map(([k, n]) => `${n} ${k}`).join(", ");
    line.textContent = !w.watching ? "(no watch has run here yet)"
      : `(${w.series.length} series${counts ? ": " + counts : ""}; updated ${fmt(w.age_s, 0, " s")} ago)`;
  } catch (err) {
    line.textContent = "";
  }
}

/* Save: the dialog names the output Save will make (asked of the server now) and asks "keep excluded
   views disabled" or "re-stack" (tilt series), or confirms (CTF); afterwards ``box`` shows the output
   Save really made (its name, run, summary, and where re-stacked stacks went) with a button to open it. */
async function saveSubset(pointer, isCtf, box) {
  const dlg = $("#save-dialog");
  const pv = await api(outputUrl(pointer, "/save-preview"));
  const plural = (n, w) => `${n} ${w}${n === 1 || w.endsWith("series") ? "" : "s"}`;
  const excluded = isCtf ? plural(pv.n_excluded_items, "excluded tilt") : plural(pv.n_excluded_items, "excluded view");
  $("#save-title").textContent = isCtf ? "Save good CTFs" : "Save subset";
  $("#save-name").textContent = pv.pointer;
  $("#save-text").innerHTML = isCtf
    ? `A new output of run ${pv.run_id} (${esc(pv.step)}): the CTF series of ${esc(pointer)} with the ${excluded} disabled ` +
      `(listed in its <i>bad</i> attribute)${pv.n_excluded_series ? `; ${plural(pv.n_excluded_series, "excluded series")} kept, disabled` : ""}.`
    : `A new output of run ${pv.run_id} (${esc(pv.step)}) made from ${esc(pointer)}: ${plural(pv.n_series, "series")}` +
      `${pv.n_excluded_series ? ` (${plural(pv.n_excluded_series, "excluded series")} more, kept disabled — left out when re-stacking)` : ""}, ` +
      `${excluded}. Keep the excluded views in the stacks, disabled, or write new stacks without them ` +
      `into <code>${pathHtml(pv.restack_folder)}/</code> (acquisition order and dose are kept)?`;
  $("#save-disabled").textContent = isCtf ? "Save" : "Keep excluded views disabled";
  $("#save-restack").hidden = isCtf;
  dlg.returnValue = "cancel";
  dlg.showModal();
  const choice = await new Promise(resolve => dlg.addEventListener("close", () => resolve(dlg.returnValue), {once: true}));
  if (choice !== "disabled" && choice !== "restack") return null;
  status(choice === "restack" ? "re-stacking…" : "saving…");
  const r = await api(outputUrl(pointer, "/save"), {json: {restack: choice === "restack"}});
  status(`saved ${r.pointer}: ${r.summary}`, "ok");
  if (box) showSaved(box, r, pv);
  return r;
}

/* A path that wraps after its slashes only. */
const pathHtml = path => esc(path).replace(/\//g, "/<wbr>");

function showSaved(box, r, pv) {
  const viewer = r.type === "CTFTomoSeries" ? "ctf" : "tomo";
  box.hidden = false;
  box.innerHTML = `<button class="close" title="dismiss">✕</button>
    <div>Saved as <b class="saved-pointer">${esc(r.pointer)}</b>${r.run_id !== null ? ` <span class="muted">(run ${r.run_id}, ${esc(r.step)})</span>` : ""}</div>
    <div class="muted">${esc(r.summary)}</div>
    ${r.folder ? `<div>new stacks in <code class="saved-folder">${pathHtml(r.folder)}/</code></div>` : ""}
    ${pv && pv.pointer !== r.pointer ? `<div class="muted">(${esc(pv.pointer)} was taken meanwhile)</div>` : ""}
    <button class="open">open ${esc(r.pointer)}</button>`;
  box.querySelector(".close").addEventListener("click", () => { box.hidden = true; });
  box.querySelector(".open").addEventListener("click", () => openOutput({pointer: r.pointer, viewer}));
}

/* Fill a <select> with the project's outputs that ``viewer`` opens; returns the chosen pointer. */
async function fillOutputSelect(select, viewer, current) {
  const p = await api("/api/project");
  const outs = p.runs.flatMap(r => r.outputs).filter(o => o.viewer === viewer);
  select.innerHTML = outs.map(o => `<option value="${esc(o.pointer)}">${esc(o.pointer)} — ${esc(o.summary)}</option>`).join("");
  const chosen = outs.some(o => o.pointer === current) ? current : (outs.length ? outs[0].pointer : null);
  if (chosen) select.value = chosen;
  return chosen;
}

/* Scroll ``container`` alone (not the page around it) so that ``el`` is in view; ``top`` px at the
   top stay covered (a sticky header). */
function scrollWithin(container, el, top) {
  const c = container.getBoundingClientRect(), r = el.getBoundingClientRect();
  if (r.top < c.top + (top || 0)) container.scrollTop -= c.top + (top || 0) - r.top;
  else if (r.bottom > c.bottom) container.scrollTop += r.bottom - c.bottom;
}

/* The series list's rows take the focus (click or Tab): Space and X then act on the focused series.
   Re-rendering the list keeps the focus on the row of the same series. */
function focusedSeriesRow(table) {
  const a = document.activeElement;
  return a && a.closest && table.contains(a) ? a.closest("tr.row") : null;
}
function refocusSeriesRow(table, tsId) {
  if (tsId === null || tsId === undefined) return;
  const row = [...table.querySelectorAll("tr.row")].find(tr => tr.dataset.ts === tsId);
  if (row) row.focus({preventScroll: true});
}

/* A verdict (good / check / failed) as a coloured dot in a table cell, reasons on hover. */
function verdictCell(status, reasons, what, from) {
  if (!status) return `<td class="verdict-none"></td>`;
  const title = `${what} ${status}${reasons && reasons.length ? ": " + reasons.join("; ") : ""}${from ? ` — ${from}` : ""}`;
  return `<td class="verdict verdict-${esc(status)}" data-verdict="${esc(status)}" title="${esc(title)}">●</td>`;
}
/* The verdict as words, reasons after it. */
function verdictText(status, reasons) {
  const why = reasons && reasons.length ? reasons.join("; ") : "";
  return `<span class="verdict-${esc(status)}">${esc(status)}</span>` +
    (why ? ` <span class="muted reasons" title="${esc(why)}">${esc(why)}</span>` : "");
}

async function exclude(pointer, body) {
  const r = await api(outputUrl(pointer, "/exclude"), {json: body});
  status(`${r.changed} flag${r.changed === 1 ? "" : "s"} changed`);
  return r;
}

async function undo(pointer) {
  const r = await api(outputUrl(pointer, "/undo"), {method: "POST"});
  status(r.changed ? `undone (${r.undo_depth} more to undo)` : "nothing to undo");
  return r;
}

/* Keys go to the page unless a form control has the focus (a focused button keeps Space and Enter). */
document.addEventListener("keydown", ev => {
  if (ev.target.closest && ev.target.closest("input, select, textarea, dialog")) return;
  if ((ev.key === " " || ev.key === "Enter") && ev.target.closest && ev.target.closest("button")) return;
  if (/^[1-9]$/.test(ev.key) && +ev.key <= TABS.length && !ev.ctrlKey && !ev.metaKey && !ev.altKey) { showTab(TABS[+ev.key - 1]); return; }
  const page = TF.pages[TF.tab];
  if (page && page.key(ev)) ev.preventDefault();
});

// the project page follows runs as they register outputs
setInterval(() => { if (TF.tab === "project" && !document.hidden) loadProject().catch(report); }, 5000);

/* The address's #tab/pointer opens that tab on that set (on load, and when the user edits it). */
function followHash() {
  const [tab, pointer] = location.hash.slice(1).split("/");
  if (tab === "tomo" && pointer) TF.tomoOutput = decodeURIComponent(pointer);
  if (tab === "ctf" && pointer) TF.ctfOutput = decodeURIComponent(pointer);
  if (tab === "tomogram" && pointer) TF.tomogramOutput = decodeURIComponent(pointer);
  showTab(TABS.includes(tab) ? tab : "project");
}

window.addEventListener("hashchange", followHash);   // showTab's replaceState does not fire it
window.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  followHash();
});
