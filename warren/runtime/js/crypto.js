// crypto and crypto.subtle: the JavaScript half of WebCrypto. The primitives
// run on the host (warren/runtime/crypto.py) through the host function
// `crypto`; keys stay there, the isolate holds opaque handles.
//
// This half does what Web IDL and the spec's "normalize an algorithm" do:
// argument conversion (TypeError), algorithm names (case-insensitive, to
// NotSupportedError) and their parameter dictionaries; the host does the
// rest, including every usage and extractability check, from the key's own
// sealed record, so nothing a script does to a CryptoKey object can widen it.
globalThis.__warrenCrypto = function install(global, internals, hostCrypto) {
  "use strict";

  // --- buffer sources (brand checks through intrinsic getters) ---------------
  const getter = (obj, key) => Object.getOwnPropertyDescriptor(obj, key).get;
  const TypedArrayPrototype = Object.getPrototypeOf(Uint8Array.prototype);
  const typedArrayTag = getter(TypedArrayPrototype, Symbol.toStringTag);
  const typedArrayBuffer = getter(TypedArrayPrototype, "buffer");
  const typedArrayOffset = getter(TypedArrayPrototype, "byteOffset");
  const typedArrayByteLength = getter(TypedArrayPrototype, "byteLength");
  const dataViewBuffer = getter(DataView.prototype, "buffer");
  const dataViewOffset = getter(DataView.prototype, "byteOffset");
  const dataViewByteLength = getter(DataView.prototype, "byteLength");
  const arrayBufferByteLength = getter(ArrayBuffer.prototype, "byteLength");
  const brand = (fn, value) => {
    try {
      fn.call(value);
      return true;
    } catch {
      return false;
    }
  };

  // A Uint8Array over the bytes of a BufferSource (no copy), or null.
  function viewOf(value) {
    if (typeof value !== "object" || value === null) return null;
    if (typedArrayTag.call(value) !== undefined) {
      return new Uint8Array(typedArrayBuffer.call(value), typedArrayOffset.call(value), typedArrayByteLength.call(value));
    }
    if (brand(dataViewBuffer, value)) {
      return new Uint8Array(dataViewBuffer.call(value), dataViewOffset.call(value), dataViewByteLength.call(value));
    }
    if (brand(arrayBufferByteLength, value)) return new Uint8Array(value);
    return null;
  }
  function bufferSource(value, what) {
    const view = viewOf(value);
    if (view === null) throw new TypeError(`${what} is not an ArrayBuffer or ArrayBufferView.`);
    return view;
  }
  // A copy of a BufferSource's bytes, as the latin-1 string that crosses to the host.
  const bytesOf = (value, what) => internals.bytesToLatin1(bufferSource(value, what));
  const toArrayBuffer = (latin1) => internals.latin1ToBytes(latin1).buffer;

  // --- the host --------------------------------------------------------------
  function call(operation, args, latin1 = null) {
    const answer = hostCrypto(operation, JSON.stringify(args), latin1);
    if (typeof answer !== "string") throw new DOMException("The crypto host is not available.", "OperationError");
    const cut = answer.indexOf("\0");
    const result = JSON.parse(cut < 0 ? answer : answer.slice(0, cut));
    if (!result.ok) {
      if (result.name === "TypeError") throw new TypeError(result.message);
      throw new DOMException(result.message, result.name);
    }
    result.bytes = cut < 0 ? null : answer.slice(cut + 1);
    return result;
  }

  function defineInterface(cls, tag) {
    for (const target of [cls.prototype, cls]) {
      for (const key of Object.getOwnPropertyNames(target)) {
        if (key === "constructor" || key === "prototype" || key === "length" || key === "name") continue;
        const desc = Object.getOwnPropertyDescriptor(target, key);
        if (desc.configurable) Object.defineProperty(target, key, { ...desc, enumerable: true });
      }
    }
    Object.defineProperty(cls.prototype, Symbol.toStringTag, { value: tag, configurable: true });
  }
  function requireArgs(count, needed, method, iface = "SubtleCrypto") {
    if (count < needed) {
      throw new TypeError(`Failed to execute '${method}' on '${iface}': ${needed} argument${needed === 1 ? "" : "s"} required, but only ${count} present.`);
    }
  }

  // --- CryptoKey ----------------------------------------------------------------
  const keySlots = new WeakMap();
  function slotsOf(value, what) {
    const slots = typeof value === "object" && value !== null ? keySlots.get(value) : undefined;
    if (slots === undefined) throw new TypeError(`${what} is not a CryptoKey.`);
    return slots;
  }
  const handleOf = (value, what) => slotsOf(value, what).handle;

  class CryptoKey {
    constructor() {
      throw new TypeError("Illegal constructor");
    }
    get type() {
      return slotsOf(this, "this").type;
    }
    get extractable() {
      return slotsOf(this, "this").extractable;
    }
    get algorithm() {
      return slotsOf(this, "this").algorithm;
    }
    get usages() {
      return slotsOf(this, "this").usages;
    }
  }
  defineInterface(CryptoKey, "CryptoKey");

  function keyAlgorithm(description) {
    const out = {};
    for (const [member, value] of Object.entries(description)) {
      if (member === "publicExponent") out[member] = internals.latin1ToBytes(value);
      else if (member === "hash") out[member] = { name: value.name };
      else out[member] = value;
    }
    return out;
  }
  function makeKey(description) {
    const key = Object.create(CryptoKey.prototype);
    keySlots.set(key, {
      handle: description.handle,
      type: description.type,
      extractable: description.extractable,
      algorithm: keyAlgorithm(description.algorithm),
      usages: description.usages.slice(),
    });
    return key;
  }
  function keyResult(answer) {
    if (answer.key !== undefined) return makeKey(answer.key);
    return { publicKey: makeKey(answer.publicKey), privateKey: makeKey(answer.privateKey) };
  }

  // --- normalizing algorithms ------------------------------------------------------
  // Each operation's registered algorithms, and their parameter dictionaries:
  // member -> [kind, required]. Numeric kinds are [EnforceRange] maxima.
  const BUFFER = "buffer", HASH = "hash", KEY = "key", BIGINT = "bigint", STRING = "string";
  const OCTET = 0xff, USHORT = 0xffff, ULONG = 0xffffffff;
  const NONE = {};
  const RSA_GEN = { hash: [HASH, true], modulusLength: [ULONG, true], publicExponent: [BIGINT, true] };
  const RSA_IMPORT = { hash: [HASH, true] };
  const EC = { namedCurve: [STRING, true] };
  const AES_LENGTH = { length: [USHORT, true] };
  const HMAC = { hash: [HASH, true], length: [ULONG, false] };
  const ECDH_DERIVE = { public: [KEY, true] };
  const REGISTRY = {
    digest: { "SHA-1": NONE, "SHA-256": NONE, "SHA-384": NONE, "SHA-512": NONE, MD5: NONE },
    generateKey: {
      "RSASSA-PKCS1-v1_5": RSA_GEN, "RSA-PSS": RSA_GEN, "RSA-OAEP": RSA_GEN, ECDSA: EC, ECDH: EC,
      "AES-CTR": AES_LENGTH, "AES-CBC": AES_LENGTH, "AES-GCM": AES_LENGTH, "AES-KW": AES_LENGTH,
      HMAC, Ed25519: NONE, X25519: NONE, "NODE-ED25519": EC,
    },
    importKey: {
      "RSASSA-PKCS1-v1_5": RSA_IMPORT, "RSA-PSS": RSA_IMPORT, "RSA-OAEP": RSA_IMPORT, ECDSA: EC, ECDH: EC,
      "AES-CTR": NONE, "AES-CBC": NONE, "AES-GCM": NONE, "AES-KW": NONE, HMAC, PBKDF2: NONE, HKDF: NONE,
      Ed25519: NONE, X25519: NONE, "NODE-ED25519": EC,
    },
    sign: {
      "RSASSA-PKCS1-v1_5": NONE, "RSA-PSS": { saltLength: [ULONG, true] }, ECDSA: { hash: [HASH, true] },
      HMAC: NONE, Ed25519: NONE, "NODE-ED25519": NONE,
    },
    encrypt: {
      "RSA-OAEP": { label: [BUFFER, false] },
      "AES-CTR": { counter: [BUFFER, true], length: [OCTET, true] },
      "AES-CBC": { iv: [BUFFER, true] },
      "AES-GCM": { iv: [BUFFER, true], additionalData: [BUFFER, false], tagLength: [OCTET, false] },
    },
    deriveBits: {
      ECDH: ECDH_DERIVE, X25519: ECDH_DERIVE,
      HKDF: { hash: [HASH, true], salt: [BUFFER, true], info: [BUFFER, true] },
      PBKDF2: { hash: [HASH, true], salt: [BUFFER, true], iterations: [ULONG, true] },
    },
    getKeyLength: {
      "AES-CTR": AES_LENGTH, "AES-CBC": AES_LENGTH, "AES-GCM": AES_LENGTH, "AES-KW": AES_LENGTH,
      HMAC, HKDF: NONE, PBKDF2: NONE,
    },
    wrapKey: { "AES-KW": NONE },
  };
  REGISTRY.verify = REGISTRY.sign;
  REGISTRY.decrypt = REGISTRY.encrypt;
  REGISTRY.unwrapKey = REGISTRY.wrapKey;
  const asciiLower = (s) => s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
  const NAMES = Object.create(null);
  for (const [operation, table] of Object.entries(REGISTRY)) {
    NAMES[operation] = new Map(Object.keys(table).map((name) => [asciiLower(name), name]));
  }

  function enforceRange(value, max, what) {
    const number = +value;
    if (!Number.isFinite(number)) throw new TypeError(`${what} is not a finite number.`);
    const integer = Math.trunc(number);
    if (integer < 0 || integer > max) throw new TypeError(`${what} is outside the range 0 to ${max}.`);
    return integer;
  }

  function convertMember(kind, value, what) {
    switch (kind) {
      case BUFFER: return bytesOf(value, what);
      case HASH: return normalize(value, "digest");
      case KEY: return handleOf(value, what);
      case BIGINT:
        if (typedArrayTag.call(value) !== "Uint8Array") throw new TypeError(`${what} is not a Uint8Array.`);
        return internals.bytesToLatin1(value);
      case STRING: return `${value}`;
      default: return enforceRange(value, kind, what);
    }
  }

  // The spec's "normalize an algorithm": a plain object the host can read.
  function normalize(algorithm, operation) {
    if (typeof algorithm !== "object" || algorithm === null) return normalize({ name: `${algorithm}` }, operation);
    const nameValue = algorithm.name;
    if (nameValue === undefined) throw new TypeError("Algorithm: the name member is required.");
    const name = `${nameValue}`;
    const canonical = NAMES[operation].get(asciiLower(name));
    if (canonical === undefined) {
      throw new DOMException(`Unrecognized or unsupported algorithm for ${operation}: ${name}`, "NotSupportedError");
    }
    const normalized = { name: canonical };
    const schema = REGISTRY[operation][canonical];
    for (const member of Object.keys(schema).sort()) {
      const [kind, required] = schema[member];
      const value = algorithm[member];
      if (value === undefined) {
        if (required) throw new TypeError(`${canonical}: the ${member} member is required.`);
        continue;
      }
      normalized[member] = convertMember(kind, value, `${canonical} ${member}`);
    }
    return normalized;
  }

  const KEY_USAGES = ["encrypt", "decrypt", "sign", "verify", "deriveKey", "deriveBits", "wrapKey", "unwrapKey"];
  const FORMATS = ["raw", "spki", "pkcs8", "jwk"];
  function toSequence(value, what) {
    if (typeof value !== "object" || value === null || typeof value[Symbol.iterator] !== "function") {
      throw new TypeError(`${what} is not a sequence.`);
    }
    return Array.from(value, (item) => `${item}`);
  }
  function toUsages(value) {
    const usages = toSequence(value, "keyUsages");
    for (const usage of usages) {
      if (!KEY_USAGES.includes(usage)) throw new TypeError(`'${usage}' is not a valid KeyUsage.`);
    }
    return usages;
  }
  function toFormat(value) {
    const format = `${value}`;
    if (!FORMATS.includes(format)) throw new TypeError(`'${format}' is not a valid KeyFormat.`);
    return format;
  }
  const JWK_STRINGS = ["alg", "crv", "d", "dp", "dq", "e", "k", "kty", "n", "p", "q", "qi", "use", "x", "y"];
  function toJwk(value) {
    if (typeof value !== "object" || value === null || viewOf(value) !== null) {
      throw new TypeError("keyData must be a JsonWebKey object when the format is 'jwk'.");
    }
    const jwk = {};
    for (const member of JWK_STRINGS) {
      const v = value[member];
      if (v !== undefined) jwk[member] = `${v}`;
    }
    if (value.ext !== undefined) jwk.ext = Boolean(value.ext);
    if (value.key_ops !== undefined) jwk.key_ops = toSequence(value.key_ops, "key_ops");
    if (value.oth !== undefined) jwk.oth = true;
    return jwk;
  }

  // --- SubtleCrypto ----------------------------------------------------------------
  const subtles = new WeakSet();
  function checkSubtle(self) {
    if (!subtles.has(self)) throw new TypeError("Illegal invocation");
  }

  // encrypt, decrypt, sign: an algorithm, a key and some bytes in, bytes out.
  function keyedBytes(operation, algorithm, key, data) {
    const handle = handleOf(key, "key");
    const bytes = bytesOf(data, "data");
    const normalized = normalize(algorithm, operation);
    return toArrayBuffer(call(operation, { algorithm: normalized, key: handle }, bytes).bytes);
  }

  class SubtleCrypto {
    constructor() {
      throw new TypeError("Illegal constructor");
    }

    async digest(algorithm, data) {
      checkSubtle(this);
      requireArgs(arguments.length, 2, "digest");
      const bytes = bytesOf(data, "data");
      const normalized = normalize(algorithm, "digest");
      return toArrayBuffer(call("digest", { algorithm: normalized }, bytes).bytes);
    }

    async encrypt(algorithm, key, data) {
      checkSubtle(this);
      requireArgs(arguments.length, 3, "encrypt");
      return keyedBytes("encrypt", algorithm, key, data);
    }

    async decrypt(algorithm, key, data) {
      checkSubtle(this);
      requireArgs(arguments.length, 3, "decrypt");
      return keyedBytes("decrypt", algorithm, key, data);
    }

    async sign(algorithm, key, data) {
      checkSubtle(this);
      requireArgs(arguments.length, 3, "sign");
      return keyedBytes("sign", algorithm, key, data);
    }

    async verify(algorithm, key, signature, data) {
      checkSubtle(this);
      requireArgs(arguments.length, 4, "verify");
      const handle = handleOf(key, "key");
      const signatureBytes = bytesOf(signature, "signature");
      const bytes = bytesOf(data, "data");
      const normalized = normalize(algorithm, "verify");
      return call("verify", { algorithm: normalized, key: handle, signature: signatureBytes }, bytes).result;
    }

    async generateKey(algorithm, extractable, keyUsages) {
      checkSubtle(this);
      requireArgs(arguments.length, 3, "generateKey");
      const usages = toUsages(keyUsages);
      const normalized = normalize(algorithm, "generateKey");
      return keyResult(call("generateKey", { algorithm: normalized, extractable: Boolean(extractable), usages }));
    }

    async importKey(format, keyData, algorithm, extractable, keyUsages) {
      checkSubtle(this);
      requireArgs(arguments.length, 5, "importKey");
      const keyFormat = toFormat(format);
      const usages = toUsages(keyUsages);
      let jwk = null;
      let bytes = null;
      if (keyFormat === "jwk") jwk = toJwk(keyData);
      else bytes = bytesOf(keyData, "keyData");
      const normalized = normalize(algorithm, "importKey");
      const args = { format: keyFormat, algorithm: normalized, extractable: Boolean(extractable), usages, jwk };
      return keyResult(call("importKey", args, bytes));
    }

    async exportKey(format, key) {
      checkSubtle(this);
      requireArgs(arguments.length, 2, "exportKey");
      const keyFormat = toFormat(format);
      const answer = call("exportKey", { format: keyFormat, key: handleOf(key, "key") });
      return answer.jwk !== undefined ? answer.jwk : toArrayBuffer(answer.bytes);
    }

    async deriveBits(algorithm, baseKey, length = null) {
      checkSubtle(this);
      requireArgs(arguments.length, 2, "deriveBits");
      const handle = handleOf(baseKey, "baseKey");
      const bits = length === null || length === undefined ? null : Number(length) >>> 0;
      const normalized = normalize(algorithm, "deriveBits");
      return toArrayBuffer(call("deriveBits", { algorithm: normalized, key: handle, length: bits }).bytes);
    }

    async deriveKey(algorithm, baseKey, derivedKeyType, extractable, keyUsages) {
      checkSubtle(this);
      requireArgs(arguments.length, 5, "deriveKey");
      const handle = handleOf(baseKey, "baseKey");
      const usages = toUsages(keyUsages);
      const normalized = normalize(algorithm, "deriveBits");
      const derived = normalize(derivedKeyType, "getKeyLength");
      const args = { algorithm: normalized, key: handle, derivedKeyType: derived, extractable: Boolean(extractable), usages };
      return keyResult(call("deriveKey", args));
    }

    async wrapKey(format, key, wrappingKey, wrapAlgorithm) {
      checkSubtle(this);
      requireArgs(arguments.length, 4, "wrapKey");
      const keyFormat = toFormat(format);
      const handle = handleOf(key, "key");
      const wrappingHandle = handleOf(wrappingKey, "wrappingKey");
      let normalized;
      try {
        normalized = normalize(wrapAlgorithm, "wrapKey");
      } catch {
        normalized = normalize(wrapAlgorithm, "encrypt");
      }
      const args = { format: keyFormat, key: handle, wrappingKey: wrappingHandle, algorithm: normalized };
      return toArrayBuffer(call("wrapKey", args).bytes);
    }

    async unwrapKey(format, wrappedKey, unwrappingKey, unwrapAlgorithm, unwrappedKeyAlgorithm, extractable, keyUsages) {
      checkSubtle(this);
      requireArgs(arguments.length, 7, "unwrapKey");
      const keyFormat = toFormat(format);
      const bytes = bytesOf(wrappedKey, "wrappedKey");
      const handle = handleOf(unwrappingKey, "unwrappingKey");
      const usages = toUsages(keyUsages);
      let normalized;
      try {
        normalized = normalize(unwrapAlgorithm, "unwrapKey");
      } catch {
        normalized = normalize(unwrapAlgorithm, "decrypt");
      }
      const keyAlgorithm = normalize(unwrappedKeyAlgorithm, "importKey");
      const args = {
        format: keyFormat, unwrappingKey: handle, algorithm: normalized, unwrappedKeyAlgorithm: keyAlgorithm,
        extractable: Boolean(extractable), usages,
      };
      return keyResult(call("unwrapKey", args, bytes));
    }

    // Workers' extension: compares in time independent of the contents.
    timingSafeEqual(a, b) {
      checkSubtle(this);
      requireArgs(arguments.length, 2, "timingSafeEqual");
      const x = bufferSource(a, "a");
      const y = bufferSource(b, "b");
      if (x.byteLength !== y.byteLength) throw new TypeError("Input buffers must have the same byte length.");
      let difference = 0;
      for (let i = 0; i < x.byteLength; i++) difference |= x[i] ^ y[i];
      return difference === 0;
    }
  }
  defineInterface(SubtleCrypto, "SubtleCrypto");

  // --- DigestStream ------------------------------------------------------------------
  // Workers' DigestStream is a WritableStream. warren has no streams yet, so
  // this one has the writer side only: getWriter() with write/close/abort,
  // close()/abort() on the stream, and the `digest` promise. Small writes are
  // gathered here; the hash state lives on the host.
  const FLUSH_BYTES = 64 * 1024;
  const streams = new WeakMap();
  const writers = new WeakMap();
  function streamState(self) {
    const state = streams.get(self);
    if (state === undefined) throw new TypeError("Illegal invocation");
    return state;
  }
  function flushStream(state, finish) {
    const data = state.chunks.join("");
    state.chunks = [];
    state.buffered = 0;
    const answer = call("digestStream", { algorithm: state.algorithm, state: state.hostState, finish }, data);
    if (!finish) state.hostState = answer.state;
    return answer;
  }
  function failStream(state, reason) {
    if (state.done) return;
    state.done = true;
    state.chunks = [];
    if (state.hostState !== null) {
      try {
        call("digestStreamAbort", { state: state.hostState });
      } catch {
        // the host forgot it already
      }
    }
    state.rejectDigest(reason);
    state.rejectClosed(reason);
  }
  function writeStream(state, chunk) {
    if (state.done) throw new TypeError("This DigestStream is closed.");
    let bytes;
    try {
      bytes = bytesOf(chunk, "chunk");
      state.chunks.push(bytes);
      state.buffered += bytes.length;
      if (state.buffered >= FLUSH_BYTES) flushStream(state, false);
    } catch (error) {
      failStream(state, error);
      throw error;
    }
  }
  function closeStream(state) {
    if (state.done) throw new TypeError("This DigestStream is closed.");
    let digest;
    try {
      digest = toArrayBuffer(flushStream(state, true).bytes);
    } catch (error) {
      failStream(state, error);
      throw error;
    }
    state.done = true;
    state.resolveDigest(digest);
    state.resolveClosed(undefined);
  }

  // A DigestStream's state (either class below): its digest and its closing, settled by the sink.
  function newStreamState(algorithm) {
    const state = {
      algorithm: normalize(algorithm, "digest"), chunks: [], buffered: 0, hostState: null, done: false, writer: null,
    };
    state.digest = new Promise((resolve, reject) => {
      state.resolveDigest = resolve;
      state.rejectDigest = reject;
    });
    state.closed = new Promise((resolve, reject) => {
      state.resolveClosed = resolve;
      state.rejectClosed = reject;
    });
    state.digest.catch(() => {});
    state.closed.catch(() => {});
    return state;
  }

  class DigestStream {
    constructor(algorithm) {
      requireArgs(arguments.length, 1, "constructor", "DigestStream");
      streams.set(this, newStreamState(algorithm));
    }
    get digest() {
      return streamState(this).digest;
    }
    get locked() {
      return streamState(this).writer !== null;
    }
    getWriter() {
      const state = streamState(this);
      if (state.writer !== null) throw new TypeError("This DigestStream is locked to a writer.");
      const writer = Object.create(DigestStreamWriter.prototype);
      writers.set(writer, { state, released: false });
      state.writer = writer;
      return writer;
    }
    async close() {
      const state = streamState(this);
      if (state.writer !== null) throw new TypeError("This DigestStream is locked to a writer.");
      closeStream(state);
    }
    async abort(reason) {
      const state = streamState(this);
      if (state.writer !== null) throw new TypeError("This DigestStream is locked to a writer.");
      failStream(state, reason);
    }
  }
  defineInterface(DigestStream, "DigestStream");

  function writerState(self) {
    const slot = writers.get(self);
    if (slot === undefined) throw new TypeError("Illegal invocation");
    if (slot.released) throw new TypeError("This writer's lock was released.");
    return slot.state;
  }
  class DigestStreamWriter {
    constructor() {
      throw new TypeError("Illegal constructor");
    }
    get closed() {
      return writerState(this).closed;
    }
    get ready() {
      writerState(this);
      return Promise.resolve(undefined);
    }
    get desiredSize() {
      const state = writerState(this);
      return state.done ? 0 : 1;
    }
    async write(chunk) {
      writeStream(writerState(this), chunk);
    }
    async close() {
      closeStream(writerState(this));
    }
    async abort(reason) {
      failStream(writerState(this), reason);
    }
    releaseLock() {
      const slot = writers.get(this);
      if (slot === undefined) throw new TypeError("Illegal invocation");
      if (slot.released) return;
      slot.released = true;
      slot.state.writer = null;
    }
  }
  defineInterface(DigestStreamWriter, "WritableStreamDefaultWriter");

  // --- Crypto ------------------------------------------------------------------
  const RANDOM_TYPES = new Set([
    "Int8Array", "Uint8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array", "Uint32Array",
    "BigInt64Array", "BigUint64Array",
  ]);
  const subtle = Object.create(SubtleCrypto.prototype);
  subtles.add(subtle);

  function getRandomValues(array) {
    if (!RANDOM_TYPES.has(typedArrayTag.call(array))) {
      throw new DOMException("The provided ArrayBufferView is not an integer array.", "TypeMismatchError");
    }
    const view = viewOf(array);
    if (view.byteLength > 65536) {
      throw new DOMException(
        `The ArrayBufferView's byte length (${view.byteLength}) exceeds the number of bytes of entropy available via this API (65536)`,
        "QuotaExceededError");
    }
    view.set(internals.latin1ToBytes(call("randomBytes", { length: view.byteLength }).bytes));
    return array;
  }

  class Crypto {
    constructor() {
      throw new TypeError("Illegal constructor");
    }
    get subtle() {
      return subtle;
    }
    getRandomValues(array) {
      requireArgs(arguments.length, 1, "getRandomValues", "Crypto");
      return getRandomValues(array);
    }
    randomUUID() {
      const bytes = getRandomValues(new Uint8Array(16));
      bytes[6] = (bytes[6] & 0x0f) | 0x40;
      bytes[8] = (bytes[8] & 0x3f) | 0x80;
      const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
    }
  }
  defineInterface(Crypto, "Crypto");
  Object.defineProperty(Crypto.prototype, "DigestStream", { value: DigestStream, writable: true, configurable: true });

  // Once the streams are loaded (after the vendored bundle), DigestStream
  // becomes what it is on Workers: a WritableStream (pipeTo works), whose
  // sink feeds the hash kept on the host.
  internals.upgradeDigestStream = (WritableStream) => {
    class DigestStream extends WritableStream {
      constructor(algorithm) {
        requireArgs(arguments.length, 1, "constructor", "DigestStream");
        const state = newStreamState(algorithm);
        super({
          write(chunk) { writeStream(state, chunk); },
          close() { closeStream(state); },
          abort(reason) { failStream(state, reason); },
        });
        streams.set(this, state);
      }
      get digest() {
        return streamState(this).digest;
      }
    }
    defineInterface(DigestStream, "DigestStream");
    Object.defineProperty(Crypto.prototype, "DigestStream", { value: DigestStream, writable: true, configurable: true });
  };
  const crypto = Object.create(Crypto.prototype);

  const defineGlobal = (name, value) =>
    Object.defineProperty(global, name, { value, writable: true, configurable: true, enumerable: false });
  defineGlobal("crypto", crypto);
  defineGlobal("Crypto", Crypto);
  defineGlobal("SubtleCrypto", SubtleCrypto);
  defineGlobal("CryptoKey", CryptoKey);
};
