// warren dashboard: sign in with an API token, see workers and their traffic, edit with a live preview,
// deploy, roll back, and follow live logs. Plain DOM; CodeMirror is loaded on demand (editor.js).
import "./styles.css";
import { api, ApiError, session } from "./api.js";
import { buckets, chartCard, sparkline } from "./chart.js";
import { append, button, clear, dialog, formatMs, formatNumber, h, icon, relativeTime, replace, toast } from "./dom.js";
import { logsPanel } from "./logs.js";

const app = document.getElementById("app");
let teardown = () => {};
let workerView = null; // the open worker page, kept while only its tab changes

// ---- routing ------------------------------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (!session.token) return { view: "login" };
  if (parts[0] === "login") return { view: "login" };
  if (parts[0] === "new") return { view: "worker", name: null, tab: "code" };
  if (parts[0] === "workers" && parts[1]) return { view: "worker", name: parts[1], tab: parts[2] ?? "code" };
  return { view: "overview" };
}

export const go = (hash) => { if (location.hash !== hash) location.hash = hash; else render(); };

async function render() {
  const where = route();
  if (where.view === "worker" && workerView && workerView.name === where.name && where.name !== null) {
    workerView.setTab(where.tab);
    return;
  }
  teardown();
  teardown = () => {};
  workerView = null;
  if (where.view === "login") return renderLogin();
  if (!session.account) {
    try {
      session.account = await api.signIn(session.token);
    } catch (error) {
      session.token = null;
      return renderLogin(error instanceof ApiError && error.status === 401 ? "That token is no longer valid. Sign in again." : error.message);
    }
  }
  const main = h("main", { class: "page" });
  replace(app, shell(), main);
  if (where.view === "worker") {
    workerView = workerPage(main, where.name, where.tab);
    teardown = () => workerView?.destroy();
  } else {
    teardown = overview(main);
  }
}

session.onExpired = () => {
  session.token = null;
  session.account = null;
  toast("Your session has ended. Sign in again.", "error");
  go("#/login");
};

let shownHash = location.hash;
window.addEventListener("hashchange", () => {
  const where = route();
  const leaving = workerView && !(where.view === "worker" && where.name === workerView.name && where.name !== null);
  if (leaving && workerView.dirty() && !window.confirm("Leave this worker? Your edits are not deployed and will be lost.")) {
    history.replaceState(null, "", shownHash || "#/");
    return;
  }
  shownHash = location.hash;
  render();
});
window.addEventListener("beforeunload", (event) => {
  if (workerView?.dirty()) { event.preventDefault(); event.returnValue = ""; }
});

// ---- chrome -----------------------------------------------------------------------------------

function logo() {
  return h("span", { class: "logo", "aria-hidden": "true" },
    h("svg", { viewBox: "0 0 32 32", width: 26, height: 26 },
      h("rect", { x: 1, y: 1, width: 30, height: 30, rx: 8, class: "logo-bg" }),
      h("path", { d: "M7 11l4 11 5-9 5 9 4-11", class: "logo-mark" })));
}

function shell() {
  return h("header", { class: "topbar" },
    h("a", { class: "brand", href: "#/" }, logo(), h("span", null, "warren")),
    h("div", { class: "topbar-right" },
      h("span", { class: "account", title: `Account ${session.account.id}` }, h("span", { class: "account-dot" }), session.account.name),
      button("Sign out", { variant: "ghost", class: "btn btn-ghost signout", onclick: signOut, "aria-label": "Sign out" }, "logout")));
}

function signOut() {
  session.token = null;
  session.account = null;
  go("#/login");
}

function renderLogin(message = "") {
  const input = h("input", { class: "input", id: "token", type: "password", autocomplete: "off", spellcheck: false, placeholder: "wrn_…", required: true });
  const error = h("p", { class: "form-error", role: "alert" }, message);
  const submit = h("button", { type: "submit", class: "btn btn-primary btn-block" }, "Sign in");
  const form = h("form", {
    class: "login-card card",
    onsubmit: async (event) => {
      event.preventDefault();
      submit.disabled = true;
      error.textContent = "";
      try {
        const token = input.value.trim();
        session.account = await api.signIn(token);
        session.token = token;
        go("#/");
      } catch (e) {
        error.textContent = e.status === 401 ? "This token is not valid." : e.message;
        submit.disabled = false;
        input.select();
      }
    },
  },
    h("div", { class: "login-brand" }, logo(), h("span", null, "warren")),
    h("h1", null, "Sign in to your account"),
    h("p", { class: "muted" }, "Paste an API token. It stays in this browser tab only and is forgotten when the tab closes."),
    h("label", { class: "field", for: "token" }, h("span", null, "API token"), input),
    error,
    submit,
    h("p", { class: "hint" }, "No token yet? An administrator creates one with ", h("code", null, "warren control account create NAME"), "."));
  replace(app, h("div", { class: "login" }, form));
  input.focus();
}

