"""Streams in a real worker (``warren dev``): TextEncoderStream, TextDecoderStream,
CompressionStream, DecompressionStream, and the vendored ReadableStream basics.

The WPT-style suite ports the important assertions of web-platform-tests'
``encoding/streams`` and ``compression`` tests (our own code, written after
them; the runner is in ``test_webapi_events.py``). Compression is also checked
against Python's zlib in both directions, with every gzip header field, and
corrupt, truncated and trailing input. A decompression bomb must hit the
isolate's memory limit while a neighbouring worker keeps answering.
"""

from __future__ import annotations

import functools
import gzip
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ServiceProcess
from test_webapi_events import check_suite, serve

STREAMS_SUITE = r"""
const enc = (s) => new TextEncoder().encode(s);
const dec = (b) => new TextDecoder().decode(b);

// Writes the chunks and closes (errors are left for the reader to see), reads everything.
async function through(pair, chunks) {
  const writer = pair.writable.getWriter();
  for (const chunk of chunks) writer.write(chunk).catch(() => {});
  writer.close().catch(() => {});
  return readAll(pair.readable);
}
const encodeAll = async (chunks) => Array.from(concatBytes(await through(new TextEncoderStream(), chunks)));
const decodeAll = async (chunks, label, options) => (await through(new TextDecoderStream(label, options), chunks)).join("");
const compress = async (format, chunks) => concatBytes(await through(new CompressionStream(format), chunks));
const decompress = async (format, chunks) => concatBytes(await through(new DecompressionStream(format), chunks));
function pseudoRandom(n, seed = 1) {
  const out = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) >>> 0; out[i] = x >>> 24; }
  return out;
}
const FORMATS = ["gzip", "deflate", "deflate-raw"];

// --- encoding/streams/readable-writable-properties, encode-utf8 -----------------
test(() => {
  for (const stream of [new TextEncoderStream(), new TextDecoderStream(), new CompressionStream("gzip"), new DecompressionStream("deflate")]) {
    assert_true(stream.readable instanceof ReadableStream, "readable");
    assert_true(stream.writable instanceof WritableStream, "writable");
    assert_equals(stream.readable, stream.readable, "the same object each time");
  }
  assert_class_string(new TextEncoderStream(), "TextEncoderStream");
  assert_class_string(new TextDecoderStream(), "TextDecoderStream");
  assert_class_string(new CompressionStream("deflate"), "CompressionStream");
  assert_class_string(new DecompressionStream("deflate"), "DecompressionStream");
  const readableGetter = Object.getOwnPropertyDescriptor(TextEncoderStream.prototype, "readable").get;
  assert_throws_js(TypeError, () => readableGetter.call(new TextDecoderStream()), "brand check");
}, "readable and writable properties");

promise_test(async () => {
  assert_equals(new TextEncoderStream().encoding, "utf-8");
  assert_array_equals(await encodeAll(["hello"]), Array.from(enc("hello")), "ASCII");
  assert_array_equals(await encodeAll(["\u00ff\u20ac"]), [0xc3, 0xbf, 0xe2, 0x82, 0xac]);
  assert_array_equals(await encodeAll(["\ud83d", "\ude03"]), [0xf0, 0x9f, 0x98, 0x83], "a surrogate pair split across chunks");
  assert_array_equals(await encodeAll(["a\ud83d", "", "\ude03b"]), [0x61, 0xf0, 0x9f, 0x98, 0x83, 0x62], "with an empty chunk between");
  assert_array_equals(await encodeAll(["\ud83d"]), [0xef, 0xbf, 0xbd], "a lone high surrogate at the end");
  assert_array_equals(await encodeAll(["\ud83d", "x"]), [0xef, 0xbf, 0xbd, 0x78], "a high surrogate then no low one");
  assert_array_equals(await encodeAll(["\ude03"]), [0xef, 0xbf, 0xbd], "a lone low surrogate");
  assert_array_equals(await encodeAll(["\ud83d", "\ud83d", "\ude03"]), [0xef, 0xbf, 0xbd, 0xf0, 0x9f, 0x98, 0x83]);
  assert_equals((await through(new TextEncoderStream(), [""])).length, 0, "an empty string produces no chunk");
  const chunks = await through(new TextEncoderStream(), ["a", "b"]);
  assert_true(chunks.every((c) => c instanceof Uint8Array), "Uint8Array chunks");
}, "TextEncoderStream encodes UTF-8 across chunk boundaries");

promise_test(async (t) => {
  const cases = [[undefined, "undefined"], [null, "null"], [3.14, "3.14"], [{}, "[object Object]"], [["hi"], "hi"]];
  for (const [value, expected] of cases) {
    assert_equals(dec(concatBytes(await through(new TextEncoderStream(), [value]))), expected, String(expected));
  }
  const stream = new TextEncoderStream();
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  // The transform runs once the reader asks (backpressure), so both wait together.
  await Promise.all([
    promise_rejects_js(t, TypeError, writer.write(Symbol("s")), "write() rejects"),
    promise_rejects_js(t, TypeError, reader.read(), "read() rejects"),
  ]);
}, "TextEncoderStream chunks are converted to strings; a Symbol errors the stream");

// --- encoding/streams/decode-* ---------------------------------------------------
test(() => {
  const d = new TextDecoderStream();
  assert_equals(d.encoding, "utf-8");
  assert_false(d.fatal);
  assert_false(d.ignoreBOM);
  const e = new TextDecoderStream("UTF-16", { fatal: true, ignoreBOM: true });
  assert_equals(e.encoding, "utf-16le");
  assert_true(e.fatal);
  assert_true(e.ignoreBOM);
  assert_equals(new TextDecoderStream(" unicode-1-1-utf-8 ").encoding, "utf-8");
  assert_throws_js(RangeError, () => new TextDecoderStream("bogus"));
  assert_throws_js(RangeError, () => new TextDecoderStream("replacement"));
}, "TextDecoderStream attributes");

promise_test(async () => {
  const bytes = enc("I \u2665 streams \ud83d\ude00");
  assert_equals(await decodeAll([bytes]), "I \u2665 streams \ud83d\ude00");
  assert_equals(await decodeAll(Array.from(bytes, (b) => new Uint8Array([b]))), "I \u2665 streams \ud83d\ude00", "one byte per chunk");
  assert_equals(await decodeAll([bytes.buffer]), "I \u2665 streams \ud83d\ude00", "ArrayBuffer");
  assert_equals(await decodeAll([new DataView(bytes.buffer, 0, 2), new Int8Array(bytes.buffer, 2)]), "I \u2665 streams \ud83d\ude00", "views");
  const sixteen = new Uint16Array([0x6968]);
  assert_equals(await decodeAll([sixteen]), "hi", "a Uint16Array's bytes");
  const outputs = await through(new TextDecoderStream(), [new Uint8Array([0xe2]), new Uint8Array([0x99]), new Uint8Array([0xa5, 0x41])]);
  assert_array_equals(outputs, ["\u2665A"], "nothing is enqueued until a character is complete");
}, "TextDecoderStream decodes UTF-8 split anywhere");

promise_test(async () => {
  const bom = [0xef, 0xbb, 0xbf];
  assert_equals(await decodeAll([new Uint8Array([...bom, 0x41])]), "A", "a BOM is dropped");
  assert_equals(await decodeAll([new Uint8Array([0xef]), new Uint8Array([0xbb, 0xbf, 0x41])]), "A", "even split across chunks");
  assert_equals(await decodeAll([new Uint8Array([...bom, 0x41])], "utf-8", { ignoreBOM: true }), "\ufeffA", "kept with ignoreBOM");
  assert_equals(await decodeAll([new Uint8Array([0x41, ...bom])]), "A\ufeff", "only a leading BOM");
  assert_equals(await decodeAll([new Uint8Array([0xff, 0xfe, 0x41, 0x00])], "utf-16le"), "A", "a UTF-16 BOM");
}, "TextDecoderStream and the BOM");

promise_test(async (t) => {
  assert_equals(await decodeAll([new Uint8Array([0x41, 0xf0, 0x9f])]), "A\ufffd", "incomplete at the end: U+FFFD");
  assert_equals(await decodeAll([new Uint8Array([0xff, 0x41])]), "\ufffdA", "invalid: U+FFFD");
  await promise_rejects_js(t, TypeError, decodeAll([new Uint8Array([0x41, 0xf0, 0x9f])], "utf-8", { fatal: true }), "fatal, incomplete");
  await promise_rejects_js(t, TypeError, decodeAll([new Uint8Array([0xff])], "utf-8", { fatal: true }), "fatal, invalid");
}, "TextDecoderStream with incomplete and invalid input");

promise_test(async (t) => {
  for (const bad of [undefined, null, 3.14, {}, [65], "string"]) {
    const stream = new TextDecoderStream();
    const writer = stream.writable.getWriter();
    const reader = stream.readable.getReader();
    await Promise.all([
      promise_rejects_js(t, TypeError, writer.write(bad), `write(${String(bad)})`),
      promise_rejects_js(t, TypeError, reader.read(), `read() after write(${String(bad)})`),
    ]);
  }
}, "TextDecoderStream rejects chunks that are not buffers");

promise_test(async () => {
  const text = "\u00e9\u20ac\ud83d\ude00!";
  const le = new Uint8Array(text.length * 2);
  const be = new Uint8Array(text.length * 2);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    le[2 * i] = c & 0xff; le[2 * i + 1] = c >> 8;
    be[2 * i] = c >> 8; be[2 * i + 1] = c & 0xff;
  }
  assert_equals(await decodeAll(Array.from(le, (b) => new Uint8Array([b])), "utf-16le"), text, "UTF-16LE, a byte at a time");
  assert_equals(await decodeAll([be.subarray(0, 3), be.subarray(3)], "utf-16be"), text, "UTF-16BE, split inside a code unit");
  assert_equals(await decodeAll([new Uint8Array([0x80, 0xe9])], "windows-1252"), "\u20ac\u00e9", "windows-1252");
}, "TextDecoderStream with other encodings");

// --- compression/compression-constructor-error, -bad-chunks -----------------------
test(() => {
  for (const Ctor of [CompressionStream, DecompressionStream]) {
    assert_throws_js(TypeError, () => new Ctor(), `${Ctor.name}()`);
    for (const bad of ["a", "GZIP", "zlib", "br", "deflate ", undefined]) {
      assert_throws_js(TypeError, () => new Ctor(bad), `${Ctor.name}(${bad})`);
    }
    for (const format of FORMATS) new Ctor(format);
  }
}, "CompressionStream and DecompressionStream take gzip, deflate and deflate-raw only");

promise_test(async (t) => {
  for (const Ctor of [CompressionStream, DecompressionStream]) {
    for (const bad of [undefined, null, 3.14, {}, [65], "string"]) {
      const stream = new Ctor("gzip");
      const writer = stream.writable.getWriter();
      const reader = stream.readable.getReader();
      await promise_rejects_js(t, TypeError, writer.write(bad), `${Ctor.name} write(${String(bad)})`);
      await promise_rejects_js(t, TypeError, reader.read(), `${Ctor.name} read() after write(${String(bad)})`);
    }
  }
}, "chunks that are not buffers error both sides");

// --- compression round trips (compression-stream, -multiple-chunks, -including-empty-chunk, decompression-split-chunk) ---
promise_test(async () => {
  const inputs = [new Uint8Array(0), enc("x"), enc("Hello compression! ".repeat(500)), pseudoRandom(300000)];
  for (const format of FORMATS) {
    for (const input of inputs) {
      const compressed = await compress(format, [input]);
      const output = await decompress(format, [compressed]);
      assert_equals(output.length, input.length, `${format} length of ${input.length}`);
      assert_true(output.every((b, i) => b === input[i]), `${format} bytes of ${input.length}`);
    }
  }
}, "round trips for every format");

promise_test(async () => {
  const chunks = [enc("Hello"), new Uint8Array(0), enc(" "), new Uint8Array(0), enc("world"), pseudoRandom(70000)];
  const expected = concatBytes(chunks);
  for (const format of FORMATS) {
    const pieces = await through(new CompressionStream(format), chunks);
    assert_true(pieces.every((c) => c instanceof Uint8Array && c.length > 0), `${format}: no empty output chunks`);
    const compressed = concatBytes(pieces);
    const output = await decompress(format, [compressed]);
    assert_equals(output.length, expected.length, format);
    assert_true(output.every((b, i) => b === expected[i]), format);
  }
}, "compressing several chunks, empty ones included");

promise_test(async () => {
  const input = enc("Some text to split into chunks of every small size. ".repeat(20));
  for (const format of FORMATS) {
    const compressed = await compress(format, [input]);
    for (let size = 1; size <= 16; size++) {
      const pieces = [];
      for (let i = 0; i < compressed.length; i += size) pieces.push(compressed.slice(i, i + size));
      const output = await decompress(format, pieces);
      assert_equals(dec(output), dec(input), `${format}, chunks of ${size}`);
    }
  }
}, "decompressing input split into chunks of 1 to 16 bytes");

promise_test(async () => {
  const compressed = await compress("deflate", [enc("buffer sources")]);
  const copy = () => compressed.slice().buffer;
  const views = [copy(), new Int8Array(copy()), new Uint8ClampedArray(copy()), new DataView(copy())];
  for (const view of views) {
    const chunks = await through(new DecompressionStream("deflate"), [view]);
    assert_true(chunks.every((c) => c instanceof Uint8Array), "Uint8Array output");
    assert_equals(dec(concatBytes(chunks)), "buffer sources", Object.prototype.toString.call(view));
  }
}, "decompression accepts every BufferSource and outputs Uint8Arrays");

promise_test(async () => {
  const gz = await compress("gzip", [enc("abc")]);
  assert_array_equals(Array.from(gz.subarray(0, 4)), [0x1f, 0x8b, 8, 0], "gzip magic, deflate, no flags");
  assert_array_equals(Array.from(gz.subarray(4, 8)), [0, 0, 0, 0], "no modification time");
  const z = await compress("deflate", [enc("abc")]);
  assert_equals(((z[0] << 8) | z[1]) % 31, 0, "a zlib header");
  assert_equals(z[0], 0x78);
}, "compressed output framing");

// --- compression/decompression-corrupt-input, -empty-input, -extra-input ---------
promise_test(async (t) => {
  const input = enc("corrupt me ".repeat(50));
  for (const format of FORMATS) {
    await promise_rejects_js(t, TypeError, decompress(format, []), `${format}: empty input`);
    const good = await compress(format, [input]);
    await promise_rejects_js(t, TypeError, decompress(format, [good.subarray(0, good.length - 1)]), `${format}: truncated`);
    await promise_rejects_js(t, TypeError, decompress(format, [good, new Uint8Array([0])]), `${format}: a byte after the end`);
    await promise_rejects_js(t, TypeError, decompress(format, [concatBytes([good, good])]), `${format}: two streams`);
  }
  const gz = await compress("gzip", [input]);
  const flip = (bytes, i) => { const c = bytes.slice(); c[i] ^= 1; return c; };
  await promise_rejects_js(t, TypeError, decompress("gzip", [flip(gz, 0)]), "gzip: bad magic");
  await promise_rejects_js(t, TypeError, decompress("gzip", [flip(gz, gz.length - 8)]), "gzip: bad CRC-32");
  await promise_rejects_js(t, TypeError, decompress("gzip", [flip(gz, gz.length - 4)]), "gzip: bad length");
  const z = await compress("deflate", [input]);
  await promise_rejects_js(t, TypeError, decompress("deflate", [flip(z, 1)]), "deflate: bad header check");
  await promise_rejects_js(t, TypeError, decompress("deflate", [flip(z, z.length - 1)]), "deflate: bad Adler-32");
  await promise_rejects_js(t, TypeError, decompress("deflate-raw", [new Uint8Array([0xff, 0xff, 0xff])]), "deflate-raw: invalid block type");
  await promise_rejects_js(t, TypeError, decompress("deflate", [gz]), "gzip data is not zlib data");
}, "corrupt, truncated, empty and trailing input error the stream with a TypeError");

promise_test(async (t) => {
  const ds = new DecompressionStream("gzip");
  const writer = ds.writable.getWriter();
  const reader = ds.readable.getReader();
  const good = await compress("gzip", [enc("hello")]);
  writer.write(good.subarray(0, 5));
  writer.write(new Uint8Array([1, 2, 3])).catch(() => {});
  writer.close().catch(() => {});
  await promise_rejects_js(t, TypeError, reader.read());
  await promise_rejects_js(t, TypeError, writer.closed, "the writable side is errored too");
}, "an error reaches both sides");

promise_test(async () => {
  const cs = new CompressionStream("gzip");
  const writer = cs.writable.getWriter();
  writer.write(enc("cancel me"));
  await cs.readable.cancel("done with it");
  try {
    await writer.closed;
    assert_unreached("the writable side should be errored");
  } catch (e) {
    assert_equals(e, "done with it");
  }
}, "cancelling the readable side errors the writable side");

promise_test(async (t) => {
  const cs = new CompressionStream("gzip");
  const writer = cs.writable.getWriter();
  const written = writer.write(new Uint8Array(100000).fill(7)); // waits for a reader that never comes
  await writer.abort(new RangeError("stop"));
  await promise_rejects_js(t, RangeError, written);
  await promise_rejects_js(t, RangeError, cs.readable.getReader().read(), "the readable side is errored with the reason");
}, "aborting the writable side while a write waits for the reader");

// --- ReadableStream basics, through the vendored polyfill --------------------------
promise_test(async () => {
  let pulls = 0;
  let cancelled = null;
  const stream = new ReadableStream({
    start(controller) { controller.enqueue("a"); },
    pull(controller) {
      pulls++;
      if (pulls < 3) controller.enqueue(String.fromCharCode(97 + pulls));
      else controller.close();
    },
    cancel(reason) { cancelled = reason; },
  });
  assert_false(stream.locked);
  const reader = stream.getReader();
  assert_true(stream.locked);
  const chunks = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
  }
  assert_array_equals(chunks, ["a", "b", "c"]);
  reader.releaseLock();
  assert_false(stream.locked);
  const other = new ReadableStream({ cancel(reason) { cancelled = reason; } });
  await other.cancel("why");
  assert_equals(cancelled, "why");
  const iterated = [];
  for await (const chunk of new ReadableStream({ start(c) { c.enqueue(1); c.enqueue(2); c.close(); } })) iterated.push(chunk);
  assert_array_equals(iterated, [1, 2], "async iteration");
}, "a default ReadableStream");

promise_test(async () => {
  let offset = 0;
  const data = enc("0123456789");
  const stream = new ReadableStream({
    type: "bytes",
    pull(controller) {
      const request = controller.byobRequest;
      const n = Math.min(request.view.byteLength, data.length - offset, 4);
      request.view.set(data.subarray(offset, offset + n));
      offset += n;
      request.respond(n);
      if (offset === data.length) controller.close();
    },
  });
  const reader = stream.getReader({ mode: "byob" });
  const buffer = new Uint8Array(8);
  let result = await reader.read(buffer);
  assert_equals(dec(result.value), "0123", "at most 4 bytes a pull");
  assert_equals(result.value.buffer.byteLength, 8, "the caller's buffer, transferred");
  result = await reader.read(new Uint8Array(2));
  assert_equals(dec(result.value), "45");
  result = await reader.read(new Uint8Array(10));
  assert_equals(dec(result.value), "6789");
  result = await reader.read(new Uint8Array(1));
  assert_true(result.done);
}, "a byte stream with a BYOB reader");

promise_test(async () => {
  const upper = new TransformStream({
    transform(chunk, controller) { controller.enqueue(chunk.toUpperCase()); },
    flush(controller) { controller.enqueue("!"); },
  });
  const source = new ReadableStream({ start(c) { c.enqueue("hello "); c.enqueue("world"); c.close(); } });
  assert_array_equals(await readAll(source.pipeThrough(upper)), ["HELLO ", "WORLD", "!"]);
  const piped = new ReadableStream({ start(c) { c.enqueue(enc("text through two transforms")); c.close(); } })
    .pipeThrough(new TextDecoderStream()).pipeThrough(new TextEncoderStream()).pipeThrough(new TextDecoderStream());
  assert_equals((await readAll(piped)).join(""), "text through two transforms");
}, "pipeThrough a TransformStream");

promise_test(async () => {
  const stream = new ReadableStream({ start(c) { c.enqueue("x"); c.enqueue("y"); c.close(); } });
  const [a, b] = stream.tee();
  assert_true(stream.locked);
  const [ra, rb] = await Promise.all([readAll(a), readAll(b)]);
  assert_array_equals(ra, ["x", "y"]);
  assert_array_equals(rb, ["x", "y"]);
  const [c, d] = new ReadableStream({ start(ctl) { ctl.enqueue(1); ctl.close(); } }).tee();
  c.cancel();  // resolves only once both branches are cancelled
  assert_array_equals(await readAll(d), [1], "cancelling one branch leaves the other");
}, "tee");

promise_test(async () => {
  const written = [];
  const stream = new WritableStream({
    write(chunk) { written.push(chunk); },
    close() { written.push("closed"); },
  }, new CountQueuingStrategy({ highWaterMark: 2 }));
  const writer = stream.getWriter();
  assert_equals(writer.desiredSize, 2);
  writer.write("a");
  writer.write("b");
  await writer.close();
  assert_array_equals(written, ["a", "b", "closed"]);
}, "a WritableStream");

promise_test(async (t) => {
  const controller = new AbortController();
  const source = new ReadableStream({ pull(c) { c.enqueue("tick"); } }, { highWaterMark: 0 });
  let received = 0;
  const sink = new WritableStream({ write() { if (++received === 3) controller.abort(new RangeError("enough")); } });
  await promise_rejects_js(t, RangeError, source.pipeTo(sink, { signal: controller.signal }), "pipeTo rejects with the reason");
  assert_equals(received, 3);
  await promise_rejects_js(t, TypeError, source.pipeTo(sink, { signal: {} }), "not an AbortSignal");
}, "pipeTo with an AbortSignal");
"""

