"""Blob, File and FormData in a real worker (``warren dev``), and as Request/Response bodies.

The WPT-style suite ports the important assertions of web-platform-tests'
``FileAPI/blob``, ``FileAPI/file`` and ``xhr/formdata`` tests (our own code,
written after them; the runner is in ``test_webapi_events.py``). The body tests
send real multipart/form-data and urlencoded requests and parse what the worker
answers with Python's own multipart parser.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Iterator

import httpx
import pytest
from conftest import ServiceProcess
from test_webapi_events import check_suite, serve

BLOB_SUITE = r"""
const enc = (s) => new TextEncoder().encode(s);
const bytesOf = async (blob) => Array.from(new Uint8Array(await blob.arrayBuffer()));

// --- FileAPI/blob/Blob-constructor.any.js --------------------------------------
test(() => {
  assert_true("Blob" in globalThis);
  const blob = new Blob();
  assert_true(blob instanceof Blob);
  assert_equals(String(blob), "[object Blob]");
  assert_equals(blob.size, 0);
  assert_equals(blob.type, "");
  assert_equals(new Blob(undefined).size, 0);
  assert_equals(new Blob([], undefined).size, 0);
  assert_throws_js(TypeError, () => Blob(), "without new");
}, "Blob constructor with no arguments");

test(() => {
  for (const bad of [null, true, false, 0, 1, 1.5, "FAIL", new Date(), /re/, {}, { 0: "FAIL", length: 1 }]) {
    assert_throws_js(TypeError, () => new Blob(bad), `new Blob(${String(bad)})`);
  }
}, "Passing non-sequences for blobParts throws a TypeError");

promise_test(async () => {
  const blob = new Blob({ [Symbol.iterator]: Array.prototype[Symbol.iterator], length: 2, 0: "PA", 1: "SS" });
  assert_equals(await blob.text(), "PASS");
  const gen = new Blob((function* () { yield "a"; yield new Uint8Array([98]); yield new Blob(["c"]); })());
  assert_equals(await gen.text(), "abc");
}, "Any iterable is a sequence of blob parts");

promise_test(async () => {
  const parts = [null, undefined, 1, true, {}, [1, 2], { toString() { return "TS"; } }];
  assert_equals(await new Blob(parts).text(), "nullundefined1true[object Object]1,2TS");
  assert_throws_js(TypeError, () => new Blob([Symbol("s")]));
}, "Non-buffer, non-Blob parts are stringified");

test(() => {
  const order = [];
  const part = (name) => ({ toString() { order.push(name); return name; } });
  const options = {
    get endings() { order.push("endings"); return "transparent"; },
    get type() { order.push("type"); return ""; },
  };
  new Blob([part("a"), part("b")], options);
  assert_array_equals(order, ["a", "b", "endings", "type"]);
  const thrown = [];
  try {
    new Blob([part("x"), { toString() { thrown.push("throw"); throw new Error("stop"); } }, part("y")]);
  } catch { thrown.push("caught"); }
  assert_array_equals(thrown, ["throw", "caught"], "conversion stops at the first exception");
}, "Getters and value conversions happen in order until an exception is thrown");

promise_test(async () => {
  const parts = ["a"];
  const it = parts[Symbol.iterator]();
  const blob = new Blob({ [Symbol.iterator]() { parts.push("b"); return it; } });
  assert_equals(await blob.text(), "ab", "changes while iterating are seen");
}, "Changes to the blobParts sequence during iteration are reflected");

promise_test(async () => {
  const buffer = new Uint8Array([1, 2, 3, 4]).buffer;
  assert_array_equals(await bytesOf(new Blob([buffer])), [1, 2, 3, 4], "ArrayBuffer");
  assert_array_equals(await bytesOf(new Blob([new Uint8Array(buffer, 1, 2)])), [2, 3], "a view's own bytes");
  assert_array_equals(await bytesOf(new Blob([new Int16Array([0x0102, -1])])), [2, 1, 255, 255], "Int16Array, little endian");
  assert_array_equals(await bytesOf(new Blob([new DataView(buffer, 2)])), [3, 4], "DataView");
  assert_array_equals(await bytesOf(new Blob([new Float64Array([1])])), [0, 0, 0, 0, 0, 0, 240, 63], "Float64Array");
  const source = new Uint8Array([9, 9]);
  const blob = new Blob([source]);
  source[0] = 0;
  assert_array_equals(await bytesOf(blob), [9, 9], "the bytes are copied at construction");
}, "BufferSource parts");