// ---- overview ---------------------------------------------------------------------------------

function overview(main) {
  const charts = h("div", { class: "card analytics" }, h("div", { class: "skeleton", style: "height:170px" }));
  const list = h("div", { class: "card workers" }, h("div", { class: "skeleton", style: "height:120px" }));
  append(main,
    h("div", { class: "page-head" },
      h("div", null, h("h1", null, "Workers"), h("p", { class: "muted" }, "Requests and CPU time over the last hour.")),
      button("Create worker", { variant: "primary", onclick: () => go("#/new") }, "plus")),
    charts, list);

  let alive = true;
  async function load() {
    const [scripts, analytics] = await Promise.allSettled([api.scripts(), api.analytics(60)]);
    if (!alive) return;
    const stats = new Map();
    let available = analytics.status === "fulfilled";
    if (available) for (const entry of analytics.value.scripts ?? []) stats.set(entry.script, entry);
    replace(charts, ...analyticsCard(available ? analytics.value : null, analytics.reason));
    if (scripts.status === "rejected") {
      replace(list, errorState("Could not load your workers", scripts.reason.message, load));
      return;
    }
    replace(list, ...workersTable(scripts.value, stats, available));
  }
  load();
  const timer = setInterval(load, 30000);
  return () => { alive = false; clearInterval(timer); };
}

function analyticsCard(data, reason) {
  if (!data) {
    const missing = reason instanceof ApiError && (reason.status === 404 || reason.status === 405);
    return [h("div", { class: "unavailable" }, icon("alert", 20),
      h("div", null, h("strong", null, "Analytics unavailable"),
        h("p", { class: "muted" }, missing
          ? "This control plane does not collect request analytics yet. Workers still serve normally."
          : `Could not load analytics: ${reason?.message ?? "unknown error"}`)))];
  }
  const all = (data.scripts ?? []).flatMap((s) => s.series ?? []);
  const slots = buckets(all, 60);
  const total = (key) => (data.scripts ?? []).reduce((sum, s) => sum + (s[key] ?? 0), 0);
  const requests = total("requests"), errors = total("errors"), cpu = total("cpu_ms");
  return [
    h("div", { class: "stats" },
      stat("Requests", formatNumber(requests)),
      stat("Errors", formatNumber(errors), errors > 0 ? "bad" : ""),
      stat("Error rate", requests ? `${((errors / requests) * 100).toFixed(errors / requests < 0.1 ? 1 : 0)}%` : "0%"),
      stat("CPU time", formatMs(cpu))),
    h("div", { class: "charts" },
      chartCard("Requests per minute", formatNumber(requests), slots, { field: "requests", alert: "errors", label: "requests" }),
      chartCard("CPU time per minute", formatMs(cpu), slots, { field: "cpu_ms", label: "CPU", format: formatMs })),
  ];
}

function stat(label, value, tone = "") {
  return h("div", { class: `stat ${tone}` }, h("span", { class: "stat-label" }, label), h("span", { class: "stat-value" }, value));
}