ROUTES = r"""
if (url.pathname.startsWith("/compress/") || url.pathname.startsWith("/decompress/")) {
  const [, op, format] = url.pathname.split("/");
  const size = Number(url.searchParams.get("chunk") || 0);
  const input = new Uint8Array(await request.arrayBuffer());
  const stream = op === "compress" ? new CompressionStream(format) : new DecompressionStream(format);
  const writer = stream.writable.getWriter();
  (async () => {
    for (let i = 0; i < input.length; i += size || input.length) await writer.write(input.subarray(i, i + (size || input.length)));
    await writer.close();
  })().catch(() => {});
  try {
    return new Response(concatBytes(await readAll(stream.readable)));
  } catch (e) {
    return new Response(`${e.name}: ${e.message}`, { status: 400 });
  }
}
if (url.pathname === "/first-chunk") {
  // Reads one chunk of a huge decompression and stops: only what was read is produced.
  const ds = new DecompressionStream("gzip");
  const writer = ds.writable.getWriter();
  writer.write(new Uint8Array(await request.arrayBuffer())).catch(() => {});
  const { value } = await ds.readable.getReader().read();
  return new Response(String(value.length));
}
"""


@pytest.fixture(scope="module")
def streams_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    server = serve(tmp_path_factory.mktemp("streams"), STREAMS_SUITE, ROUTES)
    try:
        yield server
    finally:
        server.stop()