promise_test(async () => {
  const inner = new Blob(["inner"], { type: "text/x" });
  const outer = new Blob(["<", inner, ">", inner.slice(1, 3)]);
  assert_equals(await outer.text(), "<inner>nn");
  assert_equals(outer.type, "", "the parts' types are not inherited");
}, "Blob parts");

promise_test(async () => {
  assert_array_equals(await bytesOf(new Blob(["\u00e9\u20ac\ud83d\ude00"])),
    [0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80], "UTF-8");
  assert_array_equals(await bytesOf(new Blob(["\ud800", "a\udc00"])),
    [0xef, 0xbf, 0xbd, 0x61, 0xef, 0xbf, 0xbd], "lone surrogates become U+FFFD");
}, "strings are encoded as UTF-8 (USVString)");

test(() => {
  const cases = [
    ["text/plain", "text/plain"], ["TEXT/HTML", "text/html"], ["text/plain;charset=UTF-8", "text/plain;charset=utf-8"],
    ["\u00e5", ""], ["text/\u0000plain", ""], ["\x19", ""], [" a/b ", " a/b "], ["a\tb", ""], ["", ""],
  ];
  for (const [type, expected] of cases) {
    assert_equals(new Blob([], { type }).type, expected, JSON.stringify(type));
  }
  assert_equals(new Blob([], { type: null }).type, "null");
}, "the type option is lowercased, or dropped if not printable ASCII");

promise_test(async () => {
  const text = "a\rb\nc\r\nd\n\re";
  assert_equals(await new Blob([text]).text(), text, "transparent by default");
  assert_equals(await new Blob([text], { endings: "transparent" }).text(), text);
  assert_equals(await new Blob([text], { endings: "native" }).text(), "a\nb\nc\nd\n\ne");
  assert_array_equals(await bytesOf(new Blob([new Uint8Array([13, 10])], { endings: "native" })), [13, 10], "buffers are never converted");
  for (const endings of ["invalid", "NATIVE", "", null]) {
    assert_throws_js(TypeError, () => new Blob([], { endings }), `endings ${endings}`);
  }
}, "the endings option");

// --- FileAPI/blob/Blob-slice.any.js -----------------------------------------------
promise_test(async () => {
  const blob = new Blob(["abcdefghijklmnopqrstuvwxyz"]);
  const cases = [
    [[], "abcdefghijklmnopqrstuvwxyz"], [[0], "abcdefghijklmnopqrstuvwxyz"], [[1], "bcdefghijklmnopqrstuvwxyz"],
    [[25], "z"], [[26], ""], [[27], ""], [[-1], "z"], [[-26], "abcdefghijklmnopqrstuvwxyz"], [[-27], "abcdefghijklmnopqrstuvwxyz"],
    [[0, 3], "abc"], [[3, 1], ""], [[1, -1], "bcdefghijklmnopqrstuvwxy"], [[-3, -1], "xy"], [[-1, -3], ""],
    [[0, 100], "abcdefghijklmnopqrstuvwxyz"], [[1.5, 3.5], "cd"], [[2.5, 4.5], "cd"], [[0.5, 1.5], "ab"], [[-2.5], "yz"], [[NaN, NaN], ""], [[NaN], "abcdefghijklmnopqrstuvwxyz"],
    [["1", "3"], "bc"], [[undefined, 2], "ab"], [[Infinity], ""], [[-Infinity, 1], "a"], [[0, -Infinity], ""],
  ];
  for (const [args, expected] of cases) {
    const slice = blob.slice(...args);
    assert_equals(slice.size, expected.length, `slice(${args.map(String)}).size`);
    assert_equals(await slice.text(), expected, `slice(${args.map(String)})`);
  }
  assert_equals(await blob.slice(2, 10).slice(1, -1).text(), "defghi", "slice of a slice");
}, "Blob.slice() start and end ([Clamp] long long, relative to the end when negative)");

test(() => {
  const blob = new Blob(["x"], { type: "text/plain" });
  assert_equals(blob.slice().type, "", "the type is not inherited");
  assert_equals(blob.slice(0, 1, "TEXT/HTML").type, "text/html");
  assert_equals(blob.slice(0, 1, "\u00e5").type, "");
  assert_equals(blob.slice(0, 1, "\x7f").type, "");
  assert_true(blob.slice() instanceof Blob);
  assert_false(blob.slice() instanceof File);
}, "Blob.slice() contentType");

