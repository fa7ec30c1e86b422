// The browser tracker in a real browser: headless Chromium, driven with playwright-core, on the
// test page that `pageflow collect` serves (/tracker/test.html). The Rust end-to-end test
// (jobs/tests/end_to_end/tracker.rs) starts moto and the collector, runs this script, then checks
// what reached the Kinesis streams against what this script prints.
//
//   COLLECTOR_URL=http://127.0.0.1:8090 SCENARIO=measure node tests/browser/tracker.test.mjs
//
// Scenarios (SCENARIO, default "measure"):
// - measure: page 1 is scrolled to 75 %, its button clicked 3 times, visible ~1.5 s, hidden 2 s
//   (the Page Visibility API, emulated), visible ~1 s, then left by its link (a 4th click) for
//   page 2, which is left for about:blank; then, in two more tabs, offline: tab A is left while
//   offline (its view stays queued), tab B's retries fail until the browser is online again, then
//   A's view is delivered by B, and B's own view when B is left; then a page that requires consent
//   stores and sends nothing until pageflow('consent', true), and withdrawing it deletes the
//   tracker's cookie and storage.
// - visit: one page of ARTICLE, visible ~1 s, then left.
// Every wait is a condition with a bounded timeout. The last line printed is a JSON object with what
// the Rust test checks (event ids, user id, the visible and hidden times measured here). Any
// failure prints what was expected and exits 1.
//
// Environment: COLLECTOR_URL (required), CHROMIUM (default /usr/bin/chromium), PORTAL (default
// g1), ARTICLE (for visit).

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = (process.env.COLLECTOR_URL || "").replace(/\/+$/, "");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCENARIO = process.env.SCENARIO || "measure";
const PORTAL = process.env.PORTAL || "g1";
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
const started = Date.now();

function log(message) {
  const seconds = ((Date.now() - started) / 1000).toFixed(1).padStart(5);
  console.log(`[tracker-test ${seconds}s] ${message}`);
}

const pause = ms => new Promise(r => setTimeout(r, ms));

/** Polls `probe` until it returns a truthy value; fails after `limitMs`. */
async function waitFor(what, limitMs, probe, intervalMs = 100) {
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
    await pause(intervalMs);
  }
}

/** The collector's count of accepted events. */
async function acceptedTotal() {
  const text = await (await fetch(`${BASE}/metrics`)).text();
  const line = text.split("\n").find(l => l.startsWith("pageflow_collect_events_accepted_total "));
  return line ? Number(line.split(" ")[1]) : 0;
}

/** The tracker's queue as the page sees it. */
function queue(page) {
  return page.evaluate(() => JSON.parse(localStorage.getItem("pageflow.queue") || "[]"));
}

/** Opens the test page of `article` and waits for its view to be queued; returns its event id. */
async function openArticle(page, article) {
  await page.goto(`${BASE}/tracker/test.html?portal=${PORTAL}&article=${encodeURIComponent(article)}`,
    { waitUntil: "load" });
  return waitFor(`the view of ${article} to be queued`, 10_000, async () => {
    const item = (await queue(page)).find(i => i.e.article_id === article && i.open);
    return item && item.e.event_id;
  });
}

/** Emulates the Page Visibility API's state (as switching tabs would); returns the page's clock. */
function setVisibility(page, state) {
  return page.evaluate(s => {
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => s });
    Object.defineProperty(document, "hidden", { configurable: true, get: () => s === "hidden" });
    document.dispatchEvent(new Event("visibilitychange"));
    return performance.now();
  }, state);
}

/** When the view of `eventId` began (its `ts`), on the page's clock (`performance.now()`). */
function viewStart(page, eventId) {
  return page.evaluate(id => {
    const item = JSON.parse(localStorage.getItem("pageflow.queue") || "[]").find(i => i.e.event_id === id);
    return item.e.ts - performance.timeOrigin;
  }, eventId);
}

/** Notes in sessionStorage when the page is left (`pagehide`, after the tracker's own listener). */
function noteLeaving(page) {
  return page.evaluate(() => addEventListener("pagehide",
    () => sessionStorage.setItem("test.left_at", String(performance.now()))));
}

