"use strict";
/* CTF viewer: defocus U/V and fit resolution against tilt, per-tilt spectrum with fitted zeros,
   radial profile, exclusion of outliers, Save (goodSetOfCTFTomoSeries…). */
(() => {
  const C = {series: [], ts: null, detail: null, cur: 0, suggestions: []};
  const RINGS_Z = 6;   // core.ctf_verdict.RINGS_Z: ring evidence a tilt needs to count as showing Thon rings
  const pointer = () => TF.ctfOutput;
  const item = () => C.detail && C.detail.items[C.cur];

  async function show() {
    const chosen = await fillOutputSelect($("#ctf-output"), "ctf", TF.ctfOutput);
    if (chosen !== TF.ctfOutput) { TF.ctfOutput = chosen; C.ts = null; }
    $("#current-set").textContent = chosen || "";
    if (!chosen) { $("#ctf-plot").innerHTML = '<div class="empty">No CTF set in this project yet.</div>'; return; }
    await loadSeries();
  }

  async function loadSeries() {
    C.series = await api(outputUrl(pointer(), "/series"));
    if (!C.series.some(s => s.ts_id === C.ts)) { C.ts = C.series.length ? C.series[0].ts_id : null; C.cur = 0; }
    renderSeries();
    if (C.ts) await loadDetail();
  }

  function renderSeries(focusTs) {
    const table = $("#ctf-series"), had = focusedSeriesRow(table);
    const rows = C.series.map(s => `
      <tr class="row ${s.ts_id === C.ts ? "selected" : ""} ${s.excluded ? "excluded" : ""}" data-ts="${esc(s.ts_id)}" tabindex="0">
        <td>${esc(s.ts_id)}</td><td>${s.n_views}</td><td>${fmt(s.tilt_min_deg, 0)}…${fmt(s.tilt_max_deg, 0)}°</td>
        <td class="${s.n_excluded ? "bad" : ""}">${s.n_excluded}</td>
        ${verdictCell(s.ctf_verdict, s.ctf_verdict_reasons, "CTF")}
        <td><button class="x-btn" data-toggle="${esc(s.ts_id)}" title="exclude / include the whole series (X)">${s.excluded ? "include" : "exclude"}</button></td>
      </tr>`).join("");
    table.innerHTML = `<tr><th>tsId</th><th>tilts</th><th>tilt</th><th>excl.</th><th title="CTF verdict of the series pass: green good, orange check, red failed (hover for the reasons)">ctf</th><th></th></tr>${rows}`;
    for (const tr of table.querySelectorAll("tr.row")) {
      tr.addEventListener("click", ev => {
        if (ev.target.dataset.toggle) return;
        tr.focus();
        if (tr.dataset.ts !== C.ts) openSeries(tr.dataset.ts);
      });
    }
    for (const b of table.querySelectorAll("button[data-toggle]")) {
      b.addEventListener("click", () => toggleSeries(b.dataset.toggle).catch(report));
    }
    refocusSeriesRow(table, focusTs !== undefined ? focusTs : had && had.dataset.ts);
  }

  function openSeries(ts) {
    C.ts = ts; C.cur = 0;
    renderSeries(focusedSeriesRow($("#ctf-series")) ? ts : undefined);
    loadDetail().catch(report);
  }

  async function loadDetail() {
    const ts = C.ts;
    const [detail, sugg] = await Promise.all([
      api(outputUrl(pointer(), `/ctf/${encodeURIComponent(ts)}`)),
      api(outputUrl(pointer(), `/ctf/${encodeURIComponent(ts)}/suggestions`)),
    ]);
    if (ts !== C.ts) return;
    C.detail = detail; C.suggestions = sugg;
    C.cur = Math.min(C.cur, Math.max(detail.items.length - 1, 0));
    renderSuggestions();
    select(C.cur);
  }

  function renderVerdict() {
    const d = C.detail, box = $("#ctf-verdict");
    box.className = d.verdict ? `verdict-banner verdict-${d.verdict}` : "verdict-banner";
    box.innerHTML = d.verdict ? `<b>${esc(d.ts_id)}: CTF ${esc(d.verdict)}</b>` +
      (d.verdict_reasons.length ? ` — ${esc(d.verdict_reasons.join("; "))}` : "")
      : `<span class="muted">${esc(d.ts_id)}: CTF not judged by a series pass</span>`;
  }

  function renderPlot() {
    const items = C.detail.items, it = item();
    const pts = key => items.map((c, i) => ({x: c.tilt_angle_deg, y: c[key] === null ? NaN : key.startsWith("defocus") ? c[key] / 1e4 : c[key], bad: c.excluded, id: i}));
    const dfs = items.flatMap(c => [c.defocus_u_a / 1e4, c.defocus_v_a / 1e4]);
    const res = items.map(c => c.fit_resolution_a).filter(v => v !== null);
    const [xmin, xmax] = TFPlot.extent(items.map(c => c.tilt_angle_deg), 0.04);
    const [ymin, ymax] = TFPlot.extent(dfs, 0.1);
    const y2 = res.length ? TFPlot.extent(res, 0.1) : null;
    const excluded = items.filter(c => c.excluded).length;
    TFPlot.chart($("#ctf-plot"), {
      height: 290, x: {min: xmin, max: xmax, label: "tilt angle (°)"},
      y: {min: ymin, max: ymax, label: "defocus (µm, underfocus +)", fmt: v => v.toFixed(2)},
      y2: y2 ? {min: y2[0], max: y2[1], label: "fit resolution (Å)"} : null,
      series: [
        {name: "defocus U", color: "#5aa9e6", points: pts("defocus_u_a")},
        {name: "defocus V", color: "#f0a03c", points: pts("defocus_v_a")},
        ...(y2 ? [{name: "fit resolution", color: "#8fd16a", axis: "y2", marker: "square", dash: "4 3", points: pts("fit_resolution_a")}] : []),
      ],
      marks: it ? [{x: it.tilt_angle_deg}] : [],
      note: excluded ? {text: `red ⊗ / □ = excluded (${excluded} of ${items.length})`, color: "#e5484d"} : null,
      onClick: i => select(i),
    });
  }

  function renderTable() {
    const sugg = new Set(C.suggestions.map(s => s.view));
    const rows = C.detail.items.map((c, i) => `
      <tr class="${i === C.cur ? "selected" : ""} ${c.excluded ? "excluded" : ""}" data-i="${i}">
        <td>${fmt(c.tilt_angle_deg, 1)}</td><td>${c.acquisition_order}</td>
        <td>${fmt(c.defocus_u_a / 1e4, 3)}</td><td>${fmt(c.defocus_v_a / 1e4, 3)}</td>
        <td>${fmt(c.defocus_u_a - c.defocus_v_a, 0)}</td><td>${fmt(c.astigmatism_angle_deg, 1)}</td>
        <td>${fmt(c.phase_shift_deg, 1)}</td><td>${fmt(c.fit_resolution_a, 1)}</td><td>${fmt(c.score, 3)}</td>
        <td class="${c.ring_strength !== null && c.ring_strength < RINGS_Z ? "weak" : ""}">${fmt(c.ring_strength, 1)}</td>
        <td>${sugg.has(c.acquisition_order) && !c.excluded ? '<span class="kind">?</span>' : ""}</td>
        <td><button class="x-btn" data-x="${i}">${c.excluded ? "include" : "exclude"}</button></td></tr>`).join("");
    $("#ctf-table").innerHTML = `<tr><th>tilt °</th><th>acq</th><th>U µm</th><th>V µm</th><th>U−V Å</th><th>azimuth °</th>
      <th>phase °</th><th>fit res. Å</th><th>score</th><th title="Thon-ring evidence near the series' defocus trend (robust z); rings need ${RINGS_Z}">rings z</th><th></th><th></th></tr>${rows}`;
    for (const tr of $("#ctf-table").querySelectorAll("tr[data-i]")) {
      tr.addEventListener("click", ev => {
        if (ev.target.dataset.x !== undefined) toggleTilt(+ev.target.dataset.x).catch(report);
        else select(+tr.dataset.i);
      });
    }
  }

  function renderSpectrum() {
    const c = item(), svg = $("#spectrum-rings");
    const url = outputUrl(pointer(), `/ctf/${encodeURIComponent(C.ts)}/${c.acquisition_order}/spectrum.png`);
    const img = $("#spectrum");
    img.onerror = () => { $("#spectrum-source").textContent = "no spectrum saved, no acquisition values for a model"; };
    img.src = url;
    $("#spectrum-source").textContent = c.has_spectrum_file ? "saved by the CTF step: observed left, fit right"
      : "no spectrum saved: the fitted model's CTF²";
    svg.innerHTML = "";
    if (!$("#rings").checked || !C.detail.nyquist_per_a) return;
    // over the left half of the picture (the observed spectrum; the CTF step draws its model in the
    // right half): the first zeros of the fit (first orange, the next red) and the fit-resolution limit
    // (green, dashed). The picture's row 0 is its top row and the azimuth turns from +x towards +row,
    // as SVG's rotate() does.
    const kmax = c.fit_resolution_a ? 1 / c.fit_resolution_a : Infinity;
    const half = 128, scale = half / C.detail.nyquist_per_a;
    const n = Math.min(c.zeros_u_per_a.length, c.zeros_v_per_a.length, 3);
    const clip = TFPlot.el("clipPath", {id: "spectrum-left"}, svg);
    TFPlot.el("rect", {x: 0, y: 0, width: c.has_spectrum_file ? half : 2 * half, height: 2 * half}, clip);
    const g = TFPlot.el("g", {"clip-path": "url(#spectrum-left)"}, svg);
    for (let i = 0; i < n && c.zeros_v_per_a[i] <= kmax; i++) {
      TFPlot.el("ellipse", {class: "zero", cx: half, cy: half, rx: c.zeros_u_per_a[i] * scale, ry: c.zeros_v_per_a[i] * scale,
        fill: "none", stroke: i ? "#e5484d" : "#f0a03c", "stroke-width": 1.2, "stroke-opacity": 0.9,
        transform: `rotate(${c.astigmatism_angle_deg} ${half} ${half})`}, g);
    }
    if (Number.isFinite(kmax) && kmax <= C.detail.nyquist_per_a) {
      TFPlot.el("circle", {class: "fit-limit", cx: half, cy: half, r: kmax * scale, fill: "none", stroke: "#8fd16a",
        "stroke-width": 1.2, "stroke-dasharray": "4 3"}, g);
    }
  }

  /* Observed equi-phase average and the fitted CTF², from just before the first zero (below it the
     background dominates) to the end of the recorded profile. The fitted curve is drawn with the
     observed curve's mean and spread over the fitted range (its own scale is arbitrary). */
  function renderRadial() {
    const c = item(), box = $("#radial");
    const p = c.radial_profile;
    if (!p || !p.k.length) { box.innerHTML = '<div class="empty">No radial profile recorded by the CTF step for this tilt.</div>'; return; }
    const first = Math.min(c.zeros_u_per_a[0] ?? Infinity, c.zeros_v_per_a[0] ?? Infinity);
    const kStart = Number.isFinite(first) ? 0.6 * first : 0;
    const kFit = c.fit_resolution_a ? 1 / c.fit_resolution_a : Infinity;
    const idx = p.k.map((k, i) => i).filter(i => p.k[i] >= kStart && Number.isFinite(p.observed[i]) && Number.isFinite(p.fitted[i]));
    const inFit = idx.filter(i => p.k[i] <= kFit);
    const use = inFit.length > 3 ? inFit : idx;
    const stats = v => { const m = v.reduce((a, b) => a + b, 0) / v.length;
      return [m, Math.sqrt(v.reduce((a, b) => a + (b - m) * (b - m), 0) / v.length) || 1]; };
    const [mo, so] = stats(use.map(i => p.observed[i])), [mf, sf] = stats(use.map(i => p.fitted[i]));
    const fitted = i => mo + (p.fitted[i] - mf) * so / sf;
    const [xmin, xmax] = TFPlot.extent(idx.map(i => p.k[i]), 0);
    const [ymin, ymax] = TFPlot.extent(idx.map(i => p.observed[i]).concat(use.map(fitted)), 0.05);
    TFPlot.chart(box, {
      width: 420, height: 250, x: {min: xmin, max: xmax, label: "spatial frequency (1/Å)", fmt: v => v.toFixed(2)},
      y: {min: ymin, max: ymax, label: "amplitude (a.u.)", fmt: v => v.toPrecision(2)},
      series: [
        {name: "observed", color: "#aab1bd", marker: "none", points: idx.map(i => ({x: p.k[i], y: p.observed[i]}))},
        {name: "fitted CTF²", color: "#e5484d", marker: "none", points: idx.map(i => ({x: p.k[i], y: fitted(i)}))},
      ],
      marks: Number.isFinite(kFit) ? [{x: kFit, color: "#8fd16a", label: `fit ${fmt(c.fit_resolution_a, 1, " Å")}`}] : [],
      clip: true,
    });
  }

  function renderInfo() {
    const c = item();
    const rows = [
      ["tilt angle", fmt(c.tilt_angle_deg, 2, "°")], ["acquisition order", c.acquisition_order],
      ["defocus U / V", `${um(c.defocus_u_a)} / ${um(c.defocus_v_a)}`],
      ["astigmatism", `${fmt(c.defocus_u_a - c.defocus_v_a, 0, " Å")} at ${fmt(c.astigmatism_angle_deg, 1, "°")}`],
      ["phase shift", fmt(c.phase_shift_deg, 1, "°")], ["fit resolution", fmt(c.fit_resolution_a, 2, " Å")],
      ["score", fmt(c.score, 4)],
      ["ring evidence", c.ring_strength !== null ? `z ${fmt(c.ring_strength, 1)} <span class="muted">(rings need ${RINGS_Z})</span>` : "–"],
      ["series verdict", C.detail.verdict ? `<span class="verdict-${esc(C.detail.verdict)}">${esc(C.detail.verdict)}</span> <span class="muted">(above)</span>`
        : '<span class="muted">not judged</span>'],
      ["state", c.excluded ? '<span class="status-failed">excluded</span>' : "included"],
    ];
    const s = C.suggestions.filter(x => x.view === c.acquisition_order);
    $("#ctf-info").innerHTML = `<table>${rows.map(r => `<tr><td>${r[0]}</td><td>${r[1]}</td></tr>`).join("")}</table>` +
      s.map(x => `<div><span class="kind">${esc(x.kind)}</span> ${esc(x.message)}</div>`).join("");
    $("#ctf-toggle").textContent = c.excluded ? "Include tilt" : "Exclude tilt";
  }

  function select(i) {
    if (!C.detail || !C.detail.items.length) return;
    C.cur = (i + C.detail.items.length) % C.detail.items.length;
    renderVerdict(); renderPlot(); renderTable(); renderSpectrum(); renderRadial(); renderInfo();
    const table = $("#ctf-table"), row = table.querySelector(`tr[data-i="${C.cur}"]`);
    if (row) scrollWithin(table, row, table.rows[0].getBoundingClientRect().height);
  }

  function renderSuggestions() {
    const box = $("#ctf-suggest"), list = C.suggestions;
    if (!list.length) { box.innerHTML = '<span class="muted">No CTF outliers flagged in this series.</span>'; return; }
    const byOrder = Object.fromEntries(C.detail.items.map(c => [c.acquisition_order, c]));
    box.innerHTML = `<h3>Suggestions (${list.length}) <button id="ctf-accept-all">accept all</button></h3>` +
      list.map((s, i) => `<div class="item"><span><span class="kind">${esc(s.kind)}</span>
        ${byOrder[s.view] ? fmt(byOrder[s.view].tilt_angle_deg, 1, "°") : ""} (acq ${s.view}): ${esc(s.message)}</span>
        <button data-s="${i}">accept</button></div>`).join("");
    const accept = async items => {
      for (const s of items) await exclude(pointer(), {ts_id: s.ts_id, views: [s.view], excluded: true, reason: `auto:${s.kind}`});
      await refresh();
    };
    $("#ctf-accept-all").addEventListener("click", () => accept(list).catch(report));
    for (const b of box.querySelectorAll("button[data-s]")) b.addEventListener("click", () => accept([list[+b.dataset.s]]).catch(report));
  }

  async function refresh() {
    C.series = await api(outputUrl(pointer(), "/series"));
    renderSeries();
    await loadDetail();
  }
  async function after(r) { if (r && r.changed) await refresh(); }

  async function toggleTilt(i) {
    const c = C.detail.items[i];
    await after(await exclude(pointer(), {ts_id: C.ts, views: [c.acquisition_order], excluded: !c.excluded}));
  }

  async function toggleSeries(ts) {
    const s = C.series.find(x => x.ts_id === ts);
    await after(await exclude(pointer(), {ts_id: ts, excluded: !s.excluded}));
  }

  function moveSeries(d) {
    const i = C.series.findIndex(s => s.ts_id === C.ts);
    const next = C.series[i + d];
    if (next) openSeries(next.ts_id);
  }

  async function save() { if (await saveSubset(pointer(), true, $("#ctf-saved"))) await show(); }

  function key(ev) {
    const row = focusedSeriesRow($("#ctf-series"));
    if (row && (ev.key === " " || ev.key === "x")) { toggleSeries(row.dataset.ts).catch(report); return true; }
    if (row && ev.key === "Enter") { openSeries(row.dataset.ts); return true; }
    if (!C.detail) return false;
    if ((ev.key === "z" && (ev.ctrlKey || ev.metaKey)) || ev.key === "u") { undo(pointer()).then(after).catch(report); return true; }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return false;
    const actions = {
      ArrowRight: () => select(C.cur + 1), ArrowLeft: () => select(C.cur - 1),
      ArrowDown: () => moveSeries(1), ArrowUp: () => moveSeries(-1),
      " ": () => toggleTilt(C.cur), x: () => toggleSeries(C.ts), s: () => save(),
    };
    const f = actions[ev.key];
    if (!f) return false;
    Promise.resolve(f()).catch(report);
    return true;
  }

  window.addEventListener("DOMContentLoaded", () => {
    $("#ctf-output").addEventListener("change", e => { TF.ctfOutput = e.target.value; C.ts = null; showTab("ctf"); });
    $("#ctf-undo").addEventListener("click", () => undo(pointer()).then(after).catch(report));
    $("#ctf-save").addEventListener("click", () => save().catch(report));
    $("#ctf-toggle").addEventListener("click", () => toggleTilt(C.cur).catch(report));
    $("#rings").addEventListener("change", () => item() && renderSpectrum());
    let resizing = null;   // the plot is drawn at the width of its box
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => { if (TF.tab === "ctf" && item()) renderPlot(); }, 150);
    });
  });

  TF.pages.ctf = {show, key};
})();