def test_streams_wpt_style(streams_server: ServiceProcess) -> None:
    check_suite(streams_server, "encoding/streams + compression + streams basics")


DATA = b"".join(b"line %d of some moderately compressible text\n" % i for i in range(20000)) + bytes(range(256)) * 40


@pytest.mark.parametrize("format_", ["gzip", "deflate", "deflate-raw"])
def test_worker_compression_decompresses_with_python(streams_server: ServiceProcess, format_: str) -> None:
    response = streams_server.request("POST", f"/compress/{format_}?chunk=7000", content=DATA)
    assert response.status_code == 200, response.text
    wbits = {"gzip": 31, "deflate": 15, "deflate-raw": -15}[format_]
    decompressor = zlib.decompressobj(wbits)
    assert decompressor.decompress(response.content) == DATA
    assert decompressor.eof and decompressor.unused_data == b""


def deflate_raw(data: bytes, level: int = 6) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def gzip_member(
    data: bytes,
    *,
    extra: bytes | None = None,
    name: bytes | None = None,
    comment: bytes | None = None,
    header_crc: bool = False,
    level: int = 6,
) -> bytes:
    """A gzip member with the optional header fields of RFC 1952 that Python's gzip module never writes."""
    flags = (2 if header_crc else 0) | (4 if extra is not None else 0) | (8 if name is not None else 0)
    flags |= 16 if comment is not None else 0
    header = bytes([0x1F, 0x8B, 8, flags]) + struct.pack("<I", 1_700_000_000) + bytes([0, 255])
    if extra is not None:
        header += struct.pack("<H", len(extra)) + extra
    if name is not None:
        header += name + b"\0"
    if comment is not None:
        header += comment + b"\0"
    if header_crc:
        header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    return header + deflate_raw(data, level) + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("format_", "compressed"),
    [
        ("gzip", gzip.compress(DATA)),
        ("gzip", gzip.compress(DATA, compresslevel=0)),  # stored blocks
        (
            "gzip",
            gzip_member(DATA, extra=b"\x01\x02xyz", name="naïve.txt".encode("latin-1"), comment=b"hi", header_crc=True),
        ),
        ("gzip", gzip_member(b"")),
        ("deflate", zlib.compress(DATA, 9)),
        ("deflate", zlib.compress(DATA, 1)),
        ("deflate-raw", deflate_raw(DATA)),
    ],
    ids=["gzip", "gzip-stored", "gzip-all-header-fields", "gzip-empty", "deflate-9", "deflate-1", "deflate-raw"],
)
@pytest.mark.parametrize("chunk", [0, 1000, 65536])  # 0: one chunk; sizes 1-16 are in the suite
def test_worker_decompresses_what_python_compressed(
    streams_server: ServiceProcess, format_: str, compressed: bytes, chunk: int
) -> None:
    expected = b"" if compressed == gzip_member(b"") else DATA
    response = streams_server.request("POST", f"/decompress/{format_}?chunk={chunk}", content=compressed)
    assert response.status_code == 200, response.text
    assert response.content == expected


