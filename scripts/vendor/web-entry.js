// Entry for warren/runtime/vendor/web.js (see README.md).
// The bundle's only effect is to define globalThis.__warrenVendor.
import { URL, URLSearchParams } from "whatwg-url";
import structuredClone from "@ungap/structured-clone";
// The subpath, not the package root: the root also assigns globalThis.URLPattern.
// URLPattern reads the global URL when called, not at load time.
import { URLPattern } from "urlpattern-polyfill/urlpattern";
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
// Streaming (de)compressors for CompressionStream / DecompressionStream.
import { Gzip, Gunzip, Zlib, Unzlib, Deflate, Inflate } from "fflate";

globalThis.__warrenVendor = {
  URL,
  URLSearchParams,
  structuredClone,
  URLPattern,
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
  compression: { Gzip, Gunzip, Zlib, Unzlib, Deflate, Inflate },
};
