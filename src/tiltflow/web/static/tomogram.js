"use strict";
/* Tomogram viewer: orthogonal slices (XY with a z slider, XZ below it, YZ beside it) served as PNG,
   contrast from the volume's percentiles, and the even/odd halves side by side. Row 0 of every slice
   is drawn at the top (3dmod draws it at the bottom); YZ has y down its rows, as XY, and z across. */
(() => {
  const V = {list: [], ts: null, pos: {x: 0, y: 0, z: 0}, mode: "full", timer: null};
  const DEFAULT = {lo: 100, hi: 9900, gamma: 100, slab: 1};   // 1-99 %, as the snapshots
  const pointer = () => TF.tomogramOutput;
  const cur = () => V.list.find(t => t.ts_id === V.ts);
  // the slice shown by each panel: its index along the axis across it, and what its rows / columns are
  const AXES = {
    xy: {index: "z", rows: "y", cols: "x", title: "XY"},
    xz: {index: "y", rows: "z", cols: "x", title: "XZ"},
    yz: {index: "x", rows: "y", cols: "z", title: "YZ"},
  };

  async function show() {
    const chosen = await fillOutputSelect($("#tomogram-output"), "tomogram", TF.tomogramOutput);
    if (chosen !== TF.tomogramOutput) { TF.tomogramOutput = chosen; V.ts = null; }
    $("#current-set").textContent = chosen || "";
    if (!chosen) { $("#ortho").innerHTML = '<div class="empty">No tomograms in this project yet (run reconstruct).</div>'; return; }
    V.list = await api(outputUrl(chosen, "/tomograms"));
    if (!V.list.some(t => t.ts_id === V.ts)) openTomogram(V.list.length ? V.list[0].ts_id : null);
    else { renderList(); layout(); }
  }

  const size = t => ({x: t.shape[2], y: t.shape[1], z: t.shape[0]});

  function renderList() {
    const rows = V.list.map(t => `
      <tr class="row ${t.ts_id === V.ts ? "selected" : ""} ${t.missing ? "excluded" : ""}" data-ts="${esc(t.ts_id)}" tabindex="0">
        <td>${esc(t.ts_id)}</td><td>${t.shape[2]}×${t.shape[1]}×${t.shape[0]}</td><td>${fmt(t.voxel_size_a, 2, " Å")}</td>
        <td title="even/odd halves">${t.halves ? "e/o" : ""}</td></tr>`).join("");
    const table = $("#tomogram-list");
    table.innerHTML = `<tr><th>tsId</th><th>x×y×z</th><th>voxel</th><th></th></tr>${rows}`;
    for (const tr of table.querySelectorAll("tr.row")) tr.addEventListener("click", () => openTomogram(tr.dataset.ts));
  }

  function openTomogram(ts) {
    V.ts = ts;
    const t = cur();
    renderList();
    if (!t) { $("#ortho").innerHTML = '<div class="empty">This set holds no tomograms.</div>'; $("#tomogram-info").innerHTML = ""; return; }
    const n = size(t);
    V.pos = {x: n.x >> 1, y: n.y >> 1, z: n.z >> 1};
    for (const k of ["x", "y", "z"]) { const s = $(`#t-${k}`); s.max = n[k] - 1; s.value = V.pos[k]; }
    if (!t.halves && V.mode === "halves") setMode("full", false);
    $('#tomogram-show input[value="halves"]').disabled = !t.halves;
    renderInfo();
    layout();
  }

  function renderInfo() {
    const t = cur(), n = size(t);
    const rows = [
      ["tilt series", esc(t.ts_id)],
      ["size", `${n.x} × ${n.y} × ${n.z} voxels`],
      ["voxel", fmt(t.voxel_size_a, 3, " Å")],
      ["thickness", fmt(n.z * t.voxel_size_a / 10, 0, " nm")],
      ["method", esc(t.method || "–")],
      ["from", esc(t.source || "–")],
      ["file", `<code>${pathHtml(t.file)}</code>${t.missing ? ' <span class="status-failed">missing</span>' : ""}`],
      ["halves", t.halves ? "even / odd" : '<span class="muted">none (reconstruct --even-odd)</span>'],
      ["snapshots", t.snapshots.length ? t.snapshots.map(s => `<code title="${esc(s)}">${esc(s.split("/").pop())}</code>`).join("<br>")
        + '<div class="muted">PNGs of the central slices, beside the file</div>' : '<span class="muted">none</span>'],
    ];
    $("#tomogram-info").innerHTML = `<table>${rows.map(r => `<tr><td>${r[0]}</td><td>${r[1]}</td></tr>`).join("")}</table>`;
  }

  /* Panels: full = XY, YZ to its right, XZ below (shared scale); halves = even | odd, XY over XZ. */
  function layout() {
    const t = cur(), box = $("#ortho");
    if (!t) return;
    if (t.missing) { box.innerHTML = `<div class="empty">${esc(t.file)}: the tomogram file is missing.</div>`; return; }
    const n = size(t), gap = 26, W = Math.max(200, box.clientWidth - 24), H = Math.max(200, box.clientHeight - 24);
    let panels, s;
    if (V.mode === "halves") {
      s = Math.min((W - gap) / (2 * n.x), (H - 2 * gap) / (n.y + n.z));
      panels = [["xy", "even", 1, 1], ["xy", "odd", 2, 1], ["xz", "even", 1, 2], ["xz", "odd", 2, 2]];
    } else {
      s = Math.min((W - gap) / (n.x + n.z), (H - 2 * gap) / (n.y + n.z));
      panels = [["xy", "full", 1, 1], ["yz", "full", 2, 1], ["xz", "full", 1, 2]];
    }
    s = Math.max(s, 0.05);
    const px = {x: n.x * s, y: n.y * s, z: n.z * s};
    box.innerHTML = panels.map(([axis, half, col, row]) => {
      const a = AXES[axis];
      return `<figure class="slice" data-axis="${axis}" data-half="${half}" style="grid-column:${col};grid-row:${row}">
        <figcaption><b>${a.title}</b>${half !== "full" ? ` <span class="half">${half}</span>` : ""} <span class="where"></span></figcaption>
        <div class="wrap" style="width:${px[a.cols].toFixed(0)}px;height:${px[a.rows].toFixed(0)}px">
          <img alt="${a.title} ${half}" draggable="false"><div class="hline"></div><div class="vline"></div></div>
        <div class="err"></div></figure>`;
    }).join("");
    for (const f of box.querySelectorAll("figure.slice")) {
      f.querySelector(".wrap").addEventListener("click", ev => clickSlice(f.dataset.axis, ev));
      const img = f.querySelector("img");
      img.addEventListener("error", () => explain(img, f));
      img.addEventListener("load", () => { f.querySelector(".err").textContent = ""; f.classList.remove("loading"); });
    }
    update(true);
  }

  async function explain(img, f) {
    f.classList.remove("loading");
    if (!img.getAttribute("src")) return;
    try { await api(img.getAttribute("src"), {raw: true}); } catch (err) { f.querySelector(".err").textContent = err.message; }
  }

  function clickSlice(axis, ev) {
    const a = AXES[axis], n = size(cur()), r = ev.currentTarget.getBoundingClientRect();
    const fx = (ev.clientX - r.left) / r.width, fy = (ev.clientY - r.top) / r.height;
    V.pos[a.cols] = Math.min(n[a.cols] - 1, Math.max(0, Math.floor(fx * n[a.cols])));
    V.pos[a.rows] = Math.min(n[a.rows] - 1, Math.max(0, Math.floor(fy * n[a.rows])));
    for (const k of ["x", "y", "z"]) $(`#t-${k}`).value = V.pos[k];
    update(true);
  }

  function contrast() {
    return {lo: +$("#t-lo").value / 100, hi: +$("#t-hi").value / 100, gamma: +$("#t-gamma").value / 100, slab: +$("#t-slab").value};
  }

  function sliceUrl(axis, half, maxPx) {
    const c = contrast(), index = V.pos[AXES[axis].index];
    const q = new URLSearchParams({axis, index, half, lo: c.lo, hi: c.hi, gamma: c.gamma, slab: c.slab, max_px: maxPx});
    return outputUrl(pointer(), `/tomograms/${encodeURIComponent(V.ts)}/slice.png?${q}`);
  }

  /* Move the crosshairs and captions now; ask for new pictures after a short pause (sliders). */
  function update(now) {
    const t = cur();
    if (!t) return;
    const n = size(t), c = contrast();
    for (const k of ["x", "y", "z"]) $(`#t-${k}-v`).textContent = `${V.pos[k]} / ${n[k] - 1}`;
    $("#t-lo-v").textContent = `${c.lo.toFixed(2)}%`; $("#t-hi-v").textContent = `${c.hi.toFixed(2)}%`;
    $("#t-gamma-v").textContent = c.gamma.toFixed(2); $("#t-slab-v").textContent = c.slab === 1 ? "1 slice" : `${c.slab} slices`;
    for (const f of document.querySelectorAll("#ortho figure.slice")) {
      const a = AXES[f.dataset.axis];
      f.querySelector(".where").textContent = `${a.index} ${V.pos[a.index]}`;
      f.querySelector(".vline").style.left = `${(V.pos[a.cols] + 0.5) / n[a.cols] * 100}%`;
      f.querySelector(".hline").style.top = `${(V.pos[a.rows] + 0.5) / n[a.rows] * 100}%`;
    }
    clearTimeout(V.timer);
    V.timer = setTimeout(load, now ? 0 : 60);
  }

  function load() {
    const dpr = window.devicePixelRatio || 1;
    for (const f of document.querySelectorAll("#ortho figure.slice")) {
      const wrap = f.querySelector(".wrap"), img = f.querySelector("img");
      const need = Math.max(wrap.clientWidth, wrap.clientHeight) * dpr;
      const maxPx = Math.min(2048, Math.max(256, Math.ceil(need / 256) * 256));
      const url = sliceUrl(f.dataset.axis, f.dataset.half, maxPx);
      if (img.getAttribute("src") !== url) { f.classList.add("loading"); img.src = url; }
    }
  }

  function setMode(mode, relayout) {
    V.mode = mode;
    document.querySelector(`#tomogram-show input[value="${mode}"]`).checked = true;
    if (relayout !== false) layout();
  }

  function resetContrast() {
    $("#t-lo").value = DEFAULT.lo; $("#t-hi").value = DEFAULT.hi; $("#t-gamma").value = DEFAULT.gamma; $("#t-slab").value = DEFAULT.slab;
    update(true);
  }

  function moveZ(d) {
    const t = cur();
    if (!t) return;
    V.pos.z = Math.min(size(t).z - 1, Math.max(0, V.pos.z + d));
    $("#t-z").value = V.pos.z;
    update(false);
  }

  function moveTomogram(d) {
    const i = V.list.findIndex(t => t.ts_id === V.ts), next = V.list[i + d];
    if (next) openTomogram(next.ts_id);
  }

  function key(ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return false;
    const step = ev.shiftKey ? 10 : 1;
    const actions = {
      ArrowRight: () => moveZ(step), ArrowLeft: () => moveZ(-step),
      ArrowDown: () => moveTomogram(1), ArrowUp: () => moveTomogram(-1),
      h: () => { const t = cur(); if (t && t.halves) setMode(V.mode === "halves" ? "full" : "halves"); },
      r: () => resetContrast(),
    };
    const f = actions[ev.key];
    if (!f) return false;
    f();
    return true;
  }

  window.addEventListener("DOMContentLoaded", () => {
    $("#tomogram-output").addEventListener("change", e => { TF.tomogramOutput = e.target.value; V.ts = null; showTab("tomogram"); });
    for (const k of ["x", "y", "z"]) {
      $(`#t-${k}`).addEventListener("input", e => { V.pos[k] = +e.target.value; update(false); });
    }
    for (const id of ["#t-lo", "#t-hi", "#t-gamma", "#t-slab"]) $(id).addEventListener("input", () => update(false));
    for (const r of document.querySelectorAll('input[name="tmode"]')) r.addEventListener("change", () => setMode(r.value));
    $("#t-reset").addEventListener("click", resetContrast);
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => { if (TF.tab === "tomogram") layout(); }, 150);
    });
  });

  TF.pages.tomogram = {show, key};
})();