@pytest.mark.parametrize(
    ("format_", "compressed", "message"),
    [
        ("gzip", gzip.compress(DATA)[:-4], "truncated"),
        ("gzip", gzip.compress(DATA) + b"\0", "bytes after the end"),
        ("gzip", gzip.compress(DATA) + gzip.compress(b"x"), "bytes after the end"),
        ("gzip", gzip_member(b"abc", header_crc=True)[:10] + b"\0\0" + gzip_member(b"abc")[10:], "header checksum"),
        ("gzip", gzip.compress(DATA)[:-8] + b"\0\0\0\0" + gzip.compress(DATA)[-4:], "CRC-32"),
        ("gzip", b"\x1f\x8b\x08\xe0" + gzip.compress(DATA)[4:], "reserved gzip header flags"),
        ("deflate", zlib.compress(DATA)[:-1] + bytes([zlib.compress(DATA)[-1] ^ 0xFF]), "Adler-32"),
        ("deflate", b"\x78\xbb" + zlib.compress(DATA)[2:], "preset dictionary"),
        ("deflate", b"hello world", "not in zlib format"),
        ("deflate-raw", b"\xff" * 32, "invalid deflate data"),
    ],
    ids=[
        "truncated",
        "trailing-byte",
        "two-members",
        "header-crc",
        "crc32",
        "reserved-flags",
        "adler32",
        "dictionary",
        "not-zlib",
        "bad-block",
    ],
)
def test_corrupt_input_is_a_clear_type_error(
    streams_server: ServiceProcess, format_: str, compressed: bytes, message: str
) -> None:
    response = streams_server.request("POST", f"/decompress/{format_}?chunk=4096", content=compressed)
    assert response.status_code == 400, response.text[:200]
    assert response.text.startswith("TypeError: DecompressionStream: "), response.text
    assert message in response.text


