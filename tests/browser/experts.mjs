// End-to-end test of the expert pages of `ftri serve` in headless Chromium, against a server of a
// mixture-of-experts atlas (tests/browser/run.sh starts one on the tiny Mixtral fixture): the
// overview's expert card, the expert map (hover, click), an expert page, the load-balance table.
// Usage: FTRI_URL=http://127.0.0.1:PORT/ node experts.mjs [ARTIFACT_DIR]
import { run } from "./harness.mjs";

await run("experts", async ({ base, page, check, shot, getJSON, problems }) => {
  const map = await getJSON("/api/experts");
  const nCells = map.layers.reduce((a, x) => a + x.experts, 0);
  console.log(`expert atlas: ${map.layers.length} MoE layers, ${nCells} experts`);
  check(map.layers.length > 0, "the atlas has experts");

  // ---- overview: the expert card and the header link ----
  await page.goto(base + "/");
  await page.waitForSelector("#experts-card svg#expert-map rect.expert-cell");
  check(await page.locator("#experts-card rect.expert-cell").count() === nCells, `overview's expert map has all ${nCells} experts`);
  check(await page.locator('header [data-nav="experts"]').isVisible(), "header links to the experts");
  await shot("experts-overview.png");

  // ---- the expert map: colour by rate, hover, click ----
  await page.goto(base + "/experts");
  await page.waitForSelector("svg#expert-map rect.expert-cell");
  check(await page.locator("svg#expert-map rect.expert-cell").count() === nCells, "expert map: one cell per expert");
  check(await page.locator("table#expert-layers tbody tr").count() === map.layers.length, "load-balance table: one row per MoE layer");
  const last = map.layers[map.layers.length - 1];
  const busiest = last.most_used.expert;
  const idlest = last.least_used.expert;
  const fill = async (id) => page.locator(`rect.expert-cell[data-expert="${id}"]`).getAttribute("fill");
  if (last.most_used.rate > last.least_used.rate) {
    check(await fill(busiest) !== await fill(idlest), `colour follows the routing rate (${busiest} vs ${idlest})`);
  }
  const cell = page.locator(`rect.expert-cell[data-expert="${busiest}"]`);
  await cell.hover();
  await page.waitForSelector("#tip:not([hidden])");
  const tip = await page.locator("#tip").textContent();
  check(tip.startsWith(busiest + " ") && tip.includes("routing rate"), `hovering shows the expert and its rate (${tip})`);
  await shot("experts-map.png");
  await cell.click();
  await page.waitForURL("**/expert/" + busiest);
  check(true, `clicking the map opens /expert/${busiest}`);

  // ---- the expert page ----
  const x = await getJSON("/api/neuron/" + busiest);
  await page.waitForSelector("#expert-stats");
  check((await page.locator("h1").textContent()).includes(busiest), "expert page title");
  const stats = await page.locator("#expert-stats").textContent();
  check(stats.includes(x.count.toLocaleString("en-US")), `expert page shows the routed tokens (${x.count})`);
  check(await page.locator("svg.hist rect.bar").count() > 0, "routing-weight histogram has bars");
  check(await page.locator("#top-examples li.example").count() === x.top.length, `all ${x.top.length} top tokens shown`);
  if (x.top.length) {
    const peak = (await page.locator("#top-examples li.example .tok.peak").first().textContent()).trim();
    check(peak === String(x.top[0].token).trim().replace(/\n/g, "⏎"), `top token marked (${peak})`);
  }
  if (x.neurons) {
    await page.locator("a.nlink", { hasText: x.neurons.first }).click();
    await page.waitForURL("**/neuron/**");
    await page.waitForSelector("#top-examples");
    check((await page.locator("h1").textContent()).includes(x.neurons.first), "the expert links to its neurons");
  }
  await page.goto(base + "/expert/" + busiest);
  await page.waitForSelector("#expert-stats");
  await shot("expert.png");

  // ---- an unknown expert shows an error ----
  await page.goto(base + "/expert/99.e0");
  await page.waitForSelector(".error");
  check(true, "unknown expert shows an error");
  problems.splice(0, problems.length, ...problems.filter((p) => !/404|Failed to load resource/.test(p)));
  check(problems.length === 0, `no page errors or off-site requests${problems.length ? ": " + problems.join("; ") : ""}`);
});
