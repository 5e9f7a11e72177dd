// Web platform APIs for Warren isolates.
//
// Loaded as a classic script into a bare V8 context (no Node, no browser, no
// timers). Its only top-level effect is defining `globalThis.__warrenWebAPI`;
// the host bootstrap calls it once with the global object to populate and an
// `internals` object that only the host sees.
//
// Installs: TextEncoder, TextDecoder, atob, btoa, DOMException, Headers,
// Request, Response, queueMicrotask.
//
// Follows the WHATWG Encoding / Fetch / HTML specs, with Cloudflare Workers
// behaviour where the two differ (no CORS or mode semantics, `request.cf`,
// immutable headers on incoming requests, GET bodies kept when proxying).
//
// URL and URLSearchParams come from a separately vendored bundle installed
// after this file, so they are looked up on `global` at call time, never
// captured here.

globalThis.__warrenWebAPI = function install(global, internals) {
  'use strict';

  // ===========================================================================
  // Shared helpers
  // ===========================================================================

  // String.fromCharCode.apply needs bounded argument lists; 8 KiB keeps well
  // clear of V8's stack limits while amortising the call overhead.
  const CHUNK = 0x2000;
  const fromCharCode = String.fromCharCode;
  const EMPTY_BYTES = new Uint8Array(0);

  function defineGlobal(name, value) {
    Object.defineProperty(global, name, {
      value, writable: true, enumerable: false, configurable: true,
    });
  }

  function requireArgs(count, needed, what) {
    if (count < needed) {
      throw new TypeError(
        `${what}: ${needed} argument${needed > 1 ? 's' : ''} required, ` +
        `but only ${count} present.`);
    }
  }

  // Web IDL makes operations and attributes enumerable and gives every
  // interface a toStringTag; plain classes do neither.
  function finishInterface(cls, tag) {
    for (const target of [cls.prototype, cls]) {
      for (const key of Object.getOwnPropertyNames(target)) {
        if (key === 'constructor' || key === 'prototype' || key === 'length' ||
            key === 'name') continue;
        const desc = Object.getOwnPropertyDescriptor(target, key);
        if (desc.configurable) {
          desc.enumerable = true;
          Object.defineProperty(target, key, desc);
        }
      }
    }
    Object.defineProperty(cls.prototype, Symbol.toStringTag, {
      value: tag, writable: false, enumerable: false, configurable: true,
    });
  }

  // --- Web IDL conversions -------------------------------------------------
  // Template literals apply ToString, which (unlike String()) throws a
  // TypeError for Symbols, as Web IDL requires.
  function toDOMString(v) {
    return `${v}`;
  }

  function toUSVString(v) {
    return `${v}`.toWellFormed();
  }

  function toByteString(v, what) {
    const s = `${v}`;
    if (/[^\x00-\xff]/.test(s)) {
      throw new TypeError(`${what}: value contains a character above U+00FF.`);
    }
    return s;
  }

  function toDictionary(v, what) {
    if (v === undefined || v === null) return {};
    if (typeof v !== 'object' && typeof v !== 'function') {
      throw new TypeError(`${what}: the options argument must be an object.`);
    }
    return v;
  }

  function toUnsignedShort(v) {
    let n = +v; // throws TypeError for Symbol/BigInt like Web IDL ToNumber
    if (!Number.isFinite(n)) return 0;
    n = Math.trunc(n) % 65536;
    return n < 0 ? n + 65536 : n + 0; // + 0 folds -0 into 0
  }

  function asciiLower(s) {
    return s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
  }

  function asciiUpper(s) {
    return s.replace(/[a-z]+/g, (m) => m.toUpperCase());
  }

  // --- Buffer sources ------------------------------------------------------
  // Brand checks go through the intrinsic getters so that user objects with
  // a fake `buffer`/`byteLength` (or an overridden property) cannot fool them.
  const getter = (obj, key) => Object.getOwnPropertyDescriptor(obj, key).get;
  const TypedArrayPrototype = Object.getPrototypeOf(Uint8Array.prototype);
  const typedArrayTag = getter(TypedArrayPrototype, Symbol.toStringTag);
  const typedArrayBuffer = getter(TypedArrayPrototype, 'buffer');
  const typedArrayOffset = getter(TypedArrayPrototype, 'byteOffset');
  const typedArrayByteLength = getter(TypedArrayPrototype, 'byteLength');
  const typedArrayLength = getter(TypedArrayPrototype, 'length');
  const dataViewBuffer = getter(DataView.prototype, 'buffer');
  const dataViewOffset = getter(DataView.prototype, 'byteOffset');
  const dataViewByteLength = getter(DataView.prototype, 'byteLength');
  const arrayBufferByteLength = getter(ArrayBuffer.prototype, 'byteLength');
  const sharedArrayBufferByteLength = typeof SharedArrayBuffer === 'function'
    ? getter(SharedArrayBuffer.prototype, 'byteLength') : null;

  function brand(fn, v) {
    try {
      fn.call(v);
      return true;
    } catch {
      return false;
    }
  }

  const isArrayBuffer = (v) => brand(arrayBufferByteLength, v);
  const isSharedArrayBuffer = (v) =>
    sharedArrayBufferByteLength !== null && brand(sharedArrayBufferByteLength, v);
  const isDataView = (v) => brand(dataViewBuffer, v);
  const isTypedArray = (v) => typedArrayTag.call(v) !== undefined;
  const isUint8Array = (v) => typedArrayTag.call(v) === 'Uint8Array';

  // A Uint8Array over the bytes of any BufferSource (no copy), or null.
  function bufferSourceBytes(v) {
    if (typeof v !== 'object' || v === null) return null;
    if (isTypedArray(v)) {
      return new Uint8Array(typedArrayBuffer.call(v), typedArrayOffset.call(v),
        typedArrayByteLength.call(v));
    }
    if (isDataView(v)) {
      return new Uint8Array(dataViewBuffer.call(v), dataViewOffset.call(v),
        dataViewByteLength.call(v));
    }
    if (isArrayBuffer(v) || isSharedArrayBuffer(v)) return new Uint8Array(v);
    return null;
  }

  // Bytes whose ArrayBuffer is exactly theirs, so `.buffer` can be handed out.
  function ownedBytes(u8) {
    if (u8.byteOffset === 0 && u8.byteLength === u8.buffer.byteLength &&
        !isSharedArrayBuffer(u8.buffer)) {
      return u8;
    }
    return u8.slice();
  }

  // --- Binary strings ------------------------------------------------------
  function bytesToLatin1(u8) {
    const len = u8.length;
    if (len <= CHUNK) return fromCharCode.apply(null, u8);
    const parts = [];
    for (let i = 0; i < len; i += CHUNK) {
      parts.push(fromCharCode.apply(null, u8.subarray(i, i + CHUNK)));
    }
    return parts.join('');
  }

  function codeUnitsToString(u16, len) {
    if (len <= CHUNK) return fromCharCode.apply(null, u16.subarray(0, len));
    const parts = [];
    for (let i = 0; i < len; i += CHUNK) {
      parts.push(fromCharCode.apply(null, u16.subarray(i, Math.min(i + CHUNK, len))));
    }
    return parts.join('');
  }

  function latin1ToBytes(str) {
    const n = str.length;
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = str.charCodeAt(i);
    return out;
  }

  // ===========================================================================
  // Encoding: UTF-8 / UTF-16 / windows-1252 codecs, TextEncoder, TextDecoder
  // ===========================================================================

  // Byte length of str[i..] as UTF-8, with lone surrogates counted as U+FFFD.
  function utf8Length(str, i) {
    const len = str.length;
    let n = 0;
    for (; i < len; i++) {
      const c = str.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c <= 0xdbff && i + 1 < len &&
               (str.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        n += 4;
        i++;
      } else n += 3;
    }
    return n;
  }

  // Encodes str[i..] into out[o..] until either runs out, never splitting a
  // code point. Results go to these two variables to avoid an allocation.
  let encodedRead = 0;
  let encodedWritten = 0;
  function utf8Write(str, i, out, o) {
    const len = str.length;
    const cap = out.length;
    while (i < len) {
      let c = str.charCodeAt(i);
      if (c < 0x80) {
        if (o >= cap) break;
        out[o++] = c;
        i++;
        continue;
      }
      if (c < 0x800) {
        if (o + 2 > cap) break;
        out[o++] = 0xc0 | (c >> 6);
        out[o++] = 0x80 | (c & 0x3f);
        i++;
        continue;
      }
      if (c >= 0xd800 && c <= 0xdfff) {
        const d = i + 1 < len ? str.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
          if (o + 4 > cap) break;
          const cp = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          out[o++] = 0xf0 | (cp >> 18);
          out[o++] = 0x80 | ((cp >> 12) & 0x3f);
          out[o++] = 0x80 | ((cp >> 6) & 0x3f);
          out[o++] = 0x80 | (cp & 0x3f);
          i += 2;
          continue;
        }
        c = 0xfffd; // lone surrogate: USVString conversion replaces it
      }
      if (o + 3 > cap) break;
      out[o++] = 0xe0 | (c >> 12);
      out[o++] = 0x80 | ((c >> 6) & 0x3f);
      out[o++] = 0x80 | (c & 0x3f);
      i++;
    }
    encodedRead = i;
    encodedWritten = o;
  }

  function utf8Encode(str) {
    const len = str.length;
    // Most payloads are ASCII: try an exact-size copy first and only fall
    // back to measuring when a non-ASCII unit shows up.
    const ascii = new Uint8Array(len);
    let i = 0;
    for (; i < len; i++) {
      const c = str.charCodeAt(i);
      if (c >= 0x80) break;
      ascii[i] = c;
    }
    if (i === len) return ascii;
    const out = new Uint8Array(i + utf8Length(str, i));
    out.set(ascii.subarray(0, i));
    utf8Write(str, i, out, i);
    return out;
  }

  function decodeFailure(encoding) {
    return new TypeError(`The encoded data was not valid for encoding ${encoding}`);
  }

  // WHATWG UTF-8 decoder, resumable across chunks. Invalid input becomes one
  // U+FFFD per maximal subpart, exactly as the spec's byte state machine does.
  class Utf8Decoder {
    needed = 0;
    seen = 0;
    cp = 0;
    lower = 0x80;
    upper = 0xbf;

    reset() {
      this.needed = this.seen = this.cp = 0;
      this.lower = 0x80;
      this.upper = 0xbf;
    }

    decode(bytes, flush, fatal) {
      const n = bytes.length;
      let i = 0;
      let prefix = '';
      if (this.needed === 0) {
        while (i < n && bytes[i] < 0x80) i++;
        if (i === n) return bytesToLatin1(bytes);
        if (i > 0) prefix = bytesToLatin1(bytes.subarray(0, i));
      }
      // Output never exceeds one unit per input byte, plus two for a
      // sequence carried over from the previous chunk and a final U+FFFD.
      const out = new Uint16Array(n - i + 3);
      let o = 0;
      let { needed, seen, cp, lower, upper } = this;
      for (; i < n; i++) {
        const b = bytes[i];
        if (needed === 0) {
          if (b < 0x80) {
            out[o++] = b;
          } else if (b >= 0xc2 && b <= 0xdf) {
            needed = 1;
            cp = b & 0x1f;
          } else if (b >= 0xe0 && b <= 0xef) {
            if (b === 0xe0) lower = 0xa0;
            else if (b === 0xed) upper = 0x9f;
            needed = 2;
            cp = b & 0xf;
          } else if (b >= 0xf0 && b <= 0xf4) {
            if (b === 0xf0) lower = 0x90;
            else if (b === 0xf4) upper = 0x8f;
            needed = 3;
            cp = b & 0x7;
          } else {
            if (fatal) throw (this.reset(), decodeFailure('utf-8'));
            out[o++] = 0xfffd;
          }
          continue;
        }
        if (b < lower || b > upper) {
          // Error for the bytes so far; the offending byte starts afresh.
          needed = seen = cp = 0;
          lower = 0x80;
          upper = 0xbf;
          if (fatal) throw (this.reset(), decodeFailure('utf-8'));
          out[o++] = 0xfffd;
          i--;
          continue;
        }
        lower = 0x80;
        upper = 0xbf;
        cp = (cp << 6) | (b & 0x3f);
        if (++seen !== needed) continue;
        if (cp > 0xffff) {
          cp -= 0x10000;
          out[o++] = 0xd800 + (cp >> 10);
          out[o++] = 0xdc00 + (cp & 0x3ff);
        } else {
          out[o++] = cp;
        }
        needed = seen = cp = 0;
      }
      if (flush && needed !== 0) {
        needed = seen = cp = 0;
        lower = 0x80;
        upper = 0xbf;
        if (fatal) throw (this.reset(), decodeFailure('utf-8'));
        out[o++] = 0xfffd;
      }
      Object.assign(this, { needed, seen, cp, lower, upper });
      return prefix + codeUnitsToString(out, o);
    }
  }

  class Utf16Decoder {
    leadByte = -1;
    leadSurrogate = -1;

    constructor(bigEndian) {
      this.bigEndian = bigEndian;
      this.name = bigEndian ? 'utf-16be' : 'utf-16le';
    }

    reset() {
      this.leadByte = this.leadSurrogate = -1;
    }

    decode(bytes, flush, fatal) {
      const n = bytes.length;
      const out = new Uint16Array((n >> 1) + 3);
      const be = this.bigEndian;
      let o = 0;
      let lb = this.leadByte;
      let ls = this.leadSurrogate;
      for (let i = 0; i < n; i++) {
        const b = bytes[i];
        if (lb < 0) {
          lb = b;
          continue;
        }
        const unit = be ? (lb << 8) | b : lb | (b << 8);
        lb = -1;
        if (ls >= 0) {
          const lead = ls;
          ls = -1;
          if (unit >= 0xdc00 && unit <= 0xdfff) {
            out[o++] = lead;
            out[o++] = unit;
            continue;
          }
          if (fatal) throw (this.reset(), decodeFailure(this.name));
          out[o++] = 0xfffd;
          // The unit itself is processed below as if nothing preceded it.
        }
        if (unit >= 0xd800 && unit <= 0xdbff) {
          ls = unit;
        } else if (unit >= 0xdc00 && unit <= 0xdfff) {
          if (fatal) throw (this.reset(), decodeFailure(this.name));
          out[o++] = 0xfffd;
        } else {
          out[o++] = unit;
        }
      }
      if (flush && (lb >= 0 || ls >= 0)) {
        lb = ls = -1;
        if (fatal) throw (this.reset(), decodeFailure(this.name));
        out[o++] = 0xfffd;
      }
      this.leadByte = lb;
      this.leadSurrogate = ls;
      return codeUnitsToString(out, o);
    }
  }

  // windows-1252 differs from ISO-8859-1 only in 0x80-0x9F; the Encoding
  // spec maps every "latin1" label to it, so browsers decode it this way.
  const WINDOWS_1252_HIGH = [
    0x20ac, 0x0081, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021,
    0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008d, 0x017d, 0x008f,
    0x0090, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014,
    0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x009d, 0x017e, 0x0178,
  ];

  class Windows1252Decoder {
    reset() {}

    decode(bytes) {
      const n = bytes.length;
      let i = 0;
      while (i < n && (bytes[i] < 0x80 || bytes[i] > 0x9f)) i++;
      if (i === n) return bytesToLatin1(bytes);
      const out = new Uint16Array(n);
      for (let j = 0; j < n; j++) {
        const b = bytes[j];
        out[j] = b >= 0x80 && b <= 0x9f ? WINDOWS_1252_HIGH[b - 0x80] : b;
      }
      return codeUnitsToString(out, n);
    }
  }

  const ENCODING_LABELS = new Map();
  for (const [name, labels] of [
    ['utf-8', ['unicode-1-1-utf-8', 'unicode11utf8', 'unicode20utf8', 'utf-8',
      'utf8', 'x-unicode20utf8']],
    ['utf-16le', ['csunicode', 'iso-10646-ucs-2', 'ucs-2', 'unicode',
      'unicodefeff', 'utf-16', 'utf-16le']],
    ['utf-16be', ['unicodefffe', 'utf-16be']],
    ['windows-1252', ['ansi_x3.4-1968', 'ascii', 'cp1252', 'cp819',
      'csisolatin1', 'ibm819', 'iso-8859-1', 'iso-ir-100', 'iso8859-1',
      'iso88591', 'iso_8859-1', 'iso_8859-1:1987', 'l1', 'latin1', 'us-ascii',
      'windows-1252', 'x-cp1252']],
  ]) {
    for (const label of labels) ENCODING_LABELS.set(label, name);
  }

  function newDecoder(encoding) {
    switch (encoding) {
      case 'utf-8': return new Utf8Decoder();
      case 'utf-16le': return new Utf16Decoder(false);
      case 'utf-16be': return new Utf16Decoder(true);
      default: return new Windows1252Decoder();
    }
  }

  // "UTF-8 decode" from the Encoding spec: BOM stripped, errors replaced.
  function utf8Decode(bytes) {
    const s = new Utf8Decoder().decode(bytes, true, false);
    return s.charCodeAt(0) === 0xfeff ? s.slice(1) : s;
  }

  class TextEncoder {
    #brand = true;

    static #check(self) {
      if (!(#brand in self)) throw new TypeError('Illegal invocation');
    }

    get encoding() {
      TextEncoder.#check(this);
      return 'utf-8';
    }

    encode(input = '') {
      TextEncoder.#check(this);
      return utf8Encode(toDOMString(input));
    }

    encodeInto(source, destination) {
      TextEncoder.#check(this);
      requireArgs(arguments.length, 2, "Failed to execute 'encodeInto' on 'TextEncoder'");
      const str = toDOMString(source);
      if (!isUint8Array(destination)) {
        throw new TypeError(
          "Failed to execute 'encodeInto' on 'TextEncoder': parameter 2 is not of type 'Uint8Array'.");
      }
      utf8Write(str, 0, destination, 0);
      return { read: encodedRead, written: encodedWritten };
    }
  }
  finishInterface(TextEncoder, 'TextEncoder');

  class TextDecoder {
    #encoding;
    #fatal;
    #ignoreBOM;
    #decoder = null;
    #doNotFlush = false;
    #bomSeen = false;

    constructor(label = 'utf-8', options = undefined) {
      const key = asciiLower(toDOMString(label).replace(/^[\t\n\f\r ]+|[\t\n\f\r ]+$/g, ''));
      const encoding = ENCODING_LABELS.get(key);
      if (encoding === undefined) {
        throw new RangeError(
          `Failed to construct 'TextDecoder': The encoding label provided ('${key}') is invalid.`);
      }
      const dict = toDictionary(options, "Failed to construct 'TextDecoder'");
      this.#encoding = encoding;
      this.#fatal = Boolean(dict.fatal);
      this.#ignoreBOM = Boolean(dict.ignoreBOM);
    }

    get encoding() {
      return this.#encoding;
    }

    get fatal() {
      return this.#fatal;
    }

    get ignoreBOM() {
      return this.#ignoreBOM;
    }

    decode(input = undefined, options = undefined) {
      let bytes = EMPTY_BYTES;
      if (input !== undefined) {
        bytes = bufferSourceBytes(input);
        if (bytes === null) {
          throw new TypeError(
            "Failed to execute 'decode' on 'TextDecoder': The provided value is not of type " +
            "'(ArrayBuffer or ArrayBufferView)'.");
        }
      }
      const stream = Boolean(toDictionary(options, "Failed to execute 'decode' on 'TextDecoder'").stream);
      if (!this.#doNotFlush) {
        this.#decoder = newDecoder(this.#encoding);
        this.#bomSeen = false;
      }
      this.#doNotFlush = stream;
      let s;
      try {
        s = this.#decoder.decode(bytes, !stream, this.#fatal);
      } catch (err) {
        this.#doNotFlush = false;
        throw err;
      }
      // The BOM check applies to the first code point of the whole stream,
      // which may only arrive in a later chunk.
      if (!this.#ignoreBOM && !this.#bomSeen && s.length > 0 &&
          this.#encoding !== 'windows-1252') {
        this.#bomSeen = true;
        if (s.charCodeAt(0) === 0xfeff) s = s.slice(1);
      }
      return s;
    }
  }
  finishInterface(TextDecoder, 'TextDecoder');

  // ===========================================================================
  // DOMException
  // ===========================================================================

  const DOM_EXCEPTION_CODES = [
    ['IndexSizeError', 'INDEX_SIZE_ERR'],
    ['DOMStringSizeError', 'DOMSTRING_SIZE_ERR'],
    ['HierarchyRequestError', 'HIERARCHY_REQUEST_ERR'],
    ['WrongDocumentError', 'WRONG_DOCUMENT_ERR'],
    ['InvalidCharacterError', 'INVALID_CHARACTER_ERR'],
    ['NoDataAllowedError', 'NO_DATA_ALLOWED_ERR'],
    ['NoModificationAllowedError', 'NO_MODIFICATION_ALLOWED_ERR'],
    ['NotFoundError', 'NOT_FOUND_ERR'],
    ['NotSupportedError', 'NOT_SUPPORTED_ERR'],
    ['InUseAttributeError', 'INUSE_ATTRIBUTE_ERR'],
    ['InvalidStateError', 'INVALID_STATE_ERR'],
    ['SyntaxError', 'SYNTAX_ERR'],
    ['InvalidModificationError', 'INVALID_MODIFICATION_ERR'],
    ['NamespaceError', 'NAMESPACE_ERR'],
    ['InvalidAccessError', 'INVALID_ACCESS_ERR'],
    ['ValidationError', 'VALIDATION_ERR'],
    ['TypeMismatchError', 'TYPE_MISMATCH_ERR'],
    ['SecurityError', 'SECURITY_ERR'],
    ['NetworkError', 'NETWORK_ERR'],
    ['AbortError', 'ABORT_ERR'],
    ['URLMismatchError', 'URL_MISMATCH_ERR'],
    ['QuotaExceededError', 'QUOTA_EXCEEDED_ERR'],
    ['TimeoutError', 'TIMEOUT_ERR'],
    ['InvalidNodeTypeError', 'INVALID_NODE_TYPE_ERR'],
    ['DataCloneError', 'DATA_CLONE_ERR'],
  ];
  const DOM_EXCEPTION_CODE_BY_NAME = new Map(
    DOM_EXCEPTION_CODES.map(([name], i) => [name, i + 1]));

  class DOMException extends Error {
    #name;
    #message;
    #code;

    constructor(message = '', name = 'Error') {
      const msg = toDOMString(message);
      // Passing the message to Error makes V8 put it in the stack header.
      super(msg);
      this.#name = toDOMString(name);
      this.#code = DOM_EXCEPTION_CODE_BY_NAME.get(this.#name) ?? 0;
      // Web IDL puts `message` on the prototype, not on the instance.
      delete this.message;
      this.#message = msg;
    }

    get name() {
      return this.#name;
    }

    get message() {
      return this.#message;
    }

    get code() {
      return this.#code;
    }
  }
  finishInterface(DOMException, 'DOMException');
  DOM_EXCEPTION_CODES.forEach(([, constant], i) => {
    const desc = { value: i + 1, writable: false, enumerable: true, configurable: false };
    Object.defineProperty(DOMException, constant, desc);
    Object.defineProperty(DOMException.prototype, constant, desc);
  });

  // ===========================================================================
  // atob / btoa (HTML "forgiving-base64")
  // ===========================================================================

  const BASE64_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const BASE64_ENCODE = latin1ToBytes(BASE64_ALPHABET);
  const BASE64_DECODE = new Uint8Array(128);
  for (let i = 0; i < 64; i++) BASE64_DECODE[BASE64_ALPHABET.charCodeAt(i)] = i;

  function btoa(data) {
    requireArgs(arguments.length, 1, "Failed to execute 'btoa'");
    const s = toDOMString(data);
    if (/[^\x00-\xff]/.test(s)) {
      throw new DOMException(
        "Failed to execute 'btoa': The string to be encoded contains characters outside of the Latin1 range.",
        'InvalidCharacterError');
    }
    const n = s.length;
    const out = new Uint8Array(Math.ceil(n / 3) * 4);
    let o = 0;
    let i = 0;
    for (; i + 2 < n; i += 3) {
      const t = (s.charCodeAt(i) << 16) | (s.charCodeAt(i + 1) << 8) | s.charCodeAt(i + 2);
      out[o++] = BASE64_ENCODE[t >> 18];
      out[o++] = BASE64_ENCODE[(t >> 12) & 63];
      out[o++] = BASE64_ENCODE[(t >> 6) & 63];
      out[o++] = BASE64_ENCODE[t & 63];
    }
    if (i < n) {
      const two = i + 1 < n;
      const t = (s.charCodeAt(i) << 16) | (two ? s.charCodeAt(i + 1) << 8 : 0);
      out[o++] = BASE64_ENCODE[t >> 18];
      out[o++] = BASE64_ENCODE[(t >> 12) & 63];
      out[o++] = two ? BASE64_ENCODE[(t >> 6) & 63] : 0x3d;
      out[o++] = 0x3d;
    }
    return bytesToLatin1(out);
  }

  function atob(data) {
    requireArgs(arguments.length, 1, "Failed to execute 'atob'");
    let s = toDOMString(data).replace(/[\t\n\f\r ]+/g, '');
    if (s.length % 4 === 0) {
      if (s.endsWith('==')) s = s.slice(0, -2);
      else if (s.endsWith('=')) s = s.slice(0, -1);
    }
    if (s.length % 4 === 1 || /[^A-Za-z0-9+/]/.test(s)) {
      throw new DOMException(
        "Failed to execute 'atob': The string to be decoded is not correctly encoded.",
        'InvalidCharacterError');
    }
    const n = s.length;
    const out = new Uint8Array(Math.floor((n * 3) / 4));
    let o = 0;
    let i = 0;
    for (; i + 3 < n; i += 4) {
      const t = (BASE64_DECODE[s.charCodeAt(i)] << 18) |
        (BASE64_DECODE[s.charCodeAt(i + 1)] << 12) |
        (BASE64_DECODE[s.charCodeAt(i + 2)] << 6) |
        BASE64_DECODE[s.charCodeAt(i + 3)];
      out[o++] = t >> 16;
      out[o++] = (t >> 8) & 0xff;
      out[o++] = t & 0xff;
    }
    // 2 or 3 leftover characters carry 1 or 2 bytes; extra bits are dropped.
    if (n - i >= 2) {
      const t = (BASE64_DECODE[s.charCodeAt(i)] << 18) |
        (BASE64_DECODE[s.charCodeAt(i + 1)] << 12) |
        (n - i === 3 ? BASE64_DECODE[s.charCodeAt(i + 2)] << 6 : 0);
      out[o++] = t >> 16;
      if (n - i === 3) out[o++] = (t >> 8) & 0xff;
    }
    return bytesToLatin1(out);
  }

  // ===========================================================================
  // Headers
  // ===========================================================================

  // RFC 9110 token: valid header names and methods.
  const TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  const REASON_PHRASE_RE = /^[\t\x20-\x7e\x80-\xff]*$/;

  const isHttpWhitespace = (c) => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;

  function normalizeHeaderValue(v) {
    let start = 0;
    let end = v.length;
    while (start < end && isHttpWhitespace(v.charCodeAt(start))) start++;
    while (end > start && isHttpWhitespace(v.charCodeAt(end - 1))) end--;
    return start === 0 && end === v.length ? v : v.slice(start, end);
  }

  function checkHeaderName(name) {
    if (!TOKEN_RE.test(name)) throw new TypeError(`Invalid header name: "${name}"`);
  }

  function checkHeaderValue(name, value) {
    if (/[\0\n\r]/.test(value)) {
      throw new TypeError(`Invalid header value for "${name}".`);
    }
  }

  // Filled in by the Headers static block: internal access to header lists.
  let H;

  class Headers {
    // [lowercased name, value] pairs in insertion order: the header list.
    #list = [];
    // 'none' or 'immutable'. Workers have no forbidden header names, so the
    // spec's request/response guards behave like 'none'.
    #guard = 'none';
    // Cached sort-and-combine result, dropped on every mutation.
    #sorted = null;

    constructor(init = undefined) {
      if (init !== undefined) this.#fill(init);
    }

    #fill(init) {
      if ((typeof init !== 'object' && typeof init !== 'function') || init === null) {
        throw new TypeError(
          "Failed to construct 'Headers': The provided value is not of type " +
          "'(record<ByteString, ByteString> or sequence<sequence<ByteString>>)'.");
      }
      if (#list in init) {
        // Same result as iterating it, minus re-validation.
        for (const [name, value] of init.#list) this.#list.push([name, value]);
        this.#sorted = null;
        return;
      }
      const method = init[Symbol.iterator];
      if (method !== undefined && method !== null) {
        if (typeof method !== 'function') {
          throw new TypeError("Failed to construct 'Headers': @@iterator is not callable.");
        }
        const pairs = [];
        for (const pair of { [Symbol.iterator]: () => method.call(init) }) {
          if ((typeof pair !== 'object' && typeof pair !== 'function') || pair === null ||
              typeof pair[Symbol.iterator] !== 'function') {
            throw new TypeError(
              "Failed to construct 'Headers': The provided value cannot be converted to a sequence.");
          }
          const items = Array.from(pair);
          if (items.length !== 2) {
            throw new TypeError(
              "Failed to construct 'Headers': Invalid value: each header pair must have exactly 2 items.");
          }
          pairs.push([toByteString(items[0], 'Headers'), toByteString(items[1], 'Headers')]);
        }
        for (const [name, value] of pairs) this.#append(name, value);
        return;
      }
      // record<ByteString, ByteString>: own enumerable keys, in key order.
      const pairs = [];
      for (const key of Reflect.ownKeys(init)) {
        const desc = Reflect.getOwnPropertyDescriptor(init, key);
        if (desc === undefined || !desc.enumerable) continue;
        pairs.push([toByteString(key, 'Headers'), toByteString(init[key], 'Headers')]);
      }
      for (const [name, value] of pairs) this.#append(name, value);
    }

    // The spec's "append" with validation and the guard check.
    #append(name, value) {
      value = normalizeHeaderValue(value);
      checkHeaderName(name);
      checkHeaderValue(name, value);
      this.#checkMutable();
      this.#list.push([name.toLowerCase(), value]);
      this.#sorted = null;
    }

    #checkMutable() {
      if (this.#guard === 'immutable') throw new TypeError("Can't modify immutable headers.");
    }

    #values(lower) {
      const values = [];
      for (const [n, v] of this.#list) if (n === lower) values.push(v);
      return values;
    }

    // The spec's "sort and combine": names sorted, values joined with ", ",
    // except set-cookie whose values must stay separate.
    #pairs() {
      if (this.#sorted !== null) return this.#sorted;
      const byName = new Map();
      for (const [n, v] of this.#list) {
        const values = byName.get(n);
        if (values === undefined) byName.set(n, [v]);
        else values.push(v);
      }
      const sorted = [];
      for (const name of [...byName.keys()].sort()) {
        const values = byName.get(name);
        if (name === 'set-cookie') {
          for (const v of values) sorted.push([name, v]);
        } else {
          sorted.push([name, values.join(', ')]);
        }
      }
      this.#sorted = sorted;
      return sorted;
    }

    append(name, value) {
      requireArgs(arguments.length, 2, "Failed to execute 'append' on 'Headers'");
      this.#append(toByteString(name, 'Headers.append'), toByteString(value, 'Headers.append'));
    }

    delete(name) {
      requireArgs(arguments.length, 1, "Failed to execute 'delete' on 'Headers'");
      name = toByteString(name, 'Headers.delete');
      checkHeaderName(name);
      this.#checkMutable();
      const lower = name.toLowerCase();
      const kept = this.#list.filter(([n]) => n !== lower);
      if (kept.length !== this.#list.length) {
        this.#list = kept;
        this.#sorted = null;
      }
    }

    get(name) {
      requireArgs(arguments.length, 1, "Failed to execute 'get' on 'Headers'");
      name = toByteString(name, 'Headers.get');
      checkHeaderName(name);
      const values = this.#values(name.toLowerCase());
      return values.length === 0 ? null : values.join(', ');
    }

    getSetCookie() {
      return this.#values('set-cookie');
    }

    has(name) {
      requireArgs(arguments.length, 1, "Failed to execute 'has' on 'Headers'");
      name = toByteString(name, 'Headers.has');
      checkHeaderName(name);
      const lower = name.toLowerCase();
      return this.#list.some(([n]) => n === lower);
    }

    set(name, value) {
      requireArgs(arguments.length, 2, "Failed to execute 'set' on 'Headers'");
      name = toByteString(name, 'Headers.set');
      value = normalizeHeaderValue(toByteString(value, 'Headers.set'));
      checkHeaderName(name);
      checkHeaderValue(name, value);
      this.#checkMutable();
      // Replace the first occurrence in place and drop the others, so the
      // header keeps its position in the list.
      const lower = name.toLowerCase();
      let found = false;
      const list = [];
      for (const pair of this.#list) {
        if (pair[0] !== lower) list.push(pair);
        else if (!found) {
          found = true;
          list.push([lower, value]);
        }
      }
      if (!found) list.push([lower, value]);
      this.#list = list;
      this.#sorted = null;
    }

    forEach(callback, thisArg = undefined) {
      requireArgs(arguments.length, 1, "Failed to execute 'forEach' on 'Headers'");
      if (typeof callback !== 'function') {
        throw new TypeError(
          "Failed to execute 'forEach' on 'Headers': The callback provided as parameter 1 is not a function.");
      }
      // Re-read the pairs each step: the callback may mutate the headers.
      for (let i = 0; i < this.#pairs().length; i++) {
        const [name, value] = this.#pairs()[i];
        callback.call(thisArg, value, name, this);
      }
    }

    entries() {
      this.#list; // brand check
      return new HeadersIterator(this, 'key+value');
    }

    keys() {
      this.#list;
      return new HeadersIterator(this, 'key');
    }

    values() {
      this.#list;
      return new HeadersIterator(this, 'value');
    }

    static {
      H = {
        is: (o) => typeof o === 'object' && o !== null && #list in o,
        list: (h) => h.#list,
        pairs: (h) => h.#pairs(),
        guard: (h) => h.#guard,
        setGuard(h, guard) {
          h.#guard = guard;
        },
        append(h, name, value) {
          h.#append(name, value);
        },
        // A copy with the same guard, as Request/Response clone() require.
        copy(h) {
          const c = new Headers(h);
          c.#guard = h.#guard;
          return c;
        },
        hasContentType: (h) => h.#list.some(([n]) => n === 'content-type'),
      };
    }
  }
  Object.defineProperty(Headers.prototype, Symbol.iterator, {
    value: Headers.prototype.entries, writable: true, enumerable: false, configurable: true,
  });
  finishInterface(Headers, 'Headers');

  const IteratorPrototype = Object.getPrototypeOf(Object.getPrototypeOf([][Symbol.iterator]()));

  // Web IDL pair iterator: each next() re-reads the current sorted pairs, so
  // mutation during iteration behaves as in browsers.
  class HeadersIterator {
    #headers;
    #kind;
    #index = 0;

    constructor(headers, kind) {
      this.#headers = headers;
      this.#kind = kind;
    }

    next() {
      const pairs = H.pairs(this.#headers);
      if (this.#index >= pairs.length) return { value: undefined, done: true };
      const [name, value] = pairs[this.#index++];
      const kind = this.#kind;
      return {
        value: kind === 'key' ? name : kind === 'value' ? value : [name, value],
        done: false,
      };
    }
  }
  Object.setPrototypeOf(HeadersIterator.prototype, IteratorPrototype);
  delete HeadersIterator.prototype.constructor;
  Object.defineProperty(HeadersIterator.prototype, 'next', { enumerable: true });
  Object.defineProperty(HeadersIterator.prototype, Symbol.toStringTag, {
    value: 'Headers Iterator', writable: false, enumerable: false, configurable: true,
  });

  function headersWithGuard(pairs, guard) {
    const h = new Headers();
    for (const pair of hostList(pairs)) {
      const [name, value] = hostList(pair);
      H.append(h, toByteString(name, 'Headers'), toByteString(value, 'Headers'));
    }
    H.setGuard(h, guard);
    return h;
  }

  // ===========================================================================
  // Body storage
  // ===========================================================================

  function bodyUsedError() {
    return new TypeError(
      'Body has already been used. It can only be used once. Use tee() first if you need to read it twice.');
  }

  // Every body lives behind this class, in one of three forms: bytes already
  // in memory; a body on the host side (the client's request body, an origin's
  // response) read through a host reader; or a ReadableStream. `.body` turns
  // the first two into a ReadableStream on demand, so bodies nobody streams
  // never pay for one, and a host body nobody touched can be handed back to
  // the host whole (passed through without entering JavaScript).
  // readers: { handle, read() -> Promise<Uint8Array|null>, readAll() -> Promise<Uint8Array>, release() }
  const streamClasses = () => internals.streams;
  // Streams made over a host reader: if one is used as a body untouched, the
  // host body itself is used (a request body forwarded to fetch(), say).
  const hostStreams = new WeakMap();
  const EMPTY = new Uint8Array(0);

  class BodySource {
    #bytes = null;
    #reader = null;
    #stream = null;
    #disturbed = false;
    #locked = false;

    constructor(bytes, reader = null, stream = null) {
      this.#bytes = bytes;
      this.#reader = reader;
      this.#stream = stream;
    }

    static fromStream(stream) {
      return new BodySource(null, null, stream);
    }

    get locked() {
      return this.#stream !== null ? this.#stream.locked : this.#locked;
    }

    get disturbed() {
      return this.#stream !== null ? this.#stream._disturbed === true || this.#disturbed : this.#disturbed;
    }

    // The body as a ReadableStream (made on first use).
    get stream() {
      if (this.#stream !== null) return this.#stream;
      const { ReadableStream } = streamClasses();
      const reader = this.#reader;
      if (reader !== null) {
        this.#reader = null;
        const stream = this.#stream = new ReadableStream({
          type: 'bytes',
          async pull(controller) {
            const chunk = await reader.read();
            if (chunk === null) {
              controller.close();
              const request = controller.byobRequest;
              if (request) request.respond(0);
            } else {
              controller.enqueue(chunk);
            }
          },
          cancel() { reader.release(); },
        });
        hostStreams.set(stream, reader);
      } else {
        const bytes = this.#bytes ?? EMPTY;
        this.#bytes = null;
        this.#stream = new ReadableStream({
          type: 'bytes',
          start(controller) {
            if (bytes.length) controller.enqueue(bytes);
            controller.close();
          },
        });
      }
      if (this.#disturbed) this.#stream._disturbed = true;
      return this.#stream;
    }

    // Resolves with the whole body; the caller owns the returned bytes.
    async readAll() {
      if (this.disturbed || this.locked) throw bodyUsedError();
      this.#disturbed = true;
      if (this.#stream !== null) return readStream(this.#stream);
      return this.#take();
    }

    async #take() {
      const reader = this.#reader;
      if (reader !== null) {
        this.#reader = null;
        return reader.readAll();
      }
      const bytes = this.#bytes ?? EMPTY;
      this.#bytes = null;
      return bytes;
    }

    // For the host: the untouched host body's handle (this source is used up),
    // or 0 when the body has to be produced by JavaScript.
    takeHandle() {
      if (this.#reader === null || this.#stream !== null || this.disturbed || this.locked) return 0;
      const handle = this.#reader.handle;
      if (!handle) return 0; // a reader of runtime JavaScript's own, with no host body behind it
      this.#reader = null;
      this.#disturbed = true;
      this.#locked = true;
      return handle;
    }

    // The bytes, if they are already in memory and nobody streamed them.
    peekBytes() {
      return this.#stream === null && this.#reader === null ? (this.#bytes ?? EMPTY) : null;
    }

    // Two independent sources over the same data, like ReadableStream.tee().
    tee() {
      if (this.disturbed || this.locked) throw bodyUsedError();
      const bytes = this.peekBytes();
      if (bytes !== null) return [new BodySource(bytes), new BodySource(bytes.slice())];
      const [a, b] = this.stream.tee();
      return [BodySource.fromStream(a), BodySource.fromStream(b)];
    }

    // Moves the content into a new source and leaves this one used up, as
    // workerd does when a Request is constructed from another Request.
    detach() {
      if (this.disturbed || this.locked) throw bodyUsedError();
      const moved = new BodySource(this.#bytes, this.#reader, this.#stream);
      this.#bytes = null;
      this.#reader = null;
      this.#stream = null;
      this.#disturbed = true;
      this.#locked = true;
      return moved;
    }

    static isSource(o) {
      return typeof o === 'object' && o !== null && #bytes in o;
    }
  }
  Object.defineProperty(BodySource.prototype, Symbol.toStringTag, {
    value: 'BodySource', writable: false, enumerable: false, configurable: true,
  });

  async function readStream(stream) {
    const reader = stream.getReader();
    const chunks = [];
    let total = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const bytes = bufferSourceBytes(value);
      if (bytes === null) throw new TypeError('This ReadableStream did not return bytes.');
      chunks.push(bytes);
      total += bytes.length;
    }
    if (chunks.length === 1) return ownedBytes(chunks[0]);
    const joined = new Uint8Array(total);
    let at = 0;
    for (const chunk of chunks) { joined.set(chunk, at); at += chunk.length; }
    return joined;
  }

  function isReadableStream(o) {
    const classes = internals.streams;
    return classes !== undefined && o instanceof classes.ReadableStream;
  }

  const isUnusable = (source) => source !== null && (source.disturbed || source.locked);

  // Fetch "extract a body": returns the source and its default Content-Type.
  function extractBody(init) {
    if (typeof init === 'string') {
      return { source: new BodySource(utf8Encode(init)), type: 'text/plain;charset=UTF-8' };
    }
    if (typeof init === 'object' && init !== null) {
      if (isReadableStream(init)) {
        if (init.locked || init._disturbed === true) {
          throw new TypeError('This ReadableStream is disturbed (has already been read from) or locked, and cannot be used as a body.');
        }
        const reader = hostStreams.get(init);
        if (reader !== undefined && !init.locked && init._disturbed !== true) {
          init.getReader(); // locked for good, as using a stream as a body does
          return { source: new BodySource(null, reader), type: null };
        }
        return { source: BodySource.fromStream(init), type: null };
      }
      if (internals.isBlob !== undefined && internals.isBlob(init)) {
        const type = `${init.type}`;
        return { source: new BodySource(internals.blobBytes(init)), type: type === '' ? null : type };
      }
      if (internals.isFormData !== undefined && internals.isFormData(init)) {
        const { bytes, contentType } = internals.serializeFormData(init);
        return { source: new BodySource(bytes), type: contentType };
      }
      const bytes = bufferSourceBytes(init);
      if (bytes !== null) return { source: new BodySource(bytes.slice()), type: null };
      const URLSearchParamsCtor = global.URLSearchParams;
      if (typeof URLSearchParamsCtor === 'function' && init instanceof URLSearchParamsCtor) {
        return {
          source: new BodySource(utf8Encode(`${init}`)),
          type: 'application/x-www-form-urlencoded;charset=UTF-8',
        };
      }
    }
    // Everything else goes through the BodyInit union's USVString branch.
    return { source: new BodySource(utf8Encode(toUSVString(init))), type: 'text/plain;charset=UTF-8' };
  }

  // Body mixin, shared by Request and Response. `bodyState` finds the
  // internal record of either class (or throws for foreign receivers).
  let requestState;
  let responseState;

  function bodyState(o) {
    const state = requestState(o) ?? responseState(o);
    if (state === undefined) throw new TypeError('Illegal invocation');
    return state;
  }

  async function consumeBody(o) {
    const source = bodyState(o).body;
    if (source === null) return new Uint8Array(0);
    return source.readAll();
  }

  const BodyMixin = {
    get body() {
      const source = bodyState(this).body;
      return source === null ? null : source.stream;
    },
    get bodyUsed() {
      const source = bodyState(this).body;
      return source !== null && source.disturbed;
    },
    async arrayBuffer() {
      return ownedBytes(await consumeBody(this)).buffer;
    },
    async bytes() {
      return ownedBytes(await consumeBody(this));
    },
    async json() {
      return JSON.parse(utf8Decode(await consumeBody(this)));
    },
    async text() {
      return utf8Decode(await consumeBody(this));
    },
    async blob() {
      const state = bodyState(this);
      const bytes = await consumeBody(this);
      if (internals.makeBlob === undefined) throw new TypeError('Blob is not available.');
      return internals.makeBlob(ownedBytes(bytes), state.headers.get('content-type') ?? '');
    },
    async formData() {
      const state = bodyState(this);
      const bytes = await consumeBody(this);
      if (internals.parseFormData === undefined) throw new TypeError('FormData is not available.');
      return internals.parseFormData(bytes, state.headers.get('content-type') ?? '');
    },
  };

  function installBodyMixin(cls) {
    for (const key of Object.keys(BodyMixin)) {
      const desc = Object.getOwnPropertyDescriptor(BodyMixin, key);
      desc.enumerable = false; // finishInterface makes it enumerable
      Object.defineProperty(cls.prototype, key, desc);
    }
  }

  function parseURL(input, what) {
    const URLCtor = global.URL;
    if (typeof URLCtor !== 'function') throw new TypeError(`${what}: URL is not available.`);
    try {
      return new URLCtor(input);
    } catch (cause) {
      throw new TypeError(`${what}: Invalid URL: ${input}`, { cause });
    }
  }

  // ===========================================================================
  // Request
  // ===========================================================================

  const NORMALIZED_METHODS = new Set(['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT']);
  const FORBIDDEN_METHODS = new Set(['CONNECT', 'TRACE', 'TRACK']);
  const REDIRECT_MODES = new Set(['follow', 'manual', 'error']);

  function normalizeMethod(method) {
    if (!TOKEN_RE.test(method)) throw new TypeError(`'${method}' is not a valid HTTP method.`);
    const upper = asciiUpper(method);
    if (FORBIDDEN_METHODS.has(upper)) throw new TypeError(`'${method}' HTTP method is unsupported.`);
    return NORMALIZED_METHODS.has(upper) ? upper : method;
  }

  // Internal factories hand a prepared state to the constructor through this
  // slot instead of going through input validation.
  let pendingRequestState = null;

  function makeRequest(state) {
    pendingRequestState = state;
    return new Request();
  }

  class Request {
    // { method, url, headers, body: BodySource|null, redirect, cf, signal }
    #state;

    constructor(input, init = undefined) {
      if (pendingRequestState !== null) {
        this.#state = pendingRequestState;
        pendingRequestState = null;
        return;
      }
      const what = "Failed to construct 'Request'";
      requireArgs(arguments.length, 1, what);

      const source = requestState(input);
      let url;
      let method = 'GET';
      let redirect = 'follow';
      let cf;
      let signal;
      let inputBody = null;
      if (source !== undefined) {
        ({ url, method, redirect, cf, signal } = source);
        inputBody = source.body;
      } else {
        url = parseURL(toUSVString(input), what).href;
      }

      // Dictionary members are read once, in Web IDL (lexicographic) order.
      const dict = toDictionary(init, what);
      const initBody = dict.body;
      const initCf = dict.cf;
      const initHeaders = dict.headers;
      let initMethod = dict.method;
      if (initMethod !== undefined) initMethod = toByteString(initMethod, what);
      let initRedirect = dict.redirect;
      if (initRedirect !== undefined) initRedirect = toDOMString(initRedirect);
      const initSignal = dict.signal;

      if (initMethod !== undefined) method = normalizeMethod(initMethod);
      if (initRedirect !== undefined) {
        if (!REDIRECT_MODES.has(initRedirect)) {
          throw new TypeError(
            `${what}: The provided value '${initRedirect}' is not a valid enum value of type RequestRedirect.`);
        }
        redirect = initRedirect;
      }
      if (initCf !== undefined) cf = initCf;
      // An explicit null drops the input request's signal; undefined keeps it.
      if (initSignal !== undefined) signal = initSignal;

      const headers = new Headers(initHeaders !== undefined ? initHeaders
        : source !== undefined ? source.headers : undefined);

      const hasInitBody = initBody !== undefined && initBody !== null;
      let extracted = null;
      if (hasInitBody) extracted = extractBody(initBody);
      else if (isUnusable(inputBody)) {
        throw new TypeError(`${what}: Cannot construct a Request with a Request whose body has already been used.`);
      }
      // Workers only enforce "no body on GET/HEAD" when init changes the
      // method or the body, so proxying `new Request(req, {headers})` keeps
      // working for odd clients that send a GET with a body.
      if ((hasInitBody || initMethod !== undefined) && (method === 'GET' || method === 'HEAD') &&
          (hasInitBody || inputBody !== null)) {
        throw new TypeError(`${what}: Request with a GET or HEAD method cannot have a body.`);
      }
      if (extracted !== null && extracted.type !== null && !H.hasContentType(headers)) {
        H.append(headers, 'content-type', extracted.type);
      }
      // Only now, with nothing left to fail, take over the input's body.
      const body = extracted !== null ? extracted.source
        : inputBody !== null ? inputBody.detach() : null;

      this.#state = { method, url, headers, body, redirect, cf, signal };
    }

    get method() {
      return this.#state.method;
    }

    get url() {
      return this.#state.url;
    }

    get headers() {
      return this.#state.headers;
    }

    get redirect() {
      return this.#state.redirect;
    }

    get cf() {
      return this.#state.cf;
    }

    get signal() {
      return this.#state.signal;
    }

    clone() {
      const state = this.#state;
      if (isUnusable(state.body)) {
        throw new TypeError("Failed to execute 'clone' on 'Request': Request body is already used");
      }
      let body = null;
      if (state.body !== null) {
        const [mine, theirs] = state.body.tee();
        state.body = mine;
        body = theirs;
      }
      return makeRequest({ ...state, headers: H.copy(state.headers), body });
    }

    static {
      requestState = (o) => (typeof o === 'object' && o !== null && #state in o ? o.#state : undefined);
    }
  }
  installBodyMixin(Request);
  finishInterface(Request, 'Request');

  // ===========================================================================
  // Response
  // ===========================================================================

  const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);
  const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

  let pendingResponseState = null;

  function makeResponse(state) {
    pendingResponseState = state;
    return new Response();
  }

  // Fetch "initialize a response": validates init and builds the state.
  function initResponseState(init, extracted, what) {
    const dict = toDictionary(init, what);
    const initHeaders = dict.headers;
    let status = dict.status;
    status = status === undefined ? 200 : toUnsignedShort(status);
    let statusText = dict.statusText;
    statusText = statusText === undefined ? '' : toByteString(statusText, what);
    // Workers' `webSocket` (websocket.js): the client's end of a WebSocketPair, with status 101 only.
    const webSocket = dict.webSocket ?? null;
    if (webSocket !== null) {
      if (!internals.isWebSocket?.(webSocket)) {
        throw new TypeError(`${what}: member webSocket is not of type 'WebSocket'.`);
      }
      if (status !== 101) throw new RangeError('Responses with a WebSocket must have status code 101.');
    } else if (status < 200 || status > 599) {
      throw new RangeError(`${what}: The status provided (${status}) is outside the range [200, 599].`);
    }
    if (!REASON_PHRASE_RE.test(statusText)) throw new TypeError(`${what}: Invalid statusText.`);
    const headers = new Headers(initHeaders);
    if (extracted !== null) {
      if (NULL_BODY_STATUSES.has(status)) {
        throw new TypeError(`${what}: Response with null body status (${status}) cannot have body.`);
      }
      if (extracted.type !== null && !H.hasContentType(headers)) {
        H.append(headers, 'content-type', extracted.type);
      }
    }
    return {
      type: 'default', url: '', redirected: false, status, statusText, headers,
      body: extracted === null ? null : extracted.source, webSocket,
    };
  }

  class Response {
    // { type, url, redirected, status, statusText, headers, body }
    #state;

    constructor(body = null, init = undefined) {
      if (pendingResponseState !== null) {
        this.#state = pendingResponseState;
        pendingResponseState = null;
        return;
      }
      const what = "Failed to construct 'Response'";
      const extracted = body === null || body === undefined ? null : extractBody(body);
      this.#state = initResponseState(init, extracted, what);
    }

    static error() {
      return makeResponse({
        type: 'error', url: '', redirected: false, status: 0, statusText: '',
        headers: headersWithGuard([], 'immutable'), body: null,
      });
    }

    static redirect(url, status = 302) {
      const what = "Failed to execute 'redirect' on 'Response'";
      requireArgs(arguments.length, 1, what);
      const location = parseURL(toUSVString(url), what).href;
      status = toUnsignedShort(status);
      if (!REDIRECT_STATUSES.has(status)) throw new RangeError(`${what}: Invalid status code ${status}`);
      return makeResponse({
        type: 'default', url: '', redirected: false, status, statusText: '',
        headers: headersWithGuard([['location', location]], 'immutable'), body: null,
      });
    }

    static json(data, init = undefined) {
      const what = "Failed to execute 'json' on 'Response'";
      const text = JSON.stringify(data);
      if (text === undefined) throw new TypeError(`${what}: The data is not JSON serializable`);
      const extracted = { source: new BodySource(utf8Encode(text)), type: 'application/json' };
      return makeResponse(initResponseState(init, extracted, what));
    }

    get type() {
      return this.#state.type;
    }

    get url() {
      return this.#state.url;
    }

    get redirected() {
      return this.#state.redirected;
    }

    get status() {
      return this.#state.status;
    }

    get ok() {
      const { status } = this.#state;
      return status >= 200 && status <= 299;
    }

    get statusText() {
      return this.#state.statusText;
    }

    get headers() {
      return this.#state.headers;
    }

    get webSocket() {
      return this.#state.webSocket ?? null;
    }

    clone() {
      const state = this.#state;
      if (state.webSocket) throw new TypeError('Cannot clone a response to a WebSocket handshake.');
      if (isUnusable(state.body)) {
        throw new TypeError("Failed to execute 'clone' on 'Response': Response body is already used");
      }
      let body = null;
      if (state.body !== null) {
        const [mine, theirs] = state.body.tee();
        state.body = mine;
        body = theirs;
      }
      return makeResponse({ ...state, headers: H.copy(state.headers), body });
    }

    static {
      responseState = (o) => (typeof o === 'object' && o !== null && #state in o ? o.#state : undefined);
    }
  }
  installBodyMixin(Response);
  finishInterface(Response, 'Response');

  // ===========================================================================
  // queueMicrotask
  // ===========================================================================

  // Captured so user code replacing Promise.prototype.then cannot break it.
  const promiseThen = Promise.prototype.then;
  const resolvedPromise = Promise.resolve();

  function queueMicrotask(callback) {
    requireArgs(arguments.length, 1, "Failed to execute 'queueMicrotask'");
    if (typeof callback !== 'function') {
      throw new TypeError(
        "Failed to execute 'queueMicrotask': The callback provided as parameter 1 is not a function.");
    }
    // Each callback runs in its own reaction job, so a throw only ends that
    // job. The error goes to the host's reporter like an uncaught exception;
    // without one it surfaces as an unhandled rejection.
    promiseThen.call(resolvedPromise, () => {
      try {
        callback();
      } catch (err) {
        const report = internals.reportError;
        if (typeof report !== 'function') throw err;
        try {
          report(err);
        } catch {
          // A failing reporter must not turn into a second error.
        }
      }
    });
  }

  // ===========================================================================
  // Console formatting (util.format / util.inspect subset, as Node prints)
  // ===========================================================================

  const INSPECT_DEFAULTS = { depth: 2, breakLength: 80, compact: 3, maxArrayLength: 100, maxStringLength: 10000 };
  const OBJECT_TYPE = 0;
  const ARRAY_TYPE = 1; // array element: printed without a key
  const ARRAY_EXTRAS_TYPE = 2; // non-index property on an array-like

  const STRING_ESCAPES = [];
  for (let c = 0; c < 0xa0; c++) {
    if (c < 0x20 || (c >= 0x7f && c < 0xa0)) {
      STRING_ESCAPES[c] = `\\x${c.toString(16).toUpperCase().padStart(2, '0')}`;
    }
  }
  Object.assign(STRING_ESCAPES, { 8: '\\b', 9: '\\t', 10: '\\n', 12: '\\f', 13: '\\r', 39: "\\'", 92: '\\\\' });

  // Quotes like Node: single quotes unless the string contains some, then
  // double quotes, then backticks.
  function quoteString(str) {
    let quote = "'";
    if (str.includes("'")) {
      if (!str.includes('"')) quote = '"';
      else if (!str.includes('`') && !str.includes('${')) quote = '`';
    }
    let out = '';
    let last = 0;
    for (let i = 0; i < str.length; i++) {
      const c = str.charCodeAt(i);
      if (c === 92 || c < 0x20 || (c >= 0x7f && c < 0xa0) || (c === 39 && quote === "'")) {
        out += str.slice(last, i) + STRING_ESCAPES[c];
        last = i + 1;
      } else if (c >= 0xd800 && c <= 0xdfff) {
        if (c <= 0xdbff && (str.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
          i++;
          continue;
        }
        out += `${str.slice(last, i)}\\u${c.toString(16)}`;
        last = i + 1;
      }
    }
    return quote + out + str.slice(last) + quote;
  }

  function formatNumber(n) {
    return Object.is(n, -0) ? '-0' : `${n}`;
  }

  const symbolToString = (s) => Symbol.prototype.toString.call(s);

  function formatPrimitive(ctx, value) {
    switch (typeof value) {
      case 'string': {
        let trailer = '';
        if (value.length > ctx.maxStringLength) {
          const remaining = value.length - ctx.maxStringLength;
          value = value.slice(0, ctx.maxStringLength);
          trailer = `... ${remaining} more character${remaining > 1 ? 's' : ''}`;
        }
        // Long multi-line strings are split at newlines, one line per row.
        if (value.length > 16 && value.length > ctx.breakLength - ctx.indentationLvl - 4) {
          return value.split(/(?<=\n)/).map(quoteString)
            .join(` +\n${' '.repeat(ctx.indentationLvl + 2)}`) + trailer;
        }
        return quoteString(value) + trailer;
      }
      case 'number': return formatNumber(value);
      case 'bigint': return `${value}n`;
      case 'boolean': return `${value}`;
      case 'undefined': return 'undefined';
      case 'symbol': return symbolToString(value);
      default: return 'null';
    }
  }

  const mapSize = getter(Map.prototype, 'size');
  const setSize = getter(Set.prototype, 'size');
  const regExpSource = getter(RegExp.prototype, 'source');
  const hasOwn = (o, k) => Object.prototype.hasOwnProperty.call(o, k);
  const isIndexKey = (k) => /^(?:0|[1-9][0-9]*)$/.test(k) && +k < 4294967295;

  function isError(v) {
    return v instanceof Error || Object.prototype.toString.call(v) === '[object Error]';
  }

  function boxedPrimitive(v) {
    for (const [type, valueOf] of [['Number', Number.prototype.valueOf],
      ['String', String.prototype.valueOf], ['Boolean', Boolean.prototype.valueOf],
      ['BigInt', BigInt.prototype.valueOf], ['Symbol', Symbol.prototype.valueOf]]) {
      try {
        return { type, value: valueOf.call(v) };
      } catch {
        // not this kind of wrapper
      }
    }
    return null;
  }

  function constructorName(obj) {
    let proto = obj;
    while (proto !== null) {
      const desc = Object.getOwnPropertyDescriptor(proto, 'constructor');
      if (desc !== undefined && typeof desc.value === 'function' && desc.value.name !== '') {
        return `${desc.value.name}`;
      }
      proto = Object.getPrototypeOf(proto);
    }
    return null;
  }

  function enumerableSymbols(obj) {
    return Object.getOwnPropertySymbols(obj)
      .filter((sym) => Object.prototype.propertyIsEnumerable.call(obj, sym));
  }

  // Own enumerable keys: strings first, then symbols, as Object.keys orders.
  function enumerableKeys(obj) {
    return [...Object.keys(obj), ...enumerableSymbols(obj)];
  }

  // Non-index keys of an array (e.g. `index`/`input` on RegExp matches).
  // Object.keys lists index keys first, so scan back from the end.
  function arrayExtraKeys(arr) {
    const names = Object.keys(arr);
    let i = names.length;
    while (i > 0 && !isIndexKey(names[i - 1])) i--;
    return [...names.slice(i), ...enumerableSymbols(arr)];
  }

  function functionBase(fn, ctor) {
    let source = '';
    try {
      source = Function.prototype.toString.call(fn);
    } catch {
      // Not introspectable; fall back to a plain function description.
    }
    const ownName = Object.getOwnPropertyDescriptor(fn, 'name');
    const name = ownName !== undefined && typeof ownName.value === 'string' ? ownName.value : '';
    if (source.startsWith('class') && source.endsWith('}')) {
      let base = `class ${name || '(anonymous)'}`;
      const parent = Object.getPrototypeOf(fn);
      if (parent !== null && parent !== Function.prototype) {
        const parentName = Object.getOwnPropertyDescriptor(parent, 'name');
        if (parentName !== undefined && typeof parentName.value === 'string' && parentName.value) {
          base += ` extends ${parentName.value}`;
        }
      }
      return `[${base}]`;
    }
    const type = ctor === 'AsyncFunction' || ctor === 'GeneratorFunction' ||
      ctor === 'AsyncGeneratorFunction' ? ctor : 'Function';
    return `[${type}${name === '' ? ' (anonymous)' : `: ${name}`}]`;
  }

  function formatError(ctx, err) {
    let stack;
    try {
      stack = err.stack;
    } catch {
      // A throwing stack getter falls back to name and message.
    }
    if (typeof stack !== 'string' || stack === '') {
      try {
        stack = Error.prototype.toString.call(err);
      } catch {
        stack = 'Error';
      }
    }
    // Node wraps errors without a stack trace in brackets.
    if (!stack.includes('\n    at')) stack = `[${stack}]`;
    if (ctx.indentationLvl !== 0) stack = stack.replaceAll('\n', `\n${' '.repeat(ctx.indentationLvl)}`);
    return stack;
  }

  // Our own classes keep their state in private fields, so show the public
  // attributes instead, like Node does for undici's objects.
  function internalView(value) {
    if (H.is(value)) {
      const view = {};
      for (const [name, v] of H.pairs(value)) {
        if (hasOwn(view, name)) view[name] = [].concat(view[name], v);
        else view[name] = v;
      }
      return { name: 'Headers', view };
    }
    if (BodySource.isSource(value)) {
      return { name: 'BodySource', view: { locked: value.locked, disturbed: value.disturbed } };
    }
    const req = requestState(value);
    if (req !== undefined) {
      const view = { method: req.method, url: req.url, headers: req.headers, body: req.body,
        bodyUsed: req.body !== null && req.body.disturbed, redirect: req.redirect };
      if (req.cf !== undefined) view.cf = req.cf;
      return { name: 'Request', view };
    }
    const res = responseState(value);
    if (res !== undefined) {
      return {
        name: 'Response',
        view: { status: res.status, statusText: res.statusText, ok: res.status >= 200 && res.status <= 299,
          redirected: res.redirected, type: res.type, url: res.url, headers: res.headers,
          body: res.body, bodyUsed: res.body !== null && res.body.disturbed },
      };
    }
    return null;
  }

  function formatValue(ctx, value, recurseTimes) {
    if ((typeof value !== 'object' && typeof value !== 'function') || value === null) {
      return formatPrimitive(ctx, value);
    }
    if (ctx.seen.includes(value)) return '[Circular]';
    const indentationLvl = ctx.indentationLvl;
    try {
      return formatRaw(ctx, value, recurseTimes);
    } catch {
      // Proxies and hostile getters can throw anywhere; logging must not.
      ctx.indentationLvl = indentationLvl;
      return '[object (uninspectable)]';
    }
  }

  function formatRaw(ctx, value, recurseTimes) {
    const internal = internalView(value);
    if (internal !== null) return formatObject(ctx, internal.view, recurseTimes, internal.name, value);
    return formatObject(ctx, value, recurseTimes, null, value);
  }

  // `value` is what gets printed; `identity` is what the cycle check tracks
  // (they differ only for our own classes' synthetic views).
  function formatObject(ctx, value, recurseTimes, nameOverride, identity) {
    const ctor = nameOverride ?? constructorName(value);
    let tag = '';
    if (nameOverride === null) {
      const t = value[Symbol.toStringTag];
      if (typeof t === 'string' && t !== '' && t !== ctor &&
          !Object.prototype.propertyIsEnumerable.call(value, Symbol.toStringTag)) {
        tag = t;
      }
    }
    const prefix = (fallback, size = '') => {
      if (ctor === null) return `[${fallback}${size}: null prototype] ${tag ? `[${tag}] ` : ''}`;
      return `${ctor}${size} ${tag ? `[${tag}] ` : ''}`;
    };

    let keys;
    let base = '';
    let braces = ['{', '}'];
    let formatter = () => [];
    let extrasType = OBJECT_TYPE;

    if (Array.isArray(value)) {
      const len = value.length;
      const pre = ctor !== 'Array' || tag !== '' ? prefix('Array', `(${len})`) : '';
      keys = arrayExtraKeys(value);
      braces = [`${pre}[`, ']'];
      if (len === 0 && keys.length === 0) return `${braces[0]}]`;
      extrasType = ARRAY_EXTRAS_TYPE;
      formatter = formatArray;
    } else if (isTypedArray(value)) {
      const len = typedArrayLength.call(value);
      // Listing a typed array's string keys means materialising one per
      // element (seconds for a big buffer), so only symbols are shown.
      keys = enumerableSymbols(value);
      braces = [`${prefix(typedArrayTag.call(value), `(${len})`)}[`, ']'];
      if (len === 0 && keys.length === 0) return `${braces[0]}]`;
      extrasType = ARRAY_EXTRAS_TYPE;
      formatter = formatTypedArray;
    } else if (brand(mapSize, value)) {
      const size = mapSize.call(value);
      keys = enumerableKeys(value);
      const pre = prefix('Map', `(${size})`);
      if (size === 0 && keys.length === 0) return `${pre}{}`;
      braces = [`${pre}{`, '}'];
      formatter = formatMap;
    } else if (brand(setSize, value)) {
      const size = setSize.call(value);
      keys = enumerableKeys(value);
      const pre = prefix('Set', `(${size})`);
      if (size === 0 && keys.length === 0) return `${pre}{}`;
      braces = [`${pre}{`, '}'];
      formatter = formatSet;
    } else {
      keys = enumerableKeys(value);
      if (typeof value === 'function') {
        base = functionBase(value, ctor);
        if (keys.length === 0) return base;
      } else if (isError(value)) {
        base = formatError(ctx, value);
        // Like Node, show a cause/aggregated errors even though they are
        // non-enumerable own properties.
        for (const extra of ['cause', 'errors']) {
          if (hasOwn(value, extra) && !keys.includes(extra)) keys.push(extra);
        }
        keys = keys.filter((k) => k !== 'stack' && k !== 'message');
        if (keys.length === 0) return base;
      } else if (value !== RegExp.prototype && brand(regExpSource, value)) {
        base = RegExp.prototype.toString.call(value);
        if (keys.length === 0 || recurseTimes > ctx.depth) return base;
      } else if (brand(Date.prototype.getTime, value)) {
        const time = Date.prototype.getTime.call(value);
        base = Number.isNaN(time) ? 'Invalid Date' : Date.prototype.toISOString.call(value);
        if (keys.length === 0) return base;
      } else if (isArrayBuffer(value) || isSharedArrayBuffer(value)) {
        braces[0] = `${prefix(isArrayBuffer(value) ? 'ArrayBuffer' : 'SharedArrayBuffer')}{`;
        formatter = formatArrayBuffer;
      } else if (value instanceof Promise) {
        // Promise state is not observable from script.
        braces[0] = `${prefix('Promise')}{`;
        formatter = () => ['<unknown>'];
      } else if (brand(WeakMap.prototype.has, value) || brand(WeakSet.prototype.has, value)) {
        braces[0] = `${prefix(value instanceof WeakMap ? 'WeakMap' : 'WeakSet')}{`;
        formatter = () => ['<items unknown>'];
      } else if (boxedPrimitive(value) !== null) {
        const { type, value: primitive } = boxedPrimitive(value);
        if (type === 'String') keys = keys.filter((k) => typeof k !== 'string' || !isIndexKey(k));
        base = `[${type}: ${formatPrimitive(ctx, primitive)}]`;
        if (keys.length === 0) return base;
      } else {
        const ctxName = ctor === 'Object' && tag === '' ? '' : prefix('Object');
        if (keys.length === 0) return `${ctxName}{}`;
        braces[0] = `${ctxName}{`;
      }
    }

    if (recurseTimes > ctx.depth) {
      if (ctor === null) return `[Object: null prototype]`;
      return `[${Array.isArray(value) ? 'Array' : ctor}]`;
    }
    recurseTimes += 1;
    ctx.seen.push(identity);
    ctx.currentDepth = recurseTimes;
    let output;
    try {
      output = formatter(ctx, value, recurseTimes);
      for (const key of keys) output.push(formatProperty(ctx, value, recurseTimes, key, extrasType));
    } finally {
      ctx.seen.pop();
    }
    return reduceToSingleString(ctx, output, base, braces, extrasType, recurseTimes, value);
  }

  function formatProperty(ctx, obj, recurseTimes, key, type) {
    const desc = Object.getOwnPropertyDescriptor(obj, key) ?? { value: obj[key], enumerable: true };
    let str;
    if ('value' in desc) {
      ctx.indentationLvl += 2;
      try {
        str = formatValue(ctx, desc.value, recurseTimes);
      } finally {
        ctx.indentationLvl -= 2;
      }
    } else if (desc.get !== undefined) {
      // Getters are never invoked: they may throw or have side effects.
      str = desc.set !== undefined ? '[Getter/Setter]' : '[Getter]';
    } else if (desc.set !== undefined) {
      str = '[Setter]';
    } else {
      str = 'undefined';
    }
    if (type === ARRAY_TYPE) return str;
    let name;
    if (typeof key === 'symbol') name = `[${symbolToString(key)}]`;
    else if (key === '__proto__') name = "['__proto__']";
    else if (desc.enumerable === false) name = `[${key}]`;
    else if (/^[a-zA-Z_][a-zA-Z_0-9]*$/.test(key)) name = key;
    else name = quoteString(key);
    return `${name}: ${str}`;
  }

  const moreItems = (n) => `... ${n} more item${n > 1 ? 's' : ''}`;
  const emptyItems = (n) => `<${n} empty item${n > 1 ? 's' : ''}>`;

  function formatArray(ctx, value, recurseTimes) {
    const len = value.length;
    const max = Math.min(ctx.maxArrayLength, len);
    const output = [];
    let index = 0;
    for (; index < max; index++) {
      if (!hasOwn(value, index)) break;
      output.push(formatProperty(ctx, value, recurseTimes, index, ARRAY_TYPE));
    }
    if (index < max) {
      // Sparse: walk the index keys that do exist and summarise the holes.
      for (const key of Object.keys(value)) {
        if (output.length >= max) break;
        if (!isIndexKey(key) || +key < index) continue;
        if (+key >= len) break;
        if (+key > index) {
          output.push(emptyItems(+key - index));
          index = +key;
          if (output.length >= max) break;
        }
        output.push(formatProperty(ctx, value, recurseTimes, key, ARRAY_TYPE));
        index++;
      }
      const remaining = len - index;
      if (remaining > 0) output.push(output.length < max ? emptyItems(remaining) : moreItems(remaining));
      return output;
    }
    if (len > max) output.push(moreItems(len - max));
    return output;
  }

  function formatTypedArray(ctx, value) {
    const len = typedArrayLength.call(value);
    const max = Math.min(ctx.maxArrayLength, len);
    const output = [];
    for (let i = 0; i < max; i++) {
      const v = value[i];
      output.push(typeof v === 'bigint' ? `${v}n` : formatNumber(v));
    }
    if (len > max) output.push(moreItems(len - max));
    return output;
  }

  function formatArrayBuffer(ctx, value) {
    const bytes = new Uint8Array(value);
    const shown = Math.min(ctx.maxArrayLength, bytes.length);
    let hex = '';
    for (let i = 0; i < shown; i++) hex += (i ? ' ' : '') + bytes[i].toString(16).padStart(2, '0');
    if (bytes.length > shown) hex += ` ... ${bytes.length - shown} more byte${bytes.length - shown > 1 ? 's' : ''}`;
    return [`[Uint8Contents]: <${hex}>`, `byteLength: ${bytes.length}`];
  }

  function formatMap(ctx, value, recurseTimes) {
    const output = [];
    const size = mapSize.call(value);
    ctx.indentationLvl += 2;
    try {
      for (const [k, v] of Map.prototype.entries.call(value)) {
        if (output.length >= ctx.maxArrayLength) break;
        output.push(`${formatValue(ctx, k, recurseTimes)} => ${formatValue(ctx, v, recurseTimes)}`);
      }
    } finally {
      ctx.indentationLvl -= 2;
    }
    if (size > output.length) output.push(moreItems(size - output.length));
    return output;
  }

  function formatSet(ctx, value, recurseTimes) {
    const output = [];
    const size = setSize.call(value);
    ctx.indentationLvl += 2;
    try {
      for (const v of Set.prototype.values.call(value)) {
        if (output.length >= ctx.maxArrayLength) break;
        output.push(formatValue(ctx, v, recurseTimes));
      }
    } finally {
      ctx.indentationLvl -= 2;
    }
    if (size > output.length) output.push(moreItems(size - output.length));
    return output;
  }

  // Node's layout for arrays of more than six short entries: columns, with
  // numbers right-aligned.
  function groupArrayElements(ctx, output, value) {
    let totalLength = 0;
    let maxLength = 0;
    let outputLength = output.length;
    if (ctx.maxArrayLength < output.length) outputLength--; // "... more items"
    const separatorSpace = 2;
    const dataLen = new Array(outputLength);
    for (let i = 0; i < outputLength; i++) {
      const len = output[i].length;
      dataLen[i] = len;
      totalLength += len + separatorSpace;
      if (maxLength < len) maxLength = len;
    }
    const actualMax = maxLength + separatorSpace;
    if (actualMax * 3 + ctx.indentationLvl < ctx.breakLength &&
        (totalLength / actualMax > 5 || maxLength <= 6)) {
      const averageBias = Math.sqrt(actualMax - totalLength / output.length);
      const biasedMax = Math.max(actualMax - 3 - averageBias, 1);
      const columns = Math.min(
        Math.round(Math.sqrt(2.5 * biasedMax * outputLength) / biasedMax),
        Math.floor((ctx.breakLength - ctx.indentationLvl) / actualMax),
        ctx.compact * 4,
        15,
      );
      if (columns <= 1) return output;
      const maxLineLength = [];
      for (let i = 0; i < columns; i++) {
        let lineLength = 0;
        for (let j = i; j < output.length; j += columns) {
          if (dataLen[j] > lineLength) lineLength = dataLen[j];
        }
        maxLineLength.push(lineLength + separatorSpace);
      }
      let padStart = true;
      for (let i = 0; i < output.length; i++) {
        const v = safe(() => value[i], undefined);
        if (typeof v !== 'number' && typeof v !== 'bigint') {
          padStart = false;
          break;
        }
      }
      const grouped = [];
      for (let i = 0; i < outputLength; i += columns) {
        const max = Math.min(i + columns, outputLength);
        let str = '';
        let j = i;
        for (; j < max - 1; j++) {
          const cell = `${output[j]}, `;
          str += padStart ? cell.padStart(maxLineLength[j - i], ' ') : cell.padEnd(maxLineLength[j - i], ' ');
        }
        str += padStart ? output[j].padStart(maxLineLength[j - i] - separatorSpace, ' ') : output[j];
        grouped.push(str);
      }
      if (ctx.maxArrayLength < output.length) grouped.push(output[outputLength]);
      return grouped;
    }
    return output;
  }

  function isBelowBreakLength(ctx, output, start, base) {
    let totalLength = output.length + start;
    if (totalLength + output.length > ctx.breakLength) return false;
    for (const entry of output) {
      totalLength += entry.length;
      if (totalLength > ctx.breakLength) return false;
    }
    return base === '' || !base.includes('\n');
  }

  // Node's "compact: 3" mode: up to three inner levels share one line if it
  // fits in breakLength; otherwise one entry per line.
  function reduceToSingleString(ctx, output, base, braces, extrasType, recurseTimes, value) {
    const entries = output.length;
    if (extrasType === ARRAY_EXTRAS_TYPE && entries > 6) output = groupArrayElements(ctx, output, value);
    if (ctx.currentDepth - recurseTimes < ctx.compact && entries === output.length) {
      const start = output.length + ctx.indentationLvl + braces[0].length + base.length + 10;
      if (isBelowBreakLength(ctx, output, start, base)) {
        const joined = output.join(', ');
        if (!joined.includes('\n')) return `${base ? `${base} ` : ''}${braces[0]} ${joined} ${braces[1]}`;
      }
    }
    const indentation = `\n${' '.repeat(ctx.indentationLvl)}`;
    const body = output.join(`,${indentation}  `);
    return `${base ? `${base} ` : ''}${braces[0]}${indentation}  ${body}${indentation}${braces[1]}`;
  }

  function inspect(value, depth = INSPECT_DEFAULTS.depth) {
    const ctx = { ...INSPECT_DEFAULTS, depth, seen: [], indentationLvl: 0, currentDepth: 0 };
    return formatValue(ctx, value, 0);
  }

  // %s prints objects with their own toString via String(); everything else
  // (plain objects, arrays, errors, ...) is inspected one level deep.
  const BUILTIN_CONSTRUCTORS = new Set(['Object', 'Array', 'Error', 'TypeError', 'RangeError',
    'SyntaxError', 'ReferenceError', 'EvalError', 'URIError', 'AggregateError', 'Date', 'RegExp',
    'Map', 'Set', 'WeakMap', 'WeakSet', 'Promise', 'Function', 'ArrayBuffer', 'DataView',
    'Number', 'String', 'Boolean', 'Symbol', 'BigInt']);

  function hasBuiltInToString(value) {
    if (typeof value.toString !== 'function') return true;
    if (hasOwn(value, 'toString')) return false;
    let proto = value;
    do {
      proto = Object.getPrototypeOf(proto);
    } while (proto !== null && !hasOwn(proto, 'toString'));
    if (proto === null) return true;
    const desc = Object.getOwnPropertyDescriptor(proto, 'constructor');
    return desc !== undefined && typeof desc.value === 'function' && BUILTIN_CONSTRUCTORS.has(desc.value.name);
  }

  function safe(fn, fallback) {
    try {
      return fn();
    } catch {
      return fallback;
    }
  }

  function formatSubstitution(code, arg) {
    switch (code) {
      case 115: // %s
        if (typeof arg === 'number') return formatNumber(arg);
        if (typeof arg === 'bigint') return `${arg}n`;
        if (typeof arg === 'symbol') return symbolToString(arg);
        if (typeof arg !== 'object' || arg === null || !safe(() => hasBuiltInToString(arg), true)) {
          return safe(() => String(arg), '[object (uninspectable)]');
        }
        return inspect(arg, 0);
      case 106: // %j
        try {
          return `${JSON.stringify(arg)}`;
        } catch (err) {
          return safe(() => String(err.message).includes('circular'), false) ? '[Circular]' : '[unserializable]';
        }
      case 100: // %d
        if (typeof arg === 'bigint') return `${arg}n`;
        if (typeof arg === 'symbol') return 'NaN';
        return formatNumber(safe(() => Number(arg), NaN));
      case 105: // %i
        if (typeof arg === 'bigint') return `${arg}n`;
        if (typeof arg === 'symbol') return 'NaN';
        return formatNumber(safe(() => parseInt(arg), NaN));
      case 102: // %f
        if (typeof arg === 'symbol') return 'NaN';
        return formatNumber(safe(() => parseFloat(arg), NaN));
      case 111: // %o
        return inspect(arg, 4);
      case 79: // %O
        return inspect(arg);
      case 99: // %c: CSS, ignored outside browsers
        return '';
      default:
        return null;
    }
  }

  // util.format(): a leading format string consumes arguments; the rest are
  // appended with spaces, strings raw and everything else inspected.
  function formatLogArgs(args) {
    try {
      let str = '';
      let a = 0;
      let join = '';
      const first = args[0];
      if (typeof first === 'string') {
        if (args.length === 1) return first;
        let lastPos = 0;
        for (let i = 0; i < first.length - 1; i++) {
          if (first.charCodeAt(i) !== 37) continue; // '%'
          const next = first.charCodeAt(++i);
          if (a + 1 !== args.length) {
            if (next === 37) {
              str += first.slice(lastPos, i);
              lastPos = i + 1;
              continue;
            }
            const sub = formatSubstitution(next, args[a + 1]);
            if (sub === null) continue;
            a++;
            if (lastPos !== i - 1) str += first.slice(lastPos, i - 1);
            str += sub;
            lastPos = i + 1;
          } else if (next === 37) {
            str += first.slice(lastPos, i);
            lastPos = i + 1;
          }
        }
        if (lastPos !== 0) {
          a++;
          join = ' ';
          if (lastPos < first.length) str += first.slice(lastPos);
        }
      }
      for (; a < args.length; a++) {
        const value = args[a];
        str += join + (typeof value === 'string' ? value : inspect(value));
        join = ' ';
      }
      return str;
    } catch {
      // Last resort (e.g. an args object whose iterator throws).
      return safe(() => Array.prototype.map.call(args, (v) => safe(() => String(v), '?')).join(' '), '');
    }
  }

  // ===========================================================================
  // Installation
  // ===========================================================================

  defineGlobal('TextEncoder', TextEncoder);
  defineGlobal('TextDecoder', TextDecoder);
  defineGlobal('atob', atob);
  defineGlobal('btoa', btoa);
  defineGlobal('DOMException', DOMException);
  defineGlobal('Headers', Headers);
  defineGlobal('Request', Request);
  defineGlobal('Response', Response);
  defineGlobal('queueMicrotask', queueMicrotask);

  // --- Host-only helpers (never reachable from user code) ------------------

  // The host may pass Python sequences, which STPyV8 exposes as indexable
  // objects without `length` or an iterator.
  function hostList(x) {
    if (Array.isArray(x)) return x;
    if (x === null || x === undefined) return [];
    if (typeof x === 'string') throw new TypeError('Expected a list, got a string.');
    if (typeof x[Symbol.iterator] === 'function') return Array.from(x);
    const n = typeof x.length === 'number' ? x.length : Object.keys(x).length;
    return Array.from({ length: n }, (_, i) => x[i]);
  }

  // An incoming request. Its headers are immutable, as in Workers and the
  // Service Worker spec; `new Request(request)` gives a mutable copy.
  // `reader` reads the body from the host (see BodySource), or is null.
  internals.requestFromHost = function requestFromHost(method, url, headerPairs, reader, cf = undefined) {
    method = toByteString(method, 'requestFromHost');
    const upper = asciiUpper(method);
    return makeRequest({
      method: NORMALIZED_METHODS.has(upper) ? upper : method,
      url: parseURL(toUSVString(url), 'requestFromHost').href,
      headers: headersWithGuard(headerPairs, 'immutable'),
      body: reader instanceof Uint8Array ? new BodySource(reader) : reader ? new BodySource(null, reader) : null,
      redirect: 'follow',
      cf,
      signal: undefined,
    });
  };

  // What the host needs to send a body: the bytes when they are in memory, a
  // host body's handle when it passes through untouched, else the stream.
  function bodyToHost(source) {
    if (source === null) return { bytes: null, handle: 0, stream: null };
    if (source.disturbed || source.locked) throw bodyUsedError();
    const bytes = source.peekBytes();
    if (bytes !== null) {
      source.detach();
      return { bytes, handle: 0, stream: null };
    }
    const handle = source.takeHandle();
    if (handle !== 0) return { bytes: null, handle, stream: null };
    return { bytes: null, handle: 0, stream: source.stream };
  }
  internals.bodyToHost = bodyToHost;

  internals.responseToHost = function responseToHost(response) {
    const state = responseState(response);
    if (state === undefined) {
      throw new TypeError('The script produced something other than a Response object.');
    }
    return {
      status: state.status,
      statusText: state.statusText,
      // The raw header list keeps every set-cookie (and repeated) header.
      headers: H.list(state.headers).map(([name, value]) => [name, value]),
      ...bodyToHost(state.body),
      webSocket: state.webSocket ?? null,
    };
  };

  internals.isResponse = (x) => responseState(x) !== undefined;
  internals.isRequest = (x) => requestState(x) !== undefined;

  // For fetch(): the outgoing request (its body as bodyToHost gives it).
  internals.requestToHost = function requestToHost(request) {
    const state = requestState(request);
    if (state === undefined) throw new TypeError('requestToHost: not a Request.');
    return {
      method: state.method,
      url: state.url,
      headers: H.list(state.headers).map(([name, value]) => [name, value]),
      redirect: state.redirect,
      signal: state.signal,
      ...bodyToHost(state.body),
    };
  };

  // For fetch(): a response from the network. Headers are immutable, as
  // Workers makes them for fetch() results.
  internals.responseFromHost = function responseFromHost(status, statusText, headerPairs, reader,
    url = '', redirected = false, webSocket = null) {
    return makeResponse({
      webSocket,
      type: 'default',
      url: `${url}`,
      redirected: Boolean(redirected),
      status: status | 0,
      statusText: toByteString(statusText ?? '', 'responseFromHost'),
      headers: headersWithGuard(headerPairs, 'immutable'),
      body: reader ? new BodySource(null, reader) : null,
    });
  };

  // A body for runtime JavaScript (bindings): from bytes or a host reader.
  internals.bodySource = (bytes, reader = null, stream = null) => new BodySource(bytes, reader, stream);
  internals.isBodySource = (o) => BodySource.isSource(o);

  internals.bytesToLatin1 = function (u8) {
    const bytes = bufferSourceBytes(u8);
    if (bytes === null) throw new TypeError('bytesToLatin1: expected a Uint8Array.');
    return bytesToLatin1(bytes);
  };
  internals.latin1ToBytes = (str) => latin1ToBytes(`${str}`);
  internals.bytesOf = (value) => bufferSourceBytes(value);
  internals.formatLogArgs = (args) => formatLogArgs(safe(() => hostList(args), []));
  internals.inspect = (value) => safe(() => inspect(value), '[object (uninspectable)]');
};
