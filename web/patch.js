// ftri serve: the activation-patching page (/patch). Loaded before app.js, whose helpers (el, api,
// fmt, section, errorBox, showTip, hideTip, tokenText, INFO, $app) it uses once the page renders;
// app.js routes /patch to patchPage(). POST /api/patch returns `ftri patch --json`.
"use strict";

// Diverging colour for a recovered fraction: orange towards 1, blue towards −1, white at 0.
function patchColor(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "#eee";
  const a = Math.min(1, Math.abs(v));
  const [r, g, b] = v >= 0 ? [255, 140, 0] : [60, 120, 255];
  const mix = (c) => Math.round(255 + (c - 255) * a);
  return `rgb(${mix(r)}, ${mix(g)}, ${mix(b)})`;
}

// One site's layer × position grid; each cell links to the layer's neurons.
function patchGrid(r, site, key) {
  const cells = r.cells.filter((c) => c.site === site);
  const layers = [...new Set(cells.map((c) => c.layer))].sort((a, b) => a - b);
  const positions = [...new Set(r.cells.map((c) => c.position))].sort((a, b) => a - b);
  const at = new Map(cells.map((c) => [`${c.layer}:${c.position}`, c]));
  const head = el("tr", {}, el("th", {}, "layer"),
    ...positions.map((p) => el("th", { class: "mono", title: `position ${p}` }, tokenText(r.tokens[p] || "?"))));
  const body = layers.map((l) => el("tr", {}, el("th", { class: "num" }, l),
    ...positions.map((p) => {
      const c = at.get(`${l}:${p}`);
      if (!c) return el("td", {}, "");
      const v = c[key];
      const tip = `${site} · layer ${l} · position ${p} “${tokenText(r.tokens[p] || "")}” · recovered ${fmt(c.recovered, 3)}` +
        (c.attribution !== undefined ? ` · attribution ${fmt(c.attribution, 3)}` : "");
      return el("td", { class: "patch-cell num", style: { background: patchColor(v) }, "data-layer": l, "data-position": p },
        el("a", {
          href: "/search?q=" + encodeURIComponent(`layer:${l} sort:max`),
          onmousemove: (ev) => showTip(ev, tip), onmouseleave: hideTip, "aria-label": tip,
        }, fmt(v, 2)));
    })));
  return el("table", { class: "grid patch-grid", style: { width: "auto" } }, el("thead", {}, head), el("tbody", {}, ...body));
}

// Per-head cells (site z, blocks.L.attn.hook_z): a layer × head grid at one position, chosen
// below the grid (default: the position holding the largest |value|); each cell links to the
// head's page /neuron/L.hH (it has top examples when the atlas recorded hook_z).
function patchHeadGrid(r, key) {
  const cells = r.cells.filter((c) => c.site === "z" && c.head !== null && c.head !== undefined);
  const layers = [...new Set(cells.map((c) => c.layer))].sort((a, b) => a - b);
  const heads = [...new Set(cells.map((c) => c.head))].sort((a, b) => a - b);
  const positions = [...new Set(cells.map((c) => c.position))].sort((a, b) => a - b);
  const at = new Map(cells.map((c) => [`${c.layer}:${c.head}:${c.position}`, c]));
  let best = cells[0];
  for (const c of cells) if (Math.abs(c[key] ?? 0) > Math.abs(best[key] ?? 0)) best = c;
  const pick = el("select", { class: "head-position" },
    ...positions.map((p) => el("option", { value: String(p) }, `${p}: ${tokenText(r.tokens[p] || "?")}`)));
  if (best) pick.value = String(best.position);
  const holder = el("div", {});
  const draw = () => {
    const p = Number(pick.value);
    const head = el("tr", {}, el("th", {}, "layer"), ...heads.map((h) => el("th", { class: "num" }, `h${h}`)));
    const body = layers.map((l) => el("tr", {}, el("th", { class: "num" }, l),
      ...heads.map((h) => {
        const c = at.get(`${l}:${h}:${p}`);
        if (!c) return el("td", {}, "");
        const v = c[key];
        const tip = `head ${l}.h${h} · position ${p} “${tokenText(r.tokens[p] || "")}” · recovered ${fmt(c.recovered, 3)}` +
          (c.attribution !== undefined ? ` · attribution ${fmt(c.attribution, 3)}` : "");
        return el("td", { class: "patch-cell head-cell num", style: { background: patchColor(v) }, "data-layer": l, "data-head": h, "data-position": p },
          el("a", { href: `/neuron/${l}.h${h}`, onmousemove: (ev) => showTip(ev, tip), onmouseleave: hideTip, "aria-label": tip }, fmt(v, 2)));
      })));
    holder.replaceChildren(el("table", { class: "grid patch-grid head-grid", style: { width: "auto" } }, el("thead", {}, head), el("tbody", {}, ...body)));
  };
  pick.addEventListener("change", draw);
  draw();
  return el("div", {}, el("label", { class: "small muted" }, "heads at position ", pick), holder);
}

