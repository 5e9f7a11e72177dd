// HTMLRewriter, the streaming HTML transformer of Workers, on lol-html
// compiled to WebAssembly (html-rewriter-wasm, vendor/html_rewriter.js). The
// wasm is compiled in an isolate only when its worker first transforms a
// response; the bytes come from the host.
globalThis.__warrenHTMLRewriter = function installHTMLRewriter(global, internals) {
  "use strict";

  let lib = null;
  let loadError = null;
  // Compiling lol-html (~1 MB of wasm, ~25 ms) is the runtime's cost, not the
  // request's: the host runs this in an uncharged slice on first use.
  internals.defineRuntimeLoader("html_rewriter", () => {
    if (lib !== null) return;
    try {
      lib = internals.htmlRewriterLib(
        () => internals.latin1ToBytes(internals.hostAsset("html_rewriter_bg.wasm")),
        internals.compileWasm,
      );
    } catch (error) {
      loadError = error;
    }
  });
  async function rewriterLib() {
    if (lib === null) await internals.runtimeLoad("html_rewriter");
    if (lib === null) throw new Error(`HTMLRewriter is not available: ${loadError && loadError.message}`);
    return lib;
  }

  function checkHandlers(handlers, allowed, what) {
    if (typeof handlers !== "object" || handlers === null) {
      throw new TypeError(`${what}: handlers must be an object.`);
    }
    for (const key of allowed) {
      if (handlers[key] !== undefined && typeof handlers[key] !== "function") {
        throw new TypeError(`${what}: the ${key} handler must be a function.`);
      }
    }
  }

  class HTMLRewriter {
    #registrations = [];

    on(selector, handlers) {
      checkHandlers(handlers, ["element", "comments", "text"], "HTMLRewriter.on");
      this.#registrations.push(["on", String(selector), handlers]);
      return this;
    }

    onDocument(handlers) {
      checkHandlers(handlers, ["doctype", "comments", "text", "end"], "HTMLRewriter.onDocument");
      this.#registrations.push(["onDocument", handlers]);
      return this;
    }

    transform(response) {
      if (!internals.isResponse(response)) throw new TypeError("HTMLRewriter.transform: expected a Response.");
      const headers = new global.Headers(response.headers);
      headers.delete("content-length"); // the rewritten body has a length of its own
      const init = { status: response.status, statusText: response.statusText, headers };
      const body = response.body;
      if (body === null) return new global.Response(null, init);
      const registrations = this.#registrations.slice();
      let rewriter = null;
      const output = new global.TransformStream({
        async start(controller) {
          const { HTMLRewriter: Rewriter } = await rewriterLib();
          rewriter = new Rewriter((chunk) => {
            if (chunk.length > 0) controller.enqueue(chunk.slice());
          });
          try {
            for (const [kind, first, second] of registrations) {
              if (kind === "on") rewriter.on(first, second);
              else rewriter.onDocument(first);
            }
          } catch (error) {
            rewriter.free();
            rewriter = null;
            throw new TypeError(`HTMLRewriter: ${error && error.message ? error.message : error}`);
          }
        },
        async transform(chunk) {
          const bytes = internals.bytesOf(chunk);
          if (bytes === null) throw new TypeError("HTMLRewriter: the body must be bytes.");
          await rewriter.write(bytes);
        },
        async flush() {
          try {
            await rewriter.end();
          } finally {
            rewriter.free();
            rewriter = null;
          }
        },
        cancel() {
          if (rewriter !== null) rewriter.free();
          rewriter = null;
        },
      });
      return new global.Response(body.pipeThrough(output), init);
    }
  }

  Object.defineProperty(global, "HTMLRewriter", {
    value: HTMLRewriter, writable: true, configurable: true, enumerable: false,
  });
};
