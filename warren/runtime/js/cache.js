// The Cache API of Workers: `caches.default` and `caches.open(name)`. The
// cache lives on the node (warren/bindings/cache.py); this file only turns
// Request and Response objects into calls to it and back.
globalThis.__warrenCache = function installCache(global, internals) {
  "use strict";

  const call = (method, args, body = null) => internals.hostCall("__cache", method, args, body);

  function requestOf(input, what) {
    if (internals.isRequest(input)) return input;
    if (typeof input === "string" || (typeof input === "object" && input !== null)) {
      return new global.Request(String(input));
    }
    throw new TypeError(`${what}: the key must be a Request or a URL.`);
  }

  function requestArgs(request) {
    const url = new global.URL(request.url);
    url.hash = "";
    return { url: url.href, method: request.method, requestHeaders: [...request.headers] };
  }

  class Cache {
    #name;

    constructor(name) {
      this.#name = name;
    }

    async match(input, options = undefined) {
      const request = requestOf(input, "Cache.match");
      const args = { cache: this.#name, ...requestArgs(request), ignoreMethod: Boolean(options?.ignoreMethod) };
      const { value, body } = await call("match", args);
      if (value === null || value === undefined) return undefined;
      const bytes = body === null ? new Uint8Array(0) : await body.readAll();
      const nullBody = value.status === 304 || value.status === 204;
      return new global.Response(nullBody ? null : bytes, {
        status: value.status,
        statusText: value.statusText,
        headers: value.headers,
      });
    }

    async put(input, response) {
      const request = requestOf(input, "Cache.put");
      if (!internals.isResponse(response)) throw new TypeError("Cache.put: the value must be a Response.");
      if (request.method !== "GET") throw new TypeError("Cannot cache response to non-GET request.");
      if (response.status === 206) {
        throw new TypeError("Cannot cache response to a range request (206 Partial Content).");
      }
      const vary = response.headers.get("vary");
      if (vary !== null && vary.split(",").some((part) => part.trim() === "*")) {
        throw new TypeError("Cannot cache response with 'Vary: *' header.");
      }
      if (response.bodyUsed) throw new TypeError("Cache.put: the response body has already been used.");
      const out = internals.responseToHost(response);
      let body = null;
      if (out.bytes !== null) body = out.bytes;
      else if (out.handle) body = internals.bodySource(null, { handle: out.handle });
      else if (out.stream !== null) body = await internals.bodySource(null, null, out.stream).readAll();
      const args = {
        cache: this.#name,
        ...requestArgs(request),
        status: out.status,
        statusText: out.statusText,
        headers: out.headers,
      };
      await call("put", args, body);
    }

    async delete(input, options = undefined) {
      const request = requestOf(input, "Cache.delete");
      const args = { cache: this.#name, ...requestArgs(request), ignoreMethod: Boolean(options?.ignoreMethod) };
      const { value } = await call("delete", args);
      return value === true;
    }
  }

  class CacheStorage {
    #default = new Cache("default");

    get default() {
      return this.#default;
    }

    async open(name) {
      name = String(name);
      if (name.length > 1024) throw new TypeError("Cache name is too long.");
      if (name === "default") throw new TypeError("\"default\" is a reserved cache name: use caches.default.");
      return new Cache("named:" + name);
    }
  }

  const caches = new CacheStorage();
  Object.defineProperty(global, "caches", { value: caches, writable: true, configurable: true, enumerable: false });
  Object.defineProperty(global, "Cache", { value: Cache, writable: true, configurable: true, enumerable: false });
  Object.defineProperty(global, "CacheStorage", {
    value: CacheStorage, writable: true, configurable: true, enumerable: false,
  });
};
