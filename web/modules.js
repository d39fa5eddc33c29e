// ftri serve front end: functional modules and decomposition components (served when the server
// was started with --modules DIR / --decomposition F.safetensors; INFO.modules / INFO.components
// say so). Pages: /modules (every module on the layers × neurons map, one colour per module,
// and a table: members, cohesion, top tokens, promotes), /module/ID (its members on the map,
// each linking to /neuron/L.N, its top contexts and promoted tokens), /components (the
// decomposition's figures and components) and /component/L.cK (a component shown like a neuron:
// top contexts, promotes, steering when it was the steered one). Uses app.js's helpers (el, svg,
// api, fmt, int, section, stat, errorBox, neuronLink, showTip, hideTip); app.js routes here.
"use strict";

function moduleHref(id) { return "/module/" + encodeURIComponent(id); }
function componentHref(id) { return "/component/" + encodeURIComponent(id); }

// Show the header's Modules / Components links when the server has them.
function modulesNav() {
  const m = document.querySelector('[data-nav="modules"]');
  if (m) m.hidden = !(INFO && INFO.modules);
  const c = document.querySelector('[data-nav="components"]');
  if (c) c.hidden = !(INFO && INFO.components);
  const p = location.pathname;
  const key = p === "/modules" || p.startsWith("/module/") ? "modules"
    : p === "/components" || p.startsWith("/component/") ? "components" : null;
  if (key) document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === key));
}

const MODULE_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
  "#bcf60c", "#fabebe", "#008080", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075", "#ffd8b1"];
function moduleColour(i) { return MODULE_COLOURS[i % MODULE_COLOURS.length]; }

