// ftri serve front end: vanilla JS, no dependencies. One shell page; this script renders the
// page for the current path (/, /neuron/L.N, /search, /localize) from the JSON API.
"use strict";

const $app = document.getElementById("app");
const $tip = document.getElementById("tip");
let INFO = null;

// ---------- helpers ----------
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "style") Object.assign(e.style, v);
    else e.setAttribute(k, v);
  }
  for (const c of kids.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of kids.flat()) if (c) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function fmt(x, d = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (!Number.isFinite(x)) return x > 0 ? "∞" : "−∞";
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
  return Number(x.toFixed(d)).toString();
}
function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(x < 0.01 && x > 0 ? 2 : 1) + "%"; }
function int(x) { return typeof x === "number" ? x.toLocaleString("en-US") : "–"; }
async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  const r = await fetch(path, opts);
  let j;
  try { j = await r.json(); } catch (_) { throw new Error(`HTTP ${r.status}`); }
  if (!r.ok) throw new Error(j && j.error ? j.error : `HTTP ${r.status}`);
  return j;
}
function neuronHref(name) { return "/neuron/" + encodeURIComponent(name); }
function neuronLink(name) { return el("a", { href: neuronHref(name), class: "nlink" }, name); }
function unitName(site, u) {
  const m = /^blocks\.(\d+)\.mlp\.hook_post$/.exec(site);
  return m ? `${m[1]}.${u}` : `${site}:${u}`;
}
function siteLabel(site) {
  const m = /^blocks\.(\d+)\.mlp\.hook_post$/.exec(site);
  return m ? `L${m[1]}` : site.replace(/^blocks\./, "b");
}
function errorBox(e) { return el("div", { class: "error" }, String(e.message || e)); }
function section(title, ...kids) { return el("section", { class: "card" }, el("h2", {}, title), ...kids); }
function showTip(ev, text) {
  $tip.textContent = text;
  $tip.hidden = false;
  const x = Math.min(ev.clientX + 14, window.innerWidth - $tip.offsetWidth - 8);
  $tip.style.left = x + "px";
  $tip.style.top = ev.clientY + 16 + "px";
}
function hideTip() { $tip.hidden = true; }

// Viridis-like ramp for the brain map.
const RAMP = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]];
function ramp(t) {
  if (!(t >= 0)) t = 0;
  if (t > 1) t = 1;
  const f = t * (RAMP.length - 1), i = Math.floor(f), r = f - i;
  const a = RAMP[i], b = RAMP[Math.min(i + 1, RAMP.length - 1)];
  return [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * r));
}

// Token shading: orange for positive activation, blue for negative, alpha = |act| / max.
function shade(act, max) {
  if (act === null || act === undefined || !Number.isFinite(act) || !(max > 0)) return "";
  const a = Math.min(1, Math.abs(act) / max);
  if (a < 0.02) return "";
  return act > 0 ? `rgba(255, 140, 0, ${(0.12 + 0.78 * a).toFixed(3)})`
    : `rgba(60, 120, 255, ${(0.1 + 0.5 * a).toFixed(3)})`;
}
function tokenText(t) { return t.replace(/\n/g, "⏎").replace(/\t/g, "⇥"); }
// A row of tokens, each a span shaded by its activation; `at` (optional) is the example token.
function tokenRow(tokens, acts, max, at, sep) {
  const row = el("div", { class: "ctx" });
  let first = true;
  tokens.forEach((t, i) => {
    if (t === null || t === undefined) return;
    if (!first && sep) row.append(document.createTextNode(sep));
    first = false;
    const a = acts ? acts[i] : null;
    const s = el("span", { class: "tok" + (i === at ? " peak" : ""), text: tokenText(t) || "∅" });
    const bg = shade(a, max);
    if (bg) s.style.background = bg;
    if (a !== null && a !== undefined) {
      s.dataset.act = a;
      s.title = `activation ${fmt(a, 4)}`;
    }
    row.append(s);
  });
  return row;
}

