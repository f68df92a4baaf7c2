// The admin page's only script: inlined into the page, allowed by its hash. It calls
// seamline's own admin endpoints and nothing else; the key lives in sessionStorage only
// (this tab, until it closes). Every value is put in the page as text, never as HTML.
"use strict";
(() => {
  const KEY = "seamline-admin-key";
  const REFRESH_MS = 2000;
  // The page is /admin under wherever seamline is mounted.
  const BASE = location.pathname.replace(/\/admin\/?$/, "");
  const $ = (id) => document.getElementById(id);

  // A symbol and words for each state: colour is never the only signal. The symbols
  // are in common fonts (DejaVu has them all), not emoji.
  const STATES = {
    available: ["\u2713", "available"],
    rate_limited: ["\u25F7", "rate limited"],
    quota_exhausted: ["\u2205", "out of quota"],
    circuit_open: ["\u26A1", "circuit open"],
    disabled: ["\u2298", "disabled"],
    max_concurrent: ["\u2026", "at max_concurrent"],
    rpm_limit: ["\u25F7", "at its rpm limit"],
    daily_limit: ["\u25F7", "at its daily limit"],
  };

  let timer = null;
  let skew = 0; // server clock minus this browser's, in seconds
  let pending = null; // the account the disable dialog is about

  class Refused extends Error {}
  class Off extends Error {}

  function key() {
    return sessionStorage.getItem(KEY);
  }

  async function call(method, path, body) {
    const init = { method, headers: { Authorization: "Bearer " + key() }, cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(BASE + path, init);
    } catch (err) {
      throw new Error("seamline cannot be reached (" + err.message + ")");
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (err) {
      data = null;
    }
    if (resp.status === 401) throw new Refused();
    if (resp.status === 404 && path === "/admin/accounts") throw new Off();
    if (!resp.ok) {
      const message = data && data.error ? data.error.message : resp.statusText;
      throw new Error(resp.status + ": " + message);
    }
    return data;
  }

  // --- the key ---------------------------------------------------------------------

  function askForKey(message) {
    clearTimeout(timer);
    timer = null;
    sessionStorage.removeItem(KEY);
    $("board").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    const error = $("login-error");
    error.hidden = !message;
    error.textContent = message || "";
    $("status").textContent = "Not connected";
    $("key").value = "";
    $("key").focus();
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const given = $("key").value.trim();
    if (!given) return;
    sessionStorage.setItem(KEY, given);
    start();
  });

  $("forget").addEventListener("click", () => askForKey(""));

  function start() {
    $("login").hidden = true;
    $("board").hidden = false;
    $("forget").hidden = false;
    $("status").textContent = "Connecting\u2026";
    refresh();
  }

  // --- refreshing --------------------------------------------------------------------

  async function refresh() {
    clearTimeout(timer);
    try {
      const [accounts, streams, usage] = await Promise.all([
        call("GET", "/admin/accounts"),
        call("GET", "/admin/streams"),
        call("GET", "/admin/usage"),
      ]);
      if (!key()) return; // forgotten meanwhile
      skew = accounts.now - Date.now() / 1000;
      renderAccounts(accounts.accounts);
      renderStreams(streams.streams);
      renderUsage(usage);
      showProblem("");
      $("status").textContent = "Updated " + new Date().toLocaleTimeString();
    } catch (err) {
      if (!key()) return; // forgotten meanwhile
      if (err instanceof Refused) {
        askForKey("The admin key was refused (401). Check server.admin_key and enter it again.");
        return;
      }
      if (err instanceof Off) {
        askForKey("The admin endpoints are off: this seamline has no server.admin_key.");
        return;
      }
      showProblem(err.message + " \u2014 retrying.");
      $("status").textContent = "Not updated since an error";
    }
    // An action's refresh may overlap the scheduled one: whichever ends last schedules
    // the next, so there is only ever one chain of refreshes.
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function showProblem(message) {
    const el = $("problem");
    el.hidden = !message;
    el.textContent = message;
  }

  function notify(message) {
    const el = $("notice");
    el.hidden = !message;
    el.textContent = message;
  }

  // --- rendering -----------------------------------------------------------------------

  function cell(tr, label, text, cls) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (cls) td.className = cls;
    td.textContent = text === null || text === undefined ? "\u2014" : String(text);
    tr.appendChild(td);
    return td;
  }

  function number(n) {
    return Number(n || 0).toLocaleString("en");
  }

  function left(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (x) => String(x).padStart(2, "0");
    if (d) return d + "d " + h + "h";
    if (h) return h + ":" + pad(m) + ":" + pad(s % 60);
    return m + ":" + pad(s % 60);
  }

  function tick() {
    const now = Date.now() / 1000 + skew;
    for (const el of document.querySelectorAll("[data-until]")) {
      const remaining = Number(el.dataset.until) - now;
      el.textContent = el.dataset.what + " " + (remaining > 0 ? left(remaining) : "now");
    }
  }

  function countdowns(td, row) {
    td.textContent = "";
    const clocks = [
      ["cooldown", row.cooling_down_until],
      ["quota", row.quota_exhausted_until],
      ["circuit", row.circuit_open_until],
    ];
    for (const [what, iso] of clocks) {
      if (!iso) continue;
      const span = document.createElement("span");
      span.className = "countdown";
      span.dataset.what = what;
      span.dataset.until = String(Date.parse(iso) / 1000);
      td.appendChild(span);
    }
    if (!td.childNodes.length) td.textContent = "\u2014";
  }

  function renderAccounts(rows) {
    const body = $("accounts").tBodies[0];
    // Rows are made anew each refresh: a focused button is focused again after it.
    const was = document.activeElement;
    const focus = was && was.dataset && was.dataset.action && body.contains(was)
      ? [was.closest("tr").dataset.account, was.dataset.action]
      : null;
    body.textContent = "";
    for (const row of rows) {
      const tr = document.createElement("tr");
      tr.dataset.account = row.name;
      cell(tr, "Account", row.name, "name");
      const state = cell(tr, "State", "");
      const [icon, words] = STATES[row.state] || ["?", row.state];
      const label = document.createElement("span");
      label.className = "state";
      label.dataset.state = row.state;
      label.textContent = icon + " " + words;
      state.appendChild(label);
      if (row.disabled) {
        const reason = document.createElement("span");
        reason.className = "reason";
        reason.textContent = row.disabled;
        label.appendChild(reason);
      }
      countdowns(cell(tr, "Clears in", ""), row);
      cell(tr, "In flight", number(row.in_flight), "num");
      cell(tr, "Requests today", number(row.requests_today), "num");
      cell(tr, "Tokens today", number(row.tokens_today), "num");
      cell(tr, "Last error", row.last_error, "error");
      const actions = cell(tr, "Actions", "", "actions");
      actions.textContent = "";
      actions.appendChild(button("Reset", row.name, () => act(row.name, "reset")));
      if (row.disabled) {
        actions.appendChild(button("Enable", row.name, () => act(row.name, "enable")));
      } else {
        const off = button("Disable", row.name, () => askReason(row.name));
        off.classList.add("danger");
        actions.appendChild(off);
      }
      body.appendChild(tr);
    }
    if (focus) {
      for (const b of body.querySelectorAll("button")) {
        if (b.closest("tr").dataset.account === focus[0] && b.dataset.action === focus[1]) {
          b.focus();
        }
      }
    }
    tick();
  }

  function button(text, name, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.dataset.action = text.toLowerCase();
    b.setAttribute("aria-label", text + " " + name);
    b.addEventListener("click", onClick);
    return b;
  }

  function renderStreams(rows) {
    const table = $("streams");
    const body = table.tBodies[0];
    body.textContent = "";
    table.hidden = !rows.length;
    $("no-streams").hidden = !!rows.length;
    for (const row of rows) {
      const tr = document.createElement("tr");
      tr.dataset.request = row.request_id;
      cell(tr, "Request id", row.request_id, "mono");
      cell(tr, "Route", row.route);
      cell(tr, "Model", row.model);
      cell(tr, "Account", row.account);
      cell(tr, "Client key", row.client, "mono");
      cell(tr, "Running for", left(row.age_s), "num");
      cell(tr, "Events", number(row.events), "num");
      cell(tr, "Bytes", number(row.bytes), "num");
      body.appendChild(tr);
    }
  }

  function renderUsage(usage) {
    const table = $("usage");
    const body = table.tBodies[0];
    body.textContent = "";
    table.hidden = !usage.clients.length;
    $("no-usage").hidden = !!usage.clients.length;
    $("usage-since").textContent =
      "today since " + new Date(usage.today_since).toLocaleString() +
      ", started " + new Date(usage.since).toLocaleString() + ".";
    const tokens = (t) => number(t.prompt_tokens + t.completion_tokens);
    for (const row of usage.clients) {
      const tr = document.createElement("tr");
      tr.dataset.client = row.client;
      cell(tr, "Client key", row.client, "mono");
      cell(tr, "Requests today", number(row.today.requests), "num");
      cell(tr, "Tokens today", tokens(row.today), "num");
      cell(tr, "Errors today", number(row.today.errors), "num");
      cell(tr, "Requests since start", number(row.since_start.requests), "num");
      cell(tr, "Tokens since start", tokens(row.since_start), "num");
      body.appendChild(tr);
    }
  }

  // --- actions -------------------------------------------------------------------------

  async function act(name, action, reason) {
    const path = "/admin/accounts/" + encodeURIComponent(name) + "/" + action;
    try {
      await call("POST", path, action === "disable" ? { reason } : undefined);
      notify(name + ": " + (action === "reset" ? "reset" : action + "d") + ".");
    } catch (err) {
      if (err instanceof Refused) {
        askForKey("The admin key was refused (401). Check server.admin_key and enter it again.");
        return;
      }
      showProblem(name + ": " + action + " failed: " + err.message);
      return;
    }
    refresh();
  }

  function askReason(name) {
    pending = name;
    $("disable-name").textContent = name;
    $("reason").value = "";
    $("disable-dialog").showModal();
    $("reason").focus();
  }

  $("disable-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("disable-dialog").close();
    if (pending !== null) act(pending, "disable", $("reason").value.trim());
    pending = null;
  });

  $("disable-cancel").addEventListener("click", () => {
    pending = null;
    $("disable-dialog").close();
  });

  setInterval(tick, 1000);
  if (key()) start();
  else askForKey("");
})();
