// The live log tail of one worker: a tail session on the control plane (POST …/tails), then its WebSocket.
// The WebSocket URL is the capability (browsers cannot send an Authorization header on one).
import { api, ApiError } from "./api.js";
import { append, button, clear, formatMs, h, icon, replace } from "./dom.js";

const MAX_EVENTS = 500;

function time(ms) {
  const d = new Date(ms);
  return d.toTimeString().slice(0, 8);
}

function isError(event) {
  return event.outcome !== "ok" || (event.event?.response?.status ?? 0) >= 500 || (event.exceptions ?? []).length > 0;
}

export function logsPanel(panel, name) {
  const dot = h("span", { class: "live-dot" });
  const state = h("span", { class: "live-state" }, dot, h("span", { class: "live-text" }, "Connecting…"));
  const filter = h("select", { class: "select", "aria-label": "Show" },
    h("option", { value: "all" }, "All requests"), h("option", { value: "error" }, "Errors only"));
  const search = h("input", { class: "input search", type: "search", placeholder: "Filter by text", "aria-label": "Filter by text" });
  const pauseBtn = button("Pause", { onclick: togglePause, "aria-label": "Pause" }, "pause");
  const clearBtn = button("Clear", { onclick: () => { events = []; draw(); }, "aria-label": "Clear" }, "trash");
  const list = h("div", { class: "tail-list", role: "log", "aria-live": "polite" });
  const card = h("div", { class: "card tail-card" },
    h("div", { class: "toolbar tail-bar" }, state, h("span", { class: "spacer" }), filter, search, pauseBtn, clearBtn),
    list);
  append(panel, card);

  let events = [];
  let tail = null; // {id, url}
  let socket = null;
  let paused = false;
  let suspended = false;
  let unavailable = null;
  let destroyed = false;
  let retry = null;
  let connecting = false;

  function setState(kind, text) {
    state.dataset.state = kind;
    state.querySelector(".live-text").textContent = text;
  }

  function filters() {
    const out = [];
    if (filter.value === "error") out.push({ status: "error" });
    if (search.value.trim()) out.push({ query: search.value.trim() });
    return out;
  }

  function matches(event) {
    if (filter.value === "error" && !isError(event)) return false;
    const query = search.value.trim().toLowerCase();
    if (!query) return true;
    const haystack = [event.event?.request?.url ?? "", ...(event.logs ?? []).flatMap((l) => l.message), ...(event.exceptions ?? []).map((e) => e.message)].join("\n").toLowerCase();
    return haystack.includes(query);
  }

  function sendFilters() {
    if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ filters: filters() }));
    draw();
  }
  filter.addEventListener("change", sendFilters);
  let searchTimer = null;
  search.addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(sendFilters, 300); });

  function togglePause() {
    paused = !paused;
    replace(pauseBtn, icon(paused ? "play" : "pause"), h("span", null, paused ? "Resume" : "Pause"));
    pauseBtn.setAttribute("aria-label", paused ? "Resume" : "Pause");
    if (!paused) draw();
    setState(paused ? "paused" : "live", paused ? "Paused" : "Live");
  }

  function eventView(event) {
    const request = event.event?.request ?? {};
    const status = event.event?.response?.status;
    let path = request.url ?? "";
    try { const u = new URL(request.url); path = u.pathname + u.search; } catch { /* not a URL: shown as it is */ }
    const scheduled = event.event?.cron !== undefined;
    const tone = isError(event) ? "bad" : status >= 400 ? "warn" : "good";
    const lines = (event.logs ?? []).map((entry) => h("div", { class: `log-line level-${entry.level}` },
      h("span", { class: "level" }, entry.level), h("span", { class: "msg" }, (entry.message ?? []).join(" "))));
    const exceptions = (event.exceptions ?? []).map((e) => h("div", { class: "log-line level-error" },
      h("span", { class: "level" }, "exception"), h("span", { class: "msg" }, e.stack || `${e.name}: ${e.message}`)));
    return h("div", { class: `tail-event ${tone}` },
      h("div", { class: "tail-head" },
        h("span", { class: "tail-time mono" }, time(event.eventTimestamp)),
        h("span", { class: "tail-method" }, scheduled ? "CRON" : request.method ?? ""),
        h("span", { class: "tail-path mono" }, scheduled ? event.event.cron : path),
        h("span", { class: "spacer" }),
        event.outcome !== "ok" ? h("span", { class: "pill pill-bad" }, event.outcome) : null,
        status ? h("span", { class: `pill pill-${tone}` }, String(status)) : null,
        h("span", { class: "tail-cpu muted" }, formatMs(event.cpuTime ?? 0))),
      lines.length || exceptions.length ? h("div", { class: "console" }, lines, exceptions) : null);
  }

  function draw() {
    if (unavailable) return;
    const shown = events.filter(matches);
    if (shown.length === 0) {
      replace(list, h("div", { class: "empty compact" },
        h("div", { class: "empty-icon" }, icon("terminal", 24)),
        h("h2", null, events.length ? "No request matches the filter" : "Waiting for requests…"),
        h("p", { class: "muted" }, "Requests to this worker, on every edge node, appear here as they happen.")));
      return;
    }
    replace(list, ...shown.slice(-200).reverse().map(eventView));
  }

  function showUnavailable(error) {
    unavailable = error;
    setState("off", "Unavailable");
    pauseBtn.disabled = true;
    clearBtn.disabled = true;
    const missing = error instanceof ApiError && (error.status === 404 || error.status === 405);
    replace(list, h("div", { class: "unavailable" }, icon("alert", 20), h("div", null,
      h("strong", null, "Live logs unavailable"),
      h("p", { class: "muted" }, missing ? "This control plane does not offer live tails yet." : `Could not start the tail: ${error.message}`),
      missing ? null : button("Try again", { onclick: () => { unavailable = null; connect(); } }, "refresh"))));
  }

  async function connect() {
    if (destroyed || suspended || connecting) return;
    clearTimeout(retry);
    setState("connecting", "Connecting…");
    connecting = true;
    try {
      tail = await api.startTail(name);
    } catch (error) {
      if (!destroyed) showUnavailable(error);
      return;
    } finally {
      connecting = false;
    }
    if (destroyed || suspended) { stopTail(); return; }
    draw();
    socket = new WebSocket(tail.url);
    socket.addEventListener("open", () => {
      setState(paused ? "paused" : "live", paused ? "Paused" : "Live");
      if (filters().length) socket.send(JSON.stringify({ filters: filters() }));
    });
    socket.addEventListener("message", (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch { return; }
      events.push(event);
      if (events.length > MAX_EVENTS) events = events.slice(-MAX_EVENTS);
      if (!paused) draw();
    });
    socket.addEventListener("close", () => {
      socket = null;
      if (destroyed || suspended) return;
      setState("off", "Disconnected · reconnecting");
      retry = setTimeout(connect, 3000);
    });
  }

  function stopTail() {
    clearTimeout(retry);
    if (socket) { const s = socket; socket = null; s.close(); }
    if (tail) { const id = tail.id; tail = null; api.stopTail(name, id).catch(() => {}); }
  }

  draw();
  return {
    // The tail runs only while the tab is shown, as in Cloudflare's dashboard.
    resume() { suspended = false; if (!socket && !tail && !unavailable) connect(); },
    suspend() { suspended = true; stopTail(); if (!unavailable) setState("off", "Stopped"); },
    destroy() { destroyed = true; stopTail(); clear(panel); },
  };
}