function patchResult(r) {
  const what = r.foil ? `logit(“${r.target}”) − logit(“${r.foil}”)` : `log p(“${r.target}”)`;
  const out = el("div", { id: "patch-result" },
    el("p", {}, el("b", {}, r.metric), ` = ${what}: clean ${fmt(r.clean_metric, 4)}, corrupted ${fmt(r.corrupt_metric, 4)}`,
      r.noise ? ` (noise σ = ${r.noise.sigma} × embedding std on positions ${r.noise.positions.join(", ")}, ${r.noise.seeds} seeds)` : ""),
    el("p", { class: "small muted" }, `recovered = (patched − corrupted) / (clean − corrupted) · ${r.forwards} batched forward passes · click a cell for that layer's neurons`));
  if (r.correlation !== null && r.correlation !== undefined) {
    out.append(el("p", { id: "patch-correlation" }, `attribution vs exact: correlation ${fmt(r.correlation, 4)} over ${r.cells.length} cells`));
  }
  const sites = [...new Set(r.cells.map((c) => c.site))];
  const attr = r.cells.some((c) => c.attribution !== undefined);
  for (const s of sites) {
    const grid = (key) => (s === "z" ? patchHeadGrid(r, key) : patchGrid(r, s, key));
    const card = section(s === "z" ? "z (heads: attn.hook_z)" : s, el("h3", {}, attr ? "exact" : ""), grid("recovered"));
    if (attr) card.append(el("h3", {}, "attribution estimate"), grid("attribution"));
    card.dataset.site = s;
    out.append(card);
  }
  return out;
}

function patchPage() {
  document.title = "ftri · patch";
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === "patch"));
  $app.replaceChildren(el("h1", {}, "Activation patching"));
  if (!INFO.loaded_model) {
    $app.append(el("p", { class: "muted" }, "Patching runs the model: start the server with ",
      el("code", {}, "ftri serve --atlas … --model M"), "."));
    return;
  }
  const q = new URLSearchParams(location.search);
  const input = (id, value, ph) => el("input", { id, type: "text", value: q.get(id) || value, placeholder: ph, maxlength: INFO.limits.max_chars });
  const clean = input("clean", "The Eiffel Tower is in", "clean prompt");
  const corrupt = input("corrupt", "The Colosseum is in", "corrupted prompt (empty with noise)");
  const target = input("target", " Paris", "target continuation");
  const foil = input("foil", "", "foil (default: corrupted run's top token)");
  const sites = input("sites", "resid_pre,attn_out,mlp_out", "sites");
  const opt = (id, xs) => el("select", { id }, ...xs.map((x) => el("option", { value: x }, x)));
  const metric = opt("metric", ["logit_diff", "logprob"]);
  const method = opt("method", ["exact", "attribution"]);
  const align = opt("align", ["", "left", "right"]);
  const noise = el("input", { id: "noise", type: "number", step: "any", min: "0", placeholder: "σ (e.g. 3)", style: { width: "7em" } });
  const subject = input("subject", "", "subject (noise)");
  const heads = el("input", { id: "heads", type: "checkbox" });
  heads.checked = q.get("heads") === "1" || q.get("heads") === "true";
  const go = el("button", { id: "run-patch", type: "button" }, "Patch");
  const out = el("div", { id: "patch-out" });
  const lab = (t, x) => el("label", { class: "stack" }, t, x);
  $app.append(el("p", { class: "muted" },
    "Restores the clean run's activation at one site, layer and position into the corrupted run and shows how much of the metric comes back. ",
    "With a noise σ the corrupted run is the clean prompt with Gaussian noise on the subject's embeddings (ROME's causal tracing)."),
  el("div", { class: "cols" }, lab("Clean", clean), lab("Corrupted", corrupt)),
  el("div", { class: "cols" }, lab("Target", target), lab("Foil", foil)),
  el("div", { class: "row" }, lab("Sites", sites), lab("Metric", metric), lab("Method", method), lab("Align", align),
    lab("Noise σ", noise), lab("Subject", subject), lab("Heads", heads), go), out);
  go.addEventListener("click", async () => {
    out.replaceChildren(el("p", { class: "muted" }, "Running…"));
    const body = {
      clean: clean.value, target: target.value, sites: sites.value, metric: metric.value, method: method.value,
    };
    if (noise.value !== "") { body.noise = Number(noise.value); if (subject.value.trim()) body.subject = subject.value; }
    else body.corrupt = corrupt.value;
    if (foil.value) body.foil = foil.value;
    if (align.value) body.align = align.value;
    if (heads.checked) body.heads = true;
    try { out.replaceChildren(patchResult(await api("/api/patch", body))); } catch (e) { out.replaceChildren(errorBox(e)); }
  });
  for (const [k, x] of [["metric", metric], ["method", method], ["align", align], ["noise", noise]]) if (q.get(k)) x.value = q.get(k);
  // a shared link (/patch?clean=…&corrupt=…&target=…) runs at once
  if (q.get("clean") && q.get("target")) go.click();
}
