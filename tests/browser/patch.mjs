// End-to-end test of the activation-patching page and the head pages of `ftri serve` in headless
// Chromium, against a server of the planted 2-layer GPT-2 (neuron 1.5 fires on dog, writes bark)
// whose atlas recorded `blocks.*.attn.hook_z` (tests/browser/run.sh starts it): /patch runs a
// patch with heads from a shared link, draws the site grids and the layer × head grid, the
// position picker redraws it, a head cell opens /neuron/L.hH, and that page shows the head's
// attention pattern on its top examples (GET /api/neuron/L.hH/pattern).
// Usage: FTRI_URL=http://127.0.0.1:PORT/ node patch.mjs [ARTIFACT_DIR]
import { run } from "./harness.mjs";

const num = async (loc) => Number((await loc.textContent()).trim());

await run("patch, heads", async ({ base, page, check, shot, getJSON, problems }) => {
  const info = await getJSON("/api/info");
  const layers = 2;
  const heads = 4;
  check(!!info.loaded_model, "the server has a model");

  // ---- a shared link runs at once: dog vs cat, with heads ----
  const q = new URLSearchParams({ clean: "the dog", corrupt: "the cat", target: " bark", heads: "1" });
  await page.goto(base + "/patch?" + q);
  await page.waitForSelector("#patch-result");
  check(await page.locator("#heads").isChecked(), "the heads box follows the link");
  for (const s of ["resid_pre", "attn_out", "mlp_out", "z"]) {
    check(await page.locator(`#patch-result [data-site="${s}"]`).count() === 1, `a card for ${s}`);
  }
  const mlp = page.locator('[data-site="mlp_out"] td.patch-cell');
  check(await mlp.count() === layers * 2, `mlp_out grid: ${layers} layers × 2 positions`);
  const hit = await num(page.locator('[data-site="mlp_out"] td.patch-cell[data-layer="1"][data-position="1"]'));
  check(hit > 0.8, `the planted neuron's layer at dog recovers most (${hit})`);
  const still = await num(page.locator('[data-site="mlp_out"] td.patch-cell[data-layer="0"][data-position="0"]'));
  check(Math.abs(still) < 0.05, `the shared position recovers nothing (${still})`);
  const bg = (loc) => loc.evaluate((e) => e.style.background || e.style.backgroundColor);
  check(await bg(page.locator('[data-site="mlp_out"] td.patch-cell[data-layer="1"][data-position="1"]')) !==
    await bg(page.locator('[data-site="mlp_out"] td.patch-cell[data-layer="0"][data-position="0"]')), "the heatmap colours follow the values");

  // ---- the heads: a layer × head grid at one position ----
  const hc = page.locator('[data-site="z"] td.head-cell');
  check(await hc.count() === layers * heads, `head grid: ${layers} layers × ${heads} heads`);
  const picker = page.locator('[data-site="z"] select.head-position');
  check(await picker.locator("option").count() === 2, "a position picker with both positions");
  await picker.selectOption("0");
  const zeros = await Promise.all((await hc.all()).map((c) => num(c)));
  check(zeros.every((v) => Math.abs(v) < 0.01), `heads at the shared position recover nothing (${zeros.join(", ")})`);
  check(await hc.first().getAttribute("data-position") === "0", "the picker redraws the grid");
  await picker.selectOption("1");
  const cell = page.locator('[data-site="z"] td.head-cell[data-layer="0"][data-head="1"] a');
  check(await cell.getAttribute("href") === "/neuron/0.h1", "a head cell links to /neuron/0.h1");
  await cell.hover();
  await page.waitForSelector("#tip:not([hidden])");
  const tip = await page.locator("#tip").textContent();
  check(tip.includes("head 0.h1") && tip.includes("recovered"), `hovering a head cell explains it (${tip})`);
  await shot("patch-heads.png");

  // ---- the form: attribution from the button ----
  await page.locator("#method").selectOption("attribution");
  await page.locator("#run-patch").click();
  await page.waitForSelector("#patch-correlation");
  check(await page.locator('[data-site="z"] td.head-cell').count() === 2 * layers * heads, "exact and attribution head grids");
  await shot("patch-attribution.png");

  // ---- a head cell opens the head's page, with its attention pattern ----
  await page.locator('[data-site="z"] td.head-cell[data-layer="0"][data-head="1"] a').first().click();
  await page.waitForURL("**/neuron/0.h1");
  await page.waitForSelector("#head-pattern li.example");
  check((await page.locator("h1").textContent()).includes("0.h1"), "the head page's title");
  const pat = await getJSON("/api/neuron/0.h1/pattern");
  const shown = await page.locator("#head-pattern li.example").count();
  check(shown === pat.examples.filter((x) => x).length && shown > 0, `the pattern of all ${shown} top examples`);
  check(await page.locator("#head-pattern li.example .tok").count() > shown, "each example's context tokens are shaded");
  await shot("head-pattern.png");

  problems.splice(0, problems.length, ...problems.filter((p) => !/404|Failed to load resource/.test(p)));
  check(problems.length === 0, `no page errors or off-site requests${problems.length ? ": " + problems.join("; ") : ""}`);
});