// --- Blob-text, Blob-array-buffer, Blob-bytes, Blob-stream ---------------------
promise_test(async () => {
  assert_equals(await new Blob(["PASS"]).text(), "PASS");
  assert_equals(await new Blob([]).text(), "");
  assert_equals(await new Blob([new Uint8Array([0xef, 0xbb, 0xbf, 0x41])]).text(), "A", "a BOM is dropped");
  assert_equals(await new Blob([new Uint8Array([0xff, 0x41])]).text(), "\ufffdA", "invalid UTF-8 is replaced");
  const promise = new Blob(["x"]).text();
  assert_true(promise instanceof Promise);
  await promise_rejects_js(null, TypeError, Blob.prototype.text.call({}), "brand check rejects");
}, "Blob.text()");

promise_test(async () => {
  const blob = new Blob([new Uint8Array([1, 2, 3])]);
  const a = await blob.arrayBuffer();
  assert_true(a instanceof ArrayBuffer);
  assert_array_equals(new Uint8Array(a), [1, 2, 3]);
  new Uint8Array(a)[0] = 9;
  assert_array_equals(new Uint8Array(await blob.arrayBuffer()), [1, 2, 3], "each call gets its own copy");
  const b = await blob.bytes();
  assert_true(b instanceof Uint8Array);
  assert_array_equals(b, [1, 2, 3]);
  b[1] = 9;
  assert_array_equals(await blob.bytes(), [1, 2, 3]);
  assert_equals((await new Blob([]).arrayBuffer()).byteLength, 0);
}, "Blob.arrayBuffer() and Blob.bytes()");

promise_test(async () => {
  const data = new Uint8Array(200000);
  for (let i = 0; i < data.length; i++) data[i] = i % 251;
  const stream = new Blob([data]).stream();
  assert_true(stream instanceof ReadableStream);
  const chunks = await readAll(stream);
  assert_true(chunks.every((c) => c instanceof Uint8Array), "Uint8Array chunks");
  const all = concatBytes(chunks);
  assert_equals(all.length, data.length);
  assert_true(all.every((b, i) => b === data[i]), "the same bytes");
  assert_equals((await readAll(new Blob([]).stream())).length, 0, "an empty blob is an empty stream");
}, "Blob.stream()");

promise_test(async () => {
  const reader = new Blob(["abcdefgh"]).stream().getReader({ mode: "byob" });
  let result = await reader.read(new Uint8Array(3));
  assert_equals(new TextDecoder().decode(result.value), "abc");
  result = await reader.read(new Uint8Array(10));
  assert_equals(new TextDecoder().decode(result.value), "defgh");
  result = await reader.read(new Uint8Array(4));
  assert_true(result.done);
}, "Blob.stream() with a BYOB reader");

// --- FileAPI/file/File-constructor.any.js ----------------------------------------
test(() => {
  assert_throws_js(TypeError, () => new File(), "no arguments");
  assert_throws_js(TypeError, () => new File(["bits"]), "no name");
  const file = new File(["bits"], "dummy");
  assert_true(file instanceof File);
  assert_true(file instanceof Blob);
  assert_equals(String(file), "[object File]");
  assert_equals(file.name, "dummy");
  assert_equals(file.size, 4);
  assert_equals(file.type, "");
  assert_equals(file.lastModified, Date.now(), "lastModified defaults to now");
}, "File constructor");

test(() => {
  assert_equals(new File(["x"], "dummy/foo").name, "dummy/foo", "slashes are kept");
  assert_equals(new File(["x"], "a\ud800b").name, "a\ufffdb", "a USVString");
  assert_equals(new File(["x"], null).name, "null");
  const f = new File(["x"], "n", { type: "TEXT/Plain", lastModified: 42 });
  assert_equals(f.type, "text/plain");
  assert_equals(f.lastModified, 42);
  assert_equals(new File([], "n", { lastModified: new Date(1234) }).lastModified, 1234, "a Date");
  assert_equals(new File([], "n", { lastModified: -1.7 }).lastModified, -1, "truncated");
  assert_equals(new File([], "n", { lastModified: "x" }).lastModified, 0, "NaN is 0");
  const order = [];
  new File([], "n", {
    get endings() { order.push("endings"); },
    get lastModified() { order.push("lastModified"); },
    get type() { order.push("type"); },
  });
  assert_array_equals(order, ["endings", "type", "lastModified"], "inherited members first");
}, "File name and options");

