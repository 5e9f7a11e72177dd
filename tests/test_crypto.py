"""WebCrypto in the isolate: ``crypto.subtle``, ``CryptoKey``, ``DigestStream``, ``timingSafeEqual``.

One worker script runs every check through the real engine (``warren dev``)
and returns a JSON report; the test checks it against the RFC and NIST
known answers and against Python's own ``cryptography``/``hashlib``, in both
directions (keys and signatures made here are used by the worker, and what the
worker makes is verified here).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Collect, ServiceProcess, WorkerHost
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from warren.runtime import IncomingRequest, Worker, WorkerScript
from warren.runtime.crypto import CryptoHost

MESSAGE = b"signed by python, checked by the worker"
LARGE = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: crosses the DigestStream flush size


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der(private: Any) -> bytes:
    return bytes(
        private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def spki(public: Any) -> bytes:
    return bytes(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def raw_ecdsa(signature: bytes, size: int) -> bytes:
    r, s = utils.decode_dss_signature(signature)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def der_ecdsa(signature: bytes) -> bytes:
    size = len(signature) // 2
    return utils.encode_dss_signature(int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"))


class Keys:
    """What the Python side holds: keys whose public (or private) halves go to the worker."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.p256 = ec.generate_private_key(ec.SECP256R1())
        self.p384 = ec.generate_private_key(ec.SECP384R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.x = x25519.X25519PrivateKey.generate()
        self.aes = bytes(range(32))
        self.gcm_iv = bytes(range(12))
        self.cbc_iv = bytes(range(16, 32))

    def vectors(self) -> dict[str, str]:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"label")
        numbers = self.p256.public_key().public_numbers()
        cbc = Cipher(algorithms.AES(self.aes), modes.CBC(self.cbc_iv)).encryptor()
        padded = MESSAGE + bytes([16 - len(MESSAGE) % 16]) * (16 - len(MESSAGE) % 16)
        raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "message": b64(MESSAGE),
            "large": b64(LARGE),
            "rsaPkcs8": b64(der(self.rsa)),
            "rsaSpki": b64(spki(self.rsa.public_key())),
            "rsaPkcs1Sig": b64(self.rsa.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256())),
            "rsaPssSig": b64(self.rsa.sign(MESSAGE, pss, hashes.SHA256())),
            "rsaOaepCipher": b64(self.rsa.public_key().encrypt(MESSAGE, oaep)),
            "p256Pkcs8": b64(der(self.p256)),
            "p256JwkX": b64url(numbers.x.to_bytes(32, "big")),
            "p256JwkY": b64url(numbers.y.to_bytes(32, "big")),
            "p256Sig": b64(raw_ecdsa(self.p256.sign(MESSAGE, ec.ECDSA(hashes.SHA256())), 32)),
            "p384Spki": b64(spki(self.p384.public_key())),
            "edPkcs8": b64(der(self.ed)),
            "edRaw": b64(self.ed.public_key().public_bytes(*raw)),
            "edSig": b64(self.ed.sign(MESSAGE)),
            "xRaw": b64(self.x.public_key().public_bytes(*raw)),
            "aes": b64(self.aes),
            "gcmIv": b64(self.gcm_iv),
            "gcmCipher": b64(AESGCM(self.aes).encrypt(self.gcm_iv, MESSAGE, b"aad")),
            "cbcIv": b64(self.cbc_iv),
            "cbcCipher": b64(cbc.update(padded) + cbc.finalize()),
        }


