// ftri serve: the neuroscience views at /neuro. Open the JSON that `ftri tune --json`,
// `ftri align --json` or `ftri frequency --json` wrote (nothing is uploaded: the file is read in
// the browser) and see a unit's tuning curve, or the per-layer profile. Uses app.js's helpers
// (el, svg, fmt) at call time, so it may load before app.js.
"use strict";

const NEURO_W = 560, NEURO_H = 280, NEURO_PAD = { l: 56, r: 44, t: 14, b: 40 };

// A line/points plot with optional error bars: series = [{name, points: [{x, y, e?}]}].
function neuroPlot(series, { logX = false, xLabel = "", yLabel = "" } = {}) {
  const pts = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p.y) && (!logX || p.x > 0));
  if (!pts.length) return el("p", { class: "muted" }, "nothing to plot");
  const tx = (x) => (logX ? Math.log10(x) : x);
  let [x0, x1] = [Math.min(...pts.map((p) => tx(p.x))), Math.max(...pts.map((p) => tx(p.x)))];
  let [y0, y1] = [
    Math.min(...pts.map((p) => p.y - (Number.isFinite(p.e) ? p.e : 0))),
    Math.max(...pts.map((p) => p.y + (Number.isFinite(p.e) ? p.e : 0))),
  ];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 1; y1 += 1; }
  const W = NEURO_W - NEURO_PAD.l - NEURO_PAD.r, H = NEURO_H - NEURO_PAD.t - NEURO_PAD.b;
  const X = (x) => NEURO_PAD.l + ((tx(x) - x0) / (x1 - x0)) * W;
  const Y = (y) => NEURO_PAD.t + (1 - (y - y0) / (y1 - y0)) * H;
  const colors = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed"];
  const g = svg("svg", { viewBox: `0 0 ${NEURO_W} ${NEURO_H}`, width: NEURO_W, height: NEURO_H, class: "neuro-plot" });
  g.append(svg("line", { x1: NEURO_PAD.l, y1: NEURO_PAD.t + H, x2: NEURO_PAD.l + W, y2: NEURO_PAD.t + H, stroke: "#888" }));
  g.append(svg("line", { x1: NEURO_PAD.l, y1: NEURO_PAD.t, x2: NEURO_PAD.l, y2: NEURO_PAD.t + H, stroke: "#888" }));
  for (const [v, y] of [[y0, Y(y0)], [y1, Y(y1)]]) {
    g.append(svg("text", { x: NEURO_PAD.l - 4, y: y + 4, "text-anchor": "end", "font-size": 11 }, fmt(v)));
  }
  const xs = [...new Set(pts.map((p) => p.x))];
  for (const x of [xs[0], xs[xs.length - 1]].filter((v, i, a) => a.indexOf(v) === i)) {
    g.append(svg("text", { x: X(x), y: NEURO_PAD.t + H + 14, "text-anchor": "middle", "font-size": 11 }, fmt(x)));
  }
  g.append(svg("text", { x: NEURO_PAD.l + W / 2, y: NEURO_H - 6, "text-anchor": "middle", "font-size": 12 }, xLabel + (logX ? " (log)" : "")));
  g.append(svg("text", { x: 12, y: NEURO_PAD.t + H / 2, "font-size": 12, transform: `rotate(-90 12 ${NEURO_PAD.t + H / 2})`, "text-anchor": "middle" }, yLabel));
  series.forEach((s, i) => {
    const c = colors[i % colors.length];
    const ps = s.points.filter((p) => Number.isFinite(p.y) && (!logX || p.x > 0));
    g.append(svg("polyline", { points: ps.map((p) => `${X(p.x)},${Y(p.y)}`).join(" "), fill: "none", stroke: c, "stroke-width": 1.5 }));
    for (const p of ps) {
      if (Number.isFinite(p.e)) g.append(svg("line", { x1: X(p.x), x2: X(p.x), y1: Y(p.y - p.e), y2: Y(p.y + p.e), stroke: c }));
      g.append(svg("circle", { cx: X(p.x), cy: Y(p.y), r: 3, fill: c }, svg("title", {}, `${s.name}: ${fmt(p.x)} → ${fmt(p.y)}`)));
    }
    if (series.length > 1) g.append(svg("text", { x: NEURO_PAD.l + 8, y: NEURO_PAD.t + 14 + 14 * i, fill: c, "font-size": 12 }, s.name));
  });
  return g;
}