promise_test(async () => {
  const file = new File([new Blob(["ab"]), new Uint8Array([99])], "f", { endings: "native" });
  assert_equals(await file.text(), "abc");
  assert_equals(file.slice(1).type, "");
  assert_false(file.slice(1) instanceof File, "slices are Blobs");
}, "File parts");

// --- xhr/formdata/*.any.js ------------------------------------------------------
test(() => {
  const fd = new FormData();
  assert_equals(String(fd), "[object FormData]");
  assert_equals(new FormData(undefined).has("x"), false);
  assert_throws_js(TypeError, () => new FormData(null), "only a form element could be passed");
  assert_throws_js(TypeError, () => new FormData({}));
}, "FormData constructor");

test(() => {
  const fd = new FormData();
  fd.append("key", "value1");
  fd.append("key", "value2");
  fd.append("other", "x");
  assert_equals(fd.get("key"), "value1");
  assert_array_equals(fd.getAll("key"), ["value1", "value2"]);
  assert_equals(fd.get("missing"), null);
  assert_array_equals(fd.getAll("missing"), []);
  assert_true(fd.has("key"));
  assert_false(fd.has("KEY"), "names are case-sensitive");
  fd.delete("key");
  assert_false(fd.has("key"));
  assert_equals(fd.get("other"), "x");
  fd.append("n", null);
  fd.append(undefined, 1);
  assert_equals(fd.get("n"), "null");
  assert_equals(fd.get("undefined"), "1");
  fd.append("\ud800", "\udc00x");
  assert_equals(fd.get("\ufffd"), "\ufffdx", "names and values are USVStrings");
  assert_throws_js(TypeError, () => fd.append("only name"));
  assert_throws_js(TypeError, () => fd.get());
}, "append, get, getAll, has, delete");

test(() => {
  const fd = new FormData();
  fd.append("a", "1");
  fd.append("b", "2");
  fd.append("a", "3");
  fd.append("c", "4");
  fd.set("a", "new");
  assert_array_equals([...fd].map(([k, v]) => k + "=" + v), ["a=new", "b=2", "c=4"], "set replaces the first and drops the rest");
  fd.set("d", "5");
  assert_equals(fd.get("d"), "5");
}, "set");

test(() => {
  const fd = new FormData();
  const blob = new Blob(["content"], { type: "text/x" });
  fd.append("blob", blob);
  const f = fd.get("blob");
  assert_true(f instanceof File, "a Blob becomes a File");
  assert_equals(f.name, "blob");
  assert_equals(f.type, "text/x");
  assert_equals(f.size, 7);
  fd.append("named", blob, "name.txt");
  assert_equals(fd.get("named").name, "name.txt");
  const file = new File(["x"], "orig.txt", { lastModified: 7 });
  fd.append("file", file);
  assert_equals(fd.get("file"), file, "a File without a filename is kept as it is");
  fd.append("renamed", file, "new.txt");
  assert_equals(fd.get("renamed").name, "new.txt");
  assert_equals(fd.get("renamed").lastModified, 7);
  assert_not_equals(fd.get("renamed"), file);
  assert_throws_js(TypeError, () => fd.append("x", "string", "filename"), "a filename needs a Blob");
  assert_throws_js(TypeError, () => fd.set("x", {}, "filename"));
  fd.set("blob", blob, "again.txt");
  assert_equals(fd.get("blob").name, "again.txt");
}, "Blob and File values");

test(() => {
  const fd = new FormData();
  fd.append("a", "1");
  fd.append("b", "2");
  assert_array_equals([...fd.keys()], ["a", "b"]);
  assert_array_equals([...fd.values()], ["1", "2"]);
  assert_array_equals([...fd.entries()].map((e) => e.join("=")), ["a=1", "b=2"]);
  assert_equals(FormData.prototype[Symbol.iterator], FormData.prototype.entries);
  const it = fd.keys();
  assert_class_string(it, "FormData Iterator");
  assert_equals(Object.getPrototypeOf(Object.getPrototypeOf(it)), Object.getPrototypeOf(Object.getPrototypeOf([][Symbol.iterator]())), "inherits %IteratorPrototype%");
  assert_equals(it[Symbol.iterator](), it);
  const seen = [];
  for (const [name] of fd) {
    seen.push(name);
    if (name === "a") fd.append("c", "3");
  }
  assert_array_equals(seen, ["a", "b", "c"], "iterators are live");
  const log = [];
  const thisArg = {};
  fd.forEach(function (value, key, object) { log.push([value, key, object === fd, this === thisArg]); }, thisArg);
  assert_equals(log.length, 3);
  assert_array_equals(log[0], ["1", "a", true, true]);
  assert_throws_js(TypeError, () => fd.forEach(null));
}, "iteration and forEach");

