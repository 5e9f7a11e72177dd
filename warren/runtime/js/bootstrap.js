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
  const installCache = globalThis.__warrenCache;
  const installKV = globalThis.__warrenKV;
  delete globalThis.__warrenCache;
  delete globalThis.__warrenKV;
  const installHTMLRewriter = globalThis.__warrenHTMLRewriter;
  delete globalThis.__warrenHTMLRewriter;
  // Service bindings and RPC (services.js), queues (queues.js): issue #10.
  const installServices = globalThis.__warrenServices;
  const installQueues = globalThis.__warrenQueues;
  delete globalThis.__warrenServices;
  delete globalThis.__warrenQueues;
  // Durable Objects (durable_objects.js): issue #8.
  const installDurableObjects = globalThis.__warrenDurableObjects;
  delete globalThis.__warrenDurableObjects;
  // WebSocketPair, WebSocket and their events (websocket.js).
  const installWebSocket = globalThis.__warrenWebSocket;
  delete globalThis.__warrenWebSocket;
  const installSockets = globalThis.__warrenSockets;
  delete globalThis.__warrenSockets;
  let socketsModule = null;
  delete globalThis.__warrenHost;
  delete globalThis.__warrenWebAPI;
  delete globalThis.__warrenCrypto;
  delete globalThis.__warrenEvents;
  delete globalThis.__warrenBlob;
  delete globalThis.__warrenEncodingStreams;

  const internals = Object.create(null);
  // Binding types (kv_namespace, service, ...) -> (spec, call) => the object
  // env[spec.name] holds; runtime JavaScript registers them as it installs.
  const bindingFactories = new Map();
  internals.defineBinding = (type, factory) => bindingFactories.set(type, factory);
  const defineGlobal = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  // Globals made on first use (read, write, typeof) by make(), which defines
  // them all: what few tenants use is not built in every isolate (issue #4).
  // Until then Object.getOwnPropertyDescriptor shows accessors. A name the
  // tenant redefined first keeps the tenant's definition.
  function defineLazyGlobals(names, make) {
    const ours = new Set();
    let made = false;
    const materialize = () => {
      if (made) return;
      made = true;
      const kept = [];
      for (const name of names) {
        const own = Object.getOwnPropertyDescriptor(globalThis, name);
        if (own !== undefined && !ours.has(own.get)) kept.push([name, own]);
        delete globalThis[name];
      }
      make();
      for (const [name, own] of kept) Object.defineProperty(globalThis, name, own);
    };
    for (const name of names) {
      const accessors = {
        get() { materialize(); return globalThis[name]; },
        set(value) { materialize(); defineGlobal(name, value); },
      };
      ours.add(accessors.get);
      Object.defineProperty(globalThis, name, { ...accessors, configurable: true, enumerable: false });
    }
    return materialize;
  }

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
  // An operation completes with ok, a JSON value (on failure {name, message})
  // and, for some, bytes.
  const pendingOps = new Map();
  function startOp(kind, arg, onComplete, data = null) {
    const id = host.op(kind, arg, data);
    if (id < 0) throw new RangeError("Too many timers or pending operations in this worker.");
    pendingOps.set(id, onComplete);
    return id;
  }
  const ERRORS = { TypeError, RangeError, SyntaxError };
  function hostError(value) {
    const name = value && typeof value.name === "string" ? value.name : "Error";
    const message = value && typeof value.message === "string" ? value.message : String(value);
    if (ERRORS[name] !== undefined) return new ERRORS[name](message);
    if (name === "Error") return new Error(message);
    return new DOMException(message, name);
  }
  function opPromise(kind, arg, data = null) {
    return new Promise((resolve, reject) => {
      startOp(kind, arg, (ok, value, bytes) => (ok ? resolve({ value, bytes }) : reject(hostError(value))), data);
    });
  }

  // --- bodies on the host side ----------------------------------------------------
  // Read by handle (see BodySource in webapi.js): chunk by chunk for a stream,
  // or whole.
  function hostReader(handle) {
    let done = false;
    return {
      handle,
      async read() {
        if (done) return null;
        const { bytes } = await opPromise("read", JSON.stringify([handle, 256 * 1024]));
        if (bytes === null || bytes.length === 0) { done = true; return null; }
        return bytes;
      },
      async readAll() {
        if (done) return new Uint8Array(0);
        done = true;
        const { bytes } = await opPromise("readAll", handle);
        return bytes ?? new Uint8Array(0);
      },
      release() {
        if (!done) { done = true; host.release(handle); }
      },
    };
  }

  // A stream made by JavaScript, fed to the host as a body it reads (a fetch() request body).
  function streamToSink(stream) {
    const sink = host.sink();
    if (sink < 0) throw new RangeError("Too many open bodies in this worker.");
    const reader = stream.getReader();
    (async () => {
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const bytes = internals.bytesOf(value);
          if (bytes === null) throw new TypeError("This ReadableStream did not return bytes.");
          host.write(sink, internals.bytesToLatin1(bytes), false);
          const { value: open } = await opPromise("sinkReady", sink);
          if (!open) { reader.cancel(); return; }
        }
        host.write(sink, null, true);
      } catch (error) {
        host.release(sink);
        reportException(error, "request body stream");
      }
    })();
    return sink;
  }

  // --- subrequests and binding calls ------------------------------------------------
  async function fetchFromWorker(input, init) {
    const request = new Request(input, init);
    const out = internals.requestToHost(request);
    const signal = out.signal;
    const aborted = signal && internals.signalAborted !== undefined && internals.signalAborted(signal);
    if (aborted) throw internals.signalReason(signal);
    const head = { method: out.method, url: out.url, headers: out.headers, redirect: out.redirect, body: 0 };
    let data = null;
    if (out.handle) head.body = out.handle;
    else if (out.stream !== null) head.body = streamToSink(out.stream);
    else if (out.bytes !== null) data = internals.bytesToLatin1(out.bytes);
    return new Promise((resolve, reject) => {
      let unsubscribe = null;
      const opId = startOp("fetch", JSON.stringify(head), (ok, value) => {
        if (unsubscribe !== null) unsubscribe();
        if (!ok) { reject(hostError(value)); return; }
        const reader = value.body ? hostReader(value.body) : null;
        if (reader !== null && signal && internals.onAbort !== undefined) {
          internals.onAbort(signal, () => reader.release());
        }
        // An upgrade the origin accepted: the host holds the socket (warren/runtime/websockets.py).
        const webSocket = value.webSocket ? internals.originWebSocket(value.webSocket, protocolOf(value.headers)) : null;
        resolve(internals.responseFromHost(value.status, value.statusText, value.headers, reader,
          value.url, value.redirected, webSocket));
      }, data);
      if (signal && internals.onAbort !== undefined) {
        unsubscribe = internals.onAbort(signal, () => {
          if (!pendingOps.delete(opId)) return;
          host.cancelOp(opId);
          reject(internals.signalReason(signal));
        });
      }
    });
  }
  function fetch(input, init = undefined) {
    return fetchFromWorker(input, init);
  }
  function protocolOf(headerPairs) {
    for (const [name, value] of headerPairs) if (name.toLowerCase() === "sec-websocket-protocol") return value;
    return "";
  }

  // A call on a binding: resolves { value, body } (body: a BodySource of webapi.js, or null).
  async function hostCall(binding, method, args, body = null) {
    const call = { binding, method, args: args === undefined ? null : args, body: 0 };
    let data = null;
    if (body !== null && body !== undefined) {
      if (internals.isBodySource(body)) {
        const out = internals.bodyToHost(body);
        if (out.handle) call.body = out.handle;
        else if (out.bytes !== null) data = internals.bytesToLatin1(out.bytes);
        else data = internals.bytesToLatin1(await internals.bodySource(null, null, out.stream).readAll());
      } else {
        const bytes = internals.bytesOf(body);
        if (bytes === null) throw new TypeError("A binding call's body must be bytes.");
        data = internals.bytesToLatin1(bytes);
      }
    }
    const { value, bytes } = await opPromise("call", JSON.stringify(call), data);
    let result = null;
    if (value.body) result = internals.bodySource(null, hostReader(value.body));
    else if (bytes !== null) result = internals.bodySource(bytes);
    return { value: value.value, body: result };
  }
  internals.hostCall = hostCall;
  internals.hostReader = hostReader;

  // Costly one-off set-up of runtime JavaScript, run by the host in an uncharged
  // slice: `await internals.runtimeLoad(name)` (see worker.py "runtimeLoad").
  const runtimeLoaders = Object.create(null);
  internals.defineRuntimeLoader = (name, load) => { runtimeLoaders[name] = load; };
  internals.runtimeLoad = (name) => opPromise("runtimeLoad", name);
  // For a Durable Object's input gate: `callback` runs in a later slice (after this
  // one's microtasks), charged to the invocation `requestId`, which has not ended.
  internals.defer = (requestId, callback) => startOp("defer", requestId, callback);
  // A binding call the isolate waits for (ctx.storage.sql.exec()): the JS thread blocks on it.
  internals.callSync = (binding, method, args) => {
    const [ok, value] = JSON.parse(host.callSync(JSON.stringify({ binding, method, args: args ?? null })));
    if (!ok) throw hostError(value);
    return value;
  };

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
  let prepareObjects = null;  // makes Durable Objects now (the "objects" entry; set by init)
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
    if (specifier === "cloudflare:sockets") return socketsModule ??= makeSockets();
    const name = resolveModule(from, specifier);
    if (name === null) throw new Error(`No such module "${specifier}", imported from "${from}".`);
    return instantiate(name);
  }

  // cloudflare:sockets (sockets.js), made on its first import.
  function makeSockets() {
    const connect = installSockets(internals, {
      connect: (head) => promiseThenValue(opPromise("connect", JSON.stringify(head))),
      startTls: (head) => promiseThenValue(opPromise("startTls", JSON.stringify(head))),
      sink: () => {
        const sink = host.sink();
        if (sink < 0) throw new RangeError("Too many open bodies in this worker.");
        return sink;
      },
      write: (sink, data, last) => host.write(sink, data, last),
      sinkReady: (sink) => promiseThenValue(opPromise("sinkReady", sink)),
      release: (sink) => host.release(sink),
      reader: (handle) => hostReader(handle),
    });
    return { connect, default: { connect }, __esModule: true };
  }
  function promiseThenValue(promise) {
    return promise.then(({ value }) => value);
  }

  // --- dispatch -------------------------------------------------------------------
  let fetchHandler = null;  // (request, ctx) -> Promise<Response>
  let scheduledHandler = null;  // (controller, ctx) -> Promise
  let queueHandler = null;  // (batch, ctx) -> Promise
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

  function findQueueHandler() {
    if (moduleExports !== null) {
      const entry = moduleExports.default;
      if (typeof entry === "function" && entry.prototype && typeof entry.prototype.queue === "function") {
        return (batch, ctx) => new entry(ctx, env).queue(batch);
      }
      if (entry && typeof entry.queue === "function") return (batch, ctx) => entry.queue(batch, env, ctx);
    }
    const queueListeners = listeners.get("queue");
    if (queueListeners && queueListeners.length) {
      return (batch, ctx) => {
        const event = { type: "queue", batch, queue: batch.queue, messages: batch.messages,
          waitUntil: (promise) => ctx.waitUntil(promise) };
        for (const listener of queueListeners) {
          if (typeof listener === "function") listener.call(globalThis, event);
          else listener.handleEvent(event);
        }
      };
    }
    return null;
  }

  // A named entrypoint's fetch(), for a service binding with `entrypoint`.
  function entrypointFetchHandler(name) {
    const entry = moduleExports !== null && Object.prototype.hasOwnProperty.call(moduleExports, name)
      ? moduleExports[name] : undefined;
    if (typeof entry === "function" && entry.prototype && typeof entry.prototype.fetch === "function") {
      return (request, ctx) => new entry(ctx, env).fetch(request);
    }
    if (entry && typeof entry.fetch === "function") return (request, ctx) => entry.fetch(request, env, ctx);
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

  // RPC and queue invocations answer the host with JSON bytes (services.js, queues.js).
  const JSON_HEADERS = JSON.stringify([["content-type", "application/json"]]);
  function respondBytes(requestId, bytes, status = 200, headers = JSON_HEADERS, statusText = "") {
    if (bytes.length > INLINE_BODY) outgoing.set(requestId, bytes);
    host.respond(requestId, status, statusText, headers,
      bytes.length > INLINE_BODY ? null : internals.bytesToLatin1(bytes), bytes.length);
  }

  // An event (fetch, rpc, alarm) of a Durable Object whose class this worker
  // exports (durable_objects.js); the host passes the event as JSON.
  function dispatchObject(requestId, eventJSON, bodyHandle) {
    const { answered } = invocation(requestId);
    let result;
    try {
      const reader = bodyHandle ? hostReader(bodyHandle) : null;
      result = internals.objectEvent(requestId, JSON.parse(eventJSON), reader, moduleExports, env, DurableObject);
    } catch (error) {
      result = Promise.reject(error);
    }
    result
      .then((answer) => {
        const headers = answer.headers === undefined ? JSON_HEADERS : JSON.stringify(answer.headers);
        if (answer.webSocket) return internals.respondWebSocket(requestId, answer.webSocket, headers);
        respondBytes(requestId, answer.bytes, answer.status, headers, answer.statusText || "");
        if (answer.error !== undefined) failInvocation(requestId, answer.error);  // after the answer: it only marks the outcome
      })
      .then(undefined, (error) => failInvocation(requestId, error))
      .finally(answered);
  }

  function dispatchRpc(requestId, entrypoint, method, bodyHandle) {
    const { ctx, answered } = invocation(requestId);
    (async () => {
      const args = bodyHandle ? await hostReader(bodyHandle).readAll() : new Uint8Array(0);
      return internals.rpcDispatch(moduleExports, entrypoint, method, args, ctx, env, WorkerEntrypoint);
    })()
      .then(({ bytes, error }) => {
        respondBytes(requestId, bytes);
        if (error !== undefined) failInvocation(requestId, error);  // after the answer: it only marks the outcome
      }, (error) => failInvocation(requestId, error))
      .finally(answered);
  }

  function dispatchQueue(requestId, queueName, bodyHandle) {
    const { ctx, answered } = invocation(requestId);
    let received = null;
    (async () => {
      const payload = bodyHandle ? await hostReader(bodyHandle).readAll() : new Uint8Array(0);
      received = internals.queueBatch(queueName, payload);
      if (queueHandler === null) throw new Error("The worker has no queue() handler.");
      await queueHandler(received.batch, ctx);
    })()
      .then(() => respondBytes(requestId, received.decisions(false)), (error) => {
        // Explicit acks stand even when the handler throws; the rest are retried.
        if (received !== null) respondBytes(requestId, received.decisions(true));
        failInvocation(requestId, error);
      })
      .finally(answered);
  }

  // A small body that arrived whole comes as a latin-1 string (bodyLatin1), not a handle.
  function dispatchFetch(requestId, method, url, headersJSON, bodyHandle, cfJSON, entrypoint, bodyLatin1) {
    const { ctx, answered } = invocation(requestId);
    let result;
    try {
      const handler = entrypoint ? entrypointFetchHandler(entrypoint) : fetchHandler;
      if (handler === null) {
        throw new Error(entrypoint ? `The worker has no entrypoint "${entrypoint}" with a fetch() handler.`
          : "The worker has no fetch() handler.");
      }
      const body = bodyHandle ? hostReader(bodyHandle)
        : typeof bodyLatin1 === "string" ? internals.latin1ToBytes(bodyLatin1) : null;
      const cf = cfJSON ? JSON.parse(cfJSON) : undefined;
      const request = internals.requestFromHost(method, url, JSON.parse(headersJSON), body, cf);
      result = Promise.resolve(handler(request, ctx));
    } catch (error) {
      result = Promise.reject(error);
    }
    result
      .then((response) => {
        if (!internals.isResponse(response)) {
          throw new TypeError("Incorrect type for Promise: the Promise did not resolve to 'Response'.");
        }
        if (response.type === "error") throw new TypeError("The worker returned Response.error().");
        const out = internals.responseToHost(response);
        const headers = JSON.stringify(out.headers);
        if (out.webSocket) return internals.respondWebSocket(requestId, out.webSocket, headers);
        if (out.handle) {
          host.respond(requestId, out.status, out.statusText || "", headers, null, 0, out.handle);
        } else if (out.stream !== null) {
          host.respond(requestId, out.status, out.statusText || "", headers, null, -1, 0);
          // The invocation is answered once the body has gone out (or failed).
          return sendStream(requestId, out.stream);
        } else {
          const body = out.bytes;
          const length = body === null ? 0 : body.length;
          if (length > INLINE_BODY) outgoing.set(requestId, body);
          host.respond(requestId, out.status, out.statusText || "", headers,
            length > INLINE_BODY || body === null ? null : internals.bytesToLatin1(body), length);
        }
      })
      .then(undefined, (error) => failInvocation(requestId, error))
      .finally(answered);
  }

  // A response body produced by JavaScript goes out chunk by chunk as it is
  // written; past a window of bytes the client has not taken, it waits.
  const STREAM_WINDOW = 1024 * 1024;
  async function sendStream(requestId, stream) {
    const reader = stream.getReader();
    let unconfirmed = 0;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const bytes = internals.bytesOf(value);
        if (bytes === null) throw new TypeError("This ReadableStream did not return bytes (Uint8Array chunks).");
        if (bytes.length === 0) continue;
        host.chunk(requestId, internals.bytesToLatin1(bytes), false);
        unconfirmed += bytes.length;
        if (unconfirmed >= STREAM_WINDOW) {
          unconfirmed = 0;
          const { value: open } = await opPromise("drain", requestId);
          if (!open) { reader.cancel(new Error("The client went away.")).catch(() => {}); return; }
        }
      }
      host.chunk(requestId, "", true);
    } catch (error) {
      reportException(error, "response body");
      host.abortBody(requestId, describeError(error).message);
    }
  }

  // The vendored bundle needs TextEncoder/TextDecoder as it loads, so the host
  // runs it between init() and linkVendor().
  // Pooled isolates are prepared (init, the vendored bundle, linkVendor)
  // before anyone owns them; configure() makes one a given worker's.
  function init() {
    installWebAPIs(globalThis, internals);
    // WebCrypto is ~100 KB of objects per isolate: made when a tenant first
    // touches it, or the runtime needs random bytes (internals.getRandomValues).
    let randomValues = null;
    const makeCrypto = defineLazyGlobals(["crypto", "Crypto", "SubtleCrypto", "CryptoKey"], () => {
      installCrypto(globalThis, internals, (operation, args, data) => host.crypto(operation, args, data));
      const crypto = globalThis.crypto;
      randomValues = crypto.getRandomValues.bind(crypto);
      if (internals.streams !== undefined) internals.upgradeDigestStream(internals.streams.WritableStream);
    });
    internals.getRandomValues = (array) => {
      makeCrypto();
      return randomValues(array);
    };
    installEvents(globalThis, internals);
    // Blobs, the encoding streams and Durable Objects are made on first use (~100 KB of
    // objects per isolate, which few tenants need), from the globals as the runtime made
    // them: a tenant's code may have replaced those by then.
    const runtimeGlobals = Object.freeze({
      DOMException: globalThis.DOMException,
      Request: globalThis.Request,
      Response: globalThis.Response,
      TextEncoder: globalThis.TextEncoder,
      TextDecoder: globalThis.TextDecoder,
    });
    const makeBlobs = defineLazyGlobals(["Blob", "File", "FormData"], () => installBlob(runtimeGlobals, internals));
    // Until then no value is a Blob or a FormData; the install replaces these with its own.
    internals.isBlob = () => false;
    internals.isFormData = () => false;
    internals.makeBlob = (bytes, type) => {
      makeBlobs();
      return internals.makeBlob(bytes, type);
    };
    internals.parseFormData = (bytes, type) => {
      makeBlobs();
      return internals.parseFormData(bytes, type);
    };
    defineLazyGlobals(
      ["TextEncoderStream", "TextDecoderStream", "CompressionStream", "DecompressionStream"],
      () => installEncodingStreams(runtimeGlobals, internals),
    );
    installCache(globalThis, internals);
    installKV(globalThis, internals);
    installHTMLRewriter(globalThis, internals);
    installServices(globalThis, internals);
    installQueues(globalThis, internals);
    // Made by a worker's first Durable Object binding, its first object event, or a touch of
    // WebSocketRequestResponsePair; the install replaces the two below with its own.
    const makeObjects = defineLazyGlobals(
      ["WebSocketRequestResponsePair"],
      () => installDurableObjects(globalThis, internals, runtimeGlobals),
    );
    // Or by the pool, ahead, for a worker bound to a Durable Object (pool.py), before anyone owns
    // the isolate; with what such a worker's first request runs next compiled too: its binding,
    // an id and a stub (none of which reaches the host).
    prepareObjects = () => {
      makeObjects();
      const namespace = bindingFactories.get("durable_object_namespace")({ name: "warm", class_name: "Warm" }, () => null);
      namespace.get(namespace.idFromName("warm"));
    };
    internals.defineBinding("durable_object_namespace", (spec, call) => {
      makeObjects();
      return bindingFactories.get("durable_object_namespace")(spec, call);
    });
    internals.objectEvent = (...args) => {
      makeObjects();
      return internals.objectEvent(...args);
    };
    installWebSocket(globalThis, internals, (action, a, b, c) => host.webSocket(action, a, b, c), defineLazyGlobals);
    internals.hostAsset = (name) => host.asset(name);
    internals.fetch = fetch; // new WebSocket(url) connects through it (websocket.js)
    internals.reportError = (error) => reportException(error, "microtask");
    // For runtime JavaScript (AbortSignal.timeout, ...): immune to tenants replacing the globals.
    internals.setTimeout = (callback, delay) => setTimer(callback, delay, [], false);
    internals.clearTimeout = (id) => clearTimer(id);
  }

  function configure(configJSON) {
    const config = JSON.parse(configJSON);
    env = config.env;
    for (const spec of config.bindings || []) {
      const factory = bindingFactories.get(spec.type);
      if (factory === undefined) {
        throw new Error(`The binding "${spec.name}" has type "${spec.type}", which this runtime does not support.`);
      }
      env[spec.name] = factory(spec, (method, args, body) => hostCall(spec.name, method, args, body));
    }
    // A service-worker script has no env argument: its bindings are globals, as on Workers.
    if (config.globals) for (const name of Object.keys(env)) defineGlobal(name, env[name]);
  }

  function linkVendor() {
    const vendor = globalThis.__warrenVendor;
    delete globalThis.__warrenVendor;
    internals.htmlRewriterLib = globalThis.__warrenHTMLRewriterLib;
    delete globalThis.__warrenHTMLRewriterLib;
    // As on Workers, no SharedArrayBuffer (the vendored code took what it needs as it loaded).
    delete globalThis.SharedArrayBuffer;
    defineGlobal("URL", vendor.URL);
    internals.URL = vendor.URL; // the runtime's own, whatever a tenant does to the global
    defineGlobal("URLSearchParams", vendor.URLSearchParams);
    defineLazyGlobals(["URLPattern"], () => defineGlobal("URLPattern", vendor.loadURLPattern()));
    for (const [name, value] of Object.entries(vendor.streams)) defineGlobal(name, value);
    internals.streams = vendor.streams;
    if (internals.upgradeDigestStream !== undefined) internals.upgradeDigestStream(vendor.streams.WritableStream);
    // fflate loads on the first CompressionStream or DecompressionStream.
    Object.defineProperty(internals, "compression", { get: vendor.loadCompression });
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
    defineGlobal("fetch", fetch);
    defineGlobal("removeEventListener", removeEventListener);
    defineGlobal("performance", Object.freeze({ timeOrigin, now: () => frozenNow - timeOrigin }));
    defineGlobal("navigator", Object.freeze({ userAgent: "warren", hardwareConcurrency: 1 }));
    defineGlobal("self", globalThis);
    defineGlobal("__warrenDefine", define);
  }

  // A module worker is configured here, on the call that instantiates it (nothing before
  // its top level can see env): one trip into the isolate fewer on a cold start.
  function loaded(mainModule, configJSON) {
    if (typeof configJSON === "string") configure(configJSON);
    loading = false;
    delete globalThis.__warrenDefine;
    if (mainModule !== null) moduleExports = instantiate(mainModule);
    fetchHandler = findHandler();
    scheduledHandler = findScheduledHandler();
    queueHandler = findQueueHandler();
    // A module of WorkerEntrypoint classes only is served through RPC.
    const entrypoints = moduleExports !== null && Object.values(moduleExports).some(
      (value) => typeof value === "function" && value.prototype instanceof WorkerEntrypoint);
    if (fetchHandler === null && scheduledHandler === null && queueHandler === null && !entrypoints) {
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
    internals.bytesToLatin1(internals.responseToHost(response).bytes);
    internals.formatLogArgs(["warm", 1, { a: [1] }]);
    // And what a tenant's cold start runs next: configure, a module's definition and
    // instantiation, finding its handlers, then the dispatch of a fetch event to
    // it. Request id 0 belongs to no invocation, and nobody owns the isolate yet,
    // so what it tells the host goes nowhere; the state is put back as it was.
    configure('{"env":{},"bindings":[]}');
    define("warren:warm", function (exports) {
      exports.default = { async fetch(warmRequest) { return new Response("warm " + warmRequest.method); } };
    });
    moduleExports = instantiate("warren:warm");
    try {
      fetchHandler = findHandler();
      findScheduledHandler();
      findQueueHandler();
      dispatchFetch(0, "GET", "https://warm.invalid/", '[["host","warm.invalid"]]', 0, "", "");
    } finally {
      fetchHandler = null;
      moduleExports = null;
      env = {};
      definitions.delete("warren:warm");
      instances.delete("warren:warm");
    }
  }

  function complete(opId, ok, valueJSON, latin1) {
    const onComplete = pendingOps.get(opId);
    const chunks = stashed.get(opId);
    stashed.delete(opId);
    if (onComplete === undefined) return;
    pendingOps.delete(opId);
    const value = valueJSON === null || valueJSON === undefined ? null : JSON.parse(valueJSON);
    let bytes = null;
    if (chunks !== undefined) bytes = chunks[0];
    else if (typeof latin1 === "string") bytes = internals.latin1ToBytes(latin1);
    onComplete(ok, value, bytes);
  }

  globalThis.__warrenEnter = function (now, kind, a, b, c, d, e, f, g, h) {
    frozenNow = now;
    switch (kind) {
      case "complete": return complete(a, b, c, d);
      case "stash": return stash(a, b, c);
      case "pull": return pull(a, b, c);
      case "fetch": return dispatchFetch(a, b, c, d, e, f, g, h);
      case "scheduled": return dispatchScheduled(a, b, c);
      case "rpc": return dispatchRpc(a, b, c, d);
      case "queue": return dispatchQueue(a, b, c);
      case "object": return dispatchObject(a, b, c);
      case "ws": return internals.webSocketEvent(a, b, c, d, e);
      case "forget": return forget(a);
      case "runtimeLoad": return runtimeLoaders[a]?.();
      case "init": return init();
      case "configure": return configure(a);
      case "linkVendor": return linkVendor();
      case "warm": return warm();
      case "objects": return prepareObjects();
      case "loaded": return loaded(a, b);
      case "defineData": return defineData(a, b, c);
      default: throw new Error("unknown entry " + kind);
    }
  };
})();