// ---------- overview ----------
async function overview() {
  const [layers, info] = await Promise.all([api("/api/layers"), Promise.resolve(INFO)]);
  const m = info.model;
  const files = info.corpus.files.map((f) => f.path.split("/").pop()).join(", ");
  $app.replaceChildren(
    el("div", { class: "hero" },
      el("h1", {}, m.id || "(model)"),
      el("p", { class: "muted" },
        `${m.arch} · ${m.n_layers} layers · d_model ${m.d_model} · ${int(m.d_mlp)} neurons per layer · `
        + `${int(info.tokens)} tokens from ${int(info.docs)} documents (${files})`
        + (info.complete ? "" : " · unfinished atlas")),
    ),
    el("div", { class: "stats" },
      stat("hook points", info.sites.length),
      stat("units", int(info.sites.reduce((a, s) => a + s.units, 0))),
      stat("tokens recorded", int(info.tokens)),
      stat("top examples / unit", info.settings.top_k),
      stat("model loaded", info.loaded_model ? "yes" : "no")),
  );
  const mapCard = section("Neuron map");
  $app.append(mapCard);
  mapSection(mapCard);
  const tbody = el("tbody");
  for (const s of layers.sites) {
    tbody.append(el("tr", {},
      el("td", { class: "mono" }, s.site),
      el("td", { class: "num" }, int(s.units)),
      el("td", { class: "num" }, pct(s.mean_fire_rate)),
      el("td", { class: "num" }, int(s.dead)),
      el("td", {}, ...s.selective.slice(0, 6).map((x) => el("span", { class: "chip" },
        neuronLink(x.neuron), el("span", { class: "muted" }, " " + fmt(x.max_over_std, 1)))))));
  }
  $app.append(section("Layers",
    el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, el("th", {}, "hook point"), el("th", { class: "num" }, "units"),
        el("th", { class: "num" }, "mean fire rate"), el("th", { class: "num" }, "dead"),
        el("th", {}, "most selective (max / std)"))),
      tbody)));
}
function stat(label, value) {
  return el("div", { class: "stat" }, el("div", { class: "v" }, String(value)), el("div", { class: "l" }, label));
}

const STAT_LABEL = { fire_rate: "fire rate", max: "max activation", selectivity: "selectivity (max / std)", mean: "mean", std: "std" };
async function mapSection(card) {
  const params = new URLSearchParams(location.search);
  let stat = params.get("stat") || "max";
  const select = el("select", { id: "stat", "aria-label": "statistic" },
    ...INFO.stats.map((s) => el("option", { value: s, selected: s === stat ? "" : null }, STAT_LABEL[s] || s)));
  const legend = el("div", { class: "legend" });
  const wrap = el("div", { class: "mapwrap" });
  card.append(el("div", { class: "toolbar" }, el("label", {}, "colour = ", select), legend,
    el("span", { class: "muted small" }, "rows = layers, columns = neurons · hover for values, click to open")), wrap);
  async function draw() {
    wrap.replaceChildren(el("p", { class: "muted" }, "Loading…"));
    let data;
    try { data = await api("/api/map?stat=" + encodeURIComponent(stat)); } catch (e) { wrap.replaceChildren(errorBox(e)); return; }
    drawMap(wrap, legend, data);
  }
  select.addEventListener("change", () => {
    stat = select.value;
    history.replaceState(null, "", "/?stat=" + stat);
    draw();
  });
  draw();
}
function drawMap(wrap, legend, data) {
  const sites = data.sites;
  const all = [];
  for (const s of sites) for (const v of s.values) if (v !== null && Number.isFinite(v)) all.push(v);
  all.sort((a, b) => a - b);
  const lo = all.length ? Math.min(0, all[0]) : 0;
  const hi = all.length ? all[Math.min(all.length - 1, Math.floor(all.length * 0.995))] : 1;
  const span = hi - lo || 1;
  const maxUnits = Math.max(1, ...sites.map((s) => s.units));
  const labelW = 64;
  const avail = Math.max(300, wrap.clientWidth - labelW - 4);
  const cellW = Math.max(1, Math.floor(avail / maxUnits));
  const rowH = Math.max(10, Math.min(32, Math.floor(380 / Math.max(1, sites.length))));
  const W = labelW + cellW * maxUnits, H = rowH * sites.length;
  const dpr = window.devicePixelRatio || 1;
  const c = el("canvas", {
    id: "map", width: W * dpr, height: H * dpr, style: { width: W + "px", height: H + "px" },
    "data-label-w": labelW, "data-cell-w": cellW, "data-row-h": rowH,
  });
  const g = c.getContext("2d");
  g.scale(dpr, dpr);
  g.fillStyle = "#ffffff";
  g.fillRect(0, 0, W, H);
  g.font = "12px system-ui, sans-serif";
  g.textBaseline = "middle";
  sites.forEach((s, r) => {
    g.fillStyle = "#4a5163";
    g.fillText(siteLabel(s.site), 6, r * rowH + rowH / 2);
    s.values.forEach((v, u) => {
      const [R, G, B] = v === null ? [220, 220, 220] : ramp((v - lo) / span);
      g.fillStyle = `rgb(${R},${G},${B})`;
      g.fillRect(labelW + u * cellW, r * rowH, cellW, rowH - (rowH > 12 ? 1 : 0));
    });
  });
  function at(ev) {
    const b = c.getBoundingClientRect();
    const x = ev.clientX - b.left - labelW, y = ev.clientY - b.top;
    const r = Math.floor(y / rowH), u = Math.floor(x / cellW);
    if (x < 0 || r < 0 || r >= sites.length || u < 0 || u >= sites[r].units) return null;
    return { s: sites[r], u };
  }
  c.addEventListener("mousemove", (ev) => {
    const h = at(ev);
    if (!h) { hideTip(); c.style.cursor = "default"; return; }
    c.style.cursor = "pointer";
    showTip(ev, `${unitName(h.s.site, h.u)} · ${STAT_LABEL[data.stat] || data.stat} ${fmt(h.s.values[h.u], 4)}`);
  });
  c.addEventListener("mouseleave", hideTip);
  c.addEventListener("click", (ev) => {
    const h = at(ev);
    if (h) location.href = neuronHref(unitName(h.s.site, h.u));
  });
  wrap.replaceChildren(c);
  const bar = el("canvas", { width: 160, height: 12, class: "ramp" });
  const bg = bar.getContext("2d");
  for (let i = 0; i < 160; i++) {
    const [R, G, B] = ramp(i / 159);
    bg.fillStyle = `rgb(${R},${G},${B})`;
    bg.fillRect(i, 0, 1, 12);
  }
  legend.replaceChildren(el("span", { class: "small" }, fmt(lo)), bar, el("span", { class: "small" }, fmt(hi) + (all.length && hi < all[all.length - 1] ? "+" : "")));
}

