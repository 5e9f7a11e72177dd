// crypto and crypto.subtle: the JavaScript half of WebCrypto. The primitives
// run on the host (warren/runtime/crypto.py) through the host function
// `crypto`; keys stay there, the isolate holds opaque handles.
globalThis.__warrenCrypto = function install(global, internals, hostCrypto) {
  "use strict";
  function call(operation, args, bytes) {
    const answer = JSON.parse(hostCrypto(operation, JSON.stringify(args), bytes === undefined ? null : internals.bytesToLatin1(bytes)));
    if (!answer.ok) throw new DOMException(answer.message, answer.name);
    return answer;
  }
  const crypto = {
    getRandomValues(array) {
      if (!ArrayBuffer.isView(array) || array instanceof Float32Array || array instanceof Float64Array || array instanceof DataView) {
        throw new DOMException("The provided ArrayBufferView is not an integer array.", "TypeMismatchError");
      }
      const random = internals.latin1ToBytes(call("randomBytes", { length: array.byteLength }).data);
      new Uint8Array(array.buffer, array.byteOffset, array.byteLength).set(random);
      return array;
    },
    randomUUID() {
      const bytes = crypto.getRandomValues(new Uint8Array(16));
      bytes[6] = (bytes[6] & 0x0f) | 0x40;
      bytes[8] = (bytes[8] & 0x3f) | 0x80;
      const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
    },
  };
  Object.defineProperty(global, "crypto", { value: crypto, writable: true, configurable: true, enumerable: false });
};
