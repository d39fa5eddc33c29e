// ftri serve front end: the experts of a mixture-of-experts atlas. The expert map (/experts:
// layers × experts, colour = routing rate, click → expert page), an expert's page (/expert/L.eE:
// routing count, rate and weight, weight histogram, the tokens routed to it with the highest
// weight) and the overview's expert card. Uses app.js's helpers (el, svg, api, fmt, pct, int,
// ramp, section, stat, errorBox, histogram, showTip, hideTip); app.js routes here.
"use strict";

function expertHref(id) { return "/expert/" + encodeURIComponent(id); }
function hasExperts() { return Boolean(INFO && INFO.experts && INFO.experts.length); }

// Show the header's Experts link when the atlas has experts.
function expertsNav() {
  const a = document.querySelector('[data-nav="experts"]');
  if (a) a.hidden = !hasExperts();
}

// The layers × experts grid: one SVG cell per expert, coloured by its routing rate relative to
// the busiest expert of the atlas; hover for values, click to open the expert.
function expertGrid(data) {
  const layers = data.layers;
  const maxE = Math.max(1, ...layers.map((x) => x.experts));
  const maxRate = Math.max(1e-12, ...layers.flatMap((x) => x.rates));
  const labelW = 44, cell = Math.max(10, Math.min(40, Math.floor(880 / maxE))), rowH = Math.max(16, Math.min(36, cell));
  const W = labelW + cell * maxE, H = rowH * layers.length + 18;
  const g = svg("svg", { id: "expert-map", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": "expert map" });
  layers.forEach((x, r) => {
    g.append(svg("text", { x: 4, y: r * rowH + rowH / 2 + 4, class: "tick" }, `L${x.layer}`));
    x.rates.forEach((rate, e) => {
      const [R, G, B] = ramp(rate / maxRate);
      const id = `${x.layer}.e${e}`;
      const rect = svg("rect", {
        x: labelW + e * cell, y: r * rowH, width: cell - 1, height: rowH - 1,
        fill: `rgb(${R},${G},${B})`, class: "expert-cell", "data-expert": id,
        "data-rate": rate, style: "cursor:pointer",
      });
      rect.addEventListener("mousemove", (ev) => showTip(ev,
        `${id} · routing rate ${pct(rate)} (even ${pct(x.top_k / x.experts)}) · ${int(x.counts[e])} tokens · mean weight ${fmt(x.mean_weights[e], 3)}`));
      rect.addEventListener("mouseleave", hideTip);
      rect.addEventListener("click", () => { hideTip(); location.href = expertHref(id); });
      g.append(rect);
    });
  });
  for (let e = 0; e < maxE; e += Math.max(1, Math.ceil(maxE / 16))) {
    g.append(svg("text", { x: labelW + (e + 0.5) * cell, y: H - 4, class: "tick", "text-anchor": "middle" }, String(e)));
  }
  const bar = el("canvas", { width: 160, height: 12, class: "ramp" });
  const bg = bar.getContext("2d");
  for (let i = 0; i < 160; i++) {
    const [R, G, B] = ramp(i / 159);
    bg.fillStyle = `rgb(${R},${G},${B})`;
    bg.fillRect(i, 0, 1, 12);
  }
  const legend = el("div", { class: "toolbar" },
    el("div", { class: "legend" }, el("span", { class: "small" }, "0"), bar, el("span", { class: "small" }, pct(maxRate))),
    el("span", { class: "muted small" }, "colour = routing rate (tokens routed / tokens) · rows = layers, columns = experts · click to open"));
  return el("div", {}, legend, el("div", { class: "mapwrap" }, g));
}

function expertTable(data) {
  const tb = el("tbody");
  for (const x of data.layers) {
    tb.append(el("tr", {},
      el("td", { class: "mono" }, `blocks.${x.layer}.mlp.experts`),
      el("td", { class: "num" }, x.experts), el("td", { class: "num" }, x.top_k),
      el("td", {}, el("a", { href: expertHref(x.most_used.expert), class: "nlink" }, x.most_used.expert), " ", el("span", { class: "muted" }, pct(x.most_used.rate))),
      el("td", {}, el("a", { href: expertHref(x.least_used.expert), class: "nlink" }, x.least_used.expert), " ", el("span", { class: "muted" }, pct(x.least_used.rate))),
      el("td", { class: "num" }, x.unused), el("td", { class: "num" }, fmt(x.balance, 3)), el("td", { class: "num" }, fmt(x.max_over_mean, 2))));
  }
  return el("table", { class: "grid", id: "expert-layers" },
    el("thead", {}, el("tr", {}, ...["layer", "experts", "top-k", "most used", "least used", "unused", "balance", "max / mean"]
      .map((h, i) => el("th", { class: i === 0 || i === 3 || i === 4 ? "" : "num" }, h)))), tb);
}

// ---------- the overview's card ----------
async function expertsOverview() {
  if (!hasExperts()) return;
  const card = section("Experts");
  card.id = "experts-card";
  $app.append(card);
  try {
    const data = await api("/api/experts");
    card.append(expertGrid(data), el("p", { class: "small" }, el("a", { href: "/experts" }, "expert map and load balance →")));
  } catch (e) { card.append(errorBox(e)); }
}

// ---------- /experts ----------
async function expertMapPage() {
  document.title = "ftri · experts";
  $app.replaceChildren(el("h1", {}, "Experts"));
  if (!hasExperts()) {
    $app.append(el("p", { class: "muted" }, "This atlas has no experts: it was recorded on a dense model."));
    return;
  }
  const data = await api("/api/experts");
  $app.append(
    el("p", { class: "muted" }, `${data.layers.length} mixture-of-experts layers · ${int(data.tokens)} tokens · `
      + "an expert's rate is the share of tokens routed to it (a layer's rates sum to top-k); balance is the normalized entropy of the routing counts (1 = even)"),
    section("Expert map", expertGrid(data)),
    section("Load balance", expertTable(data)));
}

// ---------- /expert/L.eE ----------
function markedContext(t, maxW) {
  // the rendered context marks the example token «like this»
  const m = /^([\s\S]*)«([\s\S]*)»([\s\S]*)$/.exec(t.context);
  if (!m) return el("div", { class: "ctx" }, t.context);
  const peak = el("span", { class: "tok peak", text: tokenText(m[2]) || "∅", title: `routing weight ${fmt(t.activation, 4)}` });
  peak.dataset.act = t.activation;
  const bg = shade(t.activation, maxW);
  if (bg) peak.style.background = bg;
  return el("div", { class: "ctx" }, tokenText(m[1]), peak, tokenText(m[3]));
}

async function expertPage(id) {
  document.title = `ftri · expert ${id}`;
  let x;
  try { x = await api("/api/neuron/" + encodeURIComponent(id)); } catch (e) {
    $app.replaceChildren(el("h1", {}, `Expert ${id}`), errorBox(e));
    return;
  }
  const here = (e) => `${x.layer}.e${e}`;
  const nav = el("div", { class: "crumbs" },
    el("a", { href: "/" }, "overview"), " / ", el("a", { href: "/experts" }, "experts"), " / ",
    `layer ${x.layer}`, " / ", el("b", {}, x.expert),
    el("span", { class: "spacer" }),
    x.index > 0 ? el("a", { href: expertHref(here(x.index - 1)) }, "← prev") : null,
    x.index + 1 < x.experts ? el("a", { href: expertHref(here(x.index + 1)) }, "next →") : null);
  $app.replaceChildren(nav,
    el("div", { class: "hero" }, el("h1", {}, `Expert ${x.expert}`),
      el("p", { class: "muted mono" }, `blocks.${x.layer}.mlp.experts.${x.index} · expert ${x.index} of ${x.experts} · top-${x.top_k} routing`)),
    el("div", { class: "stats", id: "expert-stats" },
      stat("tokens routed", int(x.count)), stat("routing rate", pct(x.rate)), stat("even share", pct(x.even_rate)),
      stat("mean weight", fmt(x.mean_weight)), stat("weight std", fmt(x.std_weight)),
      stat("max weight", fmt(x.max_weight)), stat("tokens recorded", int(x.tokens))));
  const cols = el("div", { class: "cols" });
  cols.append(section("Routing weight histogram", histogram(x.weight_histogram),
    el("p", { class: "small muted" }, "over the tokens routed to this expert")));
  const about = section("Neurons");
  if (x.neurons) {
    about.append(el("p", {}, `${int(x.neurons.units)} neurons recorded at `, el("code", {}, x.neurons.site),
      " (statistics over the tokens routed here): ", neuronLink(x.neurons.first), " …"));
  } else {
    about.append(el("p", { class: "muted" }, "This expert's neurons were not recorded (record with ",
      el("code", {}, "--sites 'blocks.*.mlp.experts.*.hook_post'"), ")."));
  }
  cols.append(about);
  $app.append(cols);
  const ex = section("Top tokens by routing weight");
  ex.id = "top-examples";
  const list = el("ol", { class: "examples" });
  const maxW = x.max_weight > 0 ? x.max_weight : 1;
  x.top.forEach((t) => {
    const w = Math.max(0, Math.min(1, t.activation / maxW));
    list.append(el("li", { class: "example" },
      el("div", { class: "act" },
        el("div", { class: "actbar" }, el("div", { style: { width: (100 * w).toFixed(1) + "%" } })),
        el("span", { class: "mono" }, fmt(t.activation, 3))),
      markedContext(t, maxW),
      el("div", { class: "where small muted" }, `doc ${t.doc} · pos ${t.pos}`)));
  });
  if (!x.top.length) list.append(el("li", { class: "muted" }, "No token was routed to this expert."));
  ex.append(list);
  $app.append(ex);
}
