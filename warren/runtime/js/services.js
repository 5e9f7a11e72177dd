// Service bindings: `env.AUTH.fetch(request)` and RPC (`await env.AUTH.add(1, 2)`)
// to another worker on the same node (warren/bindings/service.py runs the call
// there). Also the callee's side of RPC (`rpcDispatch`, called by the
// bootstrap for an "rpc" invocation) and the value format RPC and queues share
// (`serialize` / `deserialize`): JSON, with tags for what JSON cannot hold.
globalThis.__warrenServices = function installServices(global, internals) {
  "use strict";

  const MAX_RPC_BYTES = 32 * 1024 * 1024;  // arguments or a result, serialized (Workers' RPC limit)
  const MAX_DEPTH = 1000;  // nesting of one value
  const DOMException = global.DOMException;
  const encoder = new global.TextEncoder();
  const decoder = new global.TextDecoder();
  const utf8 = (text) => encoder.encode(text);
  const fromUtf8 = (bytes) => decoder.decode(bytes);

  // --- values ---------------------------------------------------------------------
  // A value is JSON as it is when JSON can hold it (null, booleans, strings,
  // finite numbers); anything else is an array whose first item is a tag.
  const VIEWS = {
    Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array,
    Float32Array, Float64Array, BigInt64Array, BigUint64Array, DataView,
  };
  const cloneError = (message) => new DOMException(message, "DataCloneError");

  function typeName(value) {
    try {
      const proto = Object.getPrototypeOf(value);
      const name = proto && proto.constructor && proto.constructor.name;
      return typeof name === "string" && name ? name : "Object";
    } catch {
      return "Object";
    }
  }

  function encode(value, ancestors, depth) {
    if (value === null || typeof value === "boolean" || typeof value === "string") return value;
    if (typeof value === "number") {
      if (Number.isFinite(value) && !Object.is(value, -0)) return value;
      return ["n", Object.is(value, -0) ? "-0" : String(value)];
    }
    if (value === undefined) return ["u"];
    if (typeof value === "bigint") return ["b", value.toString()];
    if (typeof value === "function") {
      throw cloneError("Functions cannot be passed to or returned from a warren RPC call.");
    }
    if (typeof value !== "object") throw cloneError(`A ${typeof value} cannot be serialized.`);
    if (depth > MAX_DEPTH) throw cloneError("The value is nested too deeply to serialize.");
    if (ancestors.has(value)) throw cloneError("A value that contains itself cannot be serialized.");
    ancestors.add(value);
    try {
      return encodeObject(value, ancestors, depth + 1);
    } finally {
      ancestors.delete(value);
    }
  }

  function encodeObject(value, ancestors, depth) {
    if (Array.isArray(value)) return ["a", Array.from(value, (item) => encode(item, ancestors, depth))];
    if (value instanceof Date) return ["d", value.getTime()];
    if (value instanceof RegExp) return ["r", value.source, value.flags];
    if (value instanceof Map) {
      return ["m", Array.from(value, ([k, v]) => [encode(k, ancestors, depth), encode(v, ancestors, depth)])];
    }
    if (value instanceof Set) return ["s", Array.from(value, (item) => encode(item, ancestors, depth))];
    if (value instanceof ArrayBuffer) return ["x", "ArrayBuffer", internals.bytesToLatin1(new Uint8Array(value))];
    if (ArrayBuffer.isView(value)) {
      const kind = Object.keys(VIEWS).find((name) => value instanceof VIEWS[name]);
      if (kind === undefined) throw cloneError(`Could not serialize object of type "${typeName(value)}".`);
      const bytes = new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
      return ["x", kind, internals.bytesToLatin1(bytes)];
    }
    if (value instanceof Error) {
      return ["e", String(value.name), String(value.message), String(value.stack || "")];
    }
    const proto = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) {
      throw cloneError(`Could not serialize object of type "${typeName(value)}". This type does not support serialization.`);
    }
    const out = {};
    for (const key of Object.keys(value)) {
      Object.defineProperty(out, key, {
        value: encode(value[key], ancestors, depth), enumerable: true, writable: true, configurable: true,
      });
    }
    return ["o", out];
  }

  const ERROR_TYPES = { Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError };

  function makeError(name, message) {
    const Type = Object.prototype.hasOwnProperty.call(ERROR_TYPES, name) ? ERROR_TYPES[name] : Error;
    const error = new Type(String(message));
    if (error.name !== name) {
      Object.defineProperty(error, "name", { value: String(name), writable: true, configurable: true });
    }
    return error;
  }

  function decode(value) {
    if (!Array.isArray(value)) {
      if (value !== null && typeof value === "object") throw new TypeError("malformed serialized value");
      return value;
    }
    const [tag, a, b] = value;
    switch (tag) {
      case "u": return undefined;
      case "n": return a === "-0" ? -0 : Number(a);
      case "b": return BigInt(a);
      case "a": return a.map(decode);
      case "d": return new Date(a);
      case "r": return new RegExp(a, b);
      case "m": return new Map(a.map(([k, v]) => [decode(k), decode(v)]));
      case "s": return new Set(a.map(decode));
      case "x": {
        const bytes = internals.latin1ToBytes(b);
        if (a === "ArrayBuffer") return bytes.buffer;
        const View = VIEWS[a];
        if (View === undefined) throw new TypeError("malformed serialized value");
        if (View === DataView) return new DataView(bytes.buffer);
        return new View(bytes.buffer, 0, bytes.byteLength / View.BYTES_PER_ELEMENT);
      }
      case "e": {
        const error = makeError(a, b);
        return error;
      }
      case "o": {
        const out = {};
        for (const key of Object.keys(a)) {
          Object.defineProperty(out, key, { value: decode(a[key]), enumerable: true, writable: true, configurable: true });
        }
        return out;
      }
      default: throw new TypeError("malformed serialized value");
    }
  }

  // Text for the host to carry; a value too large for one call is refused here.
  function serialize(value) {
    return JSON.stringify(encode(value, new Set(), 0));
  }
  internals.serialize = serialize;
  internals.deserialize = (text) => decode(JSON.parse(text));

  function serializedBytes(value, what) {
    const bytes = utf8(serialize(value));
    if (bytes.length > MAX_RPC_BYTES) {
      throw new RangeError(`${what} is ${bytes.length} bytes serialized; the limit is ${MAX_RPC_BYTES}.`);
    }
    return bytes;
  }

  // --- the caller's side: env.SERVICE ------------------------------------------------
  const NULL_BODY_STATUSES = new Set([101, 204, 205, 304]);
  // The Response for what a service's fetch() returned: a large body stays on the
  // host and streams by handle; a small one came inline.
  function responseOf(value, source, url) {
    const bytes = source === null ? null : source.peekBytes();
    if (bytes === null) {
      const handle = source === null ? 0 : source.takeHandle();
      const reader = handle ? internals.hostReader(handle) : null;
      return internals.responseFromHost(value.status, value.statusText, value.headers, reader, url, false);
    }
    const body = NULL_BODY_STATUSES.has(value.status) ? null : bytes;
    return new global.Response(body, { status: value.status, statusText: value.statusText, headers: value.headers });
  }

  function serviceStub(spec, call) {
    async function fetch(input, init = undefined) {
      const request = new global.Request(input, init);
      const out = internals.requestToHost(request);
      const head = { method: out.method, url: out.url, headers: out.headers };
      let body = null;
      if (out.bytes !== null) body = out.bytes;
      else if (out.handle) body = internals.bodySource(null, { handle: out.handle });
      else if (out.stream !== null) body = internals.bodySource(null, null, out.stream);
      const { value, body: result } = await call("fetch", head, body);
      if (value.webSocket) {  // the service accepted a WebSocket: the node holds it for this worker to return
        return new global.Response(null, { status: 101, headers: value.headers, webSocket: internals.relayedWebSocket(value.webSocket) });
      }
      return responseOf(value, result, out.url);
    }

    async function rpc(method, args) {
      const { body } = await call("rpc", { method }, serializedBytes(args, "The RPC call's arguments"));
      const answer = JSON.parse(fromUtf8(body === null ? new Uint8Array(0) : await body.readAll()));
      if (answer.error !== undefined) throw makeError(answer.error.name, answer.error.message);
      return decode(answer.value);
    }

    const methods = new Map();
    const target = Object.freeze(Object.create(null));
    return new Proxy(target, {
      get(_, property) {
        if (property === "fetch") return fetch;
        if (typeof property !== "string" || property === "then" || property === "toJSON") return undefined;
        if (property === "connect") {
          return () => { throw new TypeError("connect() through a service binding is not supported by warren."); };
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
      has(_, property) { return property === "fetch"; },
    });
  }

  internals.defineBinding("service", serviceStub);

  // --- the callee's side: an "rpc" invocation ------------------------------------------
  // The method must be the entrypoint class's own (its prototype chain up to
  // WorkerEntrypoint): not a property set by its constructor, not Object's.
  const RESERVED = new Set(["constructor", "fetch", "connect", "then"]);
  function findMethod(instance, method, WorkerEntrypoint) {
    if (RESERVED.has(method)) return null;
    let proto = Object.getPrototypeOf(instance);
    while (proto !== null && proto !== WorkerEntrypoint.prototype && proto !== Object.prototype) {
      const descriptor = Object.getOwnPropertyDescriptor(proto, method);
      if (descriptor !== undefined) return typeof descriptor.value === "function" ? descriptor.value : null;
      proto = Object.getPrototypeOf(proto);
    }
    return null;
  }

  function target(moduleExports, entrypoint, ctx, env, WorkerEntrypoint) {
    const name = entrypoint || "default";
    if (moduleExports === null) {
      throw new TypeError("RPC needs a module worker that exports a WorkerEntrypoint class.");
    }
    const entry = Object.prototype.hasOwnProperty.call(moduleExports, name) ? moduleExports[name] : undefined;
    if (entry === undefined) throw new TypeError(`The worker has no entrypoint named "${name}".`);
    if (typeof entry !== "function" || !(entry.prototype instanceof WorkerEntrypoint)) {
      throw new TypeError(`The entrypoint "${name}" is not a WorkerEntrypoint class, so it cannot receive RPC calls.`);
    }
    return new entry(ctx, env);
  }

  // Resolves { bytes, error }: bytes is the answer for the caller ({value} or
  // {error: {name, message}}); error, when the method threw, for the callee's log.
  internals.rpcDispatch = async function rpcDispatch(
    moduleExports, entrypoint, method, argsBytes, ctx, env, WorkerEntrypoint,
  ) {
    let answer;
    let thrown;
    try {
      const args = internals.deserialize(fromUtf8(argsBytes));
      if (!Array.isArray(args)) throw new TypeError("malformed RPC arguments");
      const instance = target(moduleExports, entrypoint, ctx, env, WorkerEntrypoint);
      const fn = findMethod(instance, method, WorkerEntrypoint);
      if (fn === null) throw new TypeError(`The RPC receiver does not implement the method "${method}".`);
      const value = await fn.apply(instance, args);
      answer = { value: encode(value, new Set(), 0) };
    } catch (error) {
      thrown = error;
      const isError = error instanceof Error;
      answer = {
        error: {
          name: isError ? String(error.name) : "Error",
          message: isError ? String(error.message) : String(internals.inspect(error)),
        },
      };
    }
    let bytes = utf8(JSON.stringify(answer));
    if (bytes.length > MAX_RPC_BYTES) {
      thrown = new RangeError(`The RPC result is ${bytes.length} bytes serialized; the limit is ${MAX_RPC_BYTES}.`);
      bytes = utf8(JSON.stringify({ error: { name: "RangeError", message: thrown.message } }));
    }
    return { bytes, error: thrown };
  };
};
