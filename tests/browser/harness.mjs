// What every browser test file shares: the server's URL (FTRI_URL) and the artifact folder (argv),
// headless Chromium in a throwaway profile, a page that records page errors, console errors and
// any request leaving this server (the UI must load nothing from elsewhere), `check`, screenshots,
// and the pass/fail summary and exit code.
// Usage from a test file: await run("experts", async ({ base, page, check, shot, getJSON, problems }) => { ... });
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

export async function run(label, body) {
  const base = (process.env.FTRI_URL || "").replace(/\/$/, "");
  if (!base) {
    console.error("FTRI_URL is not set (the server's base URL)");
    process.exit(2);
  }
  const art = path.resolve(process.argv[2] || "target/browser-artifacts");
  fs.mkdirSync(art, { recursive: true });
  const exe = process.env.CHROMIUM || "/usr/bin/chromium";
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "ftri-chromium-"));

  let passed = 0;
  let failed = 0;
  const problems = [];
  function check(cond, what) {
    if (cond) {
      passed++;
      console.log(`ok   ${what}`);
    } else {
      failed++;
      console.log(`FAIL ${what}`);
      throw new Error(what);
    }
  }
  async function getJSON(p, payload) {
    const r = await fetch(base + p, payload ? { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(payload) } : {});
    return r.json();
  }

  const context = await chromium.launchPersistentContext(profile, {
    executablePath: exe,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console error: ${m.text()}`); });
  // the page must not reach anything but this server (no CDN)
  page.on("request", (r) => {
    if (!r.url().startsWith(base) && !r.url().startsWith("data:")) problems.push(`off-site request: ${r.url()}`);
  });
  const shot = (name) => page.screenshot({ path: path.join(art, name), fullPage: true });

  let code = 0;
  try {
    await body({ base, art, context, page, check, shot, getJSON, problems });
  } catch (e) {
    console.error(String(e && e.stack ? e.stack : e));
    try { await shot(`${label.split(",")[0]}-failure.png`); } catch (_) { /* page gone */ }
    code = 1;
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  console.log(`browser (${label}): ${passed} passed, ${failed} failed`);
  process.exit(code || (failed ? 1 : 0));
}
