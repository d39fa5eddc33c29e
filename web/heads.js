// Attention heads (units L.hH of a recorded blocks.L.attn.hook_z): on a head's page, where the
// head looks from each top example's token — its attention pattern row over the example's
// context, recomputed by the server's model (GET /api/neuron/L.hH/pattern). Uses app.js's
// helpers (el, section, api, tokenRow, errorBox, INFO, $app).

// A head's id, L.hH, from either spelling the pages use (the map links `blocks.L.attn.hook_z:H`).
function headId(id) {
  if (/^\d+\.h\d+$/.test(id)) return id;
  const m = /^blocks\.(\d+)\.attn\.hook_z:(\d+)$/.exec(id);
  return m ? `${m[1]}.h${m[2]}` : null;
}

async function headPatterns(unit) {
  const id = headId(unit);
  if (!id) return;
  const card = section("Attention pattern");
  card.id = "head-pattern";
  $app.append(card);
  if (!INFO.loaded_model) {
    card.append(el("p", { class: "muted" },
      "Needs a model: start the server with ", el("code", {}, "ftri serve --atlas … --model M"),
      " to see where this head looks on its top examples."));
    return;
  }
  card.append(el("p", { class: "small muted" },
    "Each top example's context shaded by the head's attention from the example token (marked): ",
    "its pattern row, recomputed on the context alone."));
  let r;
  try { r = await api("/api/neuron/" + encodeURIComponent(id) + "/pattern"); } catch (e) {
    card.append(errorBox(e));
    return;
  }
  const list = el("ol", { class: "examples" });
  r.examples.forEach((ex) => {
    if (!ex) return;
    const max = Math.max(1e-9, ...ex.weights);
    const top = ex.weights.indexOf(max);
    list.append(el("li", { class: "example" },
      el("div", { class: "act" }, el("span", { class: "mono" }, `→ ${tokenText(ex.tokens[top])} ${fmt(max, 2)}`)),
      tokenRow(ex.tokens, ex.weights, max, ex.at, "")));
  });
  if (!list.children.length) list.append(el("li", { class: "muted" }, "No examples recorded."));
  card.append(list);
}
