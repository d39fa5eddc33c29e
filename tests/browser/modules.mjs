// End-to-end test of the modules and components pages of `ftri serve` in headless Chromium,
// against a server started with --modules DIR --decomposition F.safetensors (tests/browser/run.sh
// makes them on the planted-neuron model): the header links, /modules (members on the map, the
// table, a member opening its neuron), /module/ID, /components and a component page.
// Usage: FTRI_URL=http://127.0.0.1:PORT/ node modules.mjs [ARTIFACT_DIR]
import { run } from "./harness.mjs";

await run("modules", async ({ base, page, check, shot, getJSON, problems }) => {
  const mods = await getJSON("/api/modules");
  const comps = await getJSON("/api/components");
  console.log(`${mods.modules.length} modules, ${comps.components.length} components`);

  // ---- /modules: links, map, table ----
  await page.goto(base + "/modules");
  await page.waitForSelector("#modules-table tbody tr");
  check(await page.locator('[data-nav="modules"]').isVisible(), "header shows Modules");
  check(await page.locator('[data-nav="components"]').isVisible(), "header shows Components");
  check(await page.locator("#modules-table tbody tr").count() === mods.modules.length, `all ${mods.modules.length} modules in the table`);
  const members = mods.modules.reduce((a, m) => a + m.members.length, 0);
  check(await page.locator("svg#module-map rect.module-cell").count() === members, `all ${members} members on the map`);
  await shot("modules.png");
  const first = mods.modules[0].members[0];
  await page.locator(`svg#module-map rect.module-cell[data-neuron="${first}"]`).click();
  await page.waitForURL("**/neuron/**");
  check(decodeURIComponent(page.url()).endsWith("/neuron/" + first), `a member opens /neuron/${first}`);

  // ---- one module ----
  const m0 = mods.modules[0];
  await page.goto(base + "/module/" + m0.id);
  await page.waitForSelector("#module-members a.nlink");
  check(await page.locator("#module-members a.nlink").count() === m0.members.length, "module page lists its members");
  check(await page.locator("table.top-contexts tbody tr").count() === m0.top.length, "module page shows its top contexts");
  await shot("module.png");

  // ---- components ----
  await page.goto(base + "/components");
  await page.waitForSelector("#components-table tbody tr");
  check(await page.locator("#components-table tbody tr").count() === comps.components.length, "all components listed");
  const c0 = comps.components[0];
  await page.locator("a.component-link", { hasText: c0.id }).first().click();
  await page.waitForURL("**/component/**");
  await page.waitForSelector("table.top-contexts tbody tr");
  check((await page.locator("h1").textContent()).includes(c0.id), `component page ${c0.id}`);
  check(await page.locator("table.top-contexts tbody tr").count() === c0.top.length, "component page shows its top contexts");
  await shot("component.png");

  await page.goto(base + "/component/9.c99");
  await page.waitForSelector(".error");
  check(true, "unknown component shows an error");
  problems.splice(0, problems.length, ...problems.filter((p) => !/404|Failed to load resource/.test(p)));
  check(problems.length === 0, `no page errors or off-site requests${problems.length ? ": " + problems.join("; ") : ""}`);
});