// ---------- neuron ----------
async function neuronPage(id) {
  document.title = `ftri · ${id}`;
  let n;
  try { n = await api("/api/neuron/" + encodeURIComponent(id)); } catch (e) {
    $app.replaceChildren(el("h1", {}, `Neuron ${id}`), errorBox(e));
    return;
  }
  const layerM = /^blocks\.(\d+)\.mlp\.hook_post$/.exec(n.site);
  const units = (INFO.sites.find((s) => s.name === n.site) || {}).units || 0;
  const nav = el("div", { class: "crumbs" },
    el("a", { href: "/" }, "overview"), " / ",
    layerM ? el("a", { href: "/search?q=" + encodeURIComponent(`layer:${layerM[1]} sort:max`) }, `layer ${layerM[1]}`) : n.site,
    " / ", el("b", {}, n.neuron),
    el("span", { class: "spacer" }),
    n.unit > 0 ? el("a", { href: neuronHref(unitName(n.site, n.unit - 1)) }, "← prev") : null,
    n.unit + 1 < units ? el("a", { href: neuronHref(unitName(n.site, n.unit + 1)) }, "next →") : null);
  const sel = n.std > 0 ? n.max / n.std : 0;
  $app.replaceChildren(nav,
    el("div", { class: "hero" }, el("h1", {}, `Neuron ${n.neuron}`),
      el("p", { class: "muted mono" }, `${n.site} · unit ${n.unit}`)),
    el("div", { class: "stats" },
      stat("max", fmt(n.max)), stat("mean", fmt(n.mean)), stat("std", fmt(n.std)),
      stat("min", fmt(n.min)), stat("fire rate", pct(n.fire_rate)), stat("selectivity", fmt(sel, 2)),
      stat("tokens", int(n.count))));
  const cols = el("div", { class: "cols" });
  cols.append(section("Activation histogram", histogram(n.histogram)));
  cols.append(describeCard(n));
  $app.append(cols);
  const ex = section("Top examples");
  ex.id = "top-examples";
  $app.append(ex);
  examples(ex, n);
  if (INFO.loaded_model && layerM) $app.append(promptCard(n.neuron));
  else if (INFO.loaded_model) $app.append(promptCard(n.neuron, true));
  else $app.append(section("Try a prompt", el("p", { class: "muted" },
    "Needs a model: start the server with ", el("code", {}, "ftri serve --atlas … --model M"),
    " to see this neuron's activation on your own text and to lesion or clamp it.")));
}

