/*! pageflow tracker: one pageview per page view, sent once with its final dwell, scroll and clicks.
 * Served by `pageflow collect` as /tracker.js. Plain ES2017, no dependencies, no build step.
 *
 *   <script src="https://collector.example.com/tracker.js" data-portal="g1" async></script>
 *
 * Attributes: data-portal (required), data-article (default: <meta name="pageflow:article">,
 * else the path), data-endpoint (default: /v1/collect of the script's origin),
 * data-require-consent ("true": nothing is stored or sent until pageflow('consent', true)).
 * API: pageflow('consent', true | false), pageflow('flush'); calls made before the script loaded
 * are queued by the snippet `window.pageflow = window.pageflow || function () {
 * (pageflow.q = pageflow.q || []).push(arguments); };`.
 *
 * Life cycle: the view is stored at load in a bounded localStorage queue and its measures updated
 * there as they change; it is closed and sent (sendBeacon, text/plain NDJSON) on `pagehide`. A view
 * that a page could not send (offline, or the page died) is sent by the next page of the site,
 * with fetch, retried with backoff until the collector answers 2xx, then removed; its event_id
 * never changes, so the job drops a duplicate delivery.
 */
(function () {
  "use strict";
  var QUEUE = "pageflow.queue", USER = "pageflow.uid", CONSENT = "pageflow.consent", TAB = "pageflow.tab";
  var MAX_QUEUE = 100, BATCH = 50, ORPHAN_MS = 5 * 60 * 1000, SEND_LEASE_MS = 15000, MAX_BACKOFF_MS = 60000;
  var USER_COOKIE_DAYS = 395;

  var script = document.currentScript || {};
  var data = script.dataset || {};
  var base = script.src ? new URL(script.src, location.href) : location;
  var endpoint = data.endpoint || base.origin + "/v1/collect";
  var portal = data.portal || "";
  var meta = document.querySelector('meta[name="pageflow:article"]');
  var articleId = data.article || (meta && meta.content) || location.pathname;
  var consented = data.requireConsent !== "true" || read(CONSENT) === "granted";

  var tabId, view = null, visibleSince = null, retryTimer = null, backoffMs = 1000;

  function read(key) {
    try { return localStorage.getItem(key); } catch (e) { return null; }
  }
  function write(key, value) {
    try { localStorage.setItem(key, value); return true; } catch (e) { return false; }
  }
  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var bytes = new Uint8Array(16);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
    else for (var i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map.call(bytes, function (b) { return (b + 0x100).toString(16).slice(1); }).join("");
    return hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-" + hex.slice(12, 16) + "-" + hex.slice(16, 20) + "-" + hex.slice(20);
  }
  function cookie(name) {
    var found = document.cookie.split("; ").filter(function (c) { return c.indexOf(name + "=") === 0; })[0];
    return found ? decodeURIComponent(found.slice(name.length + 1)) : null;
  }
  function setCookie(name, value, days) {
    document.cookie = name + "=" + encodeURIComponent(value) + "; path=/; SameSite=Lax; max-age=" + days * 86400;
  }
  /** The reader's id: from the first-party cookie, else localStorage, else new (kept in both). */
  function userId() {
    var id = cookie(USER) || read(USER) || uuid();
    setCookie(USER, id, USER_COOKIE_DAYS);
    write(USER, id);
    return id;
  }
  /** This tab's id (sessionStorage survives the tab's navigations, not the tab). */
  function tab() {
    var id;
    try { id = sessionStorage.getItem(TAB); } catch (e) { id = null; }
    if (!id) {
      id = uuid();
      try { sessionStorage.setItem(TAB, id); } catch (e) { /* private mode: a new id each page */ }
    }
    return id;
  }

  // --- the queue: [{e: event, tab, open, seen, next, lease}] in localStorage ---------------------
  function load() {
    try { return JSON.parse(read(QUEUE) || "[]"); } catch (e) { return []; }
  }
  function save(items) {
    // Bounded: the oldest closed views go first when it is full.
    while (items.length > MAX_QUEUE) {
      var oldest = items.findIndex(function (item) { return !item.open; });
      items.splice(oldest < 0 ? 0 : oldest, 1);
    }
    write(QUEUE, JSON.stringify(items));
  }
  function update(change) {
    var items = load();
    change(items);
    save(items);
  }
  /** A view whose page is gone: closed, or left open by this tab's previous page or a dead tab. */
  function sendable(item, now) {
    if (item.lease && item.lease > now) return false;
    if (item.next && item.next > now) return false;
    if (!item.open) return true;
    if (view && item.e.event_id === view.event_id) return false;
    return item.tab === tabId || now - item.seen > ORPHAN_MS;
  }

  // --- measures ------------------------------------------------------------------------------------
  function dwell() {
    return view.dwell_ms + (visibleSince === null ? 0 : Math.round(performance.now() - visibleSince));
  }
  function scrollPct() {
    var doc = document.documentElement;
    var scrollable = doc.scrollHeight - window.innerHeight;
    if (scrollable <= 0) return 100;
    return Math.max(0, Math.min(100, Math.round((window.scrollY / scrollable) * 100)));
  }
  /** Writes the view's current measures into the queue (so a page that dies keeps them). */
  function persist(close) {
    if (!view) return;
    var snapshot = Object.assign({}, view, { dwell_ms: Math.min(dwell(), 86400000) });
    var now = Date.now();
    update(function (items) {
      var item = items.find(function (i) { return i.e.event_id === view.event_id; });
      if (!item) {
        item = { e: snapshot, tab: tabId, open: true };
        items.push(item);
      }
      item.e = snapshot;
      item.seen = now;
      if (close) item.open = false;
    });
  }
  function startView() {
    view = {
      event_id: uuid(),
      portal: portal,
      user_id: userId(),
      article_id: articleId,
      ts: Date.now(),
      dwell_ms: 0,
      scroll_pct: 0,
      clicks: 0,
      url: location.href.slice(0, 2048),
      referrer: document.referrer.slice(0, 2048),
    };
    visibleSince = document.visibilityState === "visible" ? performance.now() : null;
    persist(false);
    // What the reader sees without scrolling counts once the page is laid out.
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", measureScroll);
    else measureScroll();
  }
  function measureScroll() {
    if (!view) return;
    var pct = scrollPct();
    if (pct > view.scroll_pct) { view.scroll_pct = pct; persist(false); }
  }

  // --- sending --------------------------------------------------------------------------------------
  function body(items) {
    return items.map(function (item) { return JSON.stringify(item.e); }).join("\n");
  }
  function remove(ids) {
    update(function (items) {
      for (var i = items.length - 1; i >= 0; i--) if (ids.indexOf(items[i].e.event_id) >= 0) items.splice(i, 1);
    });
  }
  /** Sends the views whose page is gone with fetch, and keeps them until the collector took them. */
  function flush() {
    if (!consented) return;
    clearTimeout(retryTimer);
    retryTimer = null;
    var now = Date.now();
    var queued = load();
    var batch = queued.filter(function (item) { return sendable(item, now); }).slice(0, BATCH);
    if (!batch.length) {
      // Views waiting for their backoff: come back when the first one is due.
      var due = queued.filter(function (item) { return item.next > now; })
        .reduce(function (first, item) { return Math.min(first, item.next); }, Infinity);
      if (due !== Infinity) retryTimer = setTimeout(flush, due - now);
      return;
    }
    var ids = batch.map(function (item) { return item.e.event_id; });
    // A lease, so that another tab of the site does not send the same views meanwhile.
    update(function (items) {
      items.forEach(function (item) { if (ids.indexOf(item.e.event_id) >= 0) item.lease = now + SEND_LEASE_MS; });
    });
    fetch(endpoint, { method: "POST", body: body(batch), keepalive: true, headers: { "Content-Type": "text/plain" } })
      .then(function (response) {
        // 4xx other than 429: the collector judged the events (400 = none valid); sending again cannot help.
        if (response.ok || (response.status >= 400 && response.status < 500 && response.status !== 429)) {
          remove(ids);
          backoffMs = 1000;
          flush();
        } else {
          retryLater(ids);
        }
      }, function () { retryLater(ids); });
  }
  function retryLater(ids) {
    var next = Date.now() + backoffMs;
    update(function (items) {
      items.forEach(function (item) {
        if (ids.indexOf(item.e.event_id) >= 0) { item.lease = 0; item.next = next; item.tries = (item.tries || 0) + 1; }
      });
    });
    retryTimer = setTimeout(flush, backoffMs);
    backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
  }
  /** The page is going away: close the view and hand every sendable view to the browser. */
  function leave() {
    if (!view) return;
    view.scroll_pct = Math.max(view.scroll_pct, scrollPct());
    if (visibleSince !== null) {
      view.dwell_ms = dwell();
      visibleSince = null;
    }
    persist(true);
    view = null;
    if (!navigator.onLine) return; // kept for the next page of the site
    var now = Date.now();
    var batch = load().filter(function (item) { return sendable(item, now); }).slice(0, BATCH);
    if (!batch.length) return;
    var text = body(batch);
    var handed = navigator.sendBeacon && navigator.sendBeacon(endpoint, text);
    if (!handed) {
      try {
        fetch(endpoint, { method: "POST", body: text, keepalive: true, headers: { "Content-Type": "text/plain" } });
        handed = true;
      } catch (e) { handed = false; }
    }
    if (handed) remove(batch.map(function (item) { return item.e.event_id; }));
  }

  // --- consent --------------------------------------------------------------------------------------
  function clearStorage() {
    [QUEUE, USER, CONSENT].forEach(function (key) { try { localStorage.removeItem(key); } catch (e) { /* none */ } });
    try { sessionStorage.removeItem(TAB); } catch (e) { /* none */ }
    document.cookie = USER + "=; path=/; max-age=0";
  }
  function consent(given) {
    if (given && !consented) {
      consented = true;
      if (data.requireConsent === "true") write(CONSENT, "granted");
      begin();
    } else if (!given) {
      consented = false;
      view = null;
      visibleSince = null;
      clearTimeout(retryTimer);
      clearStorage();
    }
  }

  // --- wiring ---------------------------------------------------------------------------------------
  function begin() {
    tabId = tab();
    startView();
    flush();
  }
  document.addEventListener("visibilitychange", function () {
    if (!view) return;
    if (document.visibilityState === "hidden") {
      if (visibleSince !== null) view.dwell_ms = dwell();
      visibleSince = null;
      persist(false);
    } else if (visibleSince === null) {
      visibleSince = performance.now();
    }
  });
  // The depth is taken at each scroll event (a later one may be higher up); storing it waits 200 ms.
  var scrollPending = false;
  window.addEventListener("scroll", function () {
    if (!view) return;
    var pct = scrollPct();
    if (pct <= view.scroll_pct) return;
    view.scroll_pct = pct;
    if (scrollPending) return;
    scrollPending = true;
    setTimeout(function () {
      scrollPending = false;
      if (view) persist(false);
    }, 200);
  }, { passive: true });
  document.addEventListener("click", function () {
    if (!view) return;
    view.clicks = Math.min(view.clicks + 1, 100000);
    persist(false);
  }, true);
  window.addEventListener("pagehide", function () { if (consented) leave(); });
  window.addEventListener("pageshow", function (event) {
    if (event.persisted && consented) begin(); // back from the back-forward cache: a new view
  });
  window.addEventListener("online", function () {
    if (!consented) return;
    // Back online: what waited for its backoff is due now.
    backoffMs = 1000;
    update(function (items) { items.forEach(function (item) { item.next = 0; }); });
    flush();
  });
  window.addEventListener("storage", function (event) { if (event.key === QUEUE && consented) flush(); });
  // News from this tab (hidden tabs too: their timers still run at least once a minute), so that
  // no other tab takes its open view for one whose page died.
  setInterval(function () { if (view) persist(false); }, 15000);

  var queued = (window.pageflow && window.pageflow.q) || [];
  window.pageflow = function (command, value) {
    if (command === "consent") consent(value === true);
    else if (command === "flush") flush();
  };
  if (!portal) {
    if (window.console) console.warn("pageflow: the tracker's script tag needs data-portal=\"<portal>\"");
    return;
  }
  if (consented) begin();
  queued.forEach(function (args) { window.pageflow.apply(null, args); });
})();