test(() => {
  for (const key of ["append", "delete", "get", "getAll", "has", "set", "entries", "keys", "values", "forEach"]) {
    assert_throws_js(TypeError, () => FormData.prototype[key].call({}, "a", "b"), key);
  }
}, "FormData brand checks");

// --- bodies (Fetch: extract a body, package data) --------------------------------
promise_test(async () => {
  const fd = new FormData();
  fd.append("text", "line1\nline2\rline3");
  fd.append("na\"me\n", "v");
  fd.append("file", new Blob([new Uint8Array([0, 13, 10, 45, 45, 255])], { type: "application/x-bin" }), "f\"\n.bin");
  const response = new Response(fd);
  const type = response.headers.get("content-type");
  assert_true(type.startsWith("multipart/form-data; boundary="), type);
  const back = await response.formData();
  assert_equals(back.get("text"), "line1\r\nline2\r\nline3", "newlines are normalized to CRLF in values");
  assert_true(back.has("na\"me\r\n"), "names: newlines normalized, quotes and newlines escaped and decoded");
  const file = back.get("file");
  assert_true(file instanceof File);
  assert_equals(file.name, "f\"\n.bin", "the escapes are decoded in filenames");
  assert_equals(file.type, "application/x-bin");
  assert_array_equals(await file.bytes(), [0, 13, 10, 45, 45, 255]);
}, "FormData body round trip");

promise_test(async () => {
  const parse = (body, type) => new Response(body, { headers: { "content-type": type } }).formData();
  const u = await parse("a=1&b=x+y&c=%C3%A9&&d&=e&f=%zz&a=2", "application/x-www-form-urlencoded");
  assert_array_equals([...u].map((e) => e.join("=")), ["a=1", "b=x y", "c=\u00e9", "d=", "=e", "f=%zz", "a=2"]);
  const charset = await parse("x=1", "Application/X-WWW-Form-Urlencoded; charset=utf-8");
  assert_equals(charset.get("x"), "1");
  await promise_rejects_js(null, TypeError, parse("a=1", "text/plain"));
  await promise_rejects_js(null, TypeError, new Response("a=1").formData(), "text/plain;charset=UTF-8 by default");
  await promise_rejects_js(null, TypeError, new Response("a=1", { headers: {} }).formData());
}, "urlencoded bodies and unsupported types");

promise_test(async () => {
  const parse = (body, type = "multipart/form-data; boundary=XyZ") =>
    new Response(body, { headers: { "content-type": type } }).formData();
  const good = await parse("preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ\nContent-Disposition: form-data; name=b; filename=\"b.txt\"\n\n22\n--XyZ--\r\nepilogue");
  assert_equals(good.get("a"), "1");
  assert_equals(good.get("b").name, "b.txt");
  assert_equals(good.get("b").type, "text/plain", "a file without Content-Type is text/plain");
  assert_equals(await good.get("b").text(), "22");
  const quoted = await parse("--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ--", 'multipart/form-data; boundary="XyZ"');
  assert_equals(quoted.get("a"), "1", "a quoted boundary");
  const bad = [
    ["no boundary parameter", "--XyZ--", "multipart/form-data"],
    ["no delimiter", "nothing here"],
    ["no closing delimiter", "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1"],
    ["no empty line after headers", "--XyZ\r\nContent-Disposition: form-data; name=\"a\""],
    ["no name", "--XyZ\r\nContent-Disposition: form-data\r\n\r\n1\r\n--XyZ--"],
    ["not form-data", "--XyZ\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\n1\r\n--XyZ--"],
    ["no Content-Disposition", "--XyZ\r\nContent-Type: text/plain\r\n\r\n1\r\n--XyZ--"],
    ["junk after a delimiter", "--XyZjunk\r\n"],
    ["a header line without a colon", "--XyZ\r\nbroken\r\n\r\n1\r\n--XyZ--"],
  ];
  for (const [what, body, type] of bad) {
    try {
      await parse(body, type);
      assert_unreached(what);
    } catch (e) {
      assert_true(e instanceof TypeError, `${what}: ${e && e.name}`);
      assert_true(/multipart\/form-data/.test(e.message), `${what}: ${e.message}`);
    }
  }
}, "multipart/form-data parsing, lenient where browsers are, TypeError where broken");