function histogram(h) {
  // zoom to the occupied bins (plus a margin), at least 10 bins wide
  const nz = h.counts.map((c, i) => (c > 0 ? i : -1)).filter((i) => i >= 0);
  let a = nz.length ? Math.max(0, nz[0] - 1) : 0, b = nz.length ? Math.min(h.counts.length, nz[nz.length - 1] + 2) : h.counts.length;
  while (b - a < 10 && (a > 0 || b < h.counts.length)) { if (a > 0) a--; if (b < h.counts.length) b++; }
  const counts = h.counts.slice(a, b), edges = h.edges.slice(a, b + 1);
  const W = 520, H = 180, padL = 48, padR = 16, padB = 26, padT = 8;
  const max = Math.max(1, ...counts);
  const bw = (W - padL - padR) / counts.length;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "hist", role: "img", "aria-label": "activation histogram" });
  const useLog = max / Math.max(1, Math.min(...counts.filter((c) => c > 0))) > 200;
  const y = (c) => (useLog ? Math.log10(1 + c) / Math.log10(1 + max) : c / max) * (H - padB - padT);
  g.append(svg("line", { x1: padL, y1: H - padB, x2: W - padR, y2: H - padB, class: "axis" }));
  counts.forEach((c, i) => {
    if (c <= 0) return;
    const hgt = Math.max(1, y(c));
    const r = svg("rect", {
      x: (padL + i * bw + 0.5).toFixed(2), y: (H - padB - hgt).toFixed(2),
      width: Math.max(0.5, bw - 1).toFixed(2), height: hgt.toFixed(2),
      class: edges[i] >= 0 ? "bar pos" : "bar neg",
    }, svg("title", {}, `[${fmt(edges[i])}, ${fmt(edges[i + 1])}): ${int(c)}`));
    g.append(r);
  });
  const ticks = 5;
  for (let k = 0; k <= ticks; k++) {
    const i = Math.round((k * counts.length) / ticks);
    const x = Math.min(W - padR - 8, padL + i * bw);
    g.append(svg("text", { x: x.toFixed(1), y: H - 8, class: "tick", "text-anchor": "middle" }, fmt(edges[i], 2)));
  }
  g.append(svg("text", { x: 4, y: padT + 10, class: "tick" }, int(max)));
  g.append(svg("text", { x: 4, y: H - padB, class: "tick" }, "0"));
  const note = el("p", { class: "small muted" },
    `${useLog ? "log scale · " : ""}${b - a < h.counts.length ? `bins ${fmt(edges[0])} to ${fmt(edges[edges.length - 1])} of ${fmt(h.edges[0])} to ${fmt(h.edges[h.edges.length - 1])} · ` : ""}below range: ${int(h.underflow)} · above range: ${int(h.overflow)}`);
  return el("div", {}, g, note);
}

function describeCard(n) {
  const card = section("What it writes and reads");
  const d = n.describe;
  if (!d) {
    card.append(el("p", { class: "muted" }, "Needs a model (", el("code", {}, "--model"),
      "): promoted and suppressed tokens come from the neuron's output weights through the unembedding."));
    return card;
  }
  if (d.error) { card.append(errorBox(new Error(d.error))); return card; }
  const list = (title, xs, cls) => el("div", { class: "desc" }, el("h3", {}, title),
    el("div", { class: "chips" }, ...(xs || []).map((t) => el("span", { class: "chip " + cls, title: `score ${fmt(t.score, 4)} · id ${t.id}` },
      el("span", { class: "mono" }, tokenText(t.token)), el("span", { class: "muted" }, " " + fmt(t.score, 2))))));
  card.append(list("promotes", d.promotes, "up"), list("suppresses", d.suppresses, "down"), list("reads", d.reads, "read"));
  card.append(el("p", { class: "small muted" }, `decoded with the ${d.unembed}`));
  return card;
}

