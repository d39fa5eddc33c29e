// End-to-end test of `ftri serve` in headless Chromium. Needs a running server (FTRI_URL) —
// tests/browser/run.sh starts one. Usage: FTRI_URL=http://127.0.0.1:PORT/ node e2e.mjs [ARTIFACT_DIR]
// Exits non-zero on the first failure; screenshots go to ARTIFACT_DIR (default target/browser-artifacts).
import { run } from "./harness.mjs";

await run("e2e", async ({ base, page, check, shot, getJSON, problems }) => {
  const info = await getJSON("/api/info");
  const layers = await getJSON("/api/layers");
  const withModel = Boolean(info.loaded_model);
  console.log(`atlas ${info.atlas}: ${info.sites.length} hook points, model loaded: ${withModel}`);

  // ---- overview: the map, hover, click ----
  await page.goto(base + "/");
  await page.waitForSelector("canvas#map");
  await page.waitForSelector("table.grid tbody tr");
  check((await page.locator("h1").first().textContent()).trim() === info.model.id, "overview shows the model id");
  check(await page.locator("table.grid tbody tr").count() === info.sites.length, "overview lists every hook point");
  // the most selective unit of the last MLP site
  const sites = layers.sites.filter((s) => /^blocks\.\d+\.mlp\.hook_post$/.test(s.site));
  const site = sites[sites.length - 1];
  const target = site.selective[0].neuron;
  const row = info.sites.findIndex((s) => s.name === site.site);
  const unit = Number(target.split(".")[1]);
  const map = page.locator("canvas#map");
  const dims = await map.evaluate((c) => ({ l: +c.dataset.labelW, w: +c.dataset.cellW, h: +c.dataset.rowH }));
  const pos = { x: dims.l + (unit + 0.5) * dims.w, y: (row + 0.5) * dims.h };
  await map.scrollIntoViewIfNeeded();
  await map.hover({ position: pos });
  await page.waitForSelector("#tip:not([hidden])");
  const tip = await page.locator("#tip").textContent();
  check(tip.startsWith(target + " "), `hovering the map shows the neuron id (${tip})`);
  await shot("overview.png");
  await page.selectOption("#stat", "fire_rate");
  await page.waitForFunction(() => document.querySelector("canvas#map") !== null);
  await page.waitForTimeout(200);
  await shot("overview-fire-rate.png");
  await page.selectOption("#stat", "max");
  await page.waitForTimeout(200);
  await page.locator("canvas#map").click({ position: pos });
  await page.waitForURL("**/neuron/" + target);
  check(true, `clicking the map opens /neuron/${target}`);

  // ---- neuron page: stats, histogram, shaded top examples ----
  const n = await getJSON("/api/neuron/" + target);
  await page.waitForSelector("#top-examples .example .tok.peak");
  await page.waitForFunction(() => document.querySelector("#top-examples .small.muted")?.textContent.length > 0);
  check((await page.locator("h1").textContent()).includes(target), "neuron page title");
  check(await page.locator("svg.hist rect.bar").count() > 0, "histogram has bars");
  check(await page.locator("#top-examples li.example").count() === n.top.length, `all ${n.top.length} top examples shown`);
  const peak = page.locator("#top-examples li.example").first().locator(".tok.peak");
  const peakText = (await peak.textContent()).trim();
  check(peakText === String(n.top[0].token).trim().replace(/\n/g, "⏎"), `top example's activating token is marked (${peakText})`);
  const bg = await peak.evaluate((e) => getComputedStyle(e).backgroundColor);
  check(/^rgba?\(255, 140, 0/.test(bg), `activating token is shaded by activation (${bg})`);
  const shaded = await page.locator("#top-examples .tok[data-act]").count();
  check(shaded >= n.top.length, `tokens carry their activation (${shaded} with data-act)`);
  if (withModel) {
    check(n.describe && Array.isArray(n.describe.promotes), "describe present with a model");
    check(await page.locator(".chip.up").count() > 0, "promoted tokens shown");
  }
  await shot("neuron.png");

  // ---- with a model: a prompt, and a lesion compared ----
  if (withModel) {
    const sep = (await getJSON(`/api/neuron/${target}/contexts`)).separator;
    const words = n.top[0].context.replace(/[«»]/g, "");
    await page.fill("#prompt", words.slice(0, 300));
    await page.click("#run-prompt");
    await page.waitForSelector("#prompt-out .tok");
    check(await page.locator("#prompt-out .tok").count() > 1, "prompt tokens shown with activations");
    await page.click("#run-intervene");
    await page.waitForSelector("#intervene-out table");
    check(await page.locator("#intervene-out table").count() === 2, "before/after next-token tables");
    check(await page.locator("#intervene-out table").first().locator("tr").count() === 10, "top 10 before");
    await shot("neuron-prompt.png");
    void sep;
  }

  // ---- search by the activating token ----
  await page.goto(base + "/search?q=" + encodeURIComponent(peakText));
  await page.waitForSelector("#results tr.hit");
  const hits = await page.locator("#results tr.hit a.nlink").allTextContents();
  check(hits.includes(target), `search “${peakText}” finds ${target} (${hits.slice(0, 5).join(", ")}…)`);
  await shot("search.png");
  await page.goto(base + "/search?q=" + encodeURIComponent("layer:0 sort:fire_rate"));
  await page.waitForSelector("#results tr.hit");
  const l0 = await page.locator("#results tr.hit a.nlink").allTextContents();
  check(l0.length > 0 && l0.every((x) => x.startsWith("0.")), "layer:0 search lists layer-0 neurons only");
  await page.goto(base + "/search?q=" + encodeURIComponent("sort:bogus"));
  await page.waitForSelector("#results .error");
  check(true, "a bad query shows an error, not a crash");

  // ---- the planted neuron, when run.sh made the atlas (FTRI_PLANTED=L.N:word:promoted) ----
  if (process.env.FTRI_PLANTED) {
    const [pn, word, promoted] = process.env.FTRI_PLANTED.split(":");
    await page.goto(base + "/search?q=" + encodeURIComponent(word));
    await page.waitForSelector("#results tr.hit");
    const first = await page.locator("#results tr.hit a.nlink").first().textContent();
    check(first === pn, `search “${word}” ranks the planted ${pn} first (got ${first})`);
    await shot("search-planted.png");
    await page.locator("#results tr.hit a.nlink").first().click();
    await page.waitForURL("**/neuron/" + pn);
    await page.waitForSelector("#top-examples .example .tok.peak");
    await page.waitForFunction(() => document.querySelector("#top-examples .small.muted")?.textContent.length > 0);
    const pk = (await page.locator("#top-examples li.example .tok.peak").first().textContent()).trim();
    check(pk === "dog" || pk === "puppy" || pk === word, `planted neuron's top example is on a trigger (${pk})`);
    if (withModel) {
      const up = await page.locator(".chip.up .mono").first().textContent();
      check(up.trim() === promoted, `planted neuron promotes “${promoted}” first (got ${up.trim()})`);
    }
    await shot("neuron-planted.png");
  }

  // ---- localize ----
  await page.goto(base + "/localize");
  if (withModel) {
    let ctx = n.top.map((t) => t.context.replace(/[«»]/g, ""));
    let control = n.top.map((t) => t.context.replace(/«[^»]*»/g, ""));
    const planted = process.env.FTRI_PLANTED ? process.env.FTRI_PLANTED.split(":") : null;
    if (planted) {
      ctx = ["w1 dog w2", "w3 w4 dog", "dog w5 w6", "w7 dog w8", "w9 w10 dog w11"];
      control = ["w1 w12 w2", "w3 w4 w13", "w14 w5 w6", "w7 w15 w8", "w9 w10 w16 w11"];
    }
    await page.fill("#target", ctx.join("\n"));
    await page.fill("#control", control.join("\n"));
    await page.click("#run-localize");
    await page.waitForSelector("#localize-out table tbody tr");
    const ranked = await page.locator("#localize-out a.nlink").allTextContents();
    check(ranked.length > 0, `localize ranks neurons (first: ${ranked[0]})`);
    if (planted) check(ranked[0] === planted[0], `localize ranks the planted ${planted[0]} first`);
    await shot("localize.png");
  } else {
    await page.waitForSelector("main p");
    check((await page.textContent("main")).includes("--model"), "localize says it needs a model");
  }

  // ---- an unknown neuron shows an error ----
  await page.goto(base + "/neuron/999.999");
  await page.waitForSelector(".error");
  check(true, "unknown neuron shows an error");
  problems.splice(0, problems.length, ...problems.filter((p) => !/404|Failed to load resource/.test(p)));
  check(problems.length === 0, `no page errors or off-site requests${problems.length ? ": " + problems.join("; ") : ""}`);
});