// The layers × neurons map with the given modules' members marked in their colours; neurons in
// no listed module stay grey. Each marked cell opens its neuron.
function moduleMap(mods) {
  const m = INFO.model || {};
  const layers = m.n_layers || 1 + Math.max(0, ...mods.map((x) => x.layer));
  const width = m.d_mlp || 1 + Math.max(0, ...mods.flatMap((x) => x.members.map((n) => +n.split(".")[1])));
  const labelW = 44, cell = Math.max(2, Math.min(12, Math.floor(880 / width))), rowH = 14;
  const W = labelW + cell * width, H = rowH * layers + 4;
  const g = svg("svg", { id: "module-map", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": "module members on the neuron map" });
  for (let l = 0; l < layers; l++) {
    g.append(svg("text", { x: 4, y: l * rowH + 11, class: "tick" }, `L${l}`));
    g.append(svg("rect", { x: labelW, y: l * rowH, width: cell * width, height: rowH - 2, fill: "#e5e7eb" }));
  }
  mods.forEach((mod, i) => {
    for (const n of mod.members) {
      const [l, u] = n.split(".").map(Number);
      const rect = svg("rect", {
        x: labelW + u * cell, y: l * rowH, width: Math.max(cell - 1, 1), height: rowH - 2,
        fill: moduleColour(mod.id), class: "module-cell", "data-neuron": n, "data-module": mod.id, style: "cursor:pointer",
      });
      rect.addEventListener("mousemove", (ev) => showTip(ev, `${n} · module ${mod.id} (cohesion ${fmt(mod.cohesion, 3)})`));
      rect.addEventListener("mouseleave", hideTip);
      rect.addEventListener("click", () => { hideTip(); location.href = neuronHref(n); });
      g.append(rect);
    }
    void i;
  });
  return el("div", { class: "mapwrap" }, g);
}

function tokenChips(list, n) {
  return (list || []).slice(0, n).map((t) => el("span", { class: "chip mono" }, tokenText(t.token)));
}

async function modulesPage() {
  const d = await api("/api/modules");
  const tb = el("tbody");
  for (const mod of d.modules) {
    tb.append(el("tr", { "data-module": mod.id },
      el("td", {}, el("span", { class: "chip", style: { background: moduleColour(mod.id) } }, " "),
        el("a", { href: moduleHref(mod.id), class: "module-link" }, `module ${mod.id}`)),
      el("td", { class: "num" }, mod.layer),
      el("td", { class: "num" }, mod.size),
      el("td", { class: "num" }, fmt(mod.cohesion, 3)),
      el("td", {}, ...mod.members.slice(0, 8).map((n) => el("span", { class: "chip" }, neuronLink(n))),
        mod.members.length > 8 ? el("span", { class: "muted small" }, ` +${mod.members.length - 8}`) : null),
      el("td", {}, ...tokenChips(mod.top, 5)),
      el("td", {}, ...tokenChips(mod.promotes, 5))));
  }
  $app.replaceChildren(
    el("h1", {}, "Functional modules"),
    el("p", { class: "muted" }, `${d.modules.length} modules over layers ${(d.layers || []).join(", ")} · neurons that fire together (spectral clusters of co-activation)`),
    section("Members on the neuron map", moduleMap(d.modules),
      el("p", { class: "muted small" }, "rows = layers, columns = neurons · colour = module · click a member to open it")),
    section("Modules", el("table", { class: "grid", id: "modules-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "module"), el("th", { class: "num" }, "layer"), el("th", { class: "num" }, "size"),
        el("th", { class: "num" }, "cohesion"), el("th", {}, "members"), el("th", {}, "top tokens"), el("th", {}, "promotes"))),
      tb)));
}

function contextsTable(top) {
  const tb = el("tbody");
  for (const t of top || []) {
    tb.append(el("tr", {}, el("td", { class: "num" }, fmt(t.activation, 3)),
      el("td", { class: "mono" }, tokenText(t.token)), el("td", { class: "mono small" }, tokenText(t.context))));
  }
  return el("table", { class: "grid top-contexts" },
    el("thead", {}, el("tr", {}, el("th", { class: "num" }, "activation"), el("th", {}, "token"), el("th", {}, "context"))), tb);
}

function promotesTable(list) {
  return el("div", { class: "promotes" }, ...(list || []).map((t) =>
    el("span", { class: "chip" }, el("span", { class: "mono" }, tokenText(t.token)), el("span", { class: "muted" }, " " + fmt(t.score, 2)))));
}

async function modulePage(id) {
  const mod = await api("/api/module/" + encodeURIComponent(id));
  $app.replaceChildren(
    el("h1", {}, `Module ${mod.id}`),
    el("div", { class: "stats" }, stat("layer", mod.layer), stat("members", mod.size),
      stat("cohesion", fmt(mod.cohesion, 3)), stat("within", fmt(mod.within, 3)), stat("between", fmt(mod.between, 3))),
    section("Members", moduleMap([mod]),
      el("div", { id: "module-members" }, ...mod.members.map((n) => el("span", { class: "chip" }, neuronLink(n))))),
    section("Top contexts (mean z-scored activation of the members)", contextsTable(mod.top)),
    section("Promotes", promotesTable(mod.promotes)));
}

async function componentsPage() {
  const d = await api("/api/components");
  const tb = el("tbody");
  for (const c of d.components) {
    tb.append(el("tr", {}, el("td", {}, el("a", { href: componentHref(c.id), class: "component-link mono" }, c.id)),
      el("td", {}, ...tokenChips(c.top, 5)), el("td", {}, ...tokenChips(c.promotes, 5))));
  }
  $app.replaceChildren(
    el("h1", {}, "Components"),
    el("p", { class: "muted" }, `Semi-NMF of ${d.site}: ${d.k} components · held-out R² ${fmt(d.heldout_r2, 3)} (k-means ${fmt(d.kmeans_heldout_r2, 3)}) · ${d.iterations} iterations${d.converged ? ", converged" : ""}`),
    d.steering ? section("Steering", steeringTable(d.steering)) : null,
    section("Components", el("table", { class: "grid", id: "components-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "component"), el("th", {}, "top tokens"), el("th", {}, "promotes"))), tb)));
}

function steeringTable(s) {
  const tb = el("tbody");
  s.scales.forEach((sc, i) => tb.append(el("tr", {}, el("td", { class: "num" }, sc),
    el("td", { class: "num" }, fmt(s.component_effect[i], 3)), el("td", { class: "num" }, fmt(s.diff_means_effect[i], 3)))));
  return el("div", {},
    el("p", { class: "muted" }, `Toward ${s.concept_tokens.map((t) => JSON.stringify(t)).join(" ")}: component `,
      el("a", { href: componentHref(s.component) }, s.component), ` (cosine with difference-in-means ${fmt(s.cosine, 3)}), mean log-prob change in nats on ${s.heldout_prompts} held-out control prompts`),
    el("table", { class: "grid" }, el("thead", {}, el("tr", {}, el("th", { class: "num" }, "scale"),
      el("th", { class: "num" }, "component"), el("th", { class: "num" }, "diff-in-means"))), tb));
}

async function componentPage(id) {
  const c = await api("/api/component/" + encodeURIComponent(id));
  $app.replaceChildren(
    el("h1", {}, `Component ${c.id}`),
    el("p", { class: "muted" }, `one of ${c.k} semi-NMF components of ${c.site}; activation = its non-negative coefficient`),
    section("Top contexts", contextsTable(c.top)),
    section("Promotes (through the down projection)", promotesTable(c.promotes)),
    c.steering ? section("Steering", steeringTable(c.steering)) : null);
}