function workersTable(scripts, stats, available) {
  if (scripts.length === 0) {
    return [h("div", { class: "empty" },
      h("div", { class: "empty-icon" }, icon("code", 28)),
      h("h2", null, "No workers yet"),
      h("p", { class: "muted" }, "Create one here, or deploy from a project with ", h("code", null, "warren deploy"), "."),
      button("Create worker", { variant: "primary", onclick: () => go("#/new") }, "plus"))];
  }
  const rows = [...scripts].sort((a, b) => a.id.localeCompare(b.id)).map((script) => {
    const s = stats.get(script.id);
    const href = `#/workers/${encodeURIComponent(script.id)}`;
    return h("a", { class: "row worker-row", href },
      h("div", { class: "cell name" }, h("span", { class: "worker-name" }, script.id),
        h("span", { class: "muted small" }, `Updated ${relativeTime(script.modified_on)}`)),
      h("div", { class: "cell num", "data-label": "Requests" }, available ? formatNumber(s?.requests ?? 0) : "—"),
      h("div", { class: `cell num ${s?.errors ? "bad" : ""}`, "data-label": "Errors" }, available ? formatNumber(s?.errors ?? 0) : "—"),
      h("div", { class: "cell num", "data-label": "CPU" }, available ? formatMs(s?.cpu_ms ?? 0) : "—"),
      h("div", { class: "cell spark-cell" }, available ? sparkline(buckets(s?.series ?? [], 60)) : null));
  });
  return [
    h("div", { class: "row head" },
      h("div", { class: "cell" }, "Worker"), h("div", { class: "cell num" }, "Requests"), h("div", { class: "cell num" }, "Errors"),
      h("div", { class: "cell num" }, "CPU time"), h("div", { class: "cell spark-cell" }, "Last hour")),
    ...rows,
  ];
}

function errorState(title, message, retry) {
  return h("div", { class: "empty" }, h("div", { class: "empty-icon bad" }, icon("alert", 28)), h("h2", null, title),
    h("p", { class: "muted" }, message), retry ? button("Try again", { onclick: retry }, "refresh") : null);
}

// ---- a worker ---------------------------------------------------------------------------------

const TEXT_TYPES = ["application/javascript+module", "text/javascript", "application/javascript", "application/json", "text/plain"];
const TEMPLATE = `export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    console.log(\`\${request.method} \${url.pathname}\`);
    return new Response("Hello from warren!", {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
`;

function today() {
  return new Date().toISOString().slice(0, 10);
}