WORKER = r"""
import V from "./vectors.json";

const enc = new TextEncoder();
const dec = new TextDecoder();
const subtle = crypto.subtle;
const bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const b64 = (buffer) => btoa(Array.from(new Uint8Array(buffer), (x) => String.fromCharCode(x)).join(""));
const hex = (buffer) => Array.from(new Uint8Array(buffer), (x) => x.toString(16).padStart(2, "0")).join("");
const unhex = (h) => Uint8Array.from(h.match(/../g) ?? [], (x) => parseInt(x, 16));
const MESSAGE = bytes(V.message);
const RSA_GEN = { modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" };

async function failure(fn) {
  try {
    await fn();
    return "no error";
  } catch (e) {
    return (e instanceof DOMException ? "DOMException:" : "") + e.name;
  }
}

const checks = {
  // --- digests ---
  async digests() {
    const out = {};
    for (const name of ["SHA-1", "SHA-256", "SHA-384", "SHA-512", "MD5"]) out[name] = hex(await subtle.digest(name, enc.encode("abc")));
    out.large = hex(await subtle.digest({ name: "sha-256" }, bytes(V.large)));
    out.dataView = hex(await subtle.digest("SHA-256", new DataView(enc.encode("xabcx").buffer, 1, 3)));
    return out;
  },
  async digestErrors() {
    return {
      unknown: await failure(() => subtle.digest("SHA-3", new Uint8Array(1))),
      notBuffer: await failure(() => subtle.digest("SHA-256", "abc")),
      noName: await failure(() => subtle.digest({}, new Uint8Array(1))),
      missing: await failure(() => subtle.digest("SHA-256")),
      returnsPromise: subtle.digest("SHA-256", "not a buffer").catch(() => {}) instanceof Promise,
      resultIsArrayBuffer: (await subtle.digest("SHA-1", new Uint8Array(0))) instanceof ArrayBuffer,
      unbound: await failure(() => subtle.digest.call({}, "SHA-256", new Uint8Array(1))),
    };
  },
  async digestStream() {
    const stream = new crypto.DigestStream("SHA-256");
    const writer = stream.getWriter();
    const large = bytes(V.large);
    for (let i = 0; i < large.length; i += 100000) await writer.write(large.subarray(i, i + 100000));
    await writer.close();
    const small = new crypto.DigestStream({ name: "MD5" });
    const w = small.getWriter();
    await w.write(enc.encode("a"));
    await w.write(enc.encode("bc").buffer);
    await w.close();
    const empty = new crypto.DigestStream("SHA-1");
    await empty.getWriter().close();
    let lockedTwice = "no error";
    try { stream.getWriter(); } catch (e) { lockedTwice = e.name; }
    return {
      large: hex(await stream.digest),
      small: hex(await small.digest),
      empty: hex(await empty.digest),
      lockedTwice,
      writeAfterClose: await failure(() => w.write(enc.encode("x"))),
      unknown: await failure(() => new crypto.DigestStream("SHA-3")),
    };
  },
  // --- HMAC: RFC 4231 ---
  async hmac() {
    const out = {};
    const tc1 = new Uint8Array(20).fill(0x0b);
    for (const hash of ["SHA-256", "SHA-384", "SHA-512"]) {
      const key = await subtle.importKey("raw", tc1, { name: "HMAC", hash }, false, ["sign"]);
      out["tc1-" + hash] = hex(await subtle.sign("HMAC", key, enc.encode("Hi There")));
    }
    const jefe = await subtle.importKey("raw", enc.encode("Jefe"), { name: "hmac", hash: { name: "sha-256" } }, true, ["sign", "verify"]);
    out.tc2 = hex(await subtle.sign({ name: "HMAC" }, jefe, enc.encode("what do ya want for nothing?")));
    const big = await subtle.importKey("raw", new Uint8Array(131).fill(0xaa), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    out.tc6 = hex(await subtle.sign("HMAC", big, enc.encode("Test Using Larger Than Block-Size Key - Hash Key First")));
    out.verify = await subtle.verify("HMAC", jefe, unhex(out.tc2), enc.encode("what do ya want for nothing?"));
    out.verifyWrong = await subtle.verify("HMAC", jefe, unhex(out.tc2), enc.encode("what do ya want for nothing!"));
    out.jwk = await subtle.exportKey("jwk", jefe);
    out.algorithm = jefe.algorithm;
    const generated = await subtle.generateKey({ name: "HMAC", hash: "SHA-512" }, true, ["sign"]);
    out.generatedLength = generated.algorithm.length;
    out.generatedBytes = (await subtle.exportKey("raw", generated)).byteLength;
    const fromJwk = await subtle.importKey("jwk", out.jwk, { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
    out.fromJwkVerifies = await subtle.verify("HMAC", fromJwk, unhex(out.tc2), enc.encode("what do ya want for nothing?"));
    return out;
  },
  // --- key derivation: RFC 6070 (PBKDF2-SHA1), RFC 5869 (HKDF) ---
  async kdf() {
    const password = await subtle.importKey("raw", enc.encode("password"), "PBKDF2", false, ["deriveBits"]);
    const pbkdf2 = (iterations) => subtle.deriveBits({ name: "PBKDF2", hash: "SHA-1", salt: enc.encode("salt"), iterations }, password, 160);
    const long = await subtle.importKey("raw", enc.encode("passwordPASSWORDpassword"), { name: "pbkdf2" }, false, ["deriveBits"]);
    const ikm = await subtle.importKey("raw", new Uint8Array(22).fill(0x0b), "HKDF", false, ["deriveBits", "deriveKey"]);
    const salt = Uint8Array.from({ length: 13 }, (_, i) => i);
    const info = Uint8Array.from({ length: 10 }, (_, i) => 0xf0 + i);
    return {
      c1: hex(await pbkdf2(1)),
      c2: hex(await pbkdf2(2)),
      c4096: hex(await pbkdf2(4096)),
      c4096long: hex(await subtle.deriveBits({ name: "PBKDF2", hash: "SHA-1", salt: enc.encode("saltSALTsaltSALTsaltSALTsaltSALTsalt"), iterations: 4096 }, long, 200)),
      hkdf1: hex(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, ikm, 336)),
      hkdf3: hex(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: new Uint8Array(0) }, ikm, 336)),
      tooManyIterations: await failure(() => pbkdf2(100001)),
      tooMuchWork: await failure(() => subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt: enc.encode("salt"), iterations: 100000 }, password, 1 << 20)),
      zeroIterations: await failure(() => pbkdf2(0)),
      nullLength: await failure(() => subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, ikm, null)),
      oddLength: await failure(() => subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, ikm, 12)),
      extractable: await failure(() => subtle.importKey("raw", enc.encode("p"), "PBKDF2", true, ["deriveBits"])),
      jwkFormat: await failure(() => subtle.importKey("jwk", { kty: "oct", k: "AA" }, "PBKDF2", false, ["deriveBits"])),
      exportKdfKey: await failure(() => subtle.exportKey("raw", password)),
      deriveKeyNotAllowed: await failure(() => subtle.deriveKey({ name: "PBKDF2", hash: "SHA-256", salt, iterations: 1 }, password, { name: "AES-GCM", length: 128 }, false, ["encrypt"])),
    };
  },
  async deriveKey() {
    const password = await subtle.importKey("raw", enc.encode("hunter2"), "PBKDF2", false, ["deriveKey", "deriveBits"]);
    const params = { name: "PBKDF2", hash: "SHA-256", salt: enc.encode("NaCl"), iterations: 1000 };
    const aes = await subtle.deriveKey(params, password, { name: "AES-GCM", length: 256 }, true, ["encrypt", "decrypt"]);
    const bits = await subtle.deriveBits(params, password, 256);
    const ikm = await subtle.importKey("raw", enc.encode("input keying material"), "HKDF", false, ["deriveKey"]);
    const hmacKey = await subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(16), info: enc.encode("mac") }, ikm, { name: "HMAC", hash: "SHA-256", length: 256 }, true, ["sign"]);
    return {
      aesAlgorithm: aes.algorithm,
      aesUsages: aes.usages,
      sameAsBits: hex(await subtle.exportKey("raw", aes)) === hex(bits),
      hmacAlgorithm: hmacKey.algorithm,
      hmacRaw: hex(await subtle.exportKey("raw", hmacKey)),
      emptyUsages: await failure(() => subtle.deriveKey(params, password, { name: "AES-GCM", length: 128 }, false, [])),
      badLength: await failure(() => subtle.deriveKey(params, password, { name: "AES-GCM", length: 100 }, false, ["encrypt"])),
      notDerivable: await failure(() => subtle.deriveKey(params, password, { name: "ECDSA", namedCurve: "P-256" }, false, ["sign"])),
    };
  },
  // --- AES ---
  async aes() {
    const key = await subtle.importKey("raw", bytes(V.aes), "AES-GCM", true, ["encrypt", "decrypt"]);
    const cbc = await subtle.importKey("raw", bytes(V.aes), { name: "AES-CBC" }, false, ["encrypt", "decrypt"]);
    const gcm = { name: "AES-GCM", iv: bytes(V.gcmIv), additionalData: enc.encode("aad") };
    const zero = await subtle.importKey("raw", new Uint8Array(16), "AES-GCM", false, ["encrypt"]);
    const nist = await subtle.importKey("raw", unhex("feffe9928665731c6d6a8f9467308308"), "AES-GCM", false, ["encrypt"]);
    const tampered = bytes(V.gcmCipher);
    tampered[0] ^= 1;
    const short = await subtle.encrypt({ ...gcm, tagLength: 96 }, key, MESSAGE);
    return {
      gcmDecrypt: dec.decode(await subtle.decrypt(gcm, key, bytes(V.gcmCipher))),
      gcmEncrypt: b64(await subtle.encrypt(gcm, key, MESSAGE)),
      gcmNist2: hex(await subtle.encrypt({ name: "AES-GCM", iv: new Uint8Array(12) }, zero, new Uint8Array(16))),
      gcmNist3: hex(await subtle.encrypt({ name: "AES-GCM", iv: unhex("cafebabefacedbaddecaf888") }, nist, unhex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"))),
      gcmTag96: b64(short),
      gcmTag96RoundTrip: dec.decode(await subtle.decrypt({ ...gcm, tagLength: 96 }, key, short)),
      gcmTampered: await failure(() => subtle.decrypt(gcm, key, tampered)),
      gcmBadTag: await failure(() => subtle.encrypt({ ...gcm, tagLength: 100 }, key, MESSAGE)),
      gcmNoIv: await failure(() => subtle.encrypt({ name: "AES-GCM" }, key, MESSAGE)),
      cbcDecrypt: dec.decode(await subtle.decrypt({ name: "AES-CBC", iv: bytes(V.cbcIv) }, cbc, bytes(V.cbcCipher))),
      cbcEncrypt: b64(await subtle.encrypt({ name: "AES-CBC", iv: bytes(V.cbcIv) }, cbc, MESSAGE)),
      cbcBadIv: await failure(() => subtle.encrypt({ name: "AES-CBC", iv: new Uint8Array(8) }, cbc, MESSAGE)),
      cbcBadPadding: await failure(() => subtle.decrypt({ name: "AES-CBC", iv: bytes(V.cbcIv) }, cbc, new Uint8Array(16))),
      badKeyLength: await failure(() => subtle.importKey("raw", new Uint8Array(10), "AES-GCM", false, ["encrypt"])),
      badGenerateLength: await failure(() => subtle.generateKey({ name: "AES-GCM", length: 64 }, false, ["encrypt"])),
      generated: (await subtle.generateKey({ name: "AES-CTR", length: 192 }, false, ["encrypt"])).algorithm,
      jwk: await subtle.exportKey("jwk", key),
    };
  },
  async aesCtr() {
    const key = await subtle.importKey("raw", bytes(V.aes), "AES-CTR", false, ["encrypt", "decrypt"]);
    const counter = new Uint8Array(16).fill(0xab);
    counter[15] = 0xfe;  // with an 8-bit counter, the third block wraps to ...ab00
    const data = Uint8Array.from({ length: 70 }, (_, i) => i);
    const ciphertext = await subtle.encrypt({ name: "AES-CTR", counter, length: 8 }, key, data);
    const plain = await subtle.decrypt({ name: "AES-CTR", counter, length: 8 }, key, ciphertext);
    return {
      ciphertext: b64(ciphertext),
      roundTrip: hex(plain) === hex(data),
      zeroLength: await failure(() => subtle.encrypt({ name: "AES-CTR", counter, length: 0 }, key, data)),
      tooLong: await failure(() => subtle.encrypt({ name: "AES-CTR", counter, length: 2 }, key, data)),
    };
  },
  // --- AES-KW: RFC 3394 4.1, wrapKey/unwrapKey ---
  async wrap() {
    const kek = await subtle.importKey("raw", unhex("000102030405060708090A0B0C0D0E0F"), "AES-KW", false, ["wrapKey", "unwrapKey"]);
    const key = await subtle.importKey("raw", unhex("00112233445566778899AABBCCDDEEFF"), "AES-GCM", true, ["encrypt"]);
    const wrapped = await subtle.wrapKey("raw", key, kek, "AES-KW");
    const unwrapped = await subtle.unwrapKey("raw", wrapped, kek, { name: "AES-KW" }, "AES-GCM", true, ["decrypt"]);
    const gcmKek = await subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["wrapKey", "unwrapKey"]);
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const pair = await subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
    const wrappedJwk = await subtle.wrapKey("jwk", pair.privateKey, gcmKek, { name: "AES-GCM", iv });
    const restored = await subtle.unwrapKey("jwk", wrappedJwk, gcmKek, { name: "AES-GCM", iv }, { name: "ECDSA", namedCurve: "P-256" }, false, ["sign"]);
    const signature = await subtle.sign({ name: "ECDSA", hash: "SHA-256" }, restored, MESSAGE);
    const oaep = await subtle.generateKey({ name: "RSA-OAEP", ...RSA_GEN }, false, ["wrapKey", "unwrapKey"]);
    const viaRsa = await subtle.unwrapKey("raw", await subtle.wrapKey("raw", key, oaep.publicKey, "RSA-OAEP"), oaep.privateKey, "RSA-OAEP", "AES-GCM", true, ["encrypt"]);
    const nonExtractable = await subtle.importKey("raw", new Uint8Array(16), "AES-GCM", false, ["encrypt"]);
    return {
      rfc3394: hex(wrapped),
      unwrapped: hex(await subtle.exportKey("raw", unwrapped)),
      unwrappedUsages: unwrapped.usages,
      jwkRoundTrip: await subtle.verify({ name: "ECDSA", hash: "SHA-256" }, pair.publicKey, signature, MESSAGE),
      restoredExtractable: restored.extractable,
      viaRsa: hex(await subtle.exportKey("raw", viaRsa)),
      notExtractable: await failure(() => subtle.wrapKey("raw", nonExtractable, kek, "AES-KW")),
      wrongUsage: await failure(() => subtle.wrapKey("raw", key, key, { name: "AES-GCM", iv })),
      badWrapped: await failure(() => subtle.unwrapKey("raw", new Uint8Array(24), kek, "AES-KW", "AES-GCM", true, ["encrypt"])),
    };
  },
  // --- RSA ---
  async rsa() {
    const pkcs1 = await subtle.generateKey({ name: "RSASSA-PKCS1-v1_5", ...RSA_GEN }, true, ["sign", "verify"]);
    const pss = await subtle.generateKey({ name: "RSA-PSS", ...RSA_GEN, hash: { name: "SHA-384" } }, true, ["sign", "verify"]);
    const imported = {
      pkcs1Private: await subtle.importKey("pkcs8", bytes(V.rsaPkcs8), { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, false, ["sign"]),
      pkcs1Public: await subtle.importKey("spki", bytes(V.rsaSpki), { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, true, ["verify"]),
      pssPublic: await subtle.importKey("spki", bytes(V.rsaSpki), { name: "RSA-PSS", hash: "SHA-256" }, false, ["verify"]),
      oaepPrivate: await subtle.importKey("pkcs8", bytes(V.rsaPkcs8), { name: "RSA-OAEP", hash: "SHA-256" }, false, ["decrypt"]),
      oaepPublic: await subtle.importKey("spki", bytes(V.rsaSpki), { name: "RSA-OAEP", hash: "SHA-256" }, false, ["encrypt"]),
    };
    const publicJwk = await subtle.exportKey("jwk", imported.pkcs1Public);
    const fromJwk = await subtle.importKey("jwk", publicJwk, { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, false, ["verify"]);
    const privateJwk = await subtle.exportKey("jwk", pkcs1.privateKey);
    const privateFromJwk = await subtle.importKey("jwk", privateJwk, { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, false, ["sign"]);
    return {
      pkcs1Spki: b64(await subtle.exportKey("spki", pkcs1.publicKey)),
      pkcs1Sig: b64(await subtle.sign("RSASSA-PKCS1-v1_5", pkcs1.privateKey, MESSAGE)),
      pssSpki: b64(await subtle.exportKey("spki", pss.publicKey)),
      pssSig: b64(await subtle.sign({ name: "RSA-PSS", saltLength: 48 }, pss.privateKey, MESSAGE)),
      pssPkcs8: b64(await subtle.exportKey("pkcs8", pss.privateKey)),
      importedSig: b64(await subtle.sign("RSASSA-PKCS1-v1_5", imported.pkcs1Private, MESSAGE)),
      verifiesPython: await subtle.verify("RSASSA-PKCS1-v1_5", imported.pkcs1Public, bytes(V.rsaPkcs1Sig), MESSAGE),
      verifiesPythonViaJwk: await subtle.verify("RSASSA-PKCS1-v1_5", fromJwk, bytes(V.rsaPkcs1Sig), MESSAGE),
      rejectsOtherMessage: await subtle.verify("RSASSA-PKCS1-v1_5", imported.pkcs1Public, bytes(V.rsaPkcs1Sig), enc.encode("other")),
      verifiesPythonPss: await subtle.verify({ name: "RSA-PSS", saltLength: 32 }, imported.pssPublic, bytes(V.rsaPssSig), MESSAGE),
      oaepDecrypt: dec.decode(await subtle.decrypt({ name: "RSA-OAEP", label: enc.encode("label") }, imported.oaepPrivate, bytes(V.rsaOaepCipher))),
      oaepEncrypt: b64(await subtle.encrypt({ name: "RSA-OAEP", label: enc.encode("label") }, imported.oaepPublic, MESSAGE)),
      oaepWrongLabel: await failure(() => subtle.decrypt({ name: "RSA-OAEP", label: enc.encode("other") }, imported.oaepPrivate, bytes(V.rsaOaepCipher))),
      algorithm: pss.publicKey.algorithm,
      exponentIsUint8Array: pss.publicKey.algorithm.publicExponent instanceof Uint8Array,
      publicExtractable: pss.publicKey.extractable,
      privateUsages: pss.privateKey.usages,
      publicUsages: pss.publicKey.usages,
      publicJwk,
      privateJwkRoundTrip: await subtle.verify("RSASSA-PKCS1-v1_5", pkcs1.publicKey, await subtle.sign("RSASSA-PKCS1-v1_5", privateFromJwk, MESSAGE), MESSAGE),
      spkiOfPrivate: await failure(() => subtle.exportKey("spki", pkcs1.privateKey)),
      rawFormat: await failure(() => subtle.exportKey("raw", pkcs1.publicKey)),
      jwkWrongAlg: await failure(() => subtle.importKey("jwk", publicJwk, { name: "RSASSA-PKCS1-v1_5", hash: "SHA-512" }, false, ["verify"])),
      badExponent: await failure(() => subtle.generateKey({ name: "RSA-PSS", ...RSA_GEN, publicExponent: new Uint8Array([5]) }, false, ["sign"])),
      exponentNotUint8: await failure(() => subtle.generateKey({ name: "RSA-PSS", ...RSA_GEN, publicExponent: [1, 0, 1] }, false, ["sign"])),
      verifyWithPrivate: await failure(() => subtle.verify("RSASSA-PKCS1-v1_5", pkcs1.privateKey, new Uint8Array(256), MESSAGE)),
      garbageSpki: await failure(() => subtle.importKey("spki", new Uint8Array(30), { name: "RSA-PSS", hash: "SHA-256" }, false, ["verify"])),
    };
  },
  // --- ECDSA, ECDH ---
  async ec() {
    const p256 = await subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
    const p384 = await subtle.generateKey({ name: "ECDSA", namedCurve: "P-384" }, true, ["sign", "verify"]);
    const imported = await subtle.importKey("pkcs8", bytes(V.p256Pkcs8), { name: "ECDSA", namedCurve: "P-256" }, true, ["sign"]);
    const jwkPublic = await subtle.importKey("jwk", { kty: "EC", crv: "P-256", x: V.p256JwkX, y: V.p256JwkY }, { name: "ECDSA", namedCurve: "P-256" }, true, ["verify"]);
    const rawPublic = await subtle.exportKey("raw", jwkPublic);
    const fromRaw = await subtle.importKey("raw", rawPublic, { name: "ECDSA", namedCurve: "P-256" }, true, ["verify"]);
    const pythonSig = bytes(V.p256Sig);
    const other = new Uint8Array(pythonSig);
    other[10] ^= 1;
    return {
      p256Spki: b64(await subtle.exportKey("spki", p256.publicKey)),
      p256Sig: b64(await subtle.sign({ name: "ECDSA", hash: "SHA-256" }, p256.privateKey, MESSAGE)),
      p384Jwk: await subtle.exportKey("jwk", p384.publicKey),
      p384Sig: b64(await subtle.sign({ name: "ECDSA", hash: "SHA-384" }, p384.privateKey, MESSAGE)),
      importedSig: b64(await subtle.sign({ name: "ECDSA", hash: "SHA-256" }, imported, MESSAGE)),
      verifiesPython: await subtle.verify({ name: "ECDSA", hash: "SHA-256" }, jwkPublic, pythonSig, MESSAGE),
      verifiesPythonRaw: await subtle.verify({ name: "ECDSA", hash: "SHA-256" }, fromRaw, pythonSig, MESSAGE),
      rejectsTampered: await subtle.verify({ name: "ECDSA", hash: "SHA-256" }, jwkPublic, other, MESSAGE),
      rejectsShort: await subtle.verify({ name: "ECDSA", hash: "SHA-256" }, jwkPublic, pythonSig.subarray(1), MESSAGE),
      privateJwk: await subtle.exportKey("jwk", imported),
      rawLength: rawPublic.byteLength,
      algorithm: p384.privateKey.algorithm,
      wrongCurve: await failure(() => subtle.importKey("pkcs8", bytes(V.p256Pkcs8), { name: "ECDSA", namedCurve: "P-384" }, false, ["sign"])),
      unknownCurve: await failure(() => subtle.generateKey({ name: "ECDSA", namedCurve: "P-192" }, false, ["sign"])),
      signUsageOnPublic: await failure(() => subtle.importKey("raw", rawPublic, { name: "ECDSA", namedCurve: "P-256" }, true, ["sign"])),
      badPoint: await failure(() => subtle.importKey("raw", new Uint8Array(65).fill(4), { name: "ECDSA", namedCurve: "P-256" }, true, ["verify"])),
      rawOfPrivate: await failure(() => subtle.exportKey("raw", imported)),
      noUsages: await failure(() => subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["verify"])),
    };
  },
  async ecdh() {
    const mine = await subtle.generateKey({ name: "ECDH", namedCurve: "P-384" }, true, ["deriveBits", "deriveKey"]);
    const theirs = await subtle.importKey("spki", bytes(V.p384Spki), { name: "ECDH", namedCurve: "P-384" }, false, []);
    const x = await subtle.generateKey("X25519", true, ["deriveBits"]);
    const xTheirs = await subtle.importKey("raw", bytes(V.xRaw), { name: "X25519" }, false, []);
    const other = await subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
    const aes = await subtle.deriveKey({ name: "ECDH", public: theirs }, mine.privateKey, { name: "AES-GCM", length: 256 }, true, ["encrypt"]);
    return {
      mine: b64(await subtle.exportKey("raw", mine.publicKey)),
      secret: b64(await subtle.deriveBits({ name: "ECDH", public: theirs }, mine.privateKey, 384)),
      secretDefault: b64(await subtle.deriveBits({ name: "ECDH", public: theirs }, mine.privateKey)),
      secret100: b64(await subtle.deriveBits({ name: "ECDH", public: theirs }, mine.privateKey, 100)),
      aes: b64(await subtle.exportKey("raw", aes)),
      publicUsages: mine.publicKey.usages,
      xMine: b64(await subtle.exportKey("raw", x.publicKey)),
      xSecret: b64(await subtle.deriveBits({ name: "X25519", public: xTheirs }, x.privateKey, 256)),
      xJwk: await subtle.exportKey("jwk", x.privateKey),
      tooLong: await failure(() => subtle.deriveBits({ name: "ECDH", public: theirs }, mine.privateKey, 392)),
      otherCurve: await failure(() => subtle.deriveBits({ name: "ECDH", public: other.publicKey }, mine.privateKey, 256)),
      privateAsPublic: await failure(() => subtle.deriveBits({ name: "ECDH", public: mine.privateKey }, mine.privateKey, 256)),
      publicNotAKey: await failure(() => subtle.deriveBits({ name: "ECDH", public: {} }, mine.privateKey, 256)),
      smallOrder: await failure(async () => subtle.deriveBits({ name: "X25519", public: await subtle.importKey("raw", new Uint8Array(32), "X25519", false, []) }, x.privateKey, 256)),
      publicWithUsages: await failure(() => subtle.importKey("spki", bytes(V.p384Spki), { name: "ECDH", namedCurve: "P-384" }, false, ["deriveBits"])),
    };
  },
  // --- Ed25519 ---
  async ed25519() {
    const pair = await subtle.generateKey("Ed25519", true, ["sign", "verify"]);
    const imported = await subtle.importKey("pkcs8", bytes(V.edPkcs8), "Ed25519", true, ["sign"]);
    const publicKey = await subtle.importKey("raw", bytes(V.edRaw), { name: "ed25519" }, true, ["verify"]);
    const jwk = await subtle.exportKey("jwk", imported);
    const fromJwk = await subtle.importKey("jwk", jwk, "Ed25519", false, ["sign"]);
    const node = await subtle.importKey("raw", bytes(V.edRaw), { name: "NODE-ED25519", namedCurve: "NODE-ED25519" }, false, ["verify"]);
    return {
      spki: b64(await subtle.exportKey("spki", pair.publicKey)),
      sig: b64(await subtle.sign("Ed25519", pair.privateKey, MESSAGE)),
      importedSig: b64(await subtle.sign({ name: "Ed25519" }, imported, MESSAGE)),
      jwkSig: b64(await subtle.sign("Ed25519", fromJwk, MESSAGE)),
      verifiesPython: await subtle.verify("Ed25519", publicKey, bytes(V.edSig), MESSAGE),
      rejectsOther: await subtle.verify("Ed25519", publicKey, bytes(V.edSig), enc.encode("other")),
      nodeVerifies: await subtle.verify("NODE-ED25519", node, bytes(V.edSig), MESSAGE),
      nodeAlgorithm: node.algorithm,
      jwk,
      algorithm: pair.privateKey.algorithm,
      badRaw: await failure(() => subtle.importKey("raw", new Uint8Array(31), "Ed25519", true, ["verify"])),
    };
  },
  // --- CryptoKey and the spec's errors ---
  async keys() {
    const key = await subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    key.usages.push("verify");  // the cached list is the script's; the key's usages are not
    let constructed = "no error";
    try { new CryptoKey(); } catch (e) { constructed = e.name; }
    let forgedGetter = "no error";
    try { Object.getOwnPropertyDescriptor(CryptoKey.prototype, "type").get.call({}); } catch (e) { forgedGetter = e.name; }
    const forged = Object.create(CryptoKey.prototype);
    return {
      tag: Object.prototype.toString.call(key),
      isCryptoKey: key instanceof CryptoKey,
      sameAlgorithmObject: key.algorithm === key.algorithm,
      sameUsagesObject: key.usages === key.usages,
      constructed,
      forgedGetter,
      forgedKey: await failure(() => subtle.sign("HMAC", forged, MESSAGE)),
      proxyKey: await failure(() => subtle.sign("HMAC", new Proxy(key, {}), MESSAGE)),
      widenedUsage: await failure(() => subtle.verify("HMAC", key, new Uint8Array(32), MESSAGE)),
      wrongAlgorithm: await failure(() => subtle.encrypt({ name: "AES-GCM", iv: new Uint8Array(12) }, key, MESSAGE)),
      notExtractable: await failure(() => subtle.exportKey("raw", key)),
      badUsage: await failure(() => subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, false, ["encrypt"])),
      unknownUsage: await failure(() => subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, false, ["frobnicate"])),
      emptyUsages: await failure(() => subtle.generateKey({ name: "AES-GCM", length: 128 }, false, [])),
      unknownAlgorithm: await failure(() => subtle.generateKey({ name: "AES-XTS", length: 128 }, false, ["encrypt"])),
      missingParameter: await failure(() => subtle.generateKey({ name: "AES-GCM" }, false, ["encrypt"])),
      badFormat: await failure(() => subtle.importKey("pem", new Uint8Array(16), "AES-GCM", false, ["encrypt"])),
      jwkAsBuffer: await failure(() => subtle.importKey("jwk", new Uint8Array(16), "AES-GCM", false, ["encrypt"])),
      jwkNotExtractable: await failure(() => subtle.importKey("jwk", { kty: "oct", k: "AAAAAAAAAAAAAAAAAAAAAA", ext: false }, "AES-GCM", true, ["encrypt"])),
      jwkKeyOps: await failure(() => subtle.importKey("jwk", { kty: "oct", k: "AAAAAAAAAAAAAAAAAAAAAA", key_ops: ["decrypt"] }, "AES-GCM", false, ["encrypt"])),
      jwkWrongKty: await failure(() => subtle.importKey("jwk", { kty: "RSA", k: "AAAAAAAAAAAAAAAAAAAAAA" }, "AES-GCM", false, ["encrypt"])),
      jwkAlgMismatch: await failure(() => subtle.importKey("jwk", { kty: "oct", k: "AAAAAAAAAAAAAAAAAAAAAA", alg: "A256GCM" }, "AES-GCM", false, ["encrypt"])),
      emptyHmac: await failure(() => subtle.importKey("raw", new Uint8Array(0), { name: "HMAC", hash: "SHA-256" }, false, ["sign"])),
      md5Hmac: await failure(() => subtle.generateKey({ name: "HMAC", hash: "MD5" }, false, ["sign"])),
      globals: [typeof Crypto, typeof SubtleCrypto, typeof CryptoKey, crypto instanceof Crypto, crypto.subtle instanceof SubtleCrypto],
    };
  },
  async timingSafeEqual() {
    let lengths = "no error";
    try { subtle.timingSafeEqual(new Uint8Array(2), new Uint8Array(3)); } catch (e) { lengths = e.name; }
    let notBuffers = "no error";
    try { subtle.timingSafeEqual("ab", "ab"); } catch (e) { notBuffers = e.name; }
    return {
      equal: subtle.timingSafeEqual(enc.encode("secret"), enc.encode("secret").buffer),
      different: subtle.timingSafeEqual(enc.encode("secret"), enc.encode("secreT")),
      empty: subtle.timingSafeEqual(new ArrayBuffer(0), new Uint8Array(0)),
      lengths,
      notBuffers,
    };
  },
  async random() {
    const name = (fn) => { try { fn(); return "no error"; } catch (e) { return e.name; } };
    return {
      max: name(() => crypto.getRandomValues(new Uint8Array(65536))),
      overMax: name(() => crypto.getRandomValues(new Uint8Array(65537))),
      overMaxWide: name(() => crypto.getRandomValues(new Uint32Array(16385))),
      float: name(() => crypto.getRandomValues(new Float64Array(4))),
      dataView: name(() => crypto.getRandomValues(new DataView(new ArrayBuffer(4)))),
      bigint: name(() => crypto.getRandomValues(new BigUint64Array(4))),
      sameArray: (() => { const a = new Int16Array(8); return crypto.getRandomValues(a) === a; })(),
      uuid: crypto.randomUUID(),
    };
  },
};

export default {
  async fetch(request) {
    const report = {};
    for (const [name, check] of Object.entries(checks)) {
      try {
        report[name] = { ok: await check() };
      } catch (e) {
        report[name] = { error: `${e.name}: ${e.message}\n${e.stack}` };
      }
    }
    return Response.json(report);
  },
};
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Keys, dict[str, Any]]]:
    keys = Keys()
    directory = tmp_path_factory.mktemp("crypto")
    (directory / "vectors.json").write_text(json.dumps(keys.vectors()))
    (directory / "worker.js").write_text(textwrap.dedent(WORKER))
    (directory / "wrangler.toml").write_text('name = "crypto"\nmain = "worker.js"\n[limits]\ncpu_ms = 30000\n')
    server = ServiceProcess(["dev", "worker.js"], directory)
    try:
        response = server.get("/")
        assert response.status_code == 200, (response.text, server.output)
        yield keys, response.json()
    finally:
        server.stop()


def result(run: tuple[Keys, dict[str, Any]], name: str) -> Any:
    entry = run[1][name]
    assert "ok" in entry, entry.get("error")
    return entry["ok"]


def test_digests_match_hashlib(run: tuple[Keys, dict[str, Any]]) -> None:
    digests = result(run, "digests")
    for name, library in [("SHA-1", "sha1"), ("SHA-256", "sha256"), ("SHA-384", "sha384"), ("SHA-512", "sha512"), ("MD5", "md5")]:
        assert digests[name] == hashlib.new(library, b"abc").hexdigest()
    assert digests["SHA-256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    assert digests["large"] == hashlib.sha256(LARGE).hexdigest()
    assert digests["dataView"] == hashlib.sha256(b"abc").hexdigest()
    assert result(run, "digestErrors") == {
        "unknown": "DOMException:NotSupportedError",
        "notBuffer": "TypeError",
        "noName": "TypeError",
        "missing": "TypeError",
        "returnsPromise": True,
        "resultIsArrayBuffer": True,
        "unbound": "TypeError",
    }


def test_digest_stream(run: tuple[Keys, dict[str, Any]]) -> None:
    stream = result(run, "digestStream")
    assert stream["large"] == hashlib.sha256(LARGE).hexdigest()
    assert stream["small"] == hashlib.md5(b"abc").hexdigest()
    assert stream["empty"] == hashlib.sha1(b"").hexdigest()
    assert stream["lockedTwice"] == "TypeError"
    assert stream["writeAfterClose"] == "TypeError"
    assert stream["unknown"] == "DOMException:NotSupportedError"


def test_hmac_rfc4231(run: tuple[Keys, dict[str, Any]]) -> None:
    out = result(run, "hmac")
    assert out["tc1-SHA-256"] == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    assert out["tc1-SHA-384"] == (
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6"
    )
    assert out["tc1-SHA-512"] == (
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"
    )
    assert out["tc2"] == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert out["tc6"] == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    assert out["verify"] is True and out["verifyWrong"] is False
    assert out["jwk"] == {"kty": "oct", "k": b64url(b"Jefe"), "alg": "HS256", "key_ops": ["sign", "verify"], "ext": True}
    assert out["algorithm"] == {"name": "HMAC", "hash": {"name": "SHA-256"}, "length": 32}
    assert out["generatedLength"] == 1024 and out["generatedBytes"] == 128  # SHA-512's block size
    assert out["fromJwkVerifies"] is True


def test_pbkdf2_rfc6070_and_hkdf_rfc5869(run: tuple[Keys, dict[str, Any]]) -> None:
    out = result(run, "kdf")
    assert out["c1"] == "0c60c80f961f0e71f3a9b524af6012062fe037a6"
    assert out["c2"] == "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"
    assert out["c4096"] == "4b007901b765489abead49d926f721d065a429c1"
    assert out["c4096long"] == "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038"
    assert out["hkdf1"] == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    assert out["hkdf3"] == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )
    assert out["tooManyIterations"] == "DOMException:NotSupportedError"  # Workers' cap: 100,000
    assert out["tooMuchWork"] == "DOMException:NotSupportedError"  # a host call cannot be interrupted
    assert out["zeroIterations"] == "DOMException:OperationError"
    assert out["nullLength"] == "DOMException:OperationError"
    assert out["oddLength"] == "DOMException:OperationError"
    assert out["extractable"] == "DOMException:SyntaxError"
    assert out["jwkFormat"] == "DOMException:NotSupportedError"
    assert out["exportKdfKey"] == "DOMException:NotSupportedError"
    assert out["deriveKeyNotAllowed"] == "DOMException:InvalidAccessError"


def test_derive_key(run: tuple[Keys, dict[str, Any]]) -> None:
    out = result(run, "deriveKey")
    assert out["aesAlgorithm"] == {"name": "AES-GCM", "length": 256}
    assert out["aesUsages"] == ["encrypt", "decrypt"]
    assert out["sameAsBits"] is True
    assert out["hmacAlgorithm"] == {"name": "HMAC", "hash": {"name": "SHA-256"}, "length": 256}
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    expected = HKDF(hashes.SHA256(), 32, bytes(16), b"mac").derive(b"input keying material")
    assert out["hmacRaw"] == expected.hex()
    assert out["emptyUsages"] == "DOMException:SyntaxError"
    assert out["badLength"] == "DOMException:OperationError"
    assert out["notDerivable"] == "DOMException:NotSupportedError"


def test_aes_against_nist_and_cryptography(run: tuple[Keys, dict[str, Any]]) -> None:
    keys, _ = run
    out = result(run, "aes")
    assert out["gcmDecrypt"] == MESSAGE.decode()
    assert AESGCM(keys.aes).decrypt(keys.gcm_iv, unb64(out["gcmEncrypt"]), b"aad") == MESSAGE
    assert out["gcmNist2"] == "0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf"
    assert out["gcmNist3"] == (
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa05"
        "1ba30b396a0aac973d58e091473f5985" + "4d5c2af327cd64a62cf35abd2ba6fab4"
    )
    short = unb64(out["gcmTag96"])
    assert len(short) == len(MESSAGE) + 12
    assert short == AESGCM(keys.aes).encrypt(keys.gcm_iv, MESSAGE, b"aad")[:-4]  # a truncated tag
    assert out["gcmTag96RoundTrip"] == MESSAGE.decode()
    assert out["gcmTampered"] == "DOMException:OperationError"
    assert out["gcmBadTag"] == "DOMException:OperationError"
    assert out["gcmNoIv"] == "TypeError"
    assert out["cbcDecrypt"] == MESSAGE.decode()
    decryptor = Cipher(algorithms.AES(keys.aes), modes.CBC(keys.cbc_iv)).decryptor()
    padded = decryptor.update(unb64(out["cbcEncrypt"])) + decryptor.finalize()
    assert padded[: -padded[-1]] == MESSAGE
    assert out["cbcBadIv"] == "DOMException:OperationError"
    assert out["cbcBadPadding"] == "DOMException:OperationError"
    assert out["badKeyLength"] == "DOMException:DataError"
    assert out["badGenerateLength"] == "DOMException:OperationError"
    assert out["generated"] == {"name": "AES-CTR", "length": 192}
    assert out["jwk"] == {"kty": "oct", "k": b64url(keys.aes), "alg": "A256GCM", "key_ops": ["encrypt", "decrypt"], "ext": True}


def test_aes_ctr_counter_wraps_in_its_low_bits(run: tuple[Keys, dict[str, Any]]) -> None:
    keys, _ = run
    out = result(run, "aesCtr")
    data = bytes(range(70))
    ecb = Cipher(algorithms.AES(keys.aes), modes.ECB()).encryptor()
    stream = b"".join(ecb.update(bytes([0xAB] * 15 + [low])) for low in (0xFE, 0xFF, 0x00, 0x01, 0x02))
    assert unb64(out["ciphertext"]) == bytes(a ^ b for a, b in zip(data, stream, strict=False))
    assert out["roundTrip"] is True
    assert out["zeroLength"] == "DOMException:OperationError"
    assert out["tooLong"] == "DOMException:OperationError"  # 5 blocks, a 2-bit counter


def test_wrap_and_unwrap(run: tuple[Keys, dict[str, Any]]) -> None:
    out = result(run, "wrap")
    assert out["rfc3394"] == "1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5"
    assert out["unwrapped"] == "00112233445566778899aabbccddeeff"
    assert out["unwrappedUsages"] == ["decrypt"]
    assert out["jwkRoundTrip"] is True
    assert out["restoredExtractable"] is False
    assert out["viaRsa"] == "00112233445566778899aabbccddeeff"
    assert out["notExtractable"] == "DOMException:InvalidAccessError"
    assert out["wrongUsage"] == "DOMException:InvalidAccessError"
    assert out["badWrapped"] == "DOMException:OperationError"


def test_rsa_interoperates_with_cryptography(run: tuple[Keys, dict[str, Any]]) -> None:
    keys, _ = run
    out = result(run, "rsa")
    public: Any = serialization.load_der_public_key(unb64(out["pkcs1Spki"]))
    public.verify(unb64(out["pkcs1Sig"]), MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    pss_public: Any = serialization.load_der_public_key(unb64(out["pssSpki"]))
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    pss_public.verify(unb64(out["pssSig"]), MESSAGE, pss, hashes.SHA384())
    pss_private: Any = serialization.load_der_private_key(unb64(out["pssPkcs8"]), None)
    assert pss_private.public_key().public_numbers() == pss_public.public_numbers()
    keys.rsa.public_key().verify(unb64(out["importedSig"]), MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    assert out["verifiesPython"] is True and out["verifiesPythonViaJwk"] is True
    assert out["rejectsOtherMessage"] is False
    assert out["verifiesPythonPss"] is True
    assert out["oaepDecrypt"] == MESSAGE.decode()
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"label")
    assert keys.rsa.decrypt(unb64(out["oaepEncrypt"]), oaep) == MESSAGE
    assert out["oaepWrongLabel"] == "DOMException:OperationError"
    assert out["algorithm"] == {
        "name": "RSA-PSS",
        "modulusLength": 2048,
        "publicExponent": {"0": 1, "1": 0, "2": 1},
        "hash": {"name": "SHA-384"},
    }
    assert out["exponentIsUint8Array"] is True
    assert out["publicExtractable"] is True
    assert out["privateUsages"] == ["sign"] and out["publicUsages"] == ["verify"]
    numbers = keys.rsa.public_key().public_numbers()
    jwk = out["publicJwk"]
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS256" and jwk["key_ops"] == ["verify"] and jwk["ext"] is True
    assert jwk["n"] == b64url(numbers.n.to_bytes(256, "big")) and jwk["e"] == "AQAB"
    assert out["privateJwkRoundTrip"] is True
    assert out["spkiOfPrivate"] == "DOMException:InvalidAccessError"
    assert out["rawFormat"] == "DOMException:NotSupportedError"
    assert out["jwkWrongAlg"] == "DOMException:DataError"
    assert out["badExponent"] == "DOMException:OperationError"
    assert out["exponentNotUint8"] == "TypeError"
    assert out["verifyWithPrivate"] == "DOMException:InvalidAccessError"
    assert out["garbageSpki"] == "DOMException:DataError"


def test_ecdsa_interoperates_with_cryptography(run: tuple[Keys, dict[str, Any]]) -> None:
    keys, _ = run
    out = result(run, "ec")
    p256: Any = serialization.load_der_public_key(unb64(out["p256Spki"]))
    p256.verify(der_ecdsa(unb64(out["p256Sig"])), MESSAGE, ec.ECDSA(hashes.SHA256()))
    assert len(unb64(out["p256Sig"])) == 64
    jwk = out["p384Jwk"]
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-384" and "d" not in jwk
    p384 = ec.EllipticCurvePublicNumbers(
        int.from_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="), "big"),
        int.from_bytes(base64.urlsafe_b64decode(jwk["y"] + "=="), "big"),
        ec.SECP384R1(),
    ).public_key()
    sig384 = unb64(out["p384Sig"])
    assert len(sig384) == 96
    p384.verify(der_ecdsa(sig384), MESSAGE, ec.ECDSA(hashes.SHA384()))
    keys.p256.public_key().verify(der_ecdsa(unb64(out["importedSig"])), MESSAGE, ec.ECDSA(hashes.SHA256()))
    assert out["verifiesPython"] is True and out["verifiesPythonRaw"] is True
    assert out["rejectsTampered"] is False and out["rejectsShort"] is False
    private_value = keys.p256.private_numbers().private_value
    assert out["privateJwk"]["d"] == b64url(private_value.to_bytes(32, "big"))
    assert out["privateJwk"]["key_ops"] == ["sign"]
    assert out["rawLength"] == 65
    assert out["algorithm"] == {"name": "ECDSA", "namedCurve": "P-384"}
    assert out["wrongCurve"] == "DOMException:DataError"
    assert out["unknownCurve"] == "DOMException:NotSupportedError"
    assert out["signUsageOnPublic"] == "DOMException:SyntaxError"
    assert out["badPoint"] == "DOMException:DataError"
    assert out["rawOfPrivate"] == "DOMException:InvalidAccessError"
    assert out["noUsages"] == "DOMException:SyntaxError"  # the private key would have no usage


def test_ecdh_and_x25519_agree_with_cryptography(run: tuple[Keys, dict[str, Any]]) -> None:
    keys, _ = run
    out = result(run, "ecdh")
    worker_public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), unb64(out["mine"]))
    shared = keys.p384.exchange(ec.ECDH(), worker_public)
    assert unb64(out["secret"]) == shared
    assert unb64(out["secretDefault"]) == shared
    hundred = bytearray(shared[:13])
    hundred[-1] &= 0xF0
    assert unb64(out["secret100"]) == bytes(hundred)
    assert unb64(out["aes"]) == shared[:32]
    assert out["publicUsages"] == []
    x_public = x25519.X25519PublicKey.from_public_bytes(unb64(out["xMine"]))
    assert unb64(out["xSecret"]) == keys.x.exchange(x_public)
    assert out["xJwk"]["kty"] == "OKP" and out["xJwk"]["crv"] == "X25519" and out["xJwk"]["x"] == b64url(unb64(out["xMine"]))
    assert out["tooLong"] == "DOMException:OperationError"
    assert out["otherCurve"] == "DOMException:InvalidAccessError"
    assert out["privateAsPublic"] == "DOMException:InvalidAccessError"
    assert out["publicNotAKey"] == "TypeError"
    assert out["smallOrder"] == "DOMException:OperationError"
    assert out["publicWithUsages"] == "DOMException:SyntaxError"


def test_ed25519_interoperates_with_cryptography(run: tuple[Keys, dict[str, Any]]) -> None:
    keys, _ = run
    out = result(run, "ed25519")
    public: Any = serialization.load_der_public_key(unb64(out["spki"]))
    public.verify(unb64(out["sig"]), MESSAGE)
    keys.ed.public_key().verify(unb64(out["importedSig"]), MESSAGE)
    keys.ed.public_key().verify(unb64(out["jwkSig"]), MESSAGE)
    assert unb64(out["importedSig"]) == keys.ed.sign(MESSAGE)  # deterministic
    assert out["verifiesPython"] is True and out["rejectsOther"] is False
    assert out["nodeVerifies"] is True
    assert out["nodeAlgorithm"] == {"name": "NODE-ED25519", "namedCurve": "NODE-ED25519"}
    raw = keys.ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    assert out["jwk"]["d"] == b64url(raw) and out["jwk"]["crv"] == "Ed25519" and out["jwk"]["kty"] == "OKP"
    assert out["algorithm"] == {"name": "Ed25519"}
    assert out["badRaw"] == "DOMException:DataError"


def test_crypto_keys_enforce_usages_and_extractability(run: tuple[Keys, dict[str, Any]]) -> None:
    out = result(run, "keys")
    assert out == {
        "tag": "[object CryptoKey]",
        "isCryptoKey": True,
        "sameAlgorithmObject": True,
        "sameUsagesObject": True,
        "constructed": "TypeError",
        "forgedGetter": "TypeError",
        "forgedKey": "TypeError",
        "proxyKey": "TypeError",
        "widenedUsage": "DOMException:InvalidAccessError",
        "wrongAlgorithm": "DOMException:InvalidAccessError",
        "notExtractable": "DOMException:InvalidAccessError",
        "badUsage": "DOMException:SyntaxError",
        "unknownUsage": "TypeError",
        "emptyUsages": "DOMException:SyntaxError",
        "unknownAlgorithm": "DOMException:NotSupportedError",
        "missingParameter": "TypeError",
        "badFormat": "TypeError",
        "jwkAsBuffer": "TypeError",
        "jwkNotExtractable": "DOMException:DataError",
        "jwkKeyOps": "DOMException:DataError",
        "jwkWrongKty": "DOMException:DataError",
        "jwkAlgMismatch": "DOMException:DataError",
        "emptyHmac": "DOMException:DataError",
        "md5Hmac": "DOMException:NotSupportedError",
        "globals": ["function", "function", "function", True, True],
    }


def test_timing_safe_equal(run: tuple[Keys, dict[str, Any]]) -> None:
    assert result(run, "timingSafeEqual") == {
        "equal": True,
        "different": False,
        "empty": True,
        "lengths": "TypeError",
        "notBuffers": "TypeError",
    }


def test_get_random_values_quota(run: tuple[Keys, dict[str, Any]]) -> None:
    out = result(run, "random")
    assert out["max"] == "no error"
    assert out["overMax"] == "QuotaExceededError"
    assert out["overMaxWide"] == "QuotaExceededError"  # 65,540 bytes
    assert out["float"] == "TypeMismatchError" and out["dataView"] == "TypeMismatchError"
    assert out["bigint"] == "no error" and out["sameArray"] is True
    assert len(out["uuid"]) == 36 and out["uuid"][14] == "4"


# --- keys belong to one worker -------------------------------------------------------------

KEEPER = """
let key;
export default {
  async fetch(request) {
    key ??= await crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    const mac = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode("same message"));
    return new Response(btoa(String.fromCharCode(...new Uint8Array(mac))));
  },
};
"""


def test_a_key_handle_from_one_worker_is_useless_to_another() -> None:
    async def scenario() -> None:
        runtime = WorkerHost(threads=2)
        workers = [await runtime.start(WorkerScript(name=name, source=KEEPER)) for name in ("alice", "mallory")]

        async def mac(worker: Worker, request_id: int) -> bytes:
            reply = Collect()
            worker.fetch(IncomingRequest(request_id, "GET", "http://x/", []), reply)
            assert await asyncio.wait_for(reply.finished, 10) == "ok"
            return reply.received

        alice, mallory = workers
        # Each worker's key lives on across its requests, and is its own.
        first = await mac(alice, 1)
        assert await mac(alice, 2) == first
        assert await mac(mallory, 3) != first

        # A handle the isolate would hold, made through the host function the isolate calls.
        def host(worker: Worker, operation: str, args: dict[str, Any], data: bytes | None = None) -> dict[str, Any]:
            answer = worker._host_crypto(operation, json.dumps(args), None if data is None else data.decode("latin-1"))
            return dict(json.loads(answer.split("\0")[0]))

        secret = b"alice's secret key material"
        imported = host(
            alice,
            "importKey",
            {"format": "raw", "algorithm": {"name": "HMAC", "hash": {"name": "SHA-256"}}, "extractable": True,
             "usages": ["sign"], "jwk": None},
            secret,
        )
        handle = imported["key"]["handle"]
        assert secret not in base64.urlsafe_b64decode(handle + "==")  # sealed: no key material in the isolate
        sign = {"algorithm": {"name": "HMAC"}, "key": handle}
        assert host(alice, "sign", sign, b"m")["ok"] is True
        stolen = host(mallory, "sign", sign, b"m")
        assert stolen == {"ok": False, "name": "InvalidAccessError", "message": stolen["message"]}
        assert host(mallory, "exportKey", {"format": "raw", "key": handle})["name"] == "InvalidAccessError"
        assert host(alice, "exportKey", {"format": "raw", "key": handle})["ok"] is True
        await runtime.close()

    asyncio.run(scenario())


def test_sealed_handles_cannot_be_altered_or_widened() -> None:
    host = CryptoHost()

    def call(operation: str, args: dict[str, Any], data: bytes | None = None) -> tuple[dict[str, Any], bytes]:
        answer = host.call(operation, json.dumps(args), None if data is None else data.decode("latin-1"))
        head, _, rest = answer.partition("\0")
        return json.loads(head), rest.encode("latin-1")

    made, _ = call(
        "generateKey",
        {"algorithm": {"name": "AES-GCM", "length": 128}, "extractable": False, "usages": ["encrypt"]},
    )
    handle = made["key"]["handle"]
    raw = bytearray(base64.urlsafe_b64decode(handle + "=="))
    raw[-1] ^= 1
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert call("exportKey", {"format": "raw", "key": forged})[0]["name"] == "InvalidAccessError"
    assert call("exportKey", {"format": "raw", "key": handle})[0]["name"] == "InvalidAccessError"  # not extractable
    answer, data = call("encrypt", {"algorithm": {"name": "AES-GCM", "iv": "\0" * 12}, "key": handle}, b"x")
    assert answer["ok"] is True and len(data) == 17
    # a broken request is an error answer, never an exception into the engine
    assert json.loads(host.call("sign", "not json", None))["ok"] is False
    assert json.loads(host.call("sign", "{}", None))["name"] == "NotSupportedError"
    assert json.loads(host.call("nonsense", "{}", None))["name"] == "NotSupportedError"


def test_parsed_key_cache_is_bounded_and_keys_survive_eviction() -> None:
    from warren.runtime import crypto as module

    host = CryptoHost()
    handles = []
    for i in range(module.PARSED_KEY_CACHE + 10):
        answer = json.loads(
            host.call(
                "importKey",
                json.dumps({"format": "raw", "algorithm": {"name": "HMAC", "hash": {"name": "SHA-1"}},
                            "extractable": True, "usages": ["sign"], "jwk": None}),
                f"key {i}",
            )
        )
        handles.append(answer["key"]["handle"])
    assert len(host._keys) == module.PARSED_KEY_CACHE
    answer = host.call("exportKey", json.dumps({"format": "raw", "key": handles[0]}), None)  # evicted, reopened
    assert answer.split("\0", 1)[1] == "key 0"

    # Asymmetric keys are parsed again from their sealed DER once out of the cache.
    def pair(algorithm: dict[str, Any], usages: list[str]) -> dict[str, Any]:
        args = {"algorithm": algorithm, "extractable": False, "usages": usages}
        return dict(json.loads(host.call("generateKey", json.dumps(args), None)))

    signers = [
        (pair({"name": "ECDSA", "namedCurve": "P-256"}, ["sign", "verify"]), {"name": "ECDSA", "hash": {"name": "SHA-256"}}),
        (pair({"name": "Ed25519"}, ["sign", "verify"]), {"name": "Ed25519"}),
        (
            pair({"name": "RSASSA-PKCS1-v1_5", "modulusLength": 1024, "publicExponent": "\x01\x00\x01", "hash": {"name": "SHA-256"}}, ["sign", "verify"]),
            {"name": "RSASSA-PKCS1-v1_5"},
        ),
    ]
    x1, x2 = pair({"name": "X25519"}, ["deriveBits"]), pair({"name": "X25519"}, ["deriveBits"])
    host._keys.clear()
    for made, algorithm in signers:
        signed = host.call("sign", json.dumps({"algorithm": algorithm, "key": made["privateKey"]["handle"]}), "m")
        signature = signed.split("\0", 1)[1]
        verify = {"algorithm": algorithm, "key": made["publicKey"]["handle"], "signature": signature}
        assert json.loads(host.call("verify", json.dumps(verify), "m"))["result"] is True, algorithm
    secrets = [
        host.call("deriveBits", json.dumps({"algorithm": {"name": "X25519", "public": b["publicKey"]["handle"]},
                                            "key": a["privateKey"]["handle"], "length": 256}), None).split("\0", 1)[1]
        for a, b in ((x1, x2), (x2, x1))
    ]
    assert secrets[0] == secrets[1] and len(secrets[0]) == 32


# --- RSA key sizes and exponents, as workerd (strict_crypto_checks) allows them ----------------------

RSA_LIMITS_WORKER = r"""
import V from "./vectors.json";

const bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const F4 = new Uint8Array([1, 0, 1]);
const PKCS1 = (hash) => ({ name: "RSASSA-PKCS1-v1_5", hash });

async function outcome(fn) {
  const started = Date.now();
  try {
    await fn();
    return { name: "no error", ms: Date.now() - started };
  } catch (e) {
    return { name: (e instanceof DOMException ? "DOMException:" : "") + e.name, message: e.message, ms: Date.now() - started };
  }
}

const generate = (modulusLength, publicExponent = F4) =>
  crypto.subtle.generateKey({ ...PKCS1("SHA-256"), modulusLength, publicExponent }, false, ["sign"]);
const spki = (name) => crypto.subtle.importKey("spki", bytes(V[name]), PKCS1("SHA-256"), false, ["verify"]);
const pkcs8 = (name) => crypto.subtle.importKey("pkcs8", bytes(V[name]), PKCS1("SHA-256"), false, ["sign"]);
const jwk = (name) => crypto.subtle.importKey("jwk", V[name], PKCS1("SHA-256"), false, [V[name].d ? "sign" : "verify"]);

export default {
  async fetch() {
    const report = {
      tinySpki: await outcome(() => spki("tinySpki")),
      tinyJwk: await outcome(() => jwk("tinyJwk")),
      oversizedSpki: await outcome(() => spki("oversizedSpki")),
      exponent5Spki: await outcome(() => spki("exponent5Spki")),
      hugeExponentSpki: await outcome(() => spki("hugeExponentSpki")),
      exponent17Spki: await outcome(() => spki("exponent17Spki")),
      bigPrivatePkcs8: await outcome(() => pkcs8("bigPrivatePkcs8")),
      bigPrivateJwk: await outcome(() => jwk("bigPrivateJwk")),
      generate16384: await outcome(() => generate(16384)),
      generate20000: await outcome(() => generate(20000)),
      generate1000: await outcome(() => generate(1000)),
      generate512: await outcome(() => generate(512)),
      generateZero: await outcome(() => generate(0)),
      generateExponent5: await outcome(() => generate(2048, new Uint8Array([5]))),
      generate3072: await outcome(() => generate(3072, new Uint8Array([3]))),
    };
    // The smallest key workerd takes is imported; one of 512 bits (room for a SHA-256 DigestInfo) signs.
    report.smallPkcs8 = await outcome(() => pkcs8("smallPkcs8"));
    report.smallJwk = await outcome(() => jwk("smallJwk"));
    const signer = await pkcs8("signerPkcs8");
    report.signerSigns = (await crypto.subtle.sign("RSASSA-PKCS1-v1_5", signer, new TextEncoder().encode("m"))).byteLength;
    return Response.json(report);
  },
};
"""


def _probable_prime(bits: int, seed: int) -> int:
    rng = random.Random(seed)
    while True:
        candidate = rng.getrandbits(bits) | 1 | (3 << (bits - 2))
        if all(pow(base, candidate - 1, candidate) == 1 for base in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
            return candidate


def _rsa_private(p: int, q: int, e: int = 65537) -> rsa.RSAPrivateKey:
    n = p * q
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, n))
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def _jwk(key: Any) -> dict[str, str]:
    numbers = key.private_numbers() if hasattr(key, "private_numbers") else None
    public = numbers.public_numbers if numbers else key.public_numbers()
    out = {"kty": "RSA", "n": b64url(public.n.to_bytes((public.n.bit_length() + 7) // 8, "big")), "e": "AQAB"}
    if numbers:
        for name, value in (("d", numbers.d), ("p", numbers.p), ("q", numbers.q), ("dp", numbers.dmp1),
                            ("dq", numbers.dmq1), ("qi", numbers.iqmp)):  # fmt: skip
            out[name] = b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))
    return out


def test_rsa_key_sizes_and_exponents_are_workerds(dev: Any) -> None:
    tiny = _rsa_private(_probable_prime(64, 1), _probable_prime(64, 2))  # a 128-bit modulus: factored in no time
    small = _rsa_private(_probable_prime(128, 3), _probable_prime(128, 4))  # 256 bits, workerd's least
    # Composite "primes": the size check must come before OpenSSL would test them (seconds at 8192 bits).
    rng = random.Random(8192)
    big = _rsa_private(rng.getrandbits(4096) | 1 | (1 << 4095), rng.getrandbits(4096) | 1 | (1 << 4095))
    normal = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers().n
    oversized = rng.getrandbits(16392) | 1 | (1 << 16391)
    vectors = {
        "tinySpki": b64(spki(tiny.public_key())),
        "tinyJwk": _jwk(tiny.public_key()),
        "oversizedSpki": b64(spki(rsa.RSAPublicNumbers(65537, oversized).public_key())),
        "exponent5Spki": b64(spki(rsa.RSAPublicNumbers(5, normal).public_key())),
        "hugeExponentSpki": b64(spki(rsa.RSAPublicNumbers(2**32 + 1, normal).public_key())),
        "exponent17Spki": b64(spki(rsa.RSAPublicNumbers(17, normal).public_key())),
        "bigPrivatePkcs8": b64(der(big)),
        "bigPrivateJwk": _jwk(big),
        "smallPkcs8": b64(der(small)),
        "smallJwk": _jwk(small),
        "signerPkcs8": b64(der(_rsa_private(_probable_prime(256, 5), _probable_prime(256, 6)))),
    }
    server = dev(
        {
            "worker.js": RSA_LIMITS_WORKER,
            "vectors.json": json.dumps(vectors),
            "wrangler.toml": 'name = "rsa-limits"\nmain = "worker.js"\n[limits]\ncpu_ms = 30000\n',
        },
        ".",
    )
    response = server.get("/")
    assert response.status_code == 200, (response.text, server.output)
    out = response.json()

    def fails(name: str, error: str, message: str) -> None:
        assert (out[name]["name"], out[name].get("message")) == (error, message), (name, out[name])

    size = "The modulus length must be a multiple of 8 and between 256 and 16k, but {} was requested."
    fails("tinySpki", "DOMException:OperationError", size.format(128))
    fails("tinyJwk", "DOMException:OperationError", size.format(128))
    fails("oversizedSpki", "DOMException:OperationError", size.format(16392))
    fails("exponent5Spki", "DOMException:OperationError", "Imported RSA key has invalid publicExponent 5.")
    fails("hugeExponentSpki", "DOMException:OperationError",
          'The "publicExponent" must be either 3 or 65537, but got a number larger than 2^32.')  # fmt: skip
    assert out["exponent17Spki"]["name"] == "no error"
    for name in ("bigPrivatePkcs8", "bigPrivateJwk"):
        assert out[name]["name"] == "DOMException:NotSupportedError", (name, out[name])
        assert "more than 4096 bits" in out[name]["message"] and out[name]["ms"] < 1000, out[name]
    assert out["generate16384"]["name"] == "DOMException:NotSupportedError", out["generate16384"]
    assert out["generate16384"]["ms"] < 1000
    fails("generate20000", "DOMException:OperationError", size.format(20000))
    fails("generate1000", "DOMException:OperationError",
          "Can't generate key: RSA key size is required to be a multiple of 128")  # fmt: skip
    assert out["generate512"]["name"] == "DOMException:NotSupportedError", out["generate512"]
    fails("generateZero", "DOMException:OperationError", "modulusLength must be greater than zero (requested 0).")
    fails("generateExponent5", "DOMException:OperationError", 'The "publicExponent" must be either 3 or 65537, but got 5.')
    assert out["generate3072"]["name"] == "no error"
    assert out["smallPkcs8"]["name"] == "no error" and out["smallJwk"]["name"] == "no error"
    assert out["signerSigns"] == 64
