// Entry for warren/runtime/vendor/web.js (see README.md).
// The bundle's only effect is to define globalThis.__warrenVendor.
// The URL classes from whatwg-url's webidl2js wrapper, installed as its root module
// installs them: the root also loads the URL-string validator (isValidURLString),
// ~13 KB of objects per isolate that the classes never use.
import { URL as URLInterface, URLSearchParams as URLSearchParamsInterface } from "whatwg-url/webidl2js-wrapper";
import structuredClone from "@ungap/structured-clone";
// The ponyfill build: it defines nothing global; bootstrap.js installs the classes.
import {
  ReadableStream,
  ReadableStreamDefaultReader,
  ReadableStreamBYOBReader,
  ReadableStreamDefaultController,
  ReadableByteStreamController,
  ReadableStreamBYOBRequest,
  WritableStream,
  WritableStreamDefaultWriter,
  WritableStreamDefaultController,
  TransformStream,
  TransformStreamDefaultController,
  ByteLengthQueuingStrategy,
  CountQueuingStrategy,
} from "web-streams-polyfill";

const urlGlobals = { Array, Object, Promise, String, TypeError };
URLInterface.install(urlGlobals, ["Window"]);
URLSearchParamsInterface.install(urlGlobals, ["Window"]);
const { URL, URLSearchParams } = urlGlobals;

// Evaluated on first use, not when the bundle loads: every isolate loads the
// bundle, few use these. fflate builds ~200 KB of Huffman tables when it loads,
// URLPattern ~45 KB of objects. esbuild bundles a require() as a module that
// runs on its first call.
const once = (load) => {
  let value = null;
  return () => (value ??= load());
};

globalThis.__warrenVendor = {
  URL,
  URLSearchParams,
  structuredClone,
  // The subpath, not the package root: the root also assigns globalThis.URLPattern.
  // URLPattern reads the global URL when called, not at load time.
  loadURLPattern: once(() => require("urlpattern-polyfill/urlpattern").URLPattern),
  streams: {
    ReadableStream,
    ReadableStreamDefaultReader,
    ReadableStreamBYOBReader,
    ReadableStreamDefaultController,
    ReadableByteStreamController,
    ReadableStreamBYOBRequest,
    WritableStream,
    WritableStreamDefaultWriter,
    WritableStreamDefaultController,
    TransformStream,
    TransformStreamDefaultController,
    ByteLengthQueuingStrategy,
    CountQueuingStrategy,
  },
  // Streaming (de)compressors for CompressionStream / DecompressionStream.
  loadCompression: once(() => {
    const { Gzip, Gunzip, Zlib, Unzlib, Deflate, Inflate } = require("fflate");
    return { Gzip, Gunzip, Zlib, Unzlib, Deflate, Inflate };
  }),
};