async function examples(card, n) {
  const list = el("ol", { class: "examples" });
  const note = el("p", { class: "small muted" });
  card.append(note, list);
  const render = (ctx) => {
    list.replaceChildren();
    n.top.forEach((t, i) => {
      const c = ctx && ctx.examples[i];
      let row;
      if (c) {
        const acts = c.activations || c.tokens.map((_, j) => (j === c.at ? c.activation : null));
        row = tokenRow(c.tokens, acts, n.max > 0 ? n.max : Math.abs(n.min) || 1, c.at, ctx.separator);
      } else {
        row = el("div", { class: "ctx" }, t.context);
      }
      const w = n.max > 0 ? Math.max(0, Math.min(1, t.activation / n.max)) : 0;
      list.append(el("li", { class: "example" },
        el("div", { class: "act" },
          el("div", { class: "actbar" }, el("div", { style: { width: (100 * w).toFixed(1) + "%" } })),
          el("span", { class: "mono" }, fmt(t.activation, 3))),
        row,
        el("div", { class: "where small muted" }, `doc ${t.doc} · pos ${t.pos}`)));
    });
    if (!n.top.length) list.append(el("li", { class: "muted" }, "No examples recorded."));
  };
  render(null);
  try {
    const ctx = await api("/api/neuron/" + encodeURIComponent(n.neuron) + "/contexts");
    note.textContent = ctx.note;
    render(ctx);
  } catch (e) { note.textContent = String(e.message || e); }
}

function promptCard(neuron, noIntervene) {
  const card = section("Try a prompt");
  const maxc = INFO.limits.max_chars;
  const ta = el("textarea", { id: "prompt", rows: 3, maxlength: maxc, placeholder: "Type some text…" });
  const out = el("div", { id: "prompt-out" });
  const run = el("button", { id: "run-prompt", type: "button" }, "Show activations");
  const op = el("select", { id: "op" }, el("option", { value: "zero" }, "zero (lesion)"),
    el("option", { value: "set" }, "clamp to"), el("option", { value: "scale" }, "scale by"), el("option", { value: "mean" }, "corpus mean"));
  const val = el("input", { id: "op-value", type: "number", step: "any", value: "10", style: { width: "6em" } });
  const cmp = el("button", { id: "run-intervene", type: "button" }, "Compare next token");
  const cmpOut = el("div", { id: "intervene-out" });
  run.addEventListener("click", async () => {
    out.replaceChildren(el("p", { class: "muted" }, "Running…"));
    try {
      const r = await api("/api/activations", { text: ta.value, neuron });
      const mx = Math.max(1e-9, ...r.activations.map(Math.abs));
      out.replaceChildren(tokenRow(r.tokens, r.activations, mx, -1, r.separator),
        el("p", { class: "small muted" }, `max on this text ${fmt(r.max, 4)} (shading relative to it)`));
    } catch (e) { out.replaceChildren(errorBox(e)); }
  });
  cmp.addEventListener("click", async () => {
    cmpOut.replaceChildren(el("p", { class: "muted" }, "Running…"));
    const o = op.value === "zero" || op.value === "mean" ? op.value : `${op.value}=${val.value}`;
    try {
      const r = await api("/api/intervene", { text: ta.value, neuron, op: o });
      cmpOut.replaceChildren(compareView(r));
    } catch (e) { cmpOut.replaceChildren(errorBox(e)); }
  });
  const updateVal = () => { val.disabled = op.value === "zero" || op.value === "mean"; };
  op.addEventListener("change", updateVal);
  updateVal();
  card.append(ta, el("div", { class: "row" }, run), out);
  if (!noIntervene) {
    card.append(el("div", { class: "row" }, el("span", {}, "Intervene on ", el("b", {}, neuron), ": "), op, val, cmp), cmpOut);
  }
  return card;
}