function workerPage(main, name, initialTab) {
  const isNew = name === null;
  let tab = null;
  let destroyed = false;
  // What the editor edits: the deployed version's modules, or a template for a new worker.
  const project = {
    version: null, // the version the code was loaded from
    main: "worker.js",
    files: {}, // text modules: name -> text (as deployed)
    edits: {}, // name -> edited text
    binary: [], // non-text modules, re-uploaded as they are: {name, contentType, data}
    types: {}, // name -> content type
    compatibility_date: today(),
    bindings: [],
    limits: {},
  };
  const panels = {};
  let code = null; // the code panel's controller
  let logs = null;

  const title = isNew
    ? h("input", { class: "input title-input", placeholder: "my-worker", "aria-label": "Worker name", maxlength: 63, spellcheck: false, autocomplete: "off" })
    : h("h1", null, name);
  const badges = h("div", { class: "badges" });
  const tabs = h("nav", { class: "tabs", role: "tablist" });
  const body = h("div", { class: "tab-body" });
  append(main,
    h("div", { class: "crumbs" }, h("a", { href: "#/" }, icon("back", 14), "Workers")),
    h("div", { class: "page-head worker-head" }, h("div", { class: "title-line" }, title, badges)),
    tabs, body);

  const TABS = isNew ? [["code", "Code", "code"]] : [["code", "Code", "code"], ["deployments", "Deployments", "history"], ["logs", "Logs", "terminal"]];
  for (const [key, label, iconName] of TABS) {
    tabs.append(h("a", { class: "tab", role: "tab", href: isNew ? "#/new" : `#/workers/${encodeURIComponent(name)}/${key}`, dataset: { tab: key } }, icon(iconName, 15), label));
  }

  function setTab(next) {
    if (!TABS.some(([key]) => key === next)) next = "code";
    if (next === tab) return;
    tab = next;
    for (const link of tabs.children) link.setAttribute("aria-selected", String(link.dataset.tab === tab));
    for (const [key, panel] of Object.entries(panels)) panel.hidden = key !== tab;
    if (!panels[tab]) {
      panels[tab] = h("section", { class: `panel panel-${tab}` });
      body.append(panels[tab]);
      if (tab === "code") code = codePanel(panels.code);
      if (tab === "deployments") deploymentsPanel(panels.deployments);
      if (tab === "logs") logs = logsPanel(panels.logs, name);
    }
    if (tab === "logs") logs?.resume();
    else logs?.suspend();
    if (tab === "code") code?.refresh();
    if (tab === "deployments") deploymentsPanel(panels.deployments);
  }

  async function loadProject() {
    if (isNew) {
      project.files = { "worker.js": TEMPLATE };
      project.types = { "worker.js": "application/javascript+module" };
      return;
    }
    const deployments = await api.deployments(name);
    const current = deployments[0];
    let versionId;
    if (current) versionId = [...current.versions].sort((a, b) => b.percentage - a.percentage)[0].version_id;
    else versionId = (await api.versions(name))[0].id;
    const version = await api.version(name, versionId);
    project.version = version;
    project.main = version.main_module;
    project.compatibility_date = version.compatibility_date || today();
    project.bindings = version.bindings ?? [];
    project.limits = version.limits ?? {};
    const decoder = new TextDecoder();
    await Promise.all(version.modules.map(async (module) => {
      const data = await api.module(name, version.id, module.name);
      project.types[module.name] = module.content_type;
      if (TEXT_TYPES.includes(module.content_type.split(";")[0])) project.files[module.name] = decoder.decode(data);
      else project.binary.push({ name: module.name, contentType: module.content_type, data });
    }));
    renderBadges(current, version);
  }

  function renderBadges(current, version) {
    if (!current) return replace(badges, h("span", { class: "badge" }, "Not deployed"));
    const shares = current.versions.map((v) => `${v.version_id === version?.id ? `v${version.number}` : v.version_id.slice(0, 8)} · ${v.percentage}%`);
    replace(badges, h("span", { class: "badge live" }, h("span", { class: "pulse" }), "Live"), ...shares.map((s) => h("span", { class: "badge" }, s)));
  }

  const projectLoaded = loadProject();

  // -- code: editor, preview, deploy --

  function codePanel(panel) {
    const editorHost = h("div", { class: "editor-host" }, h("div", { class: "editor-loading" }, "Loading editor…"));
    const fileSelect = h("select", { class: "select file-select", "aria-label": "File", hidden: true, onchange: () => editor?.show(fileSelect.value) });
    const dirtyNote = h("span", { class: "dirty-note", hidden: true }, h("span", { class: "dot" }), "Unsaved changes");
    const revertBtn = button("Revert", { disabled: true, onclick: revert, title: "Discard your edits" }, "undo");
    const deployBtn = button(isNew ? "Create and deploy" : "Deploy", { variant: "primary", onclick: deploy, disabled: true, title: "Deploy (Ctrl+S)" }, "upload");
    const method = h("select", { class: "select method", "aria-label": "Method" }, ...["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"].map((m) => h("option", { value: m }, m)));
    const path = h("input", { class: "input path", value: "/", "aria-label": "Path", spellcheck: false, autocomplete: "off" });
    const reqBody = h("textarea", { class: "input req-body", placeholder: "Request body", rows: 3, hidden: true, "aria-label": "Request body" });
    const runBtn = button("Run", { variant: "dark", onclick: () => runPreview(), title: "Run the preview (Ctrl+Enter)" }, "play");
    const status = h("div", { class: "preview-status" }, h("span", { class: "muted" }, "The preview runs your code on every edit, without deploying it."));
    const errorBox = h("div", { class: "preview-error", hidden: true, role: "alert" });
    const outTabs = h("div", { class: "out-tabs", role: "tablist" });
    const output = h("div", { class: "preview-output" });
    let outTab = "body";
    let last = null;
    let editor = null;

    method.addEventListener("change", () => { reqBody.hidden = ["GET", "HEAD"].includes(method.value); schedule(0); });
    path.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); runPreview(); } });
    // Ctrl/Cmd+S deploys (after the confirmation), Ctrl/Cmd+Enter runs the preview, while the code is shown.
    const onKey = (e) => {
      if (panel.hidden || !(e.ctrlKey || e.metaKey) || document.querySelector("dialog[open]")) return;
      if (e.key === "s") { e.preventDefault(); if (!deployBtn.disabled) deploy(); }
      if (e.key === "Enter") { e.preventDefault(); runPreview(); }
    };
    document.addEventListener("keydown", onKey);
    reqBody.addEventListener("input", () => schedule());

    append(panel, h("div", { class: "code-layout" },
      h("section", { class: "card editor-card" },
        h("div", { class: "toolbar" }, fileSelect, h("span", { class: "file-name" }), dirtyNote, h("span", { class: "spacer" }), revertBtn, deployBtn),
        editorHost),
      h("section", { class: "card preview-card", "aria-label": "Preview" },
        h("div", { class: "toolbar preview-bar" }, method, path, runBtn),
        reqBody, status, errorBox, outTabs, output)));

    const fileName = panel.querySelector(".file-name");

    function texts() {
      const out = {};
      for (const file of Object.keys(project.files)) out[file] = editor ? editor.text(file) : project.files[file];
      return out;
    }
    function isDirty() {
      if (!editor) return false;
      const now = texts();
      return Object.keys(project.files).some((file) => now[file] !== project.files[file]);
    }
    function updateDirty() {
      const dirty = isDirty();
      dirtyNote.hidden = !dirty;
      revertBtn.disabled = !dirty;
      deployBtn.disabled = !(dirty || isNew);
    }

    let timer = null;
    let seq = 0;
    let controller = null;
    function schedule(delay = 450) {
      clearTimeout(timer);
      timer = setTimeout(runPreview, delay);
    }

    async function runPreview() {
      clearTimeout(timer);
      if (!editor) return;
      if (project.binary.length) {
        replace(status, h("span", { class: "muted" }, "Preview is unavailable: this worker has binary (wasm or data) modules."));
        return;
      }
      const mine = ++seq;
      controller?.abort();
      controller = new AbortController();
      status.classList.add("running");
      runBtn.disabled = true;
      const started = performance.now();
      const bindings = project.bindings.filter((b) => b.type === "plain_text" || b.type === "json");
      const request = { method: method.value, path: path.value.startsWith("/") ? path.value : `/${path.value}`, headers: {} };
      if (!reqBody.hidden && reqBody.value) request.body = reqBody.value;
      try {
        const result = await api.preview({ main: project.main, modules: texts(), compatibility_date: project.compatibility_date, bindings, request }, controller.signal);
        if (mine !== seq) return;
        last = { result, ms: performance.now() - started };
        showResult();
      } catch (error) {
        if (error.name === "AbortError" || mine !== seq) return;
        last = null;
        replace(status, h("span", { class: "pill pill-bad" }, "Preview failed"), h("span", { class: "muted" }, error.message));
        errorBox.hidden = true;
        clear(output);
        clear(outTabs);
      } finally {
        if (mine === seq) { status.classList.remove("running"); runBtn.disabled = false; }
      }
    }

    function showResult() {
      const { result, ms } = last;
      const tone = result.error || result.status >= 500 ? "bad" : result.status >= 400 ? "warn" : "good";
      replace(status,
        h("span", { class: "preview-label" }, "Preview"),
        h("span", { class: `pill pill-${tone}`, "data-testid": "preview-status" }, String(result.status || "—")),
        h("span", { class: "muted" }, `${Math.round(ms)} ms`),
        result.logs.length ? h("span", { class: "muted" }, `· ${result.logs.length} log line${result.logs.length === 1 ? "" : "s"}`) : null);
      errorBox.hidden = !result.error;
      if (result.error) {
        const where = result.error.line ? ` (${result.error.filename || project.main}:${result.error.line}:${result.error.column})` : "";
        replace(errorBox, icon("alert"), h("span", null, result.error.message + where));
      }
      editor?.showError(result.error);
      const tabsDef = [["body", "Response"], ["headers", `Headers (${result.headers.length})`], ["console", `Console (${result.logs.length})`]];
      replace(outTabs, ...tabsDef.map(([key, label]) => h("button", {
        type: "button", class: "out-tab", role: "tab", "aria-selected": String(key === outTab),
        onclick: () => { outTab = key; showResult(); },
      }, label)));
      if (outTab === "body") {
        const contentType = (result.headers.find(([n]) => n.toLowerCase() === "content-type") ?? [, ""])[1];
        const html = /^text\/html/i.test(contentType);
        if (html && result.body) {
          // Rendered with no scripts, forms or same-origin access: the page's own CSP also applies.
          replace(output, h("iframe", { class: "preview-frame", sandbox: "", srcdoc: result.body, title: "Rendered response" }));
        } else {
          replace(output, h("pre", { class: "preview-body", "data-testid": "preview-body" }, result.body || (result.error ? "" : "(empty body)")),
            result.truncated ? h("p", { class: "muted small" }, "Only the first megabyte is shown.") : null);
        }
      } else if (outTab === "headers") {
        replace(output, h("dl", { class: "headers-list" }, result.headers.flatMap(([n, v]) => [h("dt", null, n), h("dd", null, v)])));
      } else {
        replace(output, result.logs.length
          ? h("div", { class: "console" }, result.logs.map((entry) => h("div", { class: `log-line level-${entry.level}` },
            h("span", { class: "level" }, entry.level), h("span", { class: "msg" }, entry.message))))
          : h("p", { class: "muted pad" }, "Nothing was logged."));
      }
    }

    async function deploy() {
      let workerName = name;
      if (isNew) {
        workerName = title.value.trim();
        if (!/^[a-z0-9][a-z0-9_-]{0,62}$/.test(workerName)) {
          toast("Name the worker first: lowercase letters, digits, '-' and '_'.", "error");
          title.focus();
          return;
        }
      }
      const failing = last?.result.error;
      const message = await dialog({
        title: isNew ? `Create ${workerName}?` : `Deploy ${workerName}?`,
        body: failing
          ? `The preview reports an error (${failing.message}). If the new version cannot start, the edge keeps serving the current one.`
          : "A new version is uploaded and serves all traffic within a second.",
        confirm: "Deploy",
        input: { label: "Message (optional)", placeholder: "What changed?", maxlength: 1024 },
      });
      if (message === null) return;
      deployBtn.disabled = true;
      const now = texts();
      const encoder = new TextEncoder();
      const modules = [
        ...Object.keys(project.files).map((file) => ({ name: file, contentType: project.types[file] ?? "application/javascript+module", data: encoder.encode(now[file]) })),
        ...project.binary,
      ];
      // Main module first, as the CLI sends it.
      modules.sort((a, b) => (b.name === project.main) - (a.name === project.main));
      const metadata = { main_module: project.main, compatibility_date: project.compatibility_date, bindings: project.bindings, limits: project.limits };
      if (message) metadata.message = message;
      try {
        const uploaded = await api.upload(workerName, metadata, modules);
        if (isNew) { toast(`Created ${workerName}.`, "success"); go(`#/workers/${encodeURIComponent(workerName)}`); return; }
        project.files = now;
        updateDirty();
        const [deployments, version] = await Promise.all([api.deployments(name), api.version(name, uploaded.version_id)]);
        project.version = version;
        renderBadges(deployments[0], version);
        toast(`Deployed version #${version.number} of ${name}.`, "success");
      } catch (error) {
        toast(`Deploy failed: ${error.message}`, "error");
      } finally {
        updateDirty();
      }
    }

    async function revert() {
      const ok = await dialog({ title: "Discard your edits?", body: "The editor goes back to the deployed code.", confirm: "Discard", variant: "danger" });
      if (!ok) return;
      editor.reset(project.files);
      updateDirty();
      schedule(0);
    }

    (async () => {
      try {
        const [{ createEditor }] = await Promise.all([import("./editor.js"), projectLoaded]);
        if (destroyed) return;
        clear(editorHost);
        const files = Object.keys(project.files).sort((a, b) => (b === project.main) - (a === project.main) || a.localeCompare(b));
        if (files.length > 1) {
          fileSelect.hidden = false;
          replace(fileSelect, ...files.map((f) => h("option", { value: f }, f)));
        } else {
          fileName.textContent = project.main;
        }
        editor = createEditor(editorHost, { files: project.files, active: project.main, onChange: () => { updateDirty(); schedule(); } });
        updateDirty();
        schedule(0);
      } catch (error) {
        replace(editorHost, errorState("Could not load the code", error.message));
      }
    })();

    return {
      refresh() { editor?.view.requestMeasure(); },
      dirty: isDirty,
      destroy() { clearTimeout(timer); controller?.abort(); editor?.destroy(); document.removeEventListener("keydown", onKey); },
    };
  }

  // -- versions and deployments --

  async function deploymentsPanel(panel) {
    if (!panel.firstChild) panel.append(h("div", { class: "card" }, h("div", { class: "skeleton", style: "height:160px" })));
    let versions, deployments;
    try {
      [versions, deployments] = await Promise.all([api.versions(name), api.deployments(name)]);
    } catch (error) {
      replace(panel, h("div", { class: "card" }, errorState("Could not load deployments", error.message, () => deploymentsPanel(panel))));
      return;
    }
    const byId = new Map(versions.map((v) => [v.id, v]));
    const current = deployments[0];
    const live = new Map((current?.versions ?? []).map((v) => [v.version_id, v.percentage]));
    const label = (id) => (byId.has(id) ? `#${byId.get(id).number}` : id.slice(0, 8));

    async function deployVersion(version, verb) {
      const ok = await dialog({
        title: `${verb} to version #${version.number}?`,
        body: `Version #${version.number} (${version.message || "no message"}) serves 100% of traffic within a second.`,
        confirm: verb,
      });
      if (!ok) return;
      try {
        await api.deploy(name, [[version.id, 100]], `${verb.toLowerCase()} to version ${version.number}`);
        toast(`${name} now serves version #${version.number}.`, "success");
        const fresh = await api.deployments(name);
        renderBadges(fresh[0], version);
      } catch (error) {
        toast(`${verb} failed: ${error.message}`, "error");
      }
      deploymentsPanel(panel);
    }

    // As `warren rollback`: the main version of the deployment before the current one.
    const previous = deployments[1];
    const rollbackTarget = previous ? byId.get([...previous.versions].sort((a, b) => b.percentage - a.percentage)[0].version_id) : null;

    const active = h("div", { class: "card" },
      h("div", { class: "card-head" }, h("h2", null, "Active deployment"),
        button("Roll back", { disabled: !rollbackTarget, onclick: () => deployVersion(rollbackTarget, "Roll back"),
          title: rollbackTarget ? `Deploy version #${rollbackTarget.number} again` : "No earlier deployment" }, "undo")),
      current
        ? h("div", { class: "active" }, current.versions.map((v) => {
          const version = byId.get(v.version_id);
          return h("div", { class: "share" },
            h("div", { class: "share-top" }, h("strong", null, `Version ${label(v.version_id)}`), h("span", { class: "muted" }, version?.message || "No message"), h("span", { class: "spacer" }), h("strong", null, `${v.percentage}%`)),
            h("div", { class: "meter" }, h("span", { style: `width:${v.percentage}%` })));
        }), h("p", { class: "muted small" }, `Deployed ${relativeTime(current.created_on)}${current.message ? ` · ${current.message}` : ""}`))
        : h("p", { class: "muted pad" }, "Not deployed."));

    const versionRows = versions.map((version) => {
      const share = live.get(version.id);
      return h("div", { class: "row version-row" },
        h("div", { class: "cell vnum" }, `#${version.number}`),
        h("div", { class: "cell vmsg" }, h("span", null, version.message || h("span", { class: "muted" }, "No message")),
          h("span", { class: "muted small mono" }, `${version.id.slice(0, 8)} · sha256 ${version.content_hash.slice(0, 10)}`)),
        h("div", { class: "cell vtime muted" }, relativeTime(version.created_on)),
        h("div", { class: "cell vact" }, share !== undefined
          ? h("span", { class: "badge live" }, `Live · ${share}%`)
          : button("Deploy", { onclick: () => deployVersion(version, "Deploy"), "aria-label": `Deploy version ${version.number}` })));
    });

    const history = deployments.map((d, index) => h("li", { class: index === 0 ? "current" : "" },
      h("span", { class: "tl-dot" }),
      h("div", null,
        h("div", null, h("strong", null, d.versions.map((v) => `${label(v.version_id)} ${v.percentage}%`).join(" + ")), index === 0 ? h("span", { class: "badge live small" }, "current") : null),
        h("div", { class: "muted small" }, `${relativeTime(d.created_on)}${d.message ? ` · ${d.message}` : ""}`))));

    replace(panel,
      active,
      h("div", { class: "card" }, h("div", { class: "card-head" }, h("h2", null, "Versions"), h("span", { class: "muted small" }, `${versions.length} in the archive`)), ...versionRows),
      h("div", { class: "card" }, h("div", { class: "card-head" }, h("h2", null, "Deployment history")), h("ol", { class: "timeline" }, history)));
  }

  setTab(initialTab);
  projectLoaded.catch((error) => {
    if (panels.code) replace(panels.code, h("div", { class: "card" }, errorState(error.status === 404 ? `No worker named ${name}` : "Could not load this worker", error.message)));
  });
  if (isNew) title.focus();

  return {
    name,
    setTab,
    dirty: () => code?.dirty() ?? false,
    destroy() { destroyed = true; code?.destroy(); logs?.destroy(); },
  };
}

render();
