// agentcom dashboard: follows the hub's event stream and keeps the page current without a
// reload. Progress lines of the task on screen are appended as they come; anything else that
// concerns the page refetches it and swaps in the parts ([data-live]) whose signature changed.
// Everything shown comes from the server's escaped HTML or is set as text, never as markup.
(function () {
  'use strict';
  const body = document.body;
  const view = body.dataset.view;
  if (!view || view === 'login' || view === 'other') return;
  const taskId = body.dataset.taskId || null;
  const live = document.getElementById('live-status');
  // Counters the browser tests read to tell a live patch from a reload.
  body.dataset.refreshes = '0';
  body.dataset.events = '0';

  function state(text, cls) {
    if (!live) return;
    live.textContent = text;
    live.className = 'live ' + cls;
  }

  // --- refetching the page -----------------------------------------------------------------
  const MIN_GAP_MS = 100; // coalesce bursts of events into one fetch
  let timer = null;
  let inFlight = false;
  let again = false;
  let lastDone = 0;

  function schedule() {
    if (inFlight) { again = true; return; }
    if (timer) return;
    const wait = Math.max(0, MIN_GAP_MS - (Date.now() - lastDone));
    timer = setTimeout(refresh, wait);
  }

  async function refresh() {
    timer = null;
    inFlight = true;
    try {
      const r = await fetch(location.href, { credentials: 'same-origin', cache: 'no-store', headers: { 'Accept': 'text/html' } });
      if (r.status === 401) { ended(); return; }
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
      for (const fresh of doc.querySelectorAll('[data-live]')) {
        const current = document.getElementById(fresh.id);
        if (current && current.dataset.sig !== fresh.dataset.sig) {
          current.replaceWith(document.importNode(fresh, true));
        }
      }
      body.dataset.refreshes = String(Number(body.dataset.refreshes) + 1);
    } catch (e) {
      state('offline', 'off');
    } finally {
      inFlight = false;
      lastDone = Date.now();
      if (again) { again = false; schedule(); }
    }
  }

  function ended() {
    const banner = document.getElementById('session-ended');
    if (banner) banner.hidden = false;
    state('session ended', 'off');
    if (source) source.close();
  }

  // --- what concerns this page --------------------------------------------------------------
  function concerns(ev) {
    switch (view) {
      case 'task':
        return ev.task_id === taskId;
      case 'fleet':
        return ev.type !== 'progress' && ev.type !== 'input_delivered';
      case 'queue':
      case 'tasks':
        return ev.type === 'task' || ev.type === 'needs_input' || ev.type === 'input_answered';
      case 'dead_letter':
        return ev.type === 'task' && (ev.to === 'dead_letter' || ev.from === 'dead_letter');
      default:
        return false;
    }
  }

  function progressLine(ev) {
    const log = document.getElementById('progress-log');
    if (!log || String(ev.generation) !== log.dataset.generation) return;
    const li = document.createElement('li');
    const when = document.createElement('time');
    when.textContent = new Date(ev.at).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
    const text = document.createElement('span');
    // The hub says how the line reads (proto::api::progress_text).
    text.textContent = ev.text || (typeof ev.progress === 'string' ? ev.progress : JSON.stringify(ev.progress));
    li.append(when, ' ', text);
    log.append(li);
    const none = document.getElementById('no-progress');
    if (none) none.remove();
  }

  // --- the stream ---------------------------------------------------------------------------
  const NAMES = ['task', 'progress', 'agent', 'needs_input', 'input_answered', 'input_delivered', 'input_closed',
    'input_undelivered', 'usage', 'budget_exhausted', 'wake', 'restart'];
  let source = null;
  // Where the server read the page's data: follow the stream from there, so nothing is missed.
  let lastId = body.dataset.lastEventId || null;
  let retryMs = 500;

  function connect() {
    const url = '/console/events' + (lastId ? '?last_event_id=' + encodeURIComponent(lastId) : '');
    source = new EventSource(url);
    source.onopen = function () { retryMs = 500; state('live', 'on'); };
    for (const name of NAMES) {
      source.addEventListener(name, function (m) {
        if (m.lastEventId) lastId = m.lastEventId;
        let ev;
        try { ev = JSON.parse(m.data); } catch (e) { return; }
        body.dataset.events = String(Number(body.dataset.events) + 1);
        if (ev.type === 'progress' && view === 'task' && ev.task_id === taskId) { progressLine(ev); return; }
        if (concerns(ev)) schedule();
      });
    }
    // Events were missed (beyond the hub's window, or a hub restart): reload what is shown.
    source.addEventListener('resync', function () { schedule(); });
    source.addEventListener('dropped', function () { state('catching up', 'off'); });
    source.onerror = function () {
      if (source.readyState !== EventSource.CLOSED) { state('reconnecting…', 'off'); return; }
      // Closed for good (the server refused): find out whether the session is over.
      state('reconnecting…', 'off');
      fetch(location.href, { credentials: 'same-origin', cache: 'no-store' }).then(function (r) {
        if (r.status === 401) { ended(); return; }
        setTimeout(function () { connect(); schedule(); }, retryMs);
        retryMs = Math.min(retryMs * 2, 10000);
      }, function () {
        setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 10000);
      });
    };
  }

  // An option picked fills the answer box.
  document.addEventListener('change', function (e) {
    const t = e.target;
    if (t && t.name === 'choice') {
      const box = document.getElementById('answer-text');
      if (box && !box.value) box.value = t.value;
    }
  });

  // Leaving the page closes its stream at once: a browser holds few connections per host, and a
  // page kept in the back-forward cache must not keep one.
  window.addEventListener('pagehide', function () { if (source) source.close(); });
  window.addEventListener('pageshow', function (e) { if (e.persisted) { connect(); schedule(); } });

  connect();
})();
