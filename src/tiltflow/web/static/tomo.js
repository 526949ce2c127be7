"use strict";
/* TomoViewer: tilt-series list, gallery of views, large preview with contrast, exclusion, Save. */
(() => {
  const T = {series: [], ts: null, views: [], cur: 0, suggestions: [], previews: new Map(), playing: null, token: 0};
  const DEFAULT = {mode: "percentile", lo: 10, hi: 990, gamma: 100};   // 1–99 %, as the thumbnails

  const pointer = () => TF.tomoOutput;
  const view = () => T.views[T.cur];
  const viewUrl = (order, rest) => outputUrl(pointer(), `/series/${encodeURIComponent(T.ts)}/views/${order}${rest}`);

  async function show() {
    const chosen = await fillOutputSelect($("#tomo-output"), "tomo", TF.tomoOutput);
    if (chosen !== TF.tomoOutput) { TF.tomoOutput = chosen; T.ts = null; }
    $("#current-set").textContent = chosen || "";
    if (!chosen) { $("#gallery").innerHTML = '<div class="empty">No tilt-series set in this project yet.</div>'; return; }
    await loadSeries();
  }

  async function loadSeries() {
    T.series = await api(outputUrl(pointer(), "/series"));
    if (!T.series.some(s => s.ts_id === T.ts)) T.ts = T.series.length ? T.series[0].ts_id : null;
    renderSeries();
    if (T.ts) await loadViews(true);
  }

  function renderSeries(focusTs) {
    const table = $("#tomo-series"), had = focusedSeriesRow(table);
    const rows = T.series.map(s => `
      <tr class="row ${s.ts_id === T.ts ? "selected" : ""} ${s.excluded ? "excluded" : ""}" data-ts="${esc(s.ts_id)}" tabindex="0">
        <td>${esc(s.ts_id)}</td><td>${s.n_views}</td>
        <td>${fmt(s.tilt_min_deg, 0)}…${fmt(s.tilt_max_deg, 0)}°</td><td>${fmt(s.tilt_axis_deg, 1, "°")}</td>
        <td class="${s.n_excluded ? "bad" : ""}">${s.n_excluded}</td>
        ${verdictCell(s.verdict, s.verdict_reasons, "alignment")}
        ${verdictCell(s.ctf_verdict, s.ctf_verdict_reasons, "CTF", s.ctf_from)}
        <td><button class="x-btn" data-toggle="${esc(s.ts_id)}" title="exclude / include the whole series (X)">${s.excluded ? "include" : "exclude"}</button></td>
      </tr>`).join("");
    table.innerHTML = `<tr><th>tsId</th><th>views</th><th>tilt</th><th>axis</th><th>excl.</th><th title="alignment verdict: green good, orange check, red failed (hover for the reasons)">aln</th><th title="CTF verdict of the series pass: green good, orange check, red failed (hover for the reasons)">ctf</th><th></th></tr>${rows}`;
    for (const tr of table.querySelectorAll("tr.row")) {
      tr.addEventListener("click", ev => {
        if (ev.target.dataset.toggle) return;
        tr.focus();
        if (tr.dataset.ts !== T.ts) openSeries(tr.dataset.ts);
      });
    }
    for (const b of table.querySelectorAll("button[data-toggle]")) {
      b.addEventListener("click", () => toggleSeries(b.dataset.toggle).catch(report));
    }
    refocusSeriesRow(table, focusTs !== undefined ? focusTs : had && had.dataset.ts);
  }

  function openSeries(ts) {
    T.ts = ts; T.cur = 0;
    renderSeries(focusedSeriesRow($("#tomo-series")) ? ts : undefined);
    loadViews(true).catch(report);
  }

  async function loadViews(rebuild) {
    const ts = T.ts;
    const views = await api(outputUrl(pointer(), `/series/${encodeURIComponent(ts)}/views`));
    if (ts !== T.ts) return;
    T.views = views;
    T.cur = Math.min(T.cur, Math.max(views.length - 1, 0));
    if (rebuild) { buildGallery(); loadSuggestions().catch(report); }
    updateGallery();
    await select(T.cur);
  }

  function caption(v) {
    const motion = v.total_motion_px !== null ? ` · ${fmt(v.total_motion_px, 1)} px` : "";
    const df = v.defocus_u_a !== null ? um((v.defocus_u_a + v.defocus_v_a) / 2) : "no defocus";
    return `<b>${fmt(v.tilt_angle_deg, 1, "°")}</b> #${v.position} · acq ${v.acquisition_order}<br>` +
      `${fmt(v.dose_accumulated_e_a2, 1, " e/Å²")} · ${df}${motion}`;
  }

  function buildGallery() {
    const g = $("#gallery");
    g.innerHTML = T.views.map((v, i) => `
      <div class="thumb" data-i="${i}">
        <img loading="lazy" alt="view ${v.position}" src="${viewUrl(v.acquisition_order, "/thumbnail.png")}">
        <button class="x" data-x="${i}" title="exclude / include (Space)">✕</button>
        <div class="cap">${caption(v)}</div>
      </div>`).join("");
    for (const d of g.querySelectorAll(".thumb")) {
      d.addEventListener("click", ev => {
        const i = +d.dataset.i;
        if (ev.target.dataset.x !== undefined || ev.shiftKey) { toggleView(i).catch(report); return; }
        select(i).catch(report);
      });
    }
  }

  function updateGallery() {
    const suggested = new Set(T.suggestions.map(s => s.view));
    for (const d of document.querySelectorAll("#gallery .thumb")) {
      const v = T.views[+d.dataset.i];
      if (!v) continue;
      d.classList.toggle("excluded", v.excluded);
      d.classList.toggle("current", +d.dataset.i === T.cur);
      d.classList.toggle("suggested", suggested.has(v.acquisition_order) && !v.excluded);
      d.title = [v.file_name, ...T.suggestions.filter(s => s.view === v.acquisition_order).map(s => `${s.kind}: ${s.message}`)].join("\n");
      d.querySelector(".x").textContent = v.excluded ? "↺" : "✕";
      d.querySelector(".cap").innerHTML = caption(v);
    }
  }

  async function select(i) {
    if (!T.views.length) return;
    T.cur = (i + T.views.length) % T.views.length;
    updateGallery();
    const cur = document.querySelector(`#gallery .thumb[data-i="${T.cur}"]`);
    if (cur) scrollWithin($("#gallery"), cur);
    renderInfo();
    const token = ++T.token;
    const p = await getPreview(view().acquisition_order);
    if (token === T.token) draw(p);
  }

  function renderInfo() {
    const v = view(), s = T.series.find(x => x.ts_id === T.ts);
    const rows = [
      ["tilt series", `${esc(T.ts)}${s && s.excluded ? ' <span class="status-failed">(excluded)</span>' : ""}`],
      ...(s && s.verdict ? [["alignment", verdictText(s.verdict, s.verdict_reasons)]] : []),
      ["view", `${v.position} of ${T.views.length} (tilt order)`],
      ["acquisition order", v.acquisition_order],
      ["tilt angle", fmt(v.tilt_angle_deg, 2, "°")],
      ["dose / accumulated", `${fmt(v.dose_e_a2, 2)} / ${fmt(v.dose_accumulated_e_a2, 1, " e⁻/Å²")}`],
      ["defocus U / V", v.defocus_u_a !== null ? `${um(v.defocus_u_a)} / ${um(v.defocus_v_a)}` +
          `<div class="muted defocus-from ${v.defocus_source === "attrs" ? "stale" : ""}">from ${esc(v.defocus_from || v.defocus_source)}</div>` : "–"],
      ...(s && (s.ctf_verdict || s.ctf_from) ? [["CTF verdict", (s.ctf_verdict ? verdictText(s.ctf_verdict, s.ctf_verdict_reasons)
          : '<span class="muted">not judged (no series pass)</span>') + (v.ring_strength !== null ?
          ` <span class="muted" title="Thon-ring evidence of this view (robust z); rings need 6">· rings z ${fmt(v.ring_strength, 1)} in this view</span>` : "")]] : []),
      ["total motion", fmt(v.total_motion_px, 2, " px")],
      ["file", esc(v.file_name) + (v.frames ? ` <span class="muted">(${v.frames} frames)</span>` : "")],
      ...(v.picture ? [["shown", `<span class="muted">${esc(v.picture)}</span>`]] : []),
      ["state", v.excluded ? '<span class="status-failed">excluded</span>' : "included"],
    ];
    $("#view-info").innerHTML = `<table>${rows.map(r => `<tr><td>${r[0]}</td><td>${r[1]}</td></tr>`).join("")}</table>`;
    $("#toggle-view").textContent = v.excluded ? "Include view" : "Exclude view";
    $("#preview-box").classList.toggle("excluded", v.excluded);
    $("#preview-badge").textContent = `${T.ts} · ${v.position}/${T.views.length} · ${fmt(v.tilt_angle_deg, 1, "°")}${v.excluded ? " · EXCLUDED" : ""}`;
  }

  /* Previews arrive as float32 (row 0 first); contrast is applied here, interactively. */
  async function getPreview(order) {
    const key = `${pointer()}|${T.ts}|${order}`;
    if (T.previews.has(key)) return T.previews.get(key);
    const r = await api(viewUrl(order, "/preview"), {raw: true});
    const [ny, nx] = r.headers.get("X-Shape").split(",").map(Number);
    const data = new Float32Array(await r.arrayBuffer());
    const step = Math.max(1, Math.floor(data.length / 65536));
    const sample = [];
    for (let i = 0; i < data.length; i += step) if (Number.isFinite(data[i])) sample.push(data[i]);
    const sorted = Float32Array.from(sample).sort();
    const p = {nx, ny, data, sorted, min: sorted[0], max: sorted[sorted.length - 1]};
    if (T.previews.size > 40) T.previews.delete(T.previews.keys().next().value);
    T.previews.set(key, p);
    return p;
  }

  function limits(p) {
    const lo = +$("#c-lo").value / 1000, hi = +$("#c-hi").value / 1000;
    const mode = document.querySelector('input[name="cmode"]:checked').value;
    if (mode === "percentile") {
      const at = f => p.sorted[Math.min(p.sorted.length - 1, Math.floor(f * (p.sorted.length - 1)))];
      return [at(lo), at(hi), `${(lo * 100).toFixed(1)}%`, `${(hi * 100).toFixed(1)}%`];
    }
    const a = p.min + (p.max - p.min) * lo, b = p.min + (p.max - p.min) * hi;
    return [a, b, a.toPrecision(4), b.toPrecision(4)];
  }

  function draw(p) {
    if (!p) return;
    T.shown = p;
    const [lo, hi, loText, hiText] = limits(p);
    const gamma = +$("#c-gamma").value / 100;
    $("#c-lo-v").textContent = loText; $("#c-hi-v").textContent = hiText; $("#c-gamma-v").textContent = gamma.toFixed(2);
    const canvas = $("#preview");
    canvas.width = p.nx; canvas.height = p.ny;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(p.nx, p.ny);
    const lut = new Uint8ClampedArray(1024);
    for (let i = 0; i < 1024; i++) lut[i] = Math.round(255 * Math.pow(i / 1023, 1 / gamma));
    const scale = hi > lo ? 1023 / (hi - lo) : 0;
    for (let i = 0, j = 0; i < p.data.length; i++, j += 4) {
      let t = (p.data[i] - lo) * scale;
      t = t < 0 || !(t === t) ? 0 : t > 1023 ? 1023 : t;
      const g = lut[t | 0];
      img.data[j] = img.data[j + 1] = img.data[j + 2] = g; img.data[j + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  function resetContrast() {
    document.querySelector(`input[name="cmode"][value="${DEFAULT.mode}"]`).checked = true;
    $("#c-lo").value = DEFAULT.lo; $("#c-hi").value = DEFAULT.hi; $("#c-gamma").value = DEFAULT.gamma;
    draw(T.shown);
  }

  async function after(r) { if (r && r.changed) { await loadSeriesQuiet(); } }
  async function loadSeriesQuiet() {
    T.series = await api(outputUrl(pointer(), "/series"));
    renderSeries();
    await loadViews(false);
    await loadSuggestions();
  }

  async function toggleView(i) {
    const v = T.views[i];
    await after(await exclude(pointer(), {ts_id: T.ts, views: [v.acquisition_order], excluded: !v.excluded}));
  }

  async function toggleSeries(ts) {
    const s = T.series.find(x => x.ts_id === ts);
    await after(await exclude(pointer(), {ts_id: ts, excluded: !s.excluded}));
  }

  async function loadSuggestions() {
    const box = $("#tomo-suggest"), ts = T.ts;
    box.innerHTML = '<span class="muted">checking views for quality flags…</span>';
    const list = await api(outputUrl(pointer(), `/series/${encodeURIComponent(ts)}/suggestions`));
    if (ts !== T.ts) return;
    T.suggestions = list;
    updateGallery();
    if (!list.length) { box.innerHTML = '<span class="muted">No quality flags for this series.</span>'; return; }
    const pos = Object.fromEntries(T.views.map(v => [v.acquisition_order, v]));
    box.innerHTML = `<h3>Suggestions (${list.length}) <button id="accept-all">accept all</button></h3>` +
      list.map((s, i) => `<div class="item"><span><span class="kind">${esc(s.kind)}</span> view ${pos[s.view] ? pos[s.view].position : "?"}
        (${pos[s.view] ? fmt(pos[s.view].tilt_angle_deg, 1, "°") : ""}, acq ${s.view}): ${esc(s.message)}</span>
        <button data-s="${i}">accept</button></div>`).join("");
    const accept = async items => {
      for (const s of items) await exclude(pointer(), {ts_id: s.ts_id, views: [s.view], excluded: true, reason: `auto:${s.kind}`});
      await loadSeriesQuiet();
    };
    $("#accept-all").addEventListener("click", () => accept(list).catch(report));
    for (const b of box.querySelectorAll("button[data-s]")) {
      b.addEventListener("click", () => accept([list[+b.dataset.s]]).catch(report));
    }
  }

  function play() {
    if (T.playing) { clearInterval(T.playing); T.playing = null; $("#play").textContent = "▶ Play"; return; }
    T.playing = setInterval(() => select(T.cur + 1).catch(report), 350);
    $("#play").textContent = "❚❚ Pause";
  }

  function moveSeries(d) {
    const i = T.series.findIndex(s => s.ts_id === T.ts);
    const next = T.series[i + d];
    if (next) openSeries(next.ts_id);
  }

  async function save() { if (await saveSubset(pointer(), false, $("#tomo-saved"))) await show(); }

  function key(ev) {
    const row = focusedSeriesRow($("#tomo-series"));
    if (row && (ev.key === " " || ev.key === "x")) { toggleSeries(row.dataset.ts).catch(report); return true; }
    if (row && ev.key === "Enter") { openSeries(row.dataset.ts); return true; }
    if (!T.views.length) return false;
    if ((ev.key === "z" && (ev.ctrlKey || ev.metaKey)) || ev.key === "u") { undo(pointer()).then(after).catch(report); return true; }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return false;
    const actions = {
      ArrowRight: () => select(T.cur + 1), ArrowLeft: () => select(T.cur - 1),
      ArrowDown: () => moveSeries(1), ArrowUp: () => moveSeries(-1),
      " ": () => toggleView(T.cur), x: () => toggleSeries(T.ts), p: () => play(), r: () => resetContrast(),
      s: () => save(),
    };
    const f = actions[ev.key];
    if (!f) return false;
    Promise.resolve(f()).catch(report);
    return true;
  }

  window.addEventListener("DOMContentLoaded", () => {
    $("#tomo-output").addEventListener("change", e => { TF.tomoOutput = e.target.value; T.ts = null; showTab("tomo"); });
    $("#prev").addEventListener("click", () => select(T.cur - 1).catch(report));
    $("#next").addEventListener("click", () => select(T.cur + 1).catch(report));
    $("#play").addEventListener("click", play);
    $("#toggle-view").addEventListener("click", () => toggleView(T.cur).catch(report));
    $("#tomo-undo").addEventListener("click", () => undo(pointer()).then(after).catch(report));
    $("#tomo-save").addEventListener("click", () => save().catch(report));
    $("#beyond-this").addEventListener("click", () =>
      exclude(pointer(), {ts_id: T.ts, beyond_deg: +$("#beyond").value}).then(after).catch(report));
    $("#beyond-all").addEventListener("click", () =>
      exclude(pointer(), {beyond_deg: +$("#beyond").value}).then(after).catch(report));
    for (const id of ["#c-lo", "#c-hi", "#c-gamma"]) $(id).addEventListener("input", () => draw(T.shown));
    for (const r of document.querySelectorAll('input[name="cmode"]')) r.addEventListener("change", () => draw(T.shown));
    $("#c-reset").addEventListener("click", resetContrast);
  });

  TF.pages.tomo = {show, key};
})();