function probTable(title, rows, extra) {
  const max = Math.max(1e-12, ...rows.map((r) => r.p));
  return el("div", { class: "probs" }, el("h3", {}, title),
    el("table", { class: "grid" }, el("tbody", {}, ...rows.map((r, i) => el("tr", {},
      el("td", { class: "mono tokcell" }, tokenText(r.token)),
      el("td", { class: "pbar" }, el("div", { style: { width: (100 * r.p / max).toFixed(1) + "%" } })),
      el("td", { class: "num" }, pct(r.p)),
      extra ? el("td", { class: "num muted" }, extra(i)) : null)))));
}
function compareView(r) {
  return el("div", {},
    el("p", { class: "small muted" }, `${r.neuron} ${r.op} at every position · KL(before ‖ after) = ${fmt(r.kl, 4)} nats`),
    el("div", { class: "cols" },
      probTable("before", r.before, (i) => "→ " + pct(r.after_of_before[i])),
      probTable("after", r.after)));
}

// ---------- search ----------
async function searchPage() {
  const q = new URLSearchParams(location.search).get("q") || "";
  document.title = q ? `ftri · search ${q}` : "ftri · search";
  const input = el("input", { name: "q", id: "q", type: "search", value: q, placeholder: "dog · layer:3 · sort:fire_rate", autofocus: "" });
  const form = el("form", { class: "searchform", action: "/search", method: "get" }, input, el("button", { type: "submit" }, "Search"));
  const help = el("p", { class: "small muted" },
    "Words match the tokens neurons fire on in their top examples",
    INFO.loaded_model ? " and the tokens they promote through their output weights" : "",
    ". ", el("code", {}, "layer:3"), " or ", el("code", {}, "layer:2-5"), " filters by layer; ",
    el("code", {}, "sort:max"), ", ", el("code", {}, "sort:fire_rate"), ", ", el("code", {}, "sort:selectivity"), " sort.");
  const out = el("div", { id: "results" });
  $app.replaceChildren(el("h1", {}, "Search neurons"), form, help, out);
  if (!q.trim()) {
    out.append(el("p", { class: "muted" }, "Examples: ",
      ...["layer:0 sort:max", "sort:selectivity", "sort:fire_rate"].map((x) => el("a", { href: "/search?q=" + encodeURIComponent(x), class: "chip" }, x))));
    return;
  }
  out.append(el("p", { class: "muted" }, "Searching…"));
  let r;
  try { r = await api("/api/search?q=" + encodeURIComponent(q) + "&limit=100"); } catch (e) { out.replaceChildren(errorBox(e)); return; }
  if (!r.results.length) { out.replaceChildren(el("p", { class: "muted" }, `No neurons match (scanned ${int(r.units_scanned)} units).`)); return; }
  const tb = el("tbody");
  r.results.forEach((h, i) => tb.append(el("tr", { class: "hit" },
    el("td", { class: "num muted" }, i + 1),
    el("td", {}, neuronLink(h.neuron)),
    el("td", { class: "num" }, r.query.words.length ? fmt(h.score, 2) : ""),
    el("td", { class: "num" }, fmt(h.max)),
    el("td", { class: "num" }, pct(h.fire_rate)),
    el("td", { class: "num" }, fmt(h.selectivity, 2)),
    el("td", {}, ...h.matches.map((m) => el("span", { class: "chip " + (m.kind === "promotes" ? "up" : "act") },
      m.kind === "activates" ? `fires on “${m.token}” ×${m.value}` : `promotes “${tokenText(m.token)}” ${fmt(m.value, 2)}`))))));
  out.replaceChildren(
    el("p", { class: "small muted" }, `${r.results.length} neurons · ${int(r.units_scanned)} units scanned`),
    el("table", { class: "grid" }, el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "neuron"),
      el("th", { class: "num" }, r.query.words.length ? "score" : ""), el("th", { class: "num" }, "max"),
      el("th", { class: "num" }, "fire rate"), el("th", { class: "num" }, "selectivity"), el("th", {}, "matches"))), tb));
}

