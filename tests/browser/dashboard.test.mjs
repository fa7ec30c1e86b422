// The dashboard in a real browser: headless Chromium, driven with playwright-core, against a
// running `pageflow run` (scripts/browser-test.sh starts the job and passes its address).
//
//   PAGEFLOW_URL=http://127.0.0.1:8080 node tests/browser/dashboard.test.mjs
//
// Environment: PAGEFLOW_URL (required), CHROMIUM (default /usr/bin/chromium), ARTIFACTS (where
// dashboard.png goes, default target/artifacts), PAGEFLOW_PORTALS (the portals the job reads,
// default g1,ge,gshow). Every wait is a condition with a bounded timeout; any failure prints what
// was expected and exits 1 (with a screenshot dashboard-failure.png of the page at that moment).

import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const BASE = (process.env.PAGEFLOW_URL || "").replace(/\/+$/, "");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = resolve(process.env.ARTIFACTS || "target/artifacts");
const PORTALS = (process.env.PAGEFLOW_PORTALS || "g1,ge,gshow").split(",");
// The whole test, installs and job start excluded.
const OVERALL_LIMIT_MS = 100_000;
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

class TestFailure extends Error {}

function log(message) {
  const seconds = ((Date.now() - started) / 1000).toFixed(1).padStart(5);
  console.log(`[browser-test ${seconds}s] ${message}`);
}

/** Polls `probe` (sync or async) until it returns a truthy value; fails after `limitMs`. */
async function waitFor(what, limitMs, probe, intervalMs = 200) {
  const deadline = Date.now() + limitMs;
  let last;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() >= deadline) {
      throw new TestFailure(`timed out after ${limitMs / 1000} s waiting for ${what}` +
        (last ? ` (last error: ${last.message})` : ""));
    }
    await new Promise(r => setTimeout(r, intervalMs));
  }
}

/** The items of a list as `article id → figures` lines, in order. */
async function listItems(page, kind) {
  return page.$$eval(`[data-testid="${kind}-item"]`,
    items => items.map(li => `${li.dataset.articleId} ${li.querySelector(".figures")?.textContent ?? ""}`));
}

async function text(page, testid) {
  return (await page.textContent(`[data-testid="${testid}"]`))?.trim() ?? "";
}

const started = Date.now();