promise_test(async () => {
  const blob = new Blob(["hello"], { type: "Text/X-Thing" });
  const response = new Response(blob);
  assert_equals(response.headers.get("content-type"), "text/x-thing");
  const back = await response.blob();
  assert_equals(back.type, "text/x-thing");
  assert_equals(await back.text(), "hello");
  assert_equals(new Response(new Blob(["x"])).headers.get("content-type"), null, "an empty type sets no header");
  const request = new Request("https://example.com/", { method: "POST", body: new File(["f"], "f.txt") });
  assert_equals(await request.text(), "f");
}, "Blob bodies");
"""

ROUTES = r"""
if (url.pathname === "/echo-form") {
  let form;
  try {
    form = await request.formData();
  } catch (e) {
    return Response.json({ error: `${e.name}: ${e.message}` }, { status: 400 });
  }
  const entries = [];
  for (const [name, value] of form) {
    entries.push(typeof value === "string" ? [name, value]
      : [name, { name: value.name, type: value.type, bytes: Array.from(await value.bytes()) }]);
  }
  return Response.json(entries);
}
if (url.pathname === "/make-form") {
  const form = new FormData();
  form.append("greeting", "h\u00e9llo\nworld");
  form.append("upload", new File([new Uint8Array([0, 1, 2, 13, 10, 45, 45, 255])], "\u00fcber \"q\".bin", { type: "application/octet-stream" }));
  form.append("blob", new Blob(["plain"]));
  return new Response(form);
}
"""


@pytest.fixture(scope="module")
def blob_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    server = serve(tmp_path_factory.mktemp("blob"), BLOB_SUITE, ROUTES)
    try:
        yield server
    finally:
        server.stop()


def test_blob_file_formdata_wpt_style(blob_server: ServiceProcess) -> None:
    check_suite(blob_server, "FileAPI + xhr/formdata + bodies")


def test_worker_reads_multipart_sent_by_a_real_client(blob_server: ServiceProcess) -> None:
    payload = bytes(range(256)) + b"\r\n--boundary-lookalike\r\n" + bytes(range(255, -1, -1))
    response = httpx.post(
        blob_server.url + "/echo-form",
        data={"name": "välue", "multi": "line1\r\nline2"},
        files={"upload": ("naïve file.bin", payload, "application/x-test")},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    entries = response.json()
    assert entries[0] == ["name", "välue"]
    assert entries[1] == ["multi", "line1\r\nline2"]
    name, file = entries[2]
    assert name == "upload"
    assert file["name"] == "naïve file.bin"
    assert file["type"] == "application/x-test"
    assert bytes(file["bytes"]) == payload


def test_worker_reads_urlencoded_sent_by_a_real_client(blob_server: ServiceProcess) -> None:
    response = httpx.post(blob_server.url + "/echo-form", data={"q": "a b&c=d", "é": "ü"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == [["q", "a b&c=d"], ["é", "ü"]]


def test_malformed_multipart_is_a_clear_type_error(blob_server: ServiceProcess) -> None:
    response = httpx.post(
        blob_server.url + "/echo-form",
        content=b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nunterminated',
        headers={"content-type": "multipart/form-data; boundary=b"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"] == (
        "TypeError: Failed to parse the body as multipart/form-data: the body ends without a closing boundary."
    )


def test_formdata_response_parses_with_pythons_multipart_parser(blob_server: ServiceProcess) -> None:
    response = blob_server.get("/make-form")
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + response.content
    )
    assert message.is_multipart()
    parts = list(message.iter_parts())
    assert [part.get_param("name", header="content-disposition") for part in parts] == ["greeting", "upload", "blob"]
    assert parts[0].get_payload(decode=True) == "héllo\r\nworld".encode()
    assert parts[1].get_content_type() == "application/octet-stream"
    assert parts[1].get_payload(decode=True) == bytes([0, 1, 2, 13, 10, 45, 45, 255])
    # Quotes are percent-escaped in filenames (as browsers do); UTF-8 otherwise.
    assert 'filename="über %22q%22.bin"'.encode() in response.content
    assert parts[2].get_filename() == "blob"
    assert parts[2].get_content_type() == "application/octet-stream"