async function measure(context) {
  const result = {};
  const acceptedBefore = await acceptedTotal();
  const page = await context.newPage();
  const article = "tracker-a1";
  result.first = { article, event_id: await openArticle(page, article) };
  const start = await viewStart(page, result.first.event_id);
  await noteLeaving(page);
  await page.evaluate(() => window.scrollTo(0, 0.75 * (document.documentElement.scrollHeight - window.innerHeight)));
  for (let i = 0; i < 3; i++) await page.click("#like");
  await waitFor("the scroll depth to be measured", 5_000, async () =>
    (await queue(page)).find(i => i.e.event_id === result.first.event_id)?.e.scroll_pct >= 74);
  await pause(1_500);
  const hiddenAt = await setVisibility(page, "hidden");
  await pause(2_000);
  const shownAt = await setVisibility(page, "visible");
  await pause(1_000);
  // A click that does not scroll the link into view (which would take the depth to 100 %).
  await Promise.all([page.waitForURL(/tracker-a1-next/),
    page.evaluate(() => document.getElementById("next").click())]);
  const leftAt = Number(await page.evaluate(() => sessionStorage.getItem("test.left_at")));
  if (!leftAt) throw new TestFailure("page 1 did not note when it was left (pagehide)");
  result.first.visible_ms = Math.round(hiddenAt - start + (leftAt - shownAt));
  result.first.hidden_ms = Math.round(shownAt - hiddenAt);
  log(`${article}: visible ${result.first.visible_ms} ms, hidden ${result.first.hidden_ms} ms; left by the link`);
  const second = "tracker-a1-next";
  result.second = { article: second, event_id: await waitFor(`the view of ${second}`, 10_000, async () => {
    const item = (await queue(page)).find(i => i.e.article_id === second && i.open);
    return item && item.e.event_id;
  }) };
  result.user_id = await page.evaluate(() => localStorage.getItem("pageflow.uid"));
  await pause(300);
  await page.goto("about:blank");
  await waitFor("the collector to accept both views", 15_000,
    async () => (await acceptedTotal()) >= acceptedBefore + 2);
  log("both views accepted");

  // Offline: tab A is left while offline; tab B retries with backoff, then delivers it online.
  const tabA = await context.newPage();
  const tabB = await context.newPage();
  result.offline_left = { article: "tracker-off-1", event_id: await openArticle(tabA, "tracker-off-1") };
  result.offline_sender = { article: "tracker-off-2", event_id: await openArticle(tabB, "tracker-off-2") };
  await context.setOffline(true);
  await tabA.goto("about:blank");
  const failed = await waitFor("tab B to have tried to send A's view and failed", 10_000, async () => {
    const item = (await queue(tabB)).find(i => i.e.event_id === result.offline_left.event_id);
    return item && !item.open && item.tries >= 1 && item;
  });
  log(`offline: A's view queued in B, ${failed.tries} failed attempt(s)`);
  const acceptedOffline = await acceptedTotal();
  if (acceptedOffline !== acceptedBefore + 2) {
    throw new TestFailure(`nothing should arrive while offline, the collector accepted ${acceptedOffline - acceptedBefore - 2} more`);
  }
  await context.setOffline(false);
  await waitFor("B to deliver A's view once online", 15_000, async () =>
    !(await queue(tabB)).some(i => i.e.event_id === result.offline_left.event_id));
  await tabB.goto("about:blank");
  await waitFor("the collector to accept the two offline-test views", 15_000,
    async () => (await acceptedTotal()) >= acceptedBefore + 4);
  log("offline then online: delivered");

  // Consent: nothing stored or sent before it; the view once given; everything deleted when
  // withdrawn (and that page's view never sent).
  await context.clearCookies();
  const consentPage = await context.newPage();
  const consentUrl = article => `${BASE}/tracker/test.html?portal=${PORTAL}&article=${article}&consent=required`;
  await consentPage.goto(consentUrl("tracker-no-consent"), { waitUntil: "load" });
  await pause(500);
  const before = await consentPage.evaluate(() => ({ cookie: document.cookie, queue: localStorage.getItem("pageflow.queue") }));
  if (before.cookie.includes("pageflow.uid") || before.queue !== "[]") {
    throw new TestFailure(`without consent nothing may be stored: cookie "${before.cookie}", queue ${before.queue}`);
  }
  await consentPage.goto(consentUrl("tracker-consent"), { waitUntil: "load" });
  await consentPage.evaluate(() => window.pageflow("consent", true));
  result.consented = { article: "tracker-consent", event_id: await waitFor("the view once consent is given", 5_000, async () => {
    const item = (await queue(consentPage)).find(i => i.e.article_id === "tracker-consent");
    return item && item.e.event_id;
  }) };
  await consentPage.goto(consentUrl("tracker-withdrawn"), { waitUntil: "load" });
  await waitFor("the consent to be remembered", 5_000, async () =>
    (await queue(consentPage)).some(i => i.e.article_id === "tracker-withdrawn"));
  await consentPage.evaluate(() => window.pageflow("consent", false));
  const after = await consentPage.evaluate(() => ({ cookie: document.cookie,
    keys: Object.keys(localStorage).filter(k => k.startsWith("pageflow.")) }));
  if (after.cookie.includes("pageflow.uid") || after.keys.length) {
    throw new TestFailure(`withdrawn consent must delete the tracker's storage: cookie "${after.cookie}", keys ${after.keys}`);
  }
  await consentPage.goto("about:blank");
  await waitFor("the collector to accept the consented view", 15_000,
    async () => (await acceptedTotal()) >= acceptedBefore + 5);
  // Nothing may follow (the views without consent); there is no event to wait for, so a short pause.
  await pause(1_000);
  log("consent respected");
  result.accepted = (await acceptedTotal()) - acceptedBefore;
  return result;
}

async function visit(context) {
  const article = process.env.ARTICLE;
  if (!article) throw new TestFailure("ARTICLE is not set: the article to visit");
  const acceptedBefore = await acceptedTotal();
  const page = await context.newPage();
  const eventId = await openArticle(page, article);
  await pause(1_000);
  await page.goto("about:blank");
  await waitFor("the collector to accept the view", 15_000, async () => (await acceptedTotal()) > acceptedBefore);
  return { visit: { article, event_id: eventId } };
}

async function main() {
  if (!BASE) throw new TestFailure("COLLECTOR_URL is not set: give the collector's address, e.g. http://127.0.0.1:8090");
  await waitFor(`${BASE}/readyz to answer 200`, 30_000, async () => (await fetch(`${BASE}/readyz`)).ok, 250);
  const userDataDir = mkdtempSync(join(tmpdir(), "pageflow-tracker-"));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 30_000,
    });
    const problems = [];
    context.on("page", page => page.on("pageerror", error => problems.push(`uncaught error in the page: ${error.message}`)));
    const result = SCENARIO === "visit" ? await visit(context) : await measure(context);
    if (problems.length) throw new TestFailure(problems.join("\n"));
    console.log(JSON.stringify(result));
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

const timer = setTimeout(() => {
  console.error("tracker-test: FAILED: the whole test took longer than 120 s");
  process.exit(1);
}, 120_000);
main().then(() => clearTimeout(timer), error => {
  console.error(`tracker-test: FAILED: ${error instanceof TestFailure ? error.message : error.stack}`);
  process.exit(1);
});
