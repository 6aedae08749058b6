"""The dashboard's one stylesheet and one script, served from the API itself (no CDN, no build step).

The script is the only code the page runs (the Content-Security-Policy allows scripts from this origin
only, never inline): it follows the dashboard's watch stream and, when tenants change, fetches the live
panels again, already rendered and escaped by the server, at most once a second. It never builds
markup from data itself.
"""

STYLESHEET = """
:root { color-scheme: light dark; --muted: #777; --ok: #1a7f37; --bad: #cf222e; --line: #8884; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; }
header { display: flex; gap: 1rem; align-items: center; padding: .6rem 1.2rem; border-bottom: 1px solid var(--line); }
header .brand { font-weight: 700; font-size: 1.1rem; text-decoration: none; color: inherit; }
header .search { flex: 1; display: flex; gap: .4rem; }
header .search input { flex: 1; max-width: 24rem; padding: .3rem .5rem; }
main { padding: .5rem 1.2rem 2rem; max-width: 80rem; }
h2 { margin: 1.4rem 0 .5rem; font-size: 1.1rem; }
h2 small, h1 small { color: var(--muted); font-weight: 400; }
.muted { color: var(--muted); }
.ok { color: var(--ok); }
.bad, .warn, .error { color: var(--bad); }
.totals { font-size: 1.3rem; margin: .2rem 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(19rem, 1fr)); gap: .8rem; }
.node { border: 1px solid var(--line); border-radius: 6px; padding: .3rem .8rem .6rem; }
.node h3 { margin: .3rem 0; }
.bar { display: grid; grid-template-columns: 6rem minmax(4rem, 1fr) auto; gap: .4rem; align-items: center;
  font-size: .85rem; }
.bar meter { width: 100%; }
.phases { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .5rem; }
.phase { border: 1px solid var(--line); border-radius: 999px; padding: .1rem .7rem; }
.phase a { color: inherit; text-decoration: none; }
.phase-failed { border-color: var(--bad); }
.phase-running { border-color: var(--ok); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
td .message { color: var(--muted); overflow-wrap: anywhere; }
tr.fleet td { font-weight: 700; }
tr.event-warning td { color: var(--bad); }
pre { overflow: auto; border: 1px solid var(--line); padding: .6rem; border-radius: 6px; }
.login { max-width: 26rem; margin: 4rem auto; display: block; }
.login form { display: flex; flex-direction: column; gap: .5rem; }
.login input { padding: .4rem; }
.live-status { color: var(--muted); font-size: .85rem; }
"""

SCRIPT = """
"use strict";
(() => {
  // The page's live part: data-live-url (where to fetch it again), data-revision (what it shows),
  // data-tenant (only that tenant's changes matter), data-every (also refresh this often, in ms).
  const live = document.querySelector("[data-live-url]");
  if (!live) { return; }
  const status = document.getElementById("live-status");
  const url = live.dataset.liveUrl;
  const only = live.dataset.tenant || null;
  let revision = live.dataset.revision || "0";
  let source = null;
  let timer = null;
  let busy = false;
  let again = false;

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
      if (response.status === 401) { window.location.assign("/dashboard/"); return; }
      if (response.ok) {
        const fresh = response.headers.get("X-Fleet-Revision");
        live.innerHTML = await response.text();  // server-rendered, every value escaped there
        if (fresh) { revision = fresh; live.dataset.revision = fresh; }
      }
    } catch (error) {
      status.textContent = "offline, retrying";
    } finally {
      busy = false;
      if (again) { again = false; soon(); }
    }
  }

  // A burst of changes costs one refresh: the first waits 200 ms for the rest, and refreshes start at
  // most once a second (each is a few aggregate queries, whatever the size of the fleet).
  let lastStart = 0;
  function soon() {
    if (timer !== null) { return; }
    const wait = Math.max(200, lastStart + 1000 - Date.now());
    timer = setTimeout(() => { timer = null; lastStart = Date.now(); refresh(); }, wait);
  }

  function changed(event) {
    revision = event.lastEventId || revision;
    if (only === null) { soon(); return; }
    try {
      if (JSON.parse(event.data).name === only) { soon(); }
    } catch (error) {
      soon();
    }
  }

  function connect() {
    source = new EventSource("/dashboard/watch?revision=" + encodeURIComponent(revision));
    source.onopen = () => { status.textContent = "live"; };
    source.addEventListener("tenant", changed);
    source.addEventListener("deleted", changed);
    source.addEventListener("gone", () => { source.close(); restart(); });
    source.onerror = () => {
      status.textContent = "reconnecting";
      if (source.readyState === EventSource.CLOSED) { setTimeout(restart, 1000); }
    };
  }

  async function restart() {  // the stream refused our revision (or closed): list again, then watch from there
    await refresh();
    connect();
  }

  connect();
  const every = Number(live.dataset.every || 0);
  if (every > 0) { setInterval(soon, every); }  // nodes' heartbeats and KSM figures change without a tenant event
})();
"""

__all__ = ["SCRIPT", "STYLESHEET"]
