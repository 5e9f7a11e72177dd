// Durable Objects. Two sides, in every isolate:
//  - the caller's: the "durable_object_namespace" binding (env.COUNTER): ids
//    (idFromName, newUniqueId, idFromString) computed here, and stubs whose
//    fetch() and RPC calls go to the node (warren/bindings/durable_objects.py),
//    which delivers them to the isolate hosting the object;
//  - the object's: `internals.objectEvent`, called by the bootstrap for an
//    "object" invocation. It keeps one instance per object id, delivers its
//    events through the input gate (none while a storage operation or
//    blockConcurrencyWhile() is pending), holds each answer until the writes
//    before it are done (the output gate), and gives the instance
//    ctx.storage, whose every operation is a call to the node through the
//    runtime facility "__objects" (ctx.storage.sql.exec() is a synchronous one).
//    WebSockets: a fetch() answered 101 with a WebSocket keeps that object
//    invocation open while the socket is (the node relays it to the client);
//    sockets taken with ctx.acceptWebSocket() deliver their events to the
//    instance's webSocketMessage/Close/Error through the input gate. There is
//    no hibernation: the instance stays in memory while such sockets are open.
// Values (storage, RPC) use the format of services.js (internals.serialize).
// `own`: the runtime's own globals, as they were before any tenant code ran (the install
// may run later, on first use); `global` is where WebSocketRequestResponsePair goes.
globalThis.__warrenDurableObjects = function installDurableObjects(global, internals, own) {
  "use strict";

  const STORAGE = "__objects";
  const MAX_KEYS = 128;  // per get/put/delete, as on Workers
  const MAX_KEY_BYTES = 2048;
  const MAX_VALUE_BYTES = 2 * 1024 * 1024;  // SQLite-backed classes
  const MAX_KV_VALUE_BYTES = 128 * 1024;  // key-value-backed classes
  const ERROR_STATUS = 999;
  const MAX_SOCKET_TAGS = 10;  // as on Workers
  const MAX_SOCKET_TAG_LENGTH = 256;
  const MAX_OBJECT_SOCKETS = 32768;  // an answer that is an exception (never a Response's status)
  const RESERVED_METHODS = new Set([
    "constructor", "fetch", "alarm", "then", "webSocketMessage", "webSocketClose", "webSocketError",
  ]);
  // Captured now: tenants may replace the globals later.
  const DOMException = own.DOMException;
  const Request = own.Request;
  const Response = own.Response;
  const encoder = new own.TextEncoder();
  const decoder = new own.TextDecoder();
  const getRandomValues = internals.getRandomValues;  // reading global.crypto would make WebCrypto now (bootstrap.js)
  const utf8 = (text) => encoder.encode(text);
  const fromUtf8 = (bytes) => decoder.decode(bytes);
  const hasOwn = (object, key) => Object.prototype.hasOwnProperty.call(object, key);

  // --- SHA-256 and HMAC (ids are computed synchronously, as on Workers) ---------------
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));

  const IV = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const W = new Uint32Array(64);  // scratch of compress(), which nothing re-enters
  // One 64-byte block of `bytes` at `offset` into the state H.
  function compress(H, bytes, offset) {
    for (let i = 0; i < 16; i++) {
      const at = offset + i * 4;
      W[i] = (bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3];
    }
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(W[i - 15], 7) ^ rotr(W[i - 15], 18) ^ (W[i - 15] >>> 3);
      const s1 = rotr(W[i - 2], 17) ^ rotr(W[i - 2], 19) ^ (W[i - 2] >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
    }
    let a = H[0], b = H[1], c = H[2], d = H[3], e = H[4], f = H[5], g = H[6], h = H[7];
    for (let i = 0; i < 64; i++) {
      const t1 = (h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    H[0] += a; H[1] += b; H[2] += c; H[3] += d; H[4] += e; H[5] += f; H[6] += g; H[7] += h;
  }

  // SHA-256 of `prefixLength` bytes already compressed into `state`, then `bytes`.
  function sha256From(state, prefixLength, bytes) {
    const length = bytes.length;
    const padded = new Uint8Array(((length + 9 + 63) >> 6) << 6);
    padded.set(bytes);
    padded[length] = 0x80;
    const bits = (prefixLength + length) * 8;
    const view = new DataView(padded.buffer);
    view.setUint32(padded.length - 8, Math.floor(bits / 0x100000000));
    view.setUint32(padded.length - 4, bits >>> 0);
    const H = new Uint32Array(state);
    for (let offset = 0; offset < padded.length; offset += 64) compress(H, padded, offset);
    const out = new Uint8Array(32);
    const outView = new DataView(out.buffer);
    for (let i = 0; i < 8; i++) outView.setUint32(i * 4, H[i]);
    return out;
  }
  const sha256 = (bytes) => sha256From(IV, 0, bytes);

  // HMAC-SHA-256 with the key's two padded blocks compressed once, ahead: every id of a
  // namespace is two HMACs, so this halves the blocks an id costs (which the interpreter runs
  // on a bound worker's first requests, before V8 optimizes them).
  function hmacKey(key) {
    const block = new Uint8Array(64);
    block.set(key.length > 64 ? sha256(key) : key);
    const inner = new Uint8Array(64);
    const outer = new Uint8Array(64);
    for (let i = 0; i < 64; i++) {
      inner[i] = block[i] ^ 0x36;
      outer[i] = block[i] ^ 0x5c;
    }
    const prepared = { inner: new Uint32Array(IV), outer: new Uint32Array(IV) };
    compress(prepared.inner, inner, 0);
    compress(prepared.outer, outer, 0);
    return prepared;
  }
  function hmac(key, message) {
    return sha256From(key.outer, 64, sha256From(key.inner, 64, message));
  }

  const HEX = "0123456789abcdef";
  function toHex(bytes) {
    let out = "";
    for (let i = 0; i < bytes.length; i++) out += HEX[bytes[i] >> 4] + HEX[bytes[i] & 15];
    return out;
  }
  function fromHex(text) {
    const out = new Uint8Array(text.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(i * 2, 2), 16);
    return out;
  }

  // --- ids ------------------------------------------------------------------------
  // 32 bytes: 16 of body (named: an HMAC of the name; unique: random, top bit
  // set) and 16 of checksum (an HMAC of the body), both keyed by the namespace,
  // so an id from another namespace, or a typo, is refused. The node checks the
  // same way (warren/bindings/durable_objects.py: object_id_valid).
  const ID_PATTERN = /^[0-9a-f]{64}$/;
  function namespaceKey(script, className) {
    return sha256(utf8(`warren durable objects\0${script}\0${className}`));
  }
  function idHex(key, body) {
    return toHex(body) + toHex(hmac(key, body).subarray(0, 16));
  }
  function validId(key, hex) {
    return ID_PATTERN.test(hex) && idHex(key, fromHex(hex.slice(0, 32))) === hex;
  }

  const ids = new WeakMap();  // DurableObjectId -> { hex, name, namespace }
  const constructing = Symbol("construct");
  class DurableObjectId {
    constructor(token, hex, name, namespace) {
      if (token !== constructing) throw new TypeError("Illegal constructor");
      ids.set(this, { hex, name, namespace });
    }
    toString() { return idOf(this).hex; }
    equals(other) {
      const mine = idOf(this);
      const theirs = ids.get(other);
      return theirs !== undefined && theirs.hex === mine.hex && theirs.namespace === mine.namespace;
    }
    get name() { return idOf(this).name; }
    toJSON() { return idOf(this).hex; }
  }
  function idOf(value) {
    const record = ids.get(value);
    if (record === undefined) throw new TypeError("Illegal invocation: not a DurableObjectId.");
    return record;
  }
  Object.defineProperty(DurableObjectId.prototype, Symbol.toStringTag, { value: "DurableObjectId", configurable: true });

  // --- the caller's side: namespaces and stubs --------------------------------------------
  const errorTypes = { Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError };
  function makeError(name, message) {
    const Type = hasOwn(errorTypes, name) ? errorTypes[name] : Error;
    const error = new Type(String(message));
    if (error.name !== name) Object.defineProperty(error, "name", { value: String(name), writable: true, configurable: true });
    return error;
  }
  function answerError(bytes) {
    let answer;
    try {
      answer = JSON.parse(fromUtf8(bytes));
    } catch {
      return new Error("The Durable Object's answer could not be read.");
    }
    const error = answer && answer.error ? makeError(answer.error.name, answer.error.message) : new Error("The Durable Object failed.");
    Object.defineProperty(error, "remote", { value: true, writable: true, configurable: true });
    return error;
  }

  // A Response over what a stub.fetch() call returned: a host body by handle, else bytes.
  async function responseOf(value, source, url) {
    const handle = source === null ? 0 : source.takeHandle();
    if (handle) {
      return internals.responseFromHost(value.status, value.statusText, value.headers, internals.hostReader(handle), url, false);
    }
    const bytes = source === null ? new Uint8Array(0) : await source.readAll();
    const status = value.status;
    if (status < 200 || status > 599) return internals.responseFromHost(status, value.statusText, value.headers, null, url, false);
    const nullBody = status === 204 || status === 205 || status === 304;
    return new Response(nullBody ? null : bytes, { status, statusText: value.statusText, headers: value.headers });
  }

  function serializedArgs(args) {
    const text = internals.serialize(args);
    const bytes = utf8(text);
    if (bytes.length > 32 * 1024 * 1024) {
      throw new RangeError(`The RPC call's arguments are ${bytes.length} bytes serialized; the limit is ${32 * 1024 * 1024}.`);
    }
    return bytes;
  }

  function makeStub(namespace, id, call) {
    const { hex, name } = idOf(id);
    const target = { id, name };
    async function fetch(input, init = undefined) {
      const request = new Request(input, init);
      const out = internals.requestToHost(request);
      let body = null;
      if (out.bytes !== null) body = out.bytes;
      else if (out.handle) body = internals.bodySource(null, { handle: out.handle });
      else if (out.stream !== null) body = internals.bodySource(null, null, out.stream);
      const args = { id: hex, name: name ?? null, method: out.method, url: out.url, headers: out.headers };
      const { value, body: result } = await call("fetch", args, body);
      if (value.error) throw answerError(result === null ? new Uint8Array(0) : await result.readAll());
      if (value.webSocket) {
        return new Response(null, { status: 101, headers: value.headers, webSocket: internals.relayedWebSocket(value.webSocket) });
      }
      return responseOf(value, result, out.url);
    }
    async function rpc(method, args) {
      const { body } = await call("rpc", { id: hex, name: name ?? null, method }, serializedArgs(args));
      const bytes = body === null ? new Uint8Array(0) : await body.readAll();
      let answer;
      try {
        answer = JSON.parse(fromUtf8(bytes));
      } catch {
        throw new Error("The Durable Object's answer could not be read.");
      }
      if (answer.error !== undefined) throw answerError(bytes);
      return internals.deserialize(JSON.stringify(answer.value));
    }
    const methods = new Map();
    return new Proxy(Object.freeze(Object.create(null)), {
      get(_, property) {
        if (property === "fetch") return fetch;
        if (property === "id") return target.id;
        if (property === "name") return target.name;
        if (typeof property !== "string" || property === "then" || property === "toJSON") return undefined;
        if (property === "connect") {
          return () => { throw new TypeError("connect() on a Durable Object stub is not supported by warren."); };
        }
        let method = methods.get(property);
        if (method === undefined) {
          method = (...args) => rpc(property, args);
          Object.defineProperty(method, "name", { value: property });
          methods.set(property, method);
        }
        return method;
      },
      set() { return false; },
      defineProperty() { return false; },
      deleteProperty() { return false; },
      has(_, property) { return property === "fetch" || property === "id" || property === "name"; },
    });
  }

  const namespaces = new WeakMap();  // DurableObjectNamespace -> { key, tag, call }
  class DurableObjectNamespace {
    constructor(token, spec, call) {
      if (token !== constructing) throw new TypeError("Illegal constructor");
      const script = String(spec.script_name || "");
      const className = String(spec.class_name || "");
      const key = namespaceKey(script, className);
      namespaces.set(this, { key: hmacKey(key), tag: toHex(key), call });
    }
    idFromName(name) {
      const ns = namespaceOf(this);
      if (arguments.length === 0) throw new TypeError("idFromName() needs a name.");
      name = String(name);
      const body = hmac(ns.key, utf8("name\0" + name)).slice(0, 16);
      body[0] &= 0x7f;
      return new DurableObjectId(constructing, idHex(ns.key, body), name, ns.tag);
    }
    newUniqueId(options = undefined) {
      const ns = namespaceOf(this);
      void options;  // jurisdictions do not apply to one node
      const body = getRandomValues(new Uint8Array(16));
      body[0] |= 0x80;
      return new DurableObjectId(constructing, idHex(ns.key, body), undefined, ns.tag);
    }
    idFromString(text) {
      const ns = namespaceOf(this);
      text = String(text);
      if (!validId(ns.key, text)) {
        throw new TypeError("Invalid Durable Object ID: it must be 64 hex digits made by this namespace.");
      }
      return new DurableObjectId(constructing, text, undefined, ns.tag);
    }
    get(id, options = undefined) {
      const ns = namespaceOf(this);
      void options;
      const record = ids.get(id);
      if (record === undefined) throw new TypeError("get() needs a DurableObjectId (from idFromName, newUniqueId or idFromString).");
      if (record.namespace !== ns.tag) throw new TypeError("The ID is not for this Durable Object namespace.");
      return makeStub(ns, id, ns.call);
    }
    getByName(name, options = undefined) {
      return this.get(this.idFromName(name), options);
    }
    jurisdiction(name) {
      namespaceOf(this);
      void name;
      return this;
    }
  }
  function namespaceOf(value) {
    const ns = namespaces.get(value);
    if (ns === undefined) throw new TypeError("Illegal invocation: not a DurableObjectNamespace.");
    return ns;
  }
  Object.defineProperty(DurableObjectNamespace.prototype, Symbol.toStringTag, {
    value: "DurableObjectNamespace", configurable: true,
  });

  internals.defineBinding("durable_object_namespace", (spec, call) => new DurableObjectNamespace(constructing, spec, call));

  // --- the object's side: storage ------------------------------------------------------------
  function keyOf(key) {
    if (typeof key === "symbol") throw new TypeError("A key must be a string.");
    key = String(key);
    const size = utf8(key).length;
    if (size > MAX_KEY_BYTES) throw new RangeError(`Keys cannot be larger than ${MAX_KEY_BYTES} bytes. A key of size ${size} was provided.`);
    return key;
  }
  function keysOf(keys, what) {
    if (keys.length > MAX_KEYS) throw new RangeError(`${what} accepts at most ${MAX_KEYS} keys; ${keys.length} were given.`);
    return keys.map(keyOf);
  }
  function valueOf(record, value) {
    if (value === undefined) throw new TypeError("Cannot store undefined: use delete() to remove a key.");
    const text = internals.serialize(value);
    const limit = record.sql ? MAX_VALUE_BYTES : MAX_KV_VALUE_BYTES;
    const size = utf8(text).length;
    if (size > limit) throw new RangeError(`Values cannot be larger than ${limit} bytes. A value of size ${size} was provided.`);
    return text;
  }
  const parse = (text) => internals.deserialize(text);

  function listOptions(options) {
    if (options === undefined || options === null) return {};
    if (typeof options !== "object") throw new TypeError("list() options must be an object.");
    const out = {};
    for (const name of ["start", "startAfter", "end", "prefix"]) {
      if (options[name] !== undefined) out[name] = keyOf(options[name]);
    }
    if (out.start !== undefined && out.startAfter !== undefined) {
      throw new TypeError("list() cannot take both start and startAfter.");
    }
    if (options.reverse !== undefined) out.reverse = Boolean(options.reverse);
    if (options.limit !== undefined) {
      const limit = Number(options.limit);
      if (!Number.isInteger(limit) || limit <= 0) throw new RangeError("list() limit must be a positive integer.");
      out.limit = limit;
    }
    return out;
  }

  function alarmTime(time) {
    const ms = time instanceof Date ? time.getTime() : Number(time);
    if (typeof time !== "number" && !(time instanceof Date)) throw new TypeError("setAlarm() takes a time: a number of milliseconds since the epoch, or a Date.");
    if (!Number.isFinite(ms)) throw new TypeError("setAlarm() needs a finite time.");
    return Math.trunc(ms);
  }

  // One storage operation of an object: the input gate stays closed until it settles.
  function storageOp(record, method, args, write = false) {
    if (record.failure !== null) return Promise.reject(record.failure);
    record.pending++;
    let settled;
    try {
      settled = internals.hostCall(STORAGE, method, { ...args, class: record.className, id: record.hex, gen: record.gen });
    } catch (error) {
      settled = Promise.reject(error);
    }
    const result = settled.then(({ value }) => value).finally(() => {
      record.pending--;
      reopen(record);
    });
    if (write) {
      record.writes.add(result);
      result.then(() => record.writes.delete(result), (error) => {
        record.writes.delete(result);
        record.writeFailure ??= error;
      });
    }
    return result;
  }

  function storageSync(record, method, args) {
    if (record.failure !== null) throw record.failure;
    return internals.callSync(STORAGE, method, { ...args, class: record.className, id: record.hex, gen: record.gen });
  }

  // A transaction() closure's view: reads see its own writes; writes are kept
  // here and committed in one batch when the closure returns.
  class Transaction {
    #record;
    #outer;
    #writes = new Map();  // key -> serialized value, or null for a delete
    #alarm = undefined;  // undefined: untouched; null: deleted; a number: set
    #done = false;
    rolledBack = false;

    constructor(token, record, outer) {
      if (token !== constructing) throw new TypeError("Illegal constructor");
      this.#record = record;
      this.#outer = outer;
    }
    #check() {
      if (this.#done) throw new Error("This transaction has ended.");
      if (this.rolledBack) throw new Error("This transaction has been rolled back.");
    }
    #local(key) {
      if (this.#writes.has(key)) return { found: true, value: this.#writes.get(key) };
      if (this.#outer !== null) return this.#outer.lookup(key);
      return { found: false };
    }
    lookup(key) { return this.#local(key); }
    overlay() {
      const merged = this.#outer !== null ? this.#outer.overlay() : new Map();
      for (const [key, value] of this.#writes) merged.set(key, value);
      return merged;
    }
    async get(keys, options = undefined) {
      this.#check();
      void options;
      if (Array.isArray(keys)) {
        const wanted = keysOf(keys, "get()");
        const missing = wanted.filter((key) => !this.#local(key).found);
        const stored = missing.length ? await storageOp(this.#record, "get", { keys: missing }) : [];
        const found = new Map(stored);
        const result = new Map();
        for (const key of [...new Set(wanted)].sort(compareKeys)) {
          const local = this.#local(key);
          const text = local.found ? local.value : found.get(key);
          if (text !== undefined && text !== null) result.set(key, parse(text));
        }
        return result;
      }
      const key = keyOf(keys);
      const local = this.#local(key);
      if (local.found) return local.value === null ? undefined : parse(local.value);
      const stored = await storageOp(this.#record, "get", { keys: [key] });
      return stored.length ? parse(stored[0][1]) : undefined;
    }
    async put(keyOrEntries, value = undefined, options = undefined) {
      this.#check();
      for (const [key, text] of entriesOf(this.#record, keyOrEntries, value, options)) this.#writes.set(key, text);
    }
    async delete(keys, options = undefined) {
      this.#check();
      void options;
      const many = Array.isArray(keys);
      const list = many ? keysOf(keys, "delete()") : [keyOf(keys)];
      let count = 0;
      for (const key of list) {
        const local = this.#local(key);
        const exists = local.found ? local.value !== null
          : (await storageOp(this.#record, "get", { keys: [key] })).length > 0;
        if (exists) count++;
        this.#writes.set(key, null);
      }
      return many ? count : count > 0;
    }
    async list(options = undefined) {
      this.#check();
      const opts = listOptions(options);
      const overlay = this.overlay();
      const stored = await storageOp(this.#record, "list", { ...opts, limit: opts.limit === undefined ? undefined : opts.limit + overlay.size });
      const merged = new Map(stored);
      for (const [key, text] of overlay) {
        if (!inRange(key, opts)) continue;
        if (text === null) merged.delete(key); else merged.set(key, text);
      }
      let keys = [...merged.keys()].sort(compareKeys);
      if (opts.reverse) keys.reverse();
      if (opts.limit !== undefined) keys = keys.slice(0, opts.limit);
      return new Map(keys.map((key) => [key, parse(merged.get(key))]));
    }
    async getAlarm(options = undefined) {
      this.#check();
      void options;
      if (this.#alarm !== undefined) return this.#alarm;
      return storageOp(this.#record, "getAlarm", {});
    }
    async setAlarm(time, options = undefined) {
      this.#check();
      void options;
      requireAlarmHandler(this.#record);
      this.#alarm = alarmTime(time);
    }
    async deleteAlarm(options = undefined) {
      this.#check();
      void options;
      this.#alarm = null;
    }
    rollback() {
      if (this.#done) throw new Error("This transaction has ended.");
      this.rolledBack = true;
    }
    // The writes for the node, or those to fold into the enclosing transaction.
    finish() {
      this.#done = true;
      return { writes: this.#writes, alarm: this.#alarm };
    }
    absorb({ writes, alarm }) {
      for (const [key, text] of writes) this.#writes.set(key, text);
      if (alarm !== undefined) this.#alarm = alarm;
    }
  }

  // Keys sort as on Workers: by their UTF-8 bytes, which is code point order.
  // UTF-16 units agree with it except that surrogates (code points past
  // U+FFFF) must sort after U+E000-U+FFFF.
  const unitRank = (unit) => (unit >= 0xd800 && unit <= 0xdfff ? unit + 0x2000 : unit >= 0xe000 ? unit - 0x800 : unit);
  function compareKeys(a, b) {
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) {
      const x = a.charCodeAt(i), y = b.charCodeAt(i);
      if (x !== y) return unitRank(x) - unitRank(y);
    }
    return a.length - b.length;
  }
  function inRange(key, opts) {
    if (opts.prefix !== undefined && !key.startsWith(opts.prefix)) return false;
    if (opts.start !== undefined && compareKeys(key, opts.start) < 0) return false;
    if (opts.startAfter !== undefined && compareKeys(key, opts.startAfter) <= 0) return false;
    if (opts.end !== undefined && compareKeys(key, opts.end) >= 0) return false;
    return true;
  }

  function entriesOf(record, keyOrEntries, value, options) {
    if (typeof keyOrEntries === "object" && keyOrEntries !== null && !Array.isArray(keyOrEntries)) {
      void value;
      const keys = Object.keys(keyOrEntries);
      if (keys.length > MAX_KEYS) throw new RangeError(`put() accepts at most ${MAX_KEYS} entries; ${keys.length} were given.`);
      return keys.map((key) => [keyOf(key), valueOf(record, keyOrEntries[key])]);
    }
    void options;
    if (arguments.length < 3 && value === undefined) throw new TypeError("put() needs a key and a value, or an object of entries.");
    return [[keyOf(keyOrEntries), valueOf(record, value)]];
  }

  function requireAlarmHandler(record) {
    if (typeof record.cls.prototype?.alarm !== "function") {
      throw new TypeError("Your Durable Object class must have an alarm() handler in order to call setAlarm().");
    }
  }

  class SqlStorageCursor {
    #columns;
    #rows;
    #index = 0;
    #read;
    #written;
    constructor(token, result) {
      if (token !== constructing) throw new TypeError("Illegal constructor");
      this.#columns = result.columns;
      this.#rows = result.rows.map((row) => row.map(sqlValueIn));
      this.#read = result.rowsRead;
      this.#written = result.rowsWritten;
    }
    get columnNames() { return this.#columns.slice(); }
    get rowsRead() { return this.#read; }
    get rowsWritten() { return this.#written; }
    #object(row) {
      const out = {};
      this.#columns.forEach((column, i) => {
        Object.defineProperty(out, column, { value: row[i], enumerable: true, writable: true, configurable: true });
      });
      return out;
    }
    next() {
      if (this.#index >= this.#rows.length) return { done: true, value: undefined };
      return { done: false, value: this.#object(this.#rows[this.#index++]) };
    }
    [Symbol.iterator]() { return this; }
    toArray() {
      const rest = this.#rows.slice(this.#index).map((row) => this.#object(row));
      this.#index = this.#rows.length;
      return rest;
    }
    one() {
      const rest = this.toArray();
      if (rest.length === 0) throw new Error("Expected exactly one result from SQL query, but got no results.");
      if (rest.length > 1) throw new Error("Expected exactly one result from SQL query, but got multiple results.");
      return rest[0];
    }
    raw() {
      const rows = this.#rows;
      const cursor = this;
      const iterator = {
        columnNames: this.#columns.slice(),
        next() {
          if (cursor.#index >= rows.length) return { done: true, value: undefined };
          return { done: false, value: rows[cursor.#index++].slice() };
        },
        toArray() {
          const rest = rows.slice(cursor.#index).map((row) => row.slice());
          cursor.#index = rows.length;
          return rest;
        },
        [Symbol.iterator]() { return this; },
      };
      return iterator;
    }
  }

  // SQL values cross as JSON; blobs as {"$b": latin-1}, non-finite numbers as {"$f": "Infinity"}.
  function sqlValueOut(value) {
    if (value === null || typeof value === "string") return value;
    if (typeof value === "number") return Number.isFinite(value) ? value : { $f: String(value) };
    if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
      return { $b: internals.bytesToLatin1(internals.bytesOf(value)) };
    }
    throw new TypeError(`SQL bindings must be strings, numbers, null or ArrayBuffers; got ${value === undefined ? "undefined" : typeof value}.`);
  }
  function sqlValueIn(value) {
    if (value !== null && typeof value === "object") {
      if (typeof value.$b === "string") return internals.latin1ToBytes(value.$b).buffer;
      if (typeof value.$f === "string") return Number(value.$f);
    }
    return value;
  }

  class SqlStorage {
    #record;
    constructor(token, record) {
      if (token !== constructing) throw new TypeError("Illegal constructor");
      this.#record = record;
    }
    exec(query, ...bindings) {
      if (typeof query !== "string") throw new TypeError("exec() needs a SQL query string.");
      const result = storageSync(this.#record, "sqlExec", { query, bindings: bindings.map(sqlValueOut) });
      return new SqlStorageCursor(constructing, result);
    }
    get databaseSize() {
      return storageSync(this.#record, "sqlSize", {});
    }
  }

  class DurableObjectStorage {
    #record;
    #sql = null;
    constructor(token, record) {
      if (token !== constructing) throw new TypeError("Illegal constructor");
      this.#record = record;
    }
    get sql() {
      if (!this.#record.sql) {
        throw new Error("SQL is not enabled for this Durable Object class: declare it in new_sqlite_classes of a [[migrations]] entry.");
      }
      this.#sql ??= new SqlStorage(constructing, this.#record);
      return this.#sql;
    }
    async get(keys, options = undefined) {
      void options;
      const record = this.#record;
      if (Array.isArray(keys)) {
        const stored = await storageOp(record, "get", { keys: keysOf(keys, "get()") });
        return new Map(stored.map(([key, text]) => [key, parse(text)]));
      }
      const stored = await storageOp(record, "get", { keys: [keyOf(keys)] });
      return stored.length ? parse(stored[0][1]) : undefined;
    }
    put(keyOrEntries, value = undefined, options = undefined) {
      const record = this.#record;
      let entries;
      try {
        entries = entriesOf(record, ...arguments);
      } catch (error) {
        return Promise.reject(error);
      }
      void options;
      return storageOp(record, "put", { entries }, true).then(() => undefined);
    }
    delete(keys, options = undefined) {
      void options;
      const record = this.#record;
      let list;
      try {
        list = Array.isArray(keys) ? keysOf(keys, "delete()") : [keyOf(keys)];
      } catch (error) {
        return Promise.reject(error);
      }
      return storageOp(record, "delete", { keys: list }, true).then((count) => (Array.isArray(keys) ? count : count > 0));
    }
    async list(options = undefined) {
      const stored = await storageOp(this.#record, "list", listOptions(options));
      return new Map(stored.map(([key, text]) => [key, parse(text)]));
    }
    deleteAll(options = undefined) {
      void options;
      return storageOp(this.#record, "deleteAll", {}, true).then(() => undefined);
    }
    async transaction(closure) {
      if (typeof closure !== "function") throw new TypeError("transaction() needs a function.");
      const record = this.#record;
      const outer = record.transaction;
      const txn = new Transaction(constructing, record, outer);
      // The input gate stays closed for the whole transaction, so no other
      // event can see or write its keys half-way.
      record.pending++;
      record.transaction = txn;
      try {
        const result = await closure(txn);
        const { writes, alarm } = txn.finish();
        if (!txn.rolledBack) {
          if (outer !== null) {
            outer.absorb({ writes, alarm });
          } else if (writes.size || alarm !== undefined) {
            const ops = [...writes].map(([key, text]) => (text === null ? ["delete", key] : ["put", key, text]));
            if (alarm !== undefined) ops.push(["alarm", alarm]);
            await storageOp(record, "batch", { ops }, true);
          }
        }
        return result;
      } catch (error) {
        txn.finish();
        throw error;
      } finally {
        record.transaction = outer;
        record.pending--;
        reopen(record);
      }
    }
    transactionSync(closure) {
      if (typeof closure !== "function") throw new TypeError("transactionSync() needs a function.");
      const record = this.#record;
      if (!record.sql) throw new Error("transactionSync() needs a SQLite-backed Durable Object class.");
      storageSync(record, "sqlBegin", {});
      let result;
      try {
        result = closure();
      } catch (error) {
        storageSync(record, "sqlRollback", {});
        throw error;
      }
      storageSync(record, "sqlCommit", {});
      return result;
    }
    async sync() {
      await outputGate(this.#record);
    }
    getAlarm(options = undefined) {
      void options;
      return storageOp(this.#record, "getAlarm", {});
    }
    setAlarm(time, options = undefined) {
      void options;
      const record = this.#record;
      try {
        requireAlarmHandler(record);
        time = alarmTime(time);
      } catch (error) {
        return Promise.reject(error);
      }
      return storageOp(record, "setAlarm", { time }, true).then(() => undefined);
    }
    deleteAlarm(options = undefined) {
      void options;
      return storageOp(this.#record, "setAlarm", { time: null }, true).then(() => undefined);
    }
  }

  class DurableObjectState {
    #record;
    constructor(token, record) {
      if (token !== constructing) throw new TypeError("Illegal constructor");
      this.#record = record;
    }
    get id() { return this.#record.id; }
    get storage() { return this.#record.storage; }
    get props() { return {}; }
    waitUntil(promise) {
      // An object lives on after its events, so there is nothing to extend: as on Workers.
      Promise.resolve(promise).catch((error) => internals.reportError(error));
    }
    async blockConcurrencyWhile(callback) {
      if (typeof callback !== "function") throw new TypeError("blockConcurrencyWhile() needs a function.");
      const record = this.#record;
      record.pending++;
      try {
        return await callback();
      } catch (error) {
        // As on Workers: the object is reset, its next event gets a new instance.
        reset(record, error);
        throw error;
      } finally {
        record.pending--;
        reopen(record);
      }
    }
    abort(reason = undefined) {
      const error = new Error(reason === undefined ? "The Durable Object was aborted." : String(reason));
      reset(this.#record, error);
      throw error;
    }
    // The WebSocket Hibernation API's surface (without hibernation: see the top).
    acceptWebSocket(ws, tags = undefined) {
      const record = this.#record;
      if (!internals.isWebSocket(ws)) throw new TypeError("acceptWebSocket() needs a WebSocket.");
      const list = tags === undefined || tags === null ? [] : Array.from(tags, (tag) => String(tag));
      if (list.length > MAX_SOCKET_TAGS) throw new RangeError(`A WebSocket may have at most ${MAX_SOCKET_TAGS} tags.`);
      for (const tag of list) {
        if (tag.length === 0 || tag.length > MAX_SOCKET_TAG_LENGTH) {
          throw new RangeError(`A WebSocket tag must be 1 to ${MAX_SOCKET_TAG_LENGTH} characters long.`);
        }
      }
      if (record.sockets.size >= MAX_OBJECT_SOCKETS) {
        throw new RangeError(`A Durable Object may accept at most ${MAX_OBJECT_SOCKETS} WebSockets.`);
      }
      internals.acceptWithHandler(ws, (kind, fields, taken) => socketEvent(record, ws, kind, fields, taken));
      record.sockets.set(ws, { tags: Object.freeze([...new Set(list)]), autoAt: null, closed: false });
    }
    getWebSockets(tag = undefined) {
      const out = [];
      for (const [ws, info] of this.#record.sockets) {
        if (!info.closed && (tag === undefined || info.tags.includes(String(tag)))) out.push(ws);
      }
      return out;
    }
    getTags(ws) {
      const info = this.#record.sockets.get(ws);
      if (info === undefined) throw new TypeError("getTags() needs a WebSocket accepted with acceptWebSocket().");
      return [...info.tags];
    }
    setWebSocketAutoResponse(pair = undefined) {
      if (pair !== undefined && !(pair instanceof WebSocketRequestResponsePair)) {
        throw new TypeError("setWebSocketAutoResponse() needs a WebSocketRequestResponsePair.");
      }
      this.#record.autoResponse = pair ?? null;
    }
    getWebSocketAutoResponse() { return this.#record.autoResponse; }
    getWebSocketAutoResponseTimestamp(ws) {
      const info = this.#record.sockets.get(ws);
      return info === undefined || info.autoAt === null ? null : new Date(info.autoAt);
    }
    setHibernatableWebSocketEventTimeout(timeoutMs = undefined) { void timeoutMs; }
    getHibernatableWebSocketEventTimeout() { return null; }
  }

  class WebSocketRequestResponsePair {
    #request;
    #response;
    constructor(request, response) {
      if (arguments.length < 2) throw new TypeError("WebSocketRequestResponsePair needs a request and a response.");
      this.#request = String(request);
      this.#response = String(response);
      if (utf8(this.#request).length > 2048 || utf8(this.#response).length > 2048) {
        throw new RangeError("A WebSocket auto-response request and response may be at most 2048 bytes each.");
      }
    }
    get request() { return this.#request; }
    get response() { return this.#response; }
  }
  Object.defineProperty(global, "WebSocketRequestResponsePair", {
    value: WebSocketRequestResponsePair, writable: true, configurable: true, enumerable: false,
  });

  // An event of a socket taken with acceptWebSocket(): delivered to the instance's
  // handler as one of the object's events (after the gate, one at a time).
  function socketEvent(record, ws, kind, fields, taken) {
    const info = record.sockets.get(ws);
    // Closed: no longer among getWebSockets(), but its tags last until its handler has run.
    const last = kind !== "message";
    if (last && info !== undefined) info.closed = true;
    const forget = () => { if (last && record.sockets.get(ws) === info) record.sockets.delete(ws); };
    const auto = record.autoResponse;
    if (kind === "message" && auto !== null && info !== undefined && fields.data === auto.request) {
      info.autoAt = Date.now();
      taken();
      try { ws.send(auto.response); } catch (error) { internals.reportError(error); }
      return;
    }
    const current = objects.get(record.key) === record ? record : null;
    if (current === null || current.failure !== null) {  // the instance was reset: nobody hears it
      taken();
      forget();
      return;
    }
    const requestId = internals.webSocketRequestId(ws);
    const local = async () => {
      taken();
      const instance = record.instance;
      const handler = kind === "message" ? "webSocketMessage" : kind === "close" ? "webSocketClose" : "webSocketError";
      try {
        if (typeof instance[handler] !== "function") return undefined;
        if (kind === "message") return await instance.webSocketMessage(ws, fields.data);
        if (kind === "close") return await instance.webSocketClose(ws, fields.code, fields.reason, fields.wasClean);
        return await instance.webSocketError(ws, fields.error);
      } finally {
        forget();
      }
    };
    record.queue.push({ requestId, local, ready: true, resolve: () => {} });
    pump(record);
  }

  // --- the object's side: instances, gates, events -----------------------------------------
  const objects = new Map();  // "Class/hex" -> record

  function newRecord(event, cls, env) {
    const record = {
      key: `${event.class}/${event.id}`,
      script: String(event.script || ""),
      className: String(event.class),
      hex: String(event.id),
      gen: Number(event.gen),
      sql: event.sql !== false,
      cls,
      env,
      instance: null,
      id: null,
      state: null,
      storage: null,
      pending: 0,  // storage operations and blockConcurrencyWhile() callbacks: the gate is closed while > 0
      running: 0,  // events delivered and not yet answered
      queue: [],
      reopening: false,
      writes: new Set(),
      writeFailure: null,
      failure: null,
      transaction: null,
      sockets: new Map(),  // WebSocket -> { tags, autoAt }: those taken with acceptWebSocket()
      autoResponse: null,
    };
    const tag = toHex(namespaceKey(record.script, record.className));
    record.id = new DurableObjectId(constructing, record.hex, event.name ?? undefined, tag);
    record.storage = new DurableObjectStorage(constructing, record);
    record.state = new DurableObjectState(constructing, record);
    return record;
  }

  // Drop the instance; events not yet delivered go to a new one.
  function reset(record, error) {
    if (record.failure !== null) return;
    record.failure = error;
    // Its WebSockets go with the instance, as on Workers; their pending events are dropped.
    record.queue = record.queue.filter((entry) => entry.local === undefined);
    for (const ws of record.sockets.keys()) {
      try { ws.close(1011, "The Durable Object was reset."); } catch { /* already closed */ }
    }
    record.sockets.clear();
    if (objects.get(record.key) === record) {
      objects.delete(record.key);
      if (record.queue.length) {
        const fresh = newRecord({ class: record.className, id: record.hex, gen: record.gen, sql: record.sql,
          name: record.id.name, script: record.script }, record.cls, record.env);
        fresh.queue = record.queue;
        record.queue = [];
        objects.set(fresh.key, fresh);
        reopen(fresh);
      }
    }
  }

  // After a storage operation settles: deliver queued events once the code
  // that awaited it has run (in a later slice), if nothing closed the gate again.
  function reopen(record) {
    if (record.pending > 0 || record.reopening || record.queue.length === 0 || !record.queue[0].ready) return;
    record.reopening = true;
    const next = record.queue[0].requestId;
    try {
      internals.defer(next, () => { record.reopening = false; pump(record); });
    } catch {
      record.reopening = false;
      Promise.resolve().then(() => pump(record));
    }
  }

  function pump(record) {
    while (record.pending === 0 && record.queue.length > 0 && record.queue[0].ready) {
      deliver(record, record.queue.shift());
    }
  }

  async function outputGate(record) {
    while (record.writes.size > 0) {
      await Promise.allSettled([...record.writes]);
    }
    if (record.writeFailure !== null) {
      const error = record.writeFailure;
      reset(record, error);
      throw error;
    }
  }

  function errorAnswer(error) {
    const isError = error instanceof Error;
    const name = isError ? String(error.name) : "Error";
    const message = isError ? String(error.message) : String(internals.inspect(error));
    return { status: ERROR_STATUS, bytes: utf8(JSON.stringify({ error: { name, message } })), error };
  }

  function findMethod(instance, method, DurableObjectBase) {
    if (RESERVED_METHODS.has(method)) return null;
    let proto = Object.getPrototypeOf(instance);
    while (proto !== null && proto !== DurableObjectBase.prototype && proto !== Object.prototype) {
      const descriptor = Object.getOwnPropertyDescriptor(proto, method);
      if (descriptor !== undefined) return typeof descriptor.value === "function" ? descriptor.value : null;
      proto = Object.getPrototypeOf(proto);
    }
    return null;
  }

  function run(record, entry) {
    const { event } = entry;
    const instance = record.instance;
    if (event.kind === "fetch") {
      if (typeof instance.fetch !== "function") throw new TypeError("The Durable Object has no fetch() handler.");
      const request = internals.requestFromHost(event.method, event.url, event.headers, entry.reader);
      return instance.fetch(request);
    }
    if (event.kind === "alarm") {
      if (typeof instance.alarm !== "function") throw new TypeError("The Durable Object has no alarm() handler.");
      return instance.alarm({ retryCount: Number(event.retryCount) || 0, isRetry: Boolean(event.isRetry) });
    }
    if (event.kind === "rpc") {
      if (!(instance instanceof entry.DurableObjectBase)) {
        throw new TypeError("The receiving Durable Object does not support RPC, because its class does not extend DurableObject from \"cloudflare:workers\".");
      }
      const method = String(event.method);
      const fn = findMethod(instance, method, entry.DurableObjectBase);
      if (fn === null) throw new TypeError(`The RPC receiver does not implement the method "${method}".`);
      const args = internals.deserialize(fromUtf8(entry.payload));
      if (!Array.isArray(args)) throw new TypeError("malformed RPC arguments");
      return fn.apply(instance, args);
    }
    throw new TypeError(`unknown Durable Object event ${event.kind}`);
  }

  async function answer(record, entry, value) {
    await outputGate(record);
    const kind = entry.event.kind;
    if (kind === "fetch") {
      if (!internals.isResponse(value)) {
        throw new TypeError("Incorrect type for Promise: the Promise did not resolve to 'Response'.");
      }
      const out = internals.responseToHost(value);
      if (out.webSocket) {  // the bootstrap couples it to this invocation (the node relays it)
        return { status: 101, statusText: "", headers: out.headers, bytes: new Uint8Array(0), webSocket: out.webSocket };
      }
      let bytes = out.bytes;
      if (bytes === null && out.handle) bytes = await internals.hostReader(out.handle).readAll();
      else if (bytes === null && out.stream !== null) bytes = await internals.bodySource(null, null, out.stream).readAll();
      return { status: out.status, statusText: out.statusText || "", headers: out.headers, bytes: bytes ?? new Uint8Array(0) };
    }
    if (kind === "rpc") {
      const bytes = utf8(`{"value":${internals.serialize(value)}}`);
      if (bytes.length > 32 * 1024 * 1024) {
        throw new RangeError(`The RPC result is ${bytes.length} bytes serialized; the limit is ${32 * 1024 * 1024}.`);
      }
      return { status: 200, bytes };
    }
    return { status: 200, bytes: utf8('{"value":null}') };
  }

  function deliver(record, entry) {
    if (record.failure !== null) {
      if (entry.local === undefined) entry.resolve(errorAnswer(record.failure));
      return;
    }
    if (record.instance === null) {
      try {
        record.instance = new record.cls(record.state, record.env);
      } catch (error) {
        entry.resolve(errorAnswer(error));
        reset(record, error);
        return;
      }
      if (record.pending > 0) {  // the constructor closed the gate (blockConcurrencyWhile, storage)
        record.queue.unshift(entry);
        return;
      }
    }
    record.running++;
    let result;
    try {
      result = Promise.resolve(entry.local !== undefined ? entry.local() : run(record, entry));
    } catch (error) {
      result = Promise.reject(error);
    }
    if (entry.local !== undefined) {  // a WebSocket's event: nobody waits for an answer
      result
        .then(undefined, (error) => internals.reportError(error))
        .finally(() => { record.running--; });
      return;
    }
    result
      .then((value) => answer(record, entry, value))
      .then(undefined, async (error) => {
        // Held like any answer until the writes before it are done.
        await outputGate(record).catch(() => {});
        return errorAnswer(error);
      })
      .then(entry.resolve)
      .finally(() => { record.running--; });
  }

  function evictIdle(keys) {
    if (!Array.isArray(keys)) return;
    for (const key of keys) {
      const record = objects.get(String(key));
      if (record !== undefined && record.running === 0 && record.pending === 0 && record.queue.length === 0) {
        objects.delete(record.key);
      }
    }
  }

  // An "object" invocation: resolves { status, bytes, headers?, statusText?, error? }
  // for the bootstrap to answer the node with.
  internals.objectEvent = function objectEvent(requestId, event, reader, moduleExports, env, DurableObjectBase) {
    evictIdle(event.evict);
    const className = String(event.class);
    const cls = moduleExports !== null && hasOwn(moduleExports, className) ? moduleExports[className] : undefined;
    if (typeof cls !== "function") {
      if (reader !== null) reader.release();
      return Promise.resolve(errorAnswer(new TypeError(
        `The worker does not export a Durable Object class named "${className}" (it must be a module worker's named export).`)));
    }
    const key = `${className}/${event.id}`;
    let record = objects.get(key);
    if (record === undefined || record.gen !== Number(event.gen) || record.cls !== cls) {
      record = newRecord(event, cls, env);
      objects.set(key, record);
    }
    return new Promise((resolve) => {
      const entry = { requestId, event, reader, resolve, DurableObjectBase, payload: null, ready: event.kind !== "rpc" };
      record.queue.push(entry);
      if (!entry.ready) {
        // RPC arguments are read before the call joins the queue's head: reading them is not the object's work.
        (reader === null ? Promise.resolve(new Uint8Array(0)) : reader.readAll()).then((bytes) => {
          entry.payload = bytes;
          entry.ready = true;
          pump(record);
        }, (error) => {
          const at = record.queue.indexOf(entry);
          if (at >= 0) record.queue.splice(at, 1);
          resolve(errorAnswer(error));
          pump(record);
        });
      }
      pump(record);
    });
  };
};
