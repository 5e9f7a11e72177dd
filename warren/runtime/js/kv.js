// Workers KV: the object a `kv_namespace` binding puts in env (class KvNamespace,
// as in workerd). Every method is one call to the node (warren/bindings/kv.py),
// which validates, answers from its cache or the store, and words errors as
// Workers does; this file only shapes arguments and results. Values move as
// bodies: a host body (a request's) is handed to the host by handle, and a
// large result is read from the host by handle, so `get(key, "stream")` of a
// 20 MiB value never sits whole in JavaScript.
globalThis.__warrenKV = function install(global, internals) {
  "use strict";

  // Taken now, before any tenant code runs: a script replacing these globals
  // changes nothing here.
  const ResponseClass = global.Response;
  const encoder = new global.TextEncoder();
  const decoder = new global.TextDecoder();
  const MapClass = Map;
  const isArray = Array.isArray;
  const parseJSON = JSON.parse;
  const stringify = JSON.stringify;
  const MAX_VALUE = 25 * 1024 * 1024;
  const MAX_KEY = 512;
  const MAX_METADATA = 1024;
  const MAX_BULK = 100;
  const MAX_CURSOR = 1024;  // ours are shorter: a longer one is refused by the host all the same
  const TYPES = new Set(["text", "arrayBuffer", "json", "stream"]);
  const CONSTRUCTING = Symbol("KvNamespace");

  // An option the binding takes as an integer (NaN becomes 0, as in workerd).
  function integer(value) {
    const n = Math.trunc(Number(value));
    return Number.isFinite(n) ? n : 0;
  }
  function keyName(key) {
    if (typeof key === "symbol") throw new TypeError("Cannot convert a Symbol value to a string");
    return String(key).toWellFormed();
  }
  // workerd checks these before any request; so do we, which also keeps what a call
  // carries to the host small (the host checks everything again).
  function byteLength(text) {
    return text.length > MAX_KEY ? encoder.encode(text).length : utf8Length(text);
  }
  function utf8Length(text) {
    let n = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      n += c < 0x80 ? 1 : c < 0x800 ? 2 : (c >= 0xd800 && c < 0xdc00) ? (i++, 4) : 3;
    }
    return n;
  }
  function checkLength(method, name) {
    const length = byteLength(name);
    if (length > MAX_KEY) {
      throw new Error(`KV ${method} failed: 414 UTF-8 encoded length of ${length} exceeds key length limit of ${MAX_KEY}.`);
    }
  }
  function checkKey(method, key) {
    const name = keyName(key);
    if (name === "") throw new TypeError("Key name cannot be empty.");
    if (name === "." || name === "..") throw new TypeError(`"${name}" is not allowed as a key name.`);
    checkLength(method, name);
    return name;
  }
  function getOptions(options) {
    let type = "text";
    let cacheTtl;
    if (typeof options === "string") {
      type = options;
    } else if (options !== undefined && options !== null) {
      if (typeof options !== "object") throw new TypeError("The options must be a type name or an object.");
      if (options.type !== undefined) type = String(options.type);
      if (options.cacheTtl !== undefined) cacheTtl = integer(options.cacheTtl);
    }
    return { type, cacheTtl };
  }
  function unknownType() {
    return new TypeError(
      'Unknown response type. Possible types are "text", "arrayBuffer", "json", and "stream".');
  }
  function tooLarge(length) {
    return new Error(`KV PUT failed: 413 Value length of ${length} exceeds limit of ${MAX_VALUE}.`);
  }
  function exactBuffer(bytes) {
    if (bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength) return bytes.buffer;
    return bytes.slice().buffer;
  }

  async function convert(body, type) {
    if (type === "stream") return body.stream;
    const bytes = await body.readAll();
    if (type === "arrayBuffer") return exactBuffer(bytes);
    const text = decoder.decode(bytes);
    return type === "json" ? parseJSON(text) : text;
  }

  // A put's value as hostCall takes it: bytes, or a body (a host body passes by handle).
  async function valueBody(value) {
    if (typeof value === "object" && value !== null) {
      if (internals.streams !== undefined && value instanceof internals.streams.ReadableStream) {
        // Through a Response, which recognises a stream over a host body (and refuses a used one).
        const out = internals.responseToHost(new ResponseClass(value));
        if (out.handle) return internals.bodySource(null, { handle: out.handle });
        if (out.bytes !== null) return out.bytes;
        return internals.bodySource(null, null, out.stream).readAll();
      }
      const bytes = internals.bytesOf(value);
      if (bytes === null) {
        throw new TypeError(
          "KV put() accepts only strings, ArrayBuffers, ArrayBufferViews, and ReadableStreams as values.");
      }
      return bytes;
    }
    if (typeof value === "symbol") throw new TypeError("Cannot convert a Symbol value to a string");
    return encoder.encode(String(value));
  }

  class KvNamespace {
    #call;

    constructor(token, call) {
      if (token !== CONSTRUCTING) throw new TypeError("Illegal constructor");
      this.#call = call;
    }

    async #getSingle(key, options, withMetadata) {
      const { type, cacheTtl } = getOptions(options);
      const args = { key: checkKey("GET", key) };
      if (cacheTtl !== undefined) args.cacheTtl = cacheTtl;
      const { value, body } = await this.#call("get", args);
      if (!value.found) return { value: null, metadata: null, cacheStatus: null };
      if (!TYPES.has(type)) throw unknownType();
      const result = await convert(body ?? internals.bodySource(new Uint8Array(0)), type);
      return { value: result, metadata: withMetadata ? value.metadata : null, cacheStatus: null };
    }

    async #getBulk(keys, options, withMetadata) {
      const { type, cacheTtl } = getOptions(options);
      if (keys.length === 0) throw new Error("KV GET_BULK failed: 400 You must request a minimum of 1 key");
      if (keys.length > MAX_BULK) {
        throw new Error(`KV GET_BULK failed: 400 You can request a maximum of ${MAX_BULK} keys`);
      }
      if (type !== "text" && type !== "json") {
        throw new Error(`KV GET_BULK failed: 400 "${type}" is not a valid type. Use "json" or "text"`);
      }
      const names = keys.map(keyName);
      for (const name of names) checkLength("GET_BULK", name);
      const args = { keys: names, type, withMetadata };
      if (cacheTtl !== undefined) args.cacheTtl = cacheTtl;
      const { value } = await this.#call("getBulk", args);
      const found = value.found;
      const map = new MapClass();
      for (const name of names) {
        const entry = Object.prototype.hasOwnProperty.call(found, name) ? found[name] : null;
        if (entry === null) map.set(name, null);
        else map.set(name, withMetadata ? { value: entry[0], metadata: entry[1] } : entry[0]);
      }
      return map;
    }

    async get(key, options) {
      if (isArray(key)) return this.#getBulk(key, options, false);
      return (await this.#getSingle(key, options, false)).value;
    }

    async getWithMetadata(key, options) {
      if (isArray(key)) return this.#getBulk(key, options, true);
      return this.#getSingle(key, options, true);
    }

    async put(key, value, options) {
      const args = { key: checkKey("PUT", key) };
      if (options !== undefined && options !== null) {
        if (typeof options !== "object") throw new TypeError("The options must be an object.");
        if (options.expiration !== undefined) args.expiration = integer(options.expiration);
        if (options.expirationTtl !== undefined) args.expirationTtl = integer(options.expirationTtl);
        if (options.metadata !== undefined && options.metadata !== null) {
          const metadata = stringify(options.metadata);
          if (metadata !== undefined) {
            const length = encoder.encode(metadata).length;
            if (length > MAX_METADATA) {
              throw new Error(`KV PUT failed: 413 Metadata length of ${length} exceeds limit of ${MAX_METADATA}.`);
            }
            args.metadata = metadata;
          }
        }
      }
      const body = await valueBody(value);
      // A value over the limit is refused here rather than carried to the host for nothing.
      if (!internals.isBodySource(body) && body.length > MAX_VALUE) throw tooLarge(body.length);
      await this.#call("put", args, body);
    }

    async delete(key) {
      await this.#call("delete", { key: checkKey("DELETE", key) });
    }

    async list(options) {
      const args = {};
      if (options !== undefined && options !== null) {
        if (typeof options !== "object") throw new TypeError("The options must be an object.");
        if (options.prefix !== undefined && options.prefix !== null) {
          args.prefix = keyName(options.prefix);
          checkLength("GET", args.prefix);
        }
        if (options.cursor !== undefined && options.cursor !== null) {
          args.cursor = String(options.cursor).slice(0, MAX_CURSOR);
        }
        if (options.limit !== undefined) {
          const limit = integer(options.limit);
          if (limit > 0) args.limit = limit; // as workerd: a limit of 0 or less means the default
        }
      }
      const { value } = await this.#call("list", args);
      return value;
    }
  }
  Object.defineProperty(KvNamespace.prototype, Symbol.toStringTag, {
    value: "KvNamespace", writable: false, enumerable: false, configurable: true,
  });

  internals.defineBinding("kv_namespace", (spec, call) => new KvNamespace(CONSTRUCTING, call));
};