@functools.cache
def gzip_of_zeros(megabytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join(compressor.compress(block) for _ in range(megabytes)) + compressor.flush()


def test_decompression_is_driven_by_the_reader(streams_server: ServiceProcess) -> None:
    # 256 MiB of zeros in 256 KiB, twice the memory limit: reading one chunk
    # inflates one 16 KiB piece of the input, not all of it.
    bomb = gzip_of_zeros(256)
    response = streams_server.request("POST", "/first-chunk", content=bomb)
    assert response.status_code == 200, response.text
    assert 0 < int(response.text) <= 17 * 1024 * 1024
    line = streams_server.wait_for(r"POST /first-chunk 200 .* mem=([\d.]+)MB")
    assert float(line.group(1)) < 100


BOMB = """
export default {
  async fetch(request) {
    const ds = new DecompressionStream("gzip");
    const writer = ds.writable.getWriter();
    writer.write(new Uint8Array(await request.arrayBuffer())).catch(() => {});
    writer.close().catch(() => {});
    const kept = [];
    let total = 0;
    for (const reader = ds.readable.getReader();;) {
      const { value, done } = await reader.read();
      if (done) break;
      kept.push(value);
      total += value.length;
    }
    return new Response("inflated " + total);
  },
};
"""

NEIGHBOUR = """
let served = 0;
export default { fetch() { served++; return new Response("neighbour " + served); } };
"""


def test_a_decompression_bomb_meets_the_memory_limit_and_the_neighbour_keeps_answering(edge: Any) -> None:
    harness = edge({"bomb": BOMB, "neighbour": NEIGHBOUR}, heap_mb=64, cpu_ms=30_000)
    bomb = gzip_of_zeros(256)  # 256 MiB inflated (4x the limit), 256 KiB sent
    outcomes: list[httpx.Response] = []

    def explode() -> None:
        for _ in range(3):
            outcomes.append(httpx.post(harness.url + "/bomb/", content=bomb, timeout=60))

    attacker = threading.Thread(target=explode)
    attacker.start()
    neighbour: list[str] = []
    while attacker.is_alive():
        response = harness.get("/neighbour/")
        assert response.status_code == 200, response.text
        neighbour.append(response.text)
        time.sleep(0.01)
    attacker.join()
    assert len(outcomes) == 3
    for response in outcomes:
        assert response.status_code == 503, response.text
        assert "exceeded its memory limit" in response.text
    assert neighbour, "the neighbour was asked while the bomb went off"
    assert neighbour == [f"neighbour {i}" for i in range(1, len(neighbour) + 1)], (
        "the neighbour's isolate never restarted"
    )
    assert harness.get("/neighbour/").status_code == 200
