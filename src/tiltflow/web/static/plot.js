"use strict";
/* Small inline-SVG charts (no library): axes with nice ticks, lines, markers, a second y axis. */
const TFPlot = (() => {
  const NS = "http://www.w3.org/2000/svg";
  let uid = 0;

  function el(tag, attrs, parent) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceTicks(min, max, count) {
    if (!(max > min)) { max = min + 1; }
    const raw = (max - min) / Math.max(count, 1);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
    const ticks = [];
    for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(+v.toFixed(10));
    return ticks;
  }

  function extent(values, pad) {
    const v = values.filter(Number.isFinite);
    if (!v.length) return [0, 1];
    let lo = Math.min(...v), hi = Math.max(...v);
    if (hi === lo) { lo -= 1; hi += 1; }
    const p = (hi - lo) * (pad || 0);
    return [lo - p, hi + p];
  }

  /* One drawn point: a <g class="pt"> (class "pt bad" when excluded: a red circled cross, or a hollow
     red square for square markers). */
  function marker(g, kind, x, y, color, bad) {
    const pt = el("g", {class: bad ? "pt bad" : "pt"}, g);
    if (bad && kind === "square") {
      el("rect", {x: x - 3.5, y: y - 3.5, width: 7, height: 7, fill: "none", stroke: "#e5484d", "stroke-width": 1.5}, pt);
    } else if (bad) {
      el("circle", {cx: x, cy: y, r: 5, fill: "none", stroke: "#e5484d", "stroke-width": 1.5}, pt);
      el("path", {d: `M${x - 3} ${y - 3}L${x + 3} ${y + 3}M${x - 3} ${y + 3}L${x + 3} ${y - 3}`, stroke: "#e5484d", "stroke-width": 1.5}, pt);
    } else if (kind === "square") {
      el("rect", {x: x - 3, y: y - 3, width: 6, height: 6, fill: color}, pt);
    } else {
      el("circle", {cx: x, cy: y, r: 3.5, fill: color}, pt);
    }
    return pt;
  }

  /* opts: {width, height, x: {min, max, label, fmt}, y: {...}, y2: {...} | null,
     series: [{name, color, axis: "y"|"y2", points: [{x, y, bad, id}], line, marker, dash}],
     marks: [{x, color, label}], note: {text, color}, clip: bool, onClick(id)} */
  function chart(container, opts) {
    container.innerHTML = "";
    const W = opts.width || container.clientWidth || 600, H = opts.height || container.clientHeight || 260;
    const m = {l: 58, r: opts.y2 ? 58 : 16, t: 22, b: 34};
    const svg = el("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`}, container);
    const sx = v => m.l + (v - opts.x.min) / (opts.x.max - opts.x.min) * (W - m.l - m.r);
    const sy = (ax, v) => H - m.b - (v - ax.min) / (ax.max - ax.min) * (H - m.t - m.b);
    const grid = el("g", {class: "grid"}, svg), axis = el("g", {class: "axis"}, svg);
    const fmt = (ax, v) => (ax.fmt ? ax.fmt(v) : String(v));
    for (const t of niceTicks(opts.x.min, opts.x.max, 8)) {
      el("line", {x1: sx(t), x2: sx(t), y1: m.t, y2: H - m.b}, grid);
      el("text", {x: sx(t), y: H - m.b + 14, "text-anchor": "middle"}, axis).textContent = fmt(opts.x, t);
    }
    for (const t of niceTicks(opts.y.min, opts.y.max, 5)) {
      el("line", {x1: m.l, x2: W - m.r, y1: sy(opts.y, t), y2: sy(opts.y, t)}, grid);
      el("text", {x: m.l - 6, y: sy(opts.y, t) + 4, "text-anchor": "end"}, axis).textContent = fmt(opts.y, t);
    }
    if (opts.y2) {
      for (const t of niceTicks(opts.y2.min, opts.y2.max, 5)) {
        el("text", {x: W - m.r + 6, y: sy(opts.y2, t) + 4}, axis).textContent = fmt(opts.y2, t);
      }
    }
    el("rect", {x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, fill: "none", stroke: "#323640"}, axis);
    el("text", {x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle"}, axis).textContent = opts.x.label || "";
    const yl = el("text", {x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})`}, axis);
    yl.textContent = opts.y.label || "";
    if (opts.y2) {
      const x2 = W - 8;
      el("text", {x: x2, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
        transform: `rotate(90 ${x2} ${(m.t + H - m.b) / 2})`}, axis).textContent = opts.y2.label || "";
    }
    for (const mk of opts.marks || []) {
      if (!(mk.x >= opts.x.min && mk.x <= opts.x.max)) continue;
      el("line", {x1: sx(mk.x), x2: sx(mk.x), y1: m.t, y2: H - m.b, stroke: mk.color || "#5aa9e6",
        "stroke-width": 1.5, "stroke-dasharray": "4 3"}, svg);
      if (mk.label) {
        const right = sx(mk.x) > (m.l + W - m.r) / 2;
        el("text", {x: sx(mk.x) + (right ? -4 : 4), y: m.t + 12, "text-anchor": right ? "end" : "start",
          style: `fill:${mk.color || "#5aa9e6"}`}, svg).textContent = mk.label;
      }
    }
    let clipId = null;
    if (opts.clip) {  // keep lines inside the axes
      clipId = `clip${++uid}`;
      el("rect", {x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b}, el("clipPath", {id: clipId}, svg));
    }
    let lx = m.l + 6;
    for (const s of opts.series) {
      const ax = s.axis === "y2" ? opts.y2 : opts.y;
      const g = el("g", {class: "series", "data-series": s.name || ""}, svg);
      if (clipId) g.setAttribute("clip-path", `url(#${clipId})`);
      const good = s.points.filter(p => !p.bad && Number.isFinite(p.y));
      if (s.line !== false && good.length > 1) {
        el("path", {d: good.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)} ${sy(ax, p.y).toFixed(1)}`).join(""),
          fill: "none", stroke: s.color, "stroke-width": 1.5, "stroke-dasharray": s.dash || ""}, g);
      }
      for (const p of s.points) {
        if (!Number.isFinite(p.y)) continue;
        const x = sx(p.x), y = sy(ax, p.y);
        if ((s.marker || "circle") !== "none" || p.bad) marker(g, s.marker || "circle", x, y, s.color, p.bad);
        if (opts.onClick && p.id !== undefined) {
          const hit = el("circle", {cx: x, cy: y, r: 8, fill: "transparent", style: "cursor:pointer"}, g);
          el("title", {}, hit).textContent = `${s.name}: ${fmt(ax, p.y)} at ${fmt(opts.x, p.x)}`;
          hit.addEventListener("click", () => opts.onClick(p.id));
        }
      }
      if (s.name) {  // legend
        el("line", {x1: lx, x2: lx + 16, y1: 11, y2: 11, stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dash || ""}, svg);
        const t = el("text", {x: lx + 20, y: 15}, svg);
        t.textContent = s.name;
        lx += 30 + 7 * s.name.length;
      }
    }
    if (opts.note) {  // right end of the legend line
      el("text", {x: W - m.r, y: 15, "text-anchor": "end", style: `fill:${opts.note.color || "#8b919c"}`}, svg)
        .textContent = opts.note.text;
    }
    return {svg, sx, sy};
  }

  return {chart, el, extent, niceTicks};
})();