async function main() {
  if (!BASE) throw new TestFailure("PAGEFLOW_URL is not set: give the job's address, e.g. http://127.0.0.1:8080");
  await waitFor(`${BASE}/readyz to answer 200`, 30_000, async () => (await fetch(`${BASE}/readyz`)).ok, 250);
  log(`job ready at ${BASE}`);

  const userDataDir = mkdtempSync(join(tmpdir(), "pageflow-chromium-"));
  let context;
  let page;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 1100 },
      timeout: 30_000,
    });
    page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(15_000);
    const problems = [];
    page.on("pageerror", error => problems.push(`uncaught error in the page: ${error.message}`));
    page.on("console", message => {
      if (message.type() === "error" && /Content Security Policy|Refused to/i.test(message.text())) {
        problems.push(`CSP violation: ${message.text()}`);
      }
    });
    const checkProblems = () => {
      if (problems.length) throw new TestFailure(problems.join("\n"));
    };

    try {
      await page.goto(`${BASE}/`, { waitUntil: "domcontentloaded" });
      log("dashboard loaded");

      // The portal selector lists the job's portals.
      const options = await waitFor("the portal selector to list the portals", 20_000, async () => {
        const values = await page.$$eval('[data-testid="portal-select"] option', os => os.map(o => o.value));
        return PORTALS.every(p => values.includes(p)) && values;
      });
      log(`portals: ${options.join(", ")}`);
      const portal = await page.inputValue('[data-testid="portal-select"]');

      // Both lists render with items, pushed by the streams.
      const first = {};
      for (const kind of ["popular", "trending"]) {
        first[kind] = await waitFor(`the ${kind} list of ${portal} to show items`, 30_000,
          async () => { const items = await listItems(page, kind); return items.length > 0 && items; });
        const mode = await text(page, `${kind}-mode`);
        if (mode !== "live") throw new TestFailure(`the ${kind} list should be live (streamed), it says "${mode}"`);
        const meta = await text(page, `${kind}-meta`);
        if (!/watermark \d\d:\d\d:\d\d UTC/.test(meta)) throw new TestFailure(`the ${kind} list shows no watermark: "${meta}"`);
        const finality = await text(page, `${kind}-final`);
        if (!["final", "provisional"].includes(finality)) throw new TestFailure(`the ${kind} list says neither final nor provisional: "${finality}"`);
        log(`${kind}: ${first[kind].length} items, ${finality}, first "${first[kind][0]}"`);
      }

      // New events arrive: the lists change by themselves.
      for (const kind of ["popular", "trending"]) {
        const before = first[kind].join("\n");
        await waitFor(`the ${kind} list to change as events arrive`, 30_000,
          async () => (await listItems(page, kind)).join("\n") !== before);
        log(`${kind} list changed`);
      }
      checkProblems();

      // Health: a number of events per second, and the other figures filled in.
      // (The first status sample has no rate yet: 0; the next, 2 s later, has one.)
      const rate = await waitFor("the health panel to show a positive number of events per second", 10_000, async () => {
        const shown = await text(page, "health-events-per-second");
        return /^\d[\d,]*$/.test(shown) && Number(shown.replaceAll(",", "")) > 0 && shown;
      });
      const deadLetters = await text(page, "health-dead-letters");
      const delay = await text(page, "health-watermark-delay");
      if (!/^\d[\d,]*$/.test(deadLetters)) throw new TestFailure(`dead letters should be a number, shows "${deadLetters}"`);
      if (!/\d/.test(delay)) throw new TestFailure(`the watermark delay should be shown, shows "${delay}"`);
      log(`health: ${rate} events/s, watermark delay ${delay}, ${deadLetters} dead letters, lag ${await text(page, "health-lag")}`);

      // Operator view: the job graph with records per operator, checkpoints, partition watermarks.
      const operators = async () => page.$$eval('[data-testid="operator"]', gs => gs.map(g => ({
        name: g.dataset.name, in: Number(g.dataset.recordsIn), out: Number(g.dataset.recordsOut),
        busy: Number(g.dataset.busyRatio),
      })));
      const ingested = async () => (await operators()).find(o => o.name === "Ingest")?.out ?? 0;
      const graph = await waitFor("the operator view to show the job graph with records", 20_000, async () => {
        const ops = await operators();
        const sinks = ops.filter(o => o.name === "ForwardToSink");
        return ops.length >= 10 && ops.some(o => o.name === "Ingest" && o.out > 0) &&
          sinks.some(o => o.in > 0) && ops.every(o => o.busy >= 0 && o.busy <= 1) && ops;
      });
      const edges = await page.$$eval('[data-testid="job-graph"] path.edge', ps => ps.length);
      if (edges < graph.length - 1) throw new TestFailure(`the job graph should connect its ${graph.length} operators, it draws ${edges} edges`);
      const before = await ingested();
      await waitFor("the records out of Ingest to grow", 15_000, async () => (await ingested()) > before);
      await waitFor("a checkpoint in the history", 20_000,
        async () => (await page.$$('[data-testid="checkpoint-row"]')).length > 0);
      const partitions = await waitFor("the partitions' watermarks", 10_000, async () => {
        const rows = await page.$$eval('[data-testid="partition-row"]', trs => trs.map(tr => tr.textContent));
        return rows.length > 0 && rows.some(row => /\d\d:\d\d:\d\d UTC/.test(row)) && rows;
      });
      log(`operator view: ${graph.length} operators, ${edges} edges, Ingest out ${await ingested()}, ` +
        `${partitions.length} partition(s), checkpoints shown`);
      checkProblems();

      // Related explorer: click articles of the popular list until one has related articles.
      const related = await waitFor("an article of the popular list with related articles", 30_000, async () => {
        const ids = await page.$$eval('[data-testid="popular-item"]', items => items.map(li => li.dataset.articleId));
        for (const id of ids) {
          await page.click(`[data-testid="popular-item"][data-article-id=${JSON.stringify(id)}] button`, { timeout: 2_000 });
          const state = await waitFor(`an answer for ${id}`, 10_000, async () => {
            const input = await page.inputValue('[data-testid="related-input"]');
            const s = await page.getAttribute('[data-testid="related-status"]', "data-state");
            return input === id && s && s !== "loading" && s;
          }, 100);
          const items = await page.$$eval('[data-testid="related-item"]', lis => lis.map(li => li.dataset.articleId));
          if (state === "found" && items.length > 0) return { id, items };
        }
        return null;
      }, 1000);
      log(`related to ${related.id}: ${related.items.slice(0, 3).join(", ")}${related.items.length > 3 ? ", …" : ""}`);

      // Typing an unknown id answers with a readable message, not an error.
      await page.fill('[data-testid="related-input"]', "no-such-article");
      await page.click('[data-testid="related-submit"]');
      await waitFor("a readable answer for an unknown article", 10_000,
        async () => (await text(page, "related-status")).includes("No related articles for no-such-article"));
      await page.fill('[data-testid="related-input"]', related.id);
      await page.press('[data-testid="related-input"]', "Enter");
      await waitFor("the related list again after typing the id", 10_000,
        async () => (await page.$$('[data-testid="related-item"]')).length > 0);
      log("related explorer: click, unknown id and typed id work");

      // Switching portal follows the other portal's lists.
      const other = options.find(p => p !== portal);
      await page.selectOption('[data-testid="portal-select"]', other);
      await waitFor(`the popular list of ${other}`, 20_000, async () => {
        const ids = await page.$$eval('[data-testid="popular-item"]', lis => lis.map(li => li.dataset.articleId));
        return ids.length > 0 && ids.every(id => id.startsWith(`${other}/`));
      });
      log(`switched to ${other}`);
      await page.selectOption('[data-testid="portal-select"]', portal);
      await waitFor(`the popular list of ${portal} again`, 20_000, async () => {
        const ids = await page.$$eval('[data-testid="popular-item"]', lis => lis.map(li => li.dataset.articleId));
        return ids.length > 0 && ids.every(id => id.startsWith(`${portal}/`));
      });
      // Show the related list of the screenshot's portal.
      await page.fill('[data-testid="related-input"]', related.id);
      await page.click('[data-testid="related-submit"]');
      await waitFor("the related list for the screenshot", 10_000,
        async () => (await page.$$('[data-testid="related-item"]')).length > 0);
      checkProblems();

      mkdirSync(ARTIFACTS, { recursive: true });
      const screenshot = join(ARTIFACTS, "dashboard.png");
      await page.screenshot({ path: screenshot, fullPage: true });
      log(`screenshot: ${screenshot}`);

      // When the streams fail, the lists are polled instead.
      const polled = await context.newPage();
      await polled.route(/\/stream\?/, route => route.abort());
      await polled.goto(`${BASE}/`, { waitUntil: "domcontentloaded" });
      for (const kind of ["popular", "trending"]) {
        await waitFor(`the ${kind} list to be polled when its stream fails`, 15_000, async () =>
          (await polled.textContent(`[data-testid="${kind}-mode"]`)) === "polling" &&
          (await polled.$$(`[data-testid="${kind}-item"]`)).length > 0);
      }
      await polled.close();
      log("lists fall back to polling when the streams fail");

      // With the API answering 401, the page says so in words.
      const locked = await context.newPage();
      await locked.route(/\/v1\//, route => route.fulfill({
        status: 401,
        contentType: "application/json",
        body: JSON.stringify({ error: { code: "unauthorized", message: "credentials required" } }),
      }));
      await locked.goto(`${BASE}/`, { waitUntil: "domcontentloaded" });
      await waitFor("the 401 notice", 10_000, async () => {
        const visible = await locked.isVisible('[data-testid="notice"]');
        return visible && (await locked.textContent('[data-testid="notice"]')).includes("401");
      });
      // An empty list's message runs across the panel, not one word per line.
      const emptyHeight = await waitFor("the empty popular list's message", 10_000, async () =>
        locked.$eval('[data-testid="popular-empty"]', li => li.textContent.includes("portals") && li.getBoundingClientRect().height));
      if (emptyHeight > 60) throw new TestFailure(`the empty list's message wraps: ${emptyHeight}px high for one line`);
      await locked.close();
      log("a 401 shows a readable notice");
      checkProblems();
    } catch (error) {
      if (page) {
        mkdirSync(ARTIFACTS, { recursive: true });
        await page.screenshot({ path: join(ARTIFACTS, "dashboard-failure.png"), fullPage: true }).catch(() => {});
      }
      throw error;
    }
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

const watchdog = setTimeout(() => {
  console.error(`browser test FAILED: not finished within ${OVERALL_LIMIT_MS / 1000} s`);
  process.exit(1);
}, OVERALL_LIMIT_MS);

main().then(
  () => {
    clearTimeout(watchdog);
    log("browser test passed");
  },
  error => {
    clearTimeout(watchdog);
    console.error(`browser test FAILED: ${error instanceof TestFailure ? error.message : error.stack || error}`);
    process.exitCode = 1;
  },
);