// ---------- localize ----------
function localizePage() {
  document.title = "ftri · localize";
  $app.replaceChildren(el("h1", {}, "Localize"));
  if (!INFO.loaded_model) {
    $app.append(el("p", { class: "muted" }, "Localizing runs the model on your stimuli: start the server with ",
      el("code", {}, "ftri serve --atlas … --model M"), "."));
    return;
  }
  const t = el("textarea", { id: "target", rows: 8, placeholder: "target stimuli, one per line" });
  const c = el("textarea", { id: "control", rows: 8, placeholder: "control stimuli, one per line" });
  const reduce = el("select", { id: "reduce" }, ...["mean", "max", "last"].map((x) => el("option", { value: x }, x)));
  const go = el("button", { id: "run-localize", type: "button" }, "Localize");
  const out = el("div", { id: "localize-out" });
  $app.append(el("p", { class: "muted" }, "Ranks every MLP neuron by Welch's t between its response to the target and the control stimuli (q-values: Benjamini–Hochberg)."),
    el("div", { class: "cols" }, el("label", { class: "stack" }, "Target", t), el("label", { class: "stack" }, "Control", c)),
    el("div", { class: "row" }, el("label", {}, "reduce tokens by ", reduce), go), out);
  go.addEventListener("click", async () => {
    out.replaceChildren(el("p", { class: "muted" }, "Running…"));
    const lines = (x) => x.value.split("\n").map((s) => s.trim()).filter(Boolean);
    try {
      const r = await api("/api/localize", { target: lines(t), control: lines(c), reduce: reduce.value, top: 50 });
      const tb = el("tbody");
      r.neurons.forEach((f, i) => tb.append(el("tr", {},
        el("td", { class: "num muted" }, i + 1), el("td", {}, neuronLink(f.neuron)),
        el("td", { class: "num" }, fmt(f.score, 2)), el("td", { class: "num" }, fmt(f.effect_size, 2)),
        el("td", { class: "num" }, fmt(f.auroc, 3)), el("td", { class: "num" }, fmt(f.p)), el("td", { class: "num" }, fmt(f.q)))));
      out.replaceChildren(el("p", { class: "small muted" },
        `${r.n_target} target vs ${r.n_control} control · ${int(r.units_tested)} neurons tested · ${r.significant} at q ≤ ${r.fdr}`),
        el("table", { class: "grid" }, el("thead", {}, el("tr", {}, ...["#", "neuron", "t", "d", "AUROC", "p", "q"].map((h, i) => el("th", { class: i > 1 ? "num" : "" }, h)))), tb));
    } catch (e) { out.replaceChildren(errorBox(e)); }
  });
}

// ---------- boot ----------
async function main() {
  try { INFO = await api("/api/info"); } catch (e) { $app.replaceChildren(errorBox(e)); return; }
  const badge = document.getElementById("model-badge");
  badge.textContent = INFO.loaded_model ? `model: ${INFO.loaded_model}` : "atlas only";
  badge.title = INFO.atlas;
  const p = location.pathname;
  const navKey = p.startsWith("/search") ? "search" : p.startsWith("/localize") ? "localize" : p === "/neuro" ? "neuro" : p === "/patch" ? "patch" : p === "/" ? "overview" : "";
  const navExperts = p === "/experts" || p.startsWith("/expert/"); // experts.js
  expertsNav(); // experts.js
  modulesNav(); // modules.js
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === navKey || (navExperts && a.dataset.nav === "experts")));
  try {
    if (p === "/") { await overview(); await expertsOverview(); }
    else if (p.startsWith("/neuron/")) await neuronPage(decodeURIComponent(p.slice("/neuron/".length))).then(() => typeof headPatterns === "function" && headPatterns(decodeURIComponent(p.slice("/neuron/".length))));
    else if (p === "/search") await searchPage();
    else if (p === "/localize") localizePage();
    else if (p === "/neuro") neuroPage();
    else if (p === "/patch") patchPage();
    else if (p === "/experts") await expertMapPage(); // experts.js
    else if (p.startsWith("/expert/")) await expertPage(decodeURIComponent(p.slice("/expert/".length))); // experts.js
    else if (p === "/modules") await modulesPage(); // modules.js
    else if (p.startsWith("/module/")) await modulePage(decodeURIComponent(p.slice("/module/".length))); // modules.js
    else if (p === "/components") await componentsPage(); // modules.js
    else if (p.startsWith("/component/")) await componentPage(decodeURIComponent(p.slice("/component/".length))); // modules.js
    else $app.replaceChildren(el("h1", {}, "Not found"));
  } catch (e) { $app.append(errorBox(e)); }
  document.body.dataset.ready = "1";
}
main();
