// Blob, File and FormData for Warren isolates (W3C File API, XHR "FormData"),
// and the multipart/form-data and application/x-www-form-urlencoded codecs
// that Request/Response bodies use.
//
// Loaded as a classic script after events.js (whose `internals.idl` helpers it
// uses) and before bootstrap.js. Its only top-level effect is
// `globalThis.__warrenBlob`, which the bootstrap calls once with the global
// object and the runtime's private `internals`.
//
// Blobs live in memory: a Blob is an immutable Uint8Array (slices share it).
// Blob.stream() needs the vendored ReadableStream, looked up when called.

globalThis.__warrenBlob = function install(global, internals) {
  'use strict';

  const { requireArgs, toDictionary, finishInterface, bufferSourceBytes, defineGlobal } = internals.idl;

  // Captured now, so tenants replacing the globals cannot change Blob's behaviour.
  const encodeMethod = global.TextEncoder.prototype.encode;
  const decodeMethod = global.TextDecoder.prototype.decode;
  const encoder = new global.TextEncoder();
  const decoder = new global.TextDecoder(); // "UTF-8 decode": drops a BOM
  const decoderKeepingBOM = new global.TextDecoder('utf-8', { ignoreBOM: true }); // "... without BOM"
  const utf8Encode = (s) => encodeMethod.call(encoder, s);
  const utf8Decode = (bytes) => decodeMethod.call(decoder, bytes);
  const utf8DecodeKeepingBOM = (bytes) => decodeMethod.call(decoderKeepingBOM, bytes);
  // The runtime's own, made on first use (bootstrap.js): reading global.crypto here would make it now.
  const getRandomValues = internals.getRandomValues;

  const EMPTY = new Uint8Array(0);
  const STREAM_CHUNK = 65536;

  const toUSVString = (v) => `${v}`.toWellFormed();

  // File API: a type with anything outside U+0020..U+007E is dropped, else lowercased.
  const normalizeType = (t) => (/[^\x20-\x7e]/.test(t) ? '' : t.toLowerCase());

  function concat(chunks) {
    if (chunks.length === 1) return chunks[0];
    let total = 0;
    for (const c of chunks) total += c.length;
    const out = new Uint8Array(total);
    let at = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }

  // ===========================================================================
  // Blob, File
  // ===========================================================================

  let blobRecord; // (x) -> { bytes, type } or undefined
  let fileRecord; // (x) -> { name, lastModified } or undefined
  let pendingBlob = null; // internal construction, see makeBlob()
  let pendingFile = null;

  function blobOf(x) {
    const record = blobRecord(x);
    if (record === undefined) throw new TypeError('Illegal invocation');
    return record;
  }

  // sequence<BlobPart>, converted element by element in iteration order.
  function convertParts(parts, what) {
    if (parts === undefined) return [];
    if (parts === null || (typeof parts !== 'object' && typeof parts !== 'function')) {
      throw new TypeError(`${what}: The provided value cannot be converted to a sequence.`);
    }
    const method = parts[Symbol.iterator];
    if (typeof method !== 'function') {
      throw new TypeError(`${what}: The object must have a callable @@iterator property.`);
    }
    const list = [];
    for (const part of { [Symbol.iterator]: () => method.call(parts) }) {
      if (typeof part === 'object' && part !== null) {
        const blob = blobRecord(part);
        if (blob !== undefined) {
          list.push(blob.bytes);
          continue;
        }
        const bytes = bufferSourceBytes(part);
        if (bytes !== null) {
          list.push(bytes.slice());
          continue;
        }
      }
      list.push(toUSVString(part));
    }
    return list;
  }

  function convertEndings(value, what) {
    if (value === undefined) return false;
    const endings = `${value}`;
    if (endings === 'transparent') return false;
    if (endings === 'native') return true;
    throw new TypeError(`${what}: The provided value '${endings}' is not a valid enum value of type EndingType.`);
  }

  const convertType = (value) => (value === undefined ? '' : normalizeType(`${value}`));

  function joinParts(list, native) {
    if (list.length === 0) return EMPTY;
    return concat(list.map((part) => {
      if (typeof part !== 'string') return part;
      return utf8Encode(native ? part.replace(/\r\n?/g, '\n') : part);
    }));
  }

  // Web IDL [Clamp] long long.
  function clampLongLong(v) {
    let n = +v;
    if (Number.isNaN(n)) return 0;
    n = Math.min(Math.max(n, -(2 ** 63)), 2 ** 63 - 1);
    const floor = Math.floor(n);
    const diff = n - floor;
    if (diff !== 0.5) return Math.round(n) + 0;
    return (floor % 2 === 0 ? floor : floor + 1) + 0;
  }

  // Web IDL long long (without the modulo of huge values).
  function toLongLong(v) {
    const n = +v;
    return Number.isFinite(n) ? Math.trunc(n) + 0 : 0;
  }

  class Blob {
    #bytes;
    #type;

    constructor(blobParts = undefined, options = undefined) {
      let init = pendingBlob;
      pendingBlob = null;
      if (init === null) {
        const what = "Failed to construct 'Blob'";
        const parts = convertParts(blobParts, what);
        const dict = toDictionary(options, what);
        const native = convertEndings(dict.endings, what);
        const type = convertType(dict.type);
        init = { bytes: joinParts(parts, native), type };
      }
      this.#bytes = init.bytes;
      this.#type = init.type;
    }

    static {
      blobRecord = (x) => (typeof x === 'object' && x !== null && #bytes in x
        ? { bytes: x.#bytes, type: x.#type } : undefined);
    }

    get size() { return blobOf(this).bytes.length; }

    get type() { return blobOf(this).type; }

    slice(start = undefined, end = undefined, contentType = undefined) {
      const { bytes } = blobOf(this);
      const size = bytes.length;
      let from = start === undefined ? 0 : clampLongLong(start);
      from = from < 0 ? Math.max(size + from, 0) : Math.min(from, size);
      let to = end === undefined ? size : clampLongLong(end);
      to = to < 0 ? Math.max(size + to, 0) : Math.min(to, size);
      const type = contentType === undefined ? '' : normalizeType(`${contentType}`);
      return makeBlob(bytes.subarray(from, Math.max(from, to)), type);
    }

    async text() { return utf8Decode(blobOf(this).bytes); }

    async arrayBuffer() { return blobOf(this).bytes.slice().buffer; }

    async bytes() { return blobOf(this).bytes.slice(); }

    stream() {
      const { bytes } = blobOf(this);
      let offset = 0;
      return new internals.streams.ReadableStream({
        type: 'bytes',
        pull(controller) {
          const request = controller.byobRequest;
          if (offset < bytes.length) {
            if (request) {
              const view = request.view;
              const n = Math.min(view.byteLength, bytes.length - offset);
              new Uint8Array(view.buffer, view.byteOffset, n).set(bytes.subarray(offset, offset + n));
              offset += n;
              request.respond(n);
            } else {
              const n = Math.min(STREAM_CHUNK, bytes.length - offset);
              controller.enqueue(bytes.slice(offset, offset + n));
              offset += n;
            }
            if (offset < bytes.length) return;
            controller.close();
            return;
          }
          controller.close();
          if (request) request.respond(0);
        },
      });
    }
  }
  finishInterface(Blob, 'Blob');

  function makeBlob(bytes, type) {
    pendingBlob = { bytes, type };
    return new Blob();
  }

  class File extends Blob {
    #name;
    #lastModified;

    constructor(fileBits, fileName, options = undefined) {
      let init = pendingFile;
      pendingFile = null;
      if (init === null) {
        const what = "Failed to construct 'File'";
        requireArgs(arguments.length, 2, what);
        const parts = convertParts(fileBits, what);
        const name = toUSVString(fileName);
        const dict = toDictionary(options, what);
        const native = convertEndings(dict.endings, what);
        const type = convertType(dict.type);
        const modified = dict.lastModified;
        const lastModified = modified === undefined ? Date.now() : toLongLong(modified);
        init = { bytes: joinParts(parts, native), type, name, lastModified };
      }
      pendingBlob = init;
      super();
      this.#name = init.name;
      this.#lastModified = init.lastModified;
    }

    static {
      fileRecord = (x) => (typeof x === 'object' && x !== null && #name in x
        ? { name: x.#name, lastModified: x.#lastModified } : undefined);
    }

    get name() {
      if (!(#name in this)) throw new TypeError('Illegal invocation');
      return this.#name;
    }

    get lastModified() {
      if (!(#name in this)) throw new TypeError('Illegal invocation');
      return this.#lastModified;
    }
  }
  finishInterface(File, 'File');

  function makeFile(bytes, type, name, lastModified) {
    pendingFile = { bytes, type, name, lastModified };
    return new File();
  }

  // ===========================================================================
  // FormData
  // ===========================================================================

  let entriesOf; // (x) -> [{ name, value: string | File }] or undefined

  function entryList(x) {
    const list = entriesOf(x);
    if (list === undefined) throw new TypeError('Illegal invocation');
    return list;
  }

  // XHR "create an entry", after Web IDL overload resolution of
  // (name, USVString value) / (name, Blob value, optional filename).
  function createEntry(name, value, filename, argc, what) {
    name = toUSVString(name);
    const blob = blobRecord(value);
    if (blob === undefined) {
      if (argc > 2) throw new TypeError(`${what}: parameter 2 is not of type 'Blob'.`);
      return { name, value: toUSVString(value) };
    }
    const file = fileRecord(value);
    if (filename === undefined) {
      if (file !== undefined) return { name, value };
      return { name, value: makeFile(blob.bytes, blob.type, 'blob', Date.now()) };
    }
    const lastModified = file !== undefined ? file.lastModified : Date.now();
    return { name, value: makeFile(blob.bytes, blob.type, toUSVString(filename), lastModified) };
  }

  // Removes the entries named `name`, in place (iterators see the same list).
  function removeNamed(list, name, keep = -1) {
    let w = 0;
    for (let i = 0; i < list.length; i++) {
      if (i === keep || list[i].name !== name) list[w++] = list[i];
    }
    list.length = w;
  }

  class FormData {
    #entries = [];

    constructor(form = undefined) {
      if (form !== undefined) {
        throw new TypeError("Failed to construct 'FormData': parameter 1 is not of type 'HTMLFormElement'.");
      }
    }

    static {
      entriesOf = (x) => (typeof x === 'object' && x !== null && #entries in x ? x.#entries : undefined);
    }

    append(name, value, filename = undefined) {
      const list = entryList(this);
      const what = "Failed to execute 'append' on 'FormData'";
      requireArgs(arguments.length, 2, what);
      list.push(createEntry(name, value, filename, arguments.length, what));
    }

    delete(name) {
      const list = entryList(this);
      requireArgs(arguments.length, 1, "Failed to execute 'delete' on 'FormData'");
      removeNamed(list, toUSVString(name));
    }

    get(name) {
      const list = entryList(this);
      requireArgs(arguments.length, 1, "Failed to execute 'get' on 'FormData'");
      name = toUSVString(name);
      const entry = list.find((e) => e.name === name);
      return entry === undefined ? null : entry.value;
    }

    getAll(name) {
      const list = entryList(this);
      requireArgs(arguments.length, 1, "Failed to execute 'getAll' on 'FormData'");
      name = toUSVString(name);
      return list.filter((e) => e.name === name).map((e) => e.value);
    }

    has(name) {
      const list = entryList(this);
      requireArgs(arguments.length, 1, "Failed to execute 'has' on 'FormData'");
      name = toUSVString(name);
      return list.some((e) => e.name === name);
    }

    set(name, value, filename = undefined) {
      const list = entryList(this);
      const what = "Failed to execute 'set' on 'FormData'";
      requireArgs(arguments.length, 2, what);
      const entry = createEntry(name, value, filename, arguments.length, what);
      const i = list.findIndex((e) => e.name === entry.name);
      if (i < 0) {
        list.push(entry);
        return;
      }
      list[i] = entry;
      removeNamed(list, entry.name, i);
    }

    entries() { return new FormDataIterator(entryList(this), 'entries'); }

    keys() { return new FormDataIterator(entryList(this), 'keys'); }

    values() { return new FormDataIterator(entryList(this), 'values'); }

    forEach(callback, thisArg = undefined) {
      const list = entryList(this);
      requireArgs(arguments.length, 1, "Failed to execute 'forEach' on 'FormData'");
      if (typeof callback !== 'function') {
        throw new TypeError("Failed to execute 'forEach' on 'FormData': The callback provided as parameter 1 is not a function.");
      }
      for (let i = 0; i < list.length; i++) callback.call(thisArg, list[i].value, list[i].name, this);
    }
  }
  finishInterface(FormData, 'FormData');
  Object.defineProperty(FormData.prototype, Symbol.iterator, {
    value: FormData.prototype.entries, writable: true, enumerable: false, configurable: true,
  });

  // Web IDL default iterator: live over the list, by index.
  class FormDataIterator {
    #list;
    #kind;
    #index = 0;

    constructor(list, kind) {
      this.#list = list;
      this.#kind = kind;
    }

    next() {
      if (!(#list in this)) throw new TypeError('Illegal invocation');
      const list = this.#list;
      if (this.#index >= list.length) return { value: undefined, done: true };
      const { name, value } = list[this.#index++];
      const kind = this.#kind;
      return { value: kind === 'keys' ? name : kind === 'values' ? value : [name, value], done: false };
    }
  }
  Object.setPrototypeOf(FormDataIterator.prototype,
    Object.getPrototypeOf(Object.getPrototypeOf([][Symbol.iterator]())));
  finishInterface(FormDataIterator, 'FormData Iterator');
  delete FormDataIterator.prototype.constructor;

  // ===========================================================================
  // multipart/form-data and application/x-www-form-urlencoded
  // ===========================================================================

  const escapeQuoted = (s) => s.replace(/[\n\r"]/g, (c) => (c === '\n' ? '%0A' : c === '\r' ? '%0D' : '%22'));
  const toCRLF = (s) => s.replace(/\r\n|\r|\n/g, '\r\n');

  function boundary() {
    const random = new Uint8Array(12);
    if (typeof getRandomValues === 'function') getRandomValues(random);
    else for (let i = 0; i < random.length; i++) random[i] = Math.random() * 256;
    let hex = '';
    for (const b of random) hex += (b < 16 ? '0' : '') + b.toString(16);
    return `----WarrenFormBoundary${hex}`;
  }

  // HTML "multipart/form-data encoding algorithm", UTF-8.
  function serializeFormData(formData) {
    const list = entryList(formData);
    const delimiter = boundary();
    const chunks = [];
    for (const { name, value } of list) {
      let head = `--${delimiter}\r\nContent-Disposition: form-data; name="${escapeQuoted(toCRLF(name))}"`;
      if (typeof value === 'string') {
        chunks.push(utf8Encode(`${head}\r\n\r\n${toCRLF(value)}\r\n`));
        continue;
      }
      const blob = blobRecord(value);
      head += `; filename="${escapeQuoted(fileRecord(value).name)}"\r\n` +
        `Content-Type: ${blob.type || 'application/octet-stream'}\r\n\r\n`;
      chunks.push(utf8Encode(head), blob.bytes, utf8Encode('\r\n'));
    }
    chunks.push(utf8Encode(`--${delimiter}--\r\n`));
    return { bytes: concat(chunks), contentType: `multipart/form-data; boundary=${delimiter}` };
  }

  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  const QUOTED_STRING_CHARS = /^[\t\x20-\x7e\x80-\xff]*$/;
  const isHttpSpace = (c) => c === ' ' || c === '\t' || c === '\n' || c === '\r';

  // HTTP quoted-string at s[pos] === '"': [value, position after it].
  function quotedString(s, pos) {
    let value = '';
    for (pos++; pos < s.length;) {
      const c = s[pos++];
      if (c === '"') break;
      if (c === '\\' && pos < s.length) value += s[pos++];
      else value += c;
    }
    return [value, pos];
  }

  // MIME Sniffing "parse a MIME type": { essence, params } or null.
  function parseMimeType(input) {
    const s = input.replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, '');
    const slash = s.indexOf('/');
    if (slash < 0 || !TOKEN.test(s.slice(0, slash))) return null;
    let pos = s.indexOf(';', slash);
    if (pos < 0) pos = s.length;
    const subtype = s.slice(slash + 1, pos).replace(/[\t\n\r ]+$/, '');
    if (!TOKEN.test(subtype)) return null;
    const params = new Map();
    while (pos < s.length) {
      pos++;
      while (pos < s.length && isHttpSpace(s[pos])) pos++;
      let end = pos;
      while (end < s.length && s[end] !== ';' && s[end] !== '=') end++;
      const name = s.slice(pos, end).toLowerCase();
      pos = end;
      if (pos >= s.length) break;
      if (s[pos] === ';') continue;
      pos++;
      let value;
      if (s[pos] === '"') {
        [value, pos] = quotedString(s, pos);
        while (pos < s.length && s[pos] !== ';') pos++;
      } else {
        end = s.indexOf(';', pos);
        if (end < 0) end = s.length;
        value = s.slice(pos, end).replace(/[\t\n\r ]+$/, '');
        pos = end;
        if (value === '') continue;
      }
      if (TOKEN.test(name) && QUOTED_STRING_CHARS.test(value) && !params.has(name)) params.set(name, value);
    }
    return { essence: `${s.slice(0, slash)}/${subtype}`.toLowerCase(), params };
  }

  function latin1(bytes) {
    let s = '';
    for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
    return s;
  }

  function latin1Bytes(s) {
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  const hexValue = (c) => (c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x41 && c <= 0x46 ? c - 0x37
    : c >= 0x61 && c <= 0x66 ? c - 0x57 : -1);

  // URL "application/x-www-form-urlencoded parser", on bytes.
  function urlencodedComponent(bytes) {
    const out = new Uint8Array(bytes.length);
    let o = 0;
    for (let i = 0; i < bytes.length; i++) {
      const c = bytes[i];
      if (c === 0x2b) {
        out[o++] = 0x20;
      } else if (c === 0x25 && i + 2 < bytes.length && hexValue(bytes[i + 1]) >= 0 && hexValue(bytes[i + 2]) >= 0) {
        out[o++] = hexValue(bytes[i + 1]) * 16 + hexValue(bytes[i + 2]);
        i += 2;
      } else {
        out[o++] = c;
      }
    }
    return utf8DecodeKeepingBOM(out.subarray(0, o));
  }

  function parseUrlencoded(bytes) {
    const list = [];
    for (let start = 0; start < bytes.length;) {
      let end = bytes.indexOf(0x26, start);
      if (end < 0) end = bytes.length;
      if (end > start) {
        const sequence = bytes.subarray(start, end);
        const eq = sequence.indexOf(0x3d);
        list.push({
          name: urlencodedComponent(eq < 0 ? sequence : sequence.subarray(0, eq)),
          value: urlencodedComponent(eq < 0 ? EMPTY : sequence.subarray(eq + 1)),
        });
      }
      start = end + 1;
    }
    return list;
  }

  function multipartError(message) {
    return new TypeError(`Failed to parse the body as multipart/form-data: ${message}.`);
  }

  // "--boundary" at `from` or at the start of a later line; its index or -1.
  function findDelimiter(bytes, delimiter, from) {
    const matches = (at) => {
      if (at + delimiter.length > bytes.length) return false;
      for (let i = 0; i < delimiter.length; i++) if (bytes[at + i] !== delimiter[i]) return false;
      return true;
    };
    if ((from === 0 || bytes[from - 1] === 0x0a) && matches(from)) return from;
    for (let at = from; ;) {
      const lf = bytes.indexOf(0x0a, at);
      if (lf < 0) return -1;
      if (matches(lf + 1)) return lf + 1;
      at = lf + 1;
    }
  }

  // name="..." and filename="..." of a Content-Disposition value; quoted
  // strings may use backslash escapes or the %22 %0D %0A that browsers send.
  function dispositionParams(value) {
    const semicolon = value.indexOf(';');
    const kind = (semicolon < 0 ? value : value.slice(0, semicolon)).trim().toLowerCase();
    if (kind !== 'form-data') throw multipartError(`a part's Content-Disposition is "${kind}", not "form-data"`);
    const params = new Map();
    let pos = semicolon < 0 ? value.length : semicolon;
    while (pos < value.length) {
      pos++;
      const eq = value.indexOf('=', pos);
      if (eq < 0) break;
      const key = value.slice(pos, eq).trim().toLowerCase();
      pos = eq + 1;
      while (pos < value.length && isHttpSpace(value[pos])) pos++;
      let v;
      if (value[pos] === '"') {
        [v, pos] = quotedString(value, pos);
        while (pos < value.length && value[pos] !== ';') pos++;
      } else {
        let end = value.indexOf(';', pos);
        if (end < 0) end = value.length;
        v = value.slice(pos, end).trim();
        pos = end;
      }
      if (!params.has(key)) {
        v = v.replace(/%(0A|0D|22)/g, (m, code) => (code === '0A' ? '\n' : code === '0D' ? '\r' : '"'));
        params.set(key, utf8DecodeKeepingBOM(latin1Bytes(v)));
      }
    }
    return params;
  }

  function parseMultipart(bytes, boundaryParam) {
    const delimiter = latin1Bytes(`--${boundaryParam}`);
    let pos = findDelimiter(bytes, delimiter, 0);
    if (pos < 0) throw multipartError(`no boundary "--${boundaryParam}" found`);
    pos += delimiter.length;
    const list = [];
    for (;;) {
      if (bytes[pos] === 0x2d && bytes[pos + 1] === 0x2d) return list;
      while (bytes[pos] === 0x20 || bytes[pos] === 0x09) pos++;
      if (bytes[pos] === 0x0d && bytes[pos + 1] === 0x0a) pos += 2;
      else if (bytes[pos] === 0x0a) pos += 1;
      else if (pos >= bytes.length) throw multipartError('the body ends without a closing boundary');
      else throw multipartError('a boundary is followed by neither a line break nor "--"');
      let name = null;
      let filename = null;
      let contentType = null;
      for (;;) {
        const lf = bytes.indexOf(0x0a, pos);
        if (lf < 0) throw multipartError('the headers of a part do not end with an empty line');
        const end = lf > pos && bytes[lf - 1] === 0x0d ? lf - 1 : lf;
        const line = latin1(bytes.subarray(pos, end));
        pos = lf + 1;
        if (line === '') break;
        const colon = line.indexOf(':');
        if (colon <= 0) throw multipartError(`invalid header line "${line.slice(0, 100)}"`);
        const header = line.slice(0, colon).trim().toLowerCase();
        if (header === 'content-disposition') {
          const params = dispositionParams(line.slice(colon + 1));
          name = params.has('name') ? params.get('name') : null;
          filename = params.has('filename') ? params.get('filename') : null;
        } else if (header === 'content-type') {
          contentType = line.slice(colon + 1).trim();
        }
      }
      if (name === null) throw multipartError('a part has no Content-Disposition header with a name');
      const next = findDelimiter(bytes, delimiter, pos);
      if (next < 0) throw multipartError('the body ends without a closing boundary');
      let end = next - 1; // the line feed before the delimiter
      if (end > pos && bytes[end - 1] === 0x0d) end--;
      const body = bytes.subarray(pos, Math.max(pos, end));
      list.push({
        name,
        value: filename === null ? utf8DecodeKeepingBOM(body)
          : makeFile(body.slice(), normalizeType(contentType ?? 'text/plain'), filename, Date.now()),
      });
      pos = next + delimiter.length;
    }
  }

  function parseFormData(body, contentType) {
    const bytes = bufferSourceBytes(body);
    if (bytes === null) throw new TypeError('Failed to parse the body as FormData: the body is not bytes.');
    const mime = typeof contentType === 'string' ? parseMimeType(contentType) : null;
    let list;
    if (mime !== null && mime.essence === 'multipart/form-data') {
      const boundaryParam = mime.params.get('boundary');
      if (boundaryParam === undefined) {
        throw new TypeError(
          'Failed to parse the body as multipart/form-data: the Content-Type has no boundary parameter.');
      }
      list = parseMultipart(bytes, boundaryParam);
    } else if (mime !== null && mime.essence === 'application/x-www-form-urlencoded') {
      list = parseUrlencoded(bytes);
    } else {
      throw new TypeError(
        `Failed to parse the body as FormData: the Content-Type ${JSON.stringify(contentType ?? null)} is neither ` +
        'multipart/form-data nor application/x-www-form-urlencoded.');
    }
    const formData = new FormData();
    const entries = entriesOf(formData);
    for (const entry of list) entries.push(entry);
    return formData;
  }

  defineGlobal('Blob', Blob);
  defineGlobal('File', File);
  defineGlobal('FormData', FormData);

  internals.isBlob = (x) => blobRecord(x) !== undefined;
  // A copy the caller owns (a Blob's own bytes must never reach tenant code).
  internals.blobBytes = (blob) => blobOf(blob).bytes.slice();
  // Takes ownership of `bytes` (no copy).
  internals.makeBlob = (bytes, type = '') => makeBlob(bytes, normalizeType(`${type}`));
  internals.isFormData = (x) => entriesOf(x) !== undefined;
  internals.serializeFormData = serializeFormData;
  internals.parseFormData = parseFormData;
};
