// Runs in every isolate after webapi.js and the vendored bundle, before the
// tenant's script. It is the only JavaScript that can reach the host: it takes
// the host functions from the global object, keeps them in this closure and
// deletes them, so tenant code can only reach the host through the Web APIs
// defined here. The host enters the isolate through one function,
// __warrenEnter, which the engine then removes from the global object.
(function () {
  "use strict";

  const host = globalThis.__warrenHost;
  const installWebAPIs = globalThis.__warrenWebAPI;
  const installCrypto = globalThis.__warrenCrypto;
  const installEvents = globalThis.__warrenEvents;
  const installBlob = globalThis.__warrenBlob;
  const installEncodingStreams = globalThis.__warrenEncodingStreams;
  delete globalThis.__warrenHost;
  delete globalThis.__warrenWebAPI;
  delete globalThis.__warrenCrypto;
  delete globalThis.__warrenEvents;
  delete globalThis.__warrenBlob;
  delete globalThis.__warrenEncodingStreams;

  const internals = Object.create(null);
  const defineGlobal = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });

  // --- clocks --------------------------------------------------------------
  // As on Workers, time only moves between events: it is set by the host each
  // time it enters the isolate, so a script cannot time its own execution.
  let frozenNow = 0;
  const timeOrigin = 0;
  const RealDate = Date;
  function WarrenDate(...args) {
    if (new.target === undefined) return new RealDate(frozenNow).toString();
    return Reflect.construct(RealDate, args.length === 0 ? [frozenNow] : args, new.target);
  }
  Object.setPrototypeOf(WarrenDate, RealDate);
  WarrenDate.prototype = RealDate.prototype;
  Object.defineProperty(RealDate.prototype, "constructor", { value: WarrenDate, writable: true, configurable: true });
  Object.defineProperty(WarrenDate, "now", { value: function now() { return frozenNow; }, writable: true, configurable: true });
  Object.defineProperty(WarrenDate, "name", { value: "Date" });
  Object.defineProperty(WarrenDate, "length", { value: 7 });

  // --- host operations --------------------------------------------------------
  const pendingOps = new Map();
  function startOp(kind, arg, onComplete) {
    const id = host.op(kind, arg);
    if (id < 0) throw new RangeError("Too many timers or pending operations in this worker.");
    pendingOps.set(id, onComplete);
    return id;
  }
  function opPromise(kind, arg) {
    return new Promise((resolve, reject) => {
      startOp(kind, arg, (ok, value) => (ok ? resolve(value) : reject(new Error(value))));
    });
  }

  // --- console ----------------------------------------------------------------
  function describeError(error) {
    if (error instanceof Error) return { name: error.name, message: error.message, stack: String(error.stack || "") };
    let text;
    try { text = internals.formatLogArgs([error]); } catch { text = "<unprintable>"; }
    return { name: "Error", message: "Uncaught " + text, stack: "" };
  }
  function reportException(error, where) {
    const { name, message, stack } = describeError(error);
    host.exception(name, message, stack || `${name}: ${message}`, where);
  }
  function makeConsole() {
    const out = (level) => function (...args) {
      let text;
      try { text = internals.formatLogArgs(args); } catch { text = "<unprintable>"; }
      host.log(level, text);
    };
    const console = {
      log: out("log"), info: out("info"), debug: out("debug"), warn: out("warn"), error: out("error"),
      trace: out("debug"),
      assert(condition, ...args) { if (!condition) out("error")("Assertion failed" + (args.length ? ":" : ""), ...args); },
    };
    const counts = new Map();
    console.count = (label = "default") => { counts.set(label, (counts.get(label) || 0) + 1); console.log(`${label}: ${counts.get(label)}`); };
    console.countReset = (label = "default") => { counts.delete(label); };
    console.table = console.log;
    console.dir = console.log;
    console.time = console.timeEnd = console.timeLog = console.group = console.groupEnd = console.groupCollapsed = () => {};
    return console;
  }

  // --- timers ---------------------------------------------------------------
  let nextTimerId = 1;
  const timers = new Map();  // timer id -> host op id
  function schedule(id, callback, delay, args, repeat) {
    const ms = Math.max(0, Number(delay) || 0);
    const opId = startOp("sleep", ms, () => {
      if (!timers.has(id)) return;
      if (repeat) schedule(id, callback, delay, args, true); else timers.delete(id);
      try { callback(...args); } catch (error) { reportException(error, "timer"); }
    });
    timers.set(id, opId);
  }
  function setTimer(callback, delay, args, repeat) {
    if (typeof callback !== "function") throw new TypeError("The callback provided as parameter 1 is not a function.");
    const id = nextTimerId++;
    schedule(id, callback, delay, args, repeat);
    return id;
  }
  // The host cancelled these operations (their invocation ended): drop what
  // waits on them, or a long-lived isolate would keep every timer's closure.
  function forget(opIdsJSON) {
    const gone = new Set(JSON.parse(opIdsJSON));
    for (const opId of gone) pendingOps.delete(opId);
    for (const [timerId, opId] of timers) if (gone.has(opId)) timers.delete(timerId);
  }

  function clearTimer(id) {
    const opId = timers.get(id);
    if (opId === undefined) return;
    timers.delete(id);
    pendingOps.delete(opId);
    host.cancelOp(opId);
  }

  // --- events (service-worker syntax) -------------------------------------------
  const listeners = new Map();
  function addEventListener(type, listener) {
    if (typeof listener !== "function" && !(listener && typeof listener.handleEvent === "function")) return;
    if (!listeners.has(type)) listeners.set(type, []);
    listeners.get(type).push(listener);
  }
  function removeEventListener(type, listener) {
    const list = listeners.get(type);
    if (list) listeners.set(type, list.filter((l) => l !== listener));
  }

  // --- modules ------------------------------------------------------------------
  class WorkerEntrypoint {
    constructor(ctx, env) { this.ctx = ctx; this.env = env; }
  }
  class DurableObject {
    constructor(ctx, env) { this.ctx = ctx; this.env = env; }
  }
  let env = {};
  let moduleExports = null;
  // Modules arrive as CommonJS-shaped factories (sucrase turned their import
  // and export statements into require and exports) or as data (JSON, text,
  // wasm); each is instantiated on its first require, as ES modules would be.
  const definitions = new Map();  // name -> { factory } | { kind, data }
  const instances = new Map();  // name -> { exports }
  let loading = true;
  function define(name, factory) {
    if (!loading || typeof name !== "string" || typeof factory !== "function") {
      throw new TypeError("define() is not available");
    }
    definitions.set(name, { factory });
  }
  function defineData(name, kind, data) {
    if (kind === "globals") return bindModuleGlobals(data);
    definitions.set(name, { kind, data });
  }
  function normalize(path) {
    const parts = [];
    for (const part of path.split("/")) {
      if (part === "" || part === ".") continue;
      if (part === "..") parts.pop(); else parts.push(part);
    }
    return parts.join("/");
  }
  function resolveModule(from, specifier) {
    specifier = specifier.replace(/\.wasm\?module$/, ".wasm");  // wrangler's spelling of a wasm import
    let base = specifier;
    if (specifier.startsWith("./") || specifier.startsWith("../")) {
      const slash = from.lastIndexOf("/");
      base = normalize((slash < 0 ? "" : from.slice(0, slash + 1)) + specifier);
    } else if (specifier.startsWith("/")) {
      base = normalize(specifier);
    }
    for (const candidate of [base, base + ".js", base + ".mjs", base + "/index.js"]) {
      if (definitions.has(candidate)) return candidate;
    }
    return null;
  }
  function instantiate(name) {
    const existing = instances.get(name);
    if (existing !== undefined) return existing.exports;
    const definition = definitions.get(name);
    const module = { exports: {} };
    instances.set(name, module);
    if (definition.factory !== undefined) {
      definition.factory.call(undefined, module.exports, (specifier) => requireFrom(name, specifier), module);
    } else if (definition.kind === "json") {
      module.exports = { __esModule: true, default: JSON.parse(definition.data) };
    } else if (definition.kind === "text") {
      module.exports = { __esModule: true, default: definition.data };
    } else if (definition.kind === "data") {
      module.exports = { __esModule: true, default: internals.latin1ToBytes(definition.data).buffer };
    } else if (definition.kind === "wasm") {
      module.exports = { __esModule: true, default: compileWasm(internals.latin1ToBytes(definition.data)) };
      definition.data = null;  // the compiled module is all that is needed now
    }
    return module.exports;
  }

  // --- WebAssembly ----------------------------------------------------------------
  // As on Workers, tenant code cannot compile WebAssembly from bytes: the engine
  // refuses every compilation ("Wasm code generation disallowed by embedder")
  // except through its private compiler, taken here before any tenant code runs.
  // A worker's .wasm modules are compiled with it; runtime JavaScript that
  // needs WebAssembly uses internals.compileWasm.
  const compileWasm = globalThis.__warrenCompileWasm;
  delete globalThis.__warrenCompileWasm;
  internals.compileWasm = (bytes) => compileWasm(bytes);
  {
    // V8 here has no streaming compilation; these exist, as on Workers, and refuse likewise.
    const CompileError = WebAssembly.CompileError;
    const refuse = (method) => function () {
      return Promise.reject(new CompileError(`WebAssembly.${method}(): Wasm code generation disallowed by embedder`));
    };
    for (const method of ["compileStreaming", "instantiateStreaming"]) {
      const fn = refuse(method);
      Object.defineProperty(fn, "name", { value: method });
      Object.defineProperty(fn, "length", { value: 1 });
      Object.defineProperty(WebAssembly, method, { value: fn, writable: true, configurable: true, enumerable: false });
    }
  }
  // A service-worker script's [wasm_modules], [text_blobs] and [data_blobs]:
  // globals bound before the script runs (JSON: global name -> module name).
  function bindModuleGlobals(json) {
    for (const [name, moduleName] of Object.entries(JSON.parse(json))) {
      defineGlobal(name, instantiate(moduleName).default);
    }
  }
  function requireFrom(from, specifier) {
    specifier = String(specifier);
    if (specifier === "cloudflare:workers") {
      return { WorkerEntrypoint, DurableObject, env, __esModule: true };
    }
    const name = resolveModule(from, specifier);
    if (name === null) throw new Error(`No such module "${specifier}", imported from "${from}".`);
    return instantiate(name);
  }

  // --- dispatch -------------------------------------------------------------------
  let fetchHandler = null;  // (request, ctx) -> Promise<Response>
  let scheduledHandler = null;  // (controller, ctx) -> Promise
  function findHandler() {
    if (moduleExports !== null) {
      const entry = moduleExports.default;
      if (typeof entry === "function" && entry.prototype && typeof entry.prototype.fetch === "function") {
        return (request, ctx) => new entry(ctx, env).fetch(request);
      }
      if (entry && typeof entry.fetch === "function") {
        return (request, ctx) => entry.fetch(request, env, ctx);
      }
    }
    const fetchListeners = listeners.get("fetch");
    if (fetchListeners && fetchListeners.length) {
      return (request, ctx) => new Promise((resolve, reject) => {
        let responded = false;
        const event = {
          type: "fetch",
          request,
          respondWith(response) {
            if (responded) throw new DOMException("respondWith() was already called.", "InvalidStateError");
            responded = true;
            Promise.resolve(response).then(resolve, reject);
          },
          waitUntil: (promise) => ctx.waitUntil(promise),
          passThroughOnException() {},
        };
        for (const listener of fetchListeners) {
          if (typeof listener === "function") listener.call(globalThis, event);
          else listener.handleEvent(event);
        }
        if (!responded) reject(new Error("No response: the fetch event listener did not call respondWith()."));
      });
    }
    return null;
  }

  function findScheduledHandler() {
    if (moduleExports !== null) {
      const entry = moduleExports.default;
      if (typeof entry === "function" && entry.prototype && typeof entry.prototype.scheduled === "function") {
        return (controller, ctx) => new entry(ctx, env).scheduled(controller);
      }
      if (entry && typeof entry.scheduled === "function") {
        return (controller, ctx) => entry.scheduled(controller, env, ctx);
      }
    }
    const scheduledListeners = listeners.get("scheduled");
    if (scheduledListeners && scheduledListeners.length) {
      return (controller, ctx) => {
        const event = {
          type: "scheduled",
          cron: controller.cron,
          scheduledTime: controller.scheduledTime,
          noRetry: () => controller.noRetry(),
          waitUntil: (promise) => ctx.waitUntil(promise),
        };
        for (const listener of scheduledListeners) {
          if (typeof listener === "function") listener.call(globalThis, event);
          else listener.handleEvent(event);
        }
      };
    }
    return null;
  }

  // The ctx of one invocation; the host hears `done` once it has answered and
  // every waitUntil promise has settled.
  function invocation(requestId) {
    let waiting = 0;
    let answered = false;
    let finished = false;
    const finishIfIdle = () => {
      if (answered && waiting === 0 && !finished) { finished = true; host.done(requestId); }
    };
    const ctx = {
      waitUntil(promise) {
        waiting++;
        Promise.resolve(promise)
          .catch((error) => reportException(error, "waitUntil"))
          .finally(() => { waiting--; finishIfIdle(); });
      },
      passThroughOnException() {},
      props: {},
    };
    return { ctx, answered: () => { answered = true; finishIfIdle(); } };
  }

  function failInvocation(requestId, error) {
    const { name, message, stack } = describeError(error);
    host.fail(requestId, name, message, stack || `${name}: ${message}`);
  }

  function dispatchScheduled(requestId, cron, scheduledTime) {
    const { ctx, answered } = invocation(requestId);
    let result;
    try {
      if (scheduledHandler === null) throw new Error("The worker has no scheduled() handler.");
      const controller = { type: "scheduled", cron, scheduledTime, noRetry() {} };
      result = Promise.resolve(scheduledHandler(controller, ctx));
    } catch (error) {
      result = Promise.reject(error);
    }
    result
      .then(() => host.respond(requestId, 200, "", "[]", null, 0), (error) => failInvocation(requestId, error))
      .finally(answered);
  }

  function dispatchFetch(requestId, method, url, headersJSON, hasBody) {
    const readBody = hasBody
      ? () => opPromise("readBody", requestId).then((body) => (typeof body === "string" ? internals.latin1ToBytes(body) : body))
      : null;
    const { ctx, answered } = invocation(requestId);
    let result;
    try {
      if (fetchHandler === null) throw new Error("The worker has no fetch() handler.");
      const request = internals.requestFromHost(method, url, JSON.parse(headersJSON), readBody);
      result = Promise.resolve(fetchHandler(request, ctx));
    } catch (error) {
      result = Promise.reject(error);
    }
    result
      .then((response) => {
        if (!internals.isResponse(response)) {
          throw new TypeError("Incorrect type for Promise: the Promise did not resolve to 'Response'.");
        }
        if (response.type === "error") throw new TypeError("The worker returned Response.error().");
        return internals.responseToHost(response);
      })
      .then(
        (out) => {
          const body = out.body;
          const length = body === null ? 0 : body.length;
          if (length > INLINE_BODY) outgoing.set(requestId, body);
          host.respond(requestId, out.status, out.statusText || "", JSON.stringify(out.headers),
            length > INLINE_BODY || body === null ? null : internals.bytesToLatin1(body), length);
        },
        (error) => failInvocation(requestId, error),
      )
      .finally(answered);
  }

  // The vendored bundle needs TextEncoder/TextDecoder as it loads, so the host
  // runs it between init() and linkVendor().
  // Pooled isolates are prepared (init, the vendored bundle, linkVendor)
  // before anyone owns them; configure() makes one a given worker's.
  function init() {
    installWebAPIs(globalThis, internals);
    installCrypto(globalThis, internals, (operation, args, data) => host.crypto(operation, args, data));
    installEvents(globalThis, internals);
    installBlob(globalThis, internals);
    installEncodingStreams(globalThis, internals);
    internals.reportError = (error) => reportException(error, "microtask");
    // For runtime JavaScript (AbortSignal.timeout, ...): immune to tenants replacing the globals.
    internals.setTimeout = (callback, delay) => setTimer(callback, delay, [], false);
    internals.clearTimeout = (id) => clearTimer(id);
  }

  function configure(configJSON) {
    env = JSON.parse(configJSON).env;
  }

  function linkVendor() {
    const vendor = globalThis.__warrenVendor;
    delete globalThis.__warrenVendor;
    defineGlobal("URL", vendor.URL);
    defineGlobal("URLSearchParams", vendor.URLSearchParams);
    defineGlobal("URLPattern", vendor.URLPattern);
    for (const [name, value] of Object.entries(vendor.streams)) defineGlobal(name, value);
    internals.streams = vendor.streams;
    internals.compression = vendor.compression;
    const clone = vendor.structuredClone;
    defineGlobal("structuredClone", function structuredClone(value, options) {
      if (arguments.length === 0) throw new TypeError("structuredClone requires a value");
      return clone(value, options);
    });
    defineGlobal("Date", WarrenDate);
    defineGlobal("console", makeConsole());
    defineGlobal("setTimeout", (callback, delay, ...args) => setTimer(callback, delay, args, false));
    defineGlobal("setInterval", (callback, delay, ...args) => setTimer(callback, delay, args, true));
    defineGlobal("clearTimeout", clearTimer);
    defineGlobal("clearInterval", clearTimer);
    defineGlobal("addEventListener", addEventListener);
    defineGlobal("removeEventListener", removeEventListener);
    defineGlobal("performance", Object.freeze({ timeOrigin, now: () => frozenNow - timeOrigin }));
    defineGlobal("navigator", Object.freeze({ userAgent: "warren", hardwareConcurrency: 1 }));
    defineGlobal("self", globalThis);
    defineGlobal("__warrenDefine", define);
  }

  function loaded(mainModule) {
    loading = false;
    delete globalThis.__warrenDefine;
    if (mainModule !== null) moduleExports = instantiate(mainModule);
    fetchHandler = findHandler();
    scheduledHandler = findScheduledHandler();
    if (fetchHandler === null && scheduledHandler === null) {
      return moduleExports !== null
        ? "The worker's default export has no fetch() or scheduled() handler."
        : "No event handlers were registered. This script does nothing.";
    }
    return "";
  }

  // Large bodies cross the host boundary in chunks, each in a slice of its own
  // (see worker.py): request bodies are stashed until their operation
  // completes; response bodies wait here until the host pulls them.
  const INLINE_BODY = 64 * 1024;
  const stashed = new Map();  // op id -> Uint8Array chunks
  const outgoing = new Map();  // request id -> Uint8Array
  function stash(opId, latin1, last) {
    if (!stashed.has(opId)) stashed.set(opId, []);
    const chunks = stashed.get(opId);
    chunks.push(internals.latin1ToBytes(latin1));
    // Joined here, in the runtime's uncharged slice, not when the script resumes.
    if (last && chunks.length > 1) stashed.set(opId, [joinChunks(chunks)]);
  }
  function pull(requestId, offset, length) {
    const body = outgoing.get(requestId);
    if (body === undefined) return;
    const end = Math.min(body.length, offset + length);
    const last = end >= body.length;
    if (last) outgoing.delete(requestId);
    host.chunk(requestId, internals.bytesToLatin1(body.subarray(offset, end)), last);
  }
  function joinChunks(chunks) {
    const total = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    const joined = new Uint8Array(total);
    let at = 0;
    for (const chunk of chunks) { joined.set(chunk, at); at += chunk.length; }
    return joined;
  }

  // Runs a request through the Web APIs once while the isolate is being
  // prepared, so that V8 has compiled those paths before a tenant's first
  // request needs them (V8 compiles functions lazily, on first call).
  function warm() {
    const request = internals.requestFromHost("POST", "https://warm.invalid/a/b?c=d",
      [["host", "warm.invalid"], ["content-type", "text/plain"]], null);
    const url = new URL(request.url);
    url.searchParams.get("c");
    request.headers.get("host");
    const response = new Response("warm " + url.pathname, { headers: { "content-type": "text/plain" } });
    Response.json({ warm: true });
    internals.responseToHost(response).then((out) => internals.bytesToLatin1(out.body));
    internals.formatLogArgs(["warm", 1, { a: [1] }]);
  }

  function complete(opId, ok, value) {
    const onComplete = pendingOps.get(opId);
    const chunks = stashed.get(opId);
    stashed.delete(opId);
    if (onComplete === undefined) return;
    pendingOps.delete(opId);
    onComplete(ok, chunks === undefined ? value : chunks[0]);
  }

  globalThis.__warrenEnter = function (now, kind, a, b, c, d, e) {
    frozenNow = now;
    switch (kind) {
      case "complete": return complete(a, b, c);
      case "stash": return stash(a, b, c);
      case "pull": return pull(a, b, c);
      case "fetch": return dispatchFetch(a, b, c, d, e);
      case "scheduled": return dispatchScheduled(a, b, c);
      case "forget": return forget(a);
      case "init": return init();
      case "configure": return configure(a);
      case "linkVendor": return linkVendor();
      case "warm": return warm();
      case "loaded": return loaded(a);
      case "defineData": return defineData(a, b, c);
      default: throw new Error("unknown entry " + kind);
    }
  };
})();