function tuneView(r, out) {
  const pick = el("select", {}, r.units.map((u, i) => el("option", { value: i }, `${u.neuron}  ρ=${fmt(u.rho)}  ${u.best_fit || ""}`)));
  const logBox = el("input", { type: "checkbox" });
  const plotBox = el("div", {});
  const draw = () => {
    const u = r.units[Number(pick.value)];
    if (!u) return;
    const g = u.fits.gaussian;
    plotBox.replaceChildren(
      neuroPlot([{ name: u.neuron, points: u.curve.map((c) => ({ x: c.value, y: c.mean, e: c.sem })) }],
        { logX: logBox.checked, xLabel: "value", yLabel: "response (mean ± sem)" }),
      el("p", {}, `ρ ${fmt(u.rho)} (q ${fmt(u.q)}) · best fit: ${u.best_fit || "–"} · CV R²: linear ${fmt(u.fits.linear.cv_r2)}, log ${fmt(u.fits.log.cv_r2)}, Gaussian ${fmt(g.cv_r2)} (preferred ${fmt(g.preferred)}, width ${fmt(g.width)} on the ${g.axis} axis)`));
  };
  pick.addEventListener("change", draw);
  logBox.addEventListener("change", draw);
  const dec = r.decoding || [];
  out.replaceChildren(
    el("h2", {}, `Tuning curves — ${r.n_stimuli} stimuli, ${r.units_tested} units of ${r.site}`),
    el("p", {}, "unit ", pick, " ", el("label", {}, logBox, " log value axis")), plotBox,
    el("h2", {}, "Population decoding (ridge, CV R²)"),
    neuroPlot([
      { name: "value", points: dec.map((d) => ({ x: d.layer, y: d.r2_value })) },
      { name: "log value", points: dec.map((d) => ({ x: d.layer, y: d.r2_log_value })) },
    ], { xLabel: "layer", yLabel: "CV R²" }));
  draw();
}

function alignView(r, out) {
  const L = r.layers;
  const series = [];
  if (L.some((l) => l.ridge)) series.push({ name: "ridge mean r", points: L.filter((l) => l.ridge).map((l) => ({ x: l.layer, y: l.ridge.mean_r })) });
  if (L.some((l) => l.rsa)) series.push({ name: "RSA ρ", points: L.filter((l) => l.rsa).map((l) => ({ x: l.layer, y: l.rsa.rho })) });
  if (L.some((l) => l.cka !== undefined)) series.push({ name: "CKA", points: L.filter((l) => l.cka !== undefined).map((l) => ({ x: l.layer, y: l.cka })) });
  const b = r.best || {};
  out.replaceChildren(
    el("h2", {}, `Layer profile — ${r.n_stimuli} stimuli, ${r.n_brain_units} brain units`),
    neuroPlot(series, { xLabel: "layer", yLabel: "alignment" }),
    el("p", {}, `best layer: ridge ${b.ridge ?? "–"}, RSA ${b.rsa ?? "–"}, CKA ${b.cka ?? "–"}` +
      (r.noise_ceiling ? ` · noise ceiling on r: mean ${fmt(r.noise_ceiling.mean)}` : "")));
}

function frequencyView(r, out) {
  const names = r.levels.filter((l) => l.testable).map((l) => l.name);
  out.replaceChildren(
    el("h2", {}, `Frequency tagging — ${r.n_streams} streams × ${r.n_positions} positions`),
    neuroPlot(names.map((n) => ({ name: n, points: r.layers.map((l) => ({ x: l.layer, y: l.tagged[n] })) })),
      { xLabel: "layer", yLabel: "share of units tagged" }));
}

function neuroPage() {
  const out = el("div", {});
  const input = el("input", { type: "file", accept: ".json,application/json" });
  input.addEventListener("change", async () => {
    const f = input.files && input.files[0];
    if (!f) return;
    try {
      const r = JSON.parse(await f.text());
      if (r.units && r.decoding) tuneView(r, out);
      else if (r.layers && r.n_brain_units !== undefined) alignView(r, out);
      else if (r.levels && r.layers) frequencyView(r, out);
      else throw new Error("not the JSON of ftri tune, align or frequency");
    } catch (e) { out.replaceChildren(el("p", { class: "error" }, String(e.message || e))); }
  });
  $app.replaceChildren(
    el("h1", {}, "Neuroscience views"),
    el("p", { class: "muted" }, "Open the output of ftri tune --json, ftri align --json or ftri frequency --json (read in the browser, not uploaded)."),
    input, out);
}
