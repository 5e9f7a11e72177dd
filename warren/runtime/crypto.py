"""The host side of WebCrypto (``crypto`` and ``crypto.subtle`` in the isolate).

Primitives come from the ``cryptography`` package (and ``hashlib``/``hmac``).
Each Worker has its own ``CryptoHost``. The isolate never holds key material:
a ``CryptoKey`` holds an opaque handle, which is the key's record (type,
algorithm, extractable, usages, material) sealed with AES-256-GCM under a
secret only this ``CryptoHost`` knows. So another worker's host cannot open
it, a script cannot read or alter it (usages and ``extractable`` are enforced
here, from the sealed record), and the key lives exactly as long as the
script's ``CryptoKey`` object: V8 never tells the host when a ``CryptoKey``
dies (FinalizationRegistry callbacks need a task runner nobody pumps), so a
table of keys would grow without bound in a worker that imports a key per
request. Parsed keys are kept in a small per-host cache by handle.

Protocol: the isolate calls the host function ``crypto(operation, arguments,
data)``: ``arguments`` is JSON (byte strings in it are latin-1, handles
base64url), ``data`` binary as a latin-1 string (or null). The answer is a
JSON object, ``{"ok": true, ...}`` or ``{"ok": false, "name": DOMException
name, "message": ...}``, followed, when the result is binary, by a NUL and the
bytes as latin-1 (JSON text never holds a raw NUL).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives import padding as block_padding
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAX_RANDOM_BYTES = 65536
PBKDF2_MAX_ITERATIONS = 100_000  # as on Workers, so PBKDF2 cannot be used to burn a node's CPU
MAX_DIGEST_STREAMS = 1024  # open DigestStream states per worker; the least recently used go first
PARSED_KEY_CACHE = 64  # parsed keys kept per worker; any other handle is opened again when used
# A host call cannot be interrupted by the CPU watchdog (it stops the script when
# the call returns), so the slowest primitives are bounded: generating an RSA
# key of 4096 bits takes ~0.3 s here, 8192 bits ~16 s; checking an imported
# private key (OpenSSL tests its primes) ~0.2 s at 4096 bits, ~3 s at 8192.
RSA_MIN_MODULUS = 256  # workerd's (Chromium's) range for keys it generates or imports
RSA_MAX_MODULUS = 16384
RSA_MIN_GENERATED_MODULUS = 1024  # the least the cryptography package generates
RSA_MAX_GENERATED_MODULUS = 4096
RSA_MAX_IMPORTED_PRIVATE_MODULUS = 4096
RSA_GENERATED_EXPONENTS = (3, 65537)
RSA_IMPORTED_EXPONENTS = (3, 17, 37, 65537)  # workerd's list under strict_crypto_checks
PBKDF2_MAX_WORK = 1_000_000  # output blocks x iterations (~0.5 s here): ten blocks at Workers' iteration cap
HMAC_MAX_GENERATED_BITS = 65536

USAGES = ("encrypt", "decrypt", "sign", "verify", "deriveKey", "deriveBits", "wrapKey", "unwrapKey")
SIGN = frozenset({"sign"})
VERIFY = frozenset({"verify"})
DERIVE = frozenset({"deriveKey", "deriveBits"})
ENCRYPT_ALL = frozenset({"encrypt", "decrypt", "wrapKey", "unwrapKey"})
NO_USAGES: frozenset[str] = frozenset()

HASH_LIBS = {"SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512", "MD5": "md5"}
HASH_SIZES = {"SHA-1": 20, "SHA-256": 32, "SHA-384": 48, "SHA-512": 64}
HASH_BLOCK_BITS = {"SHA-1": 512, "SHA-256": 512, "SHA-384": 1024, "SHA-512": 1024}
HASH_SUFFIX = {"SHA-1": "1", "SHA-256": "256", "SHA-384": "384", "SHA-512": "512"}
CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
ECDSA_JWK_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_SEAL_CONTEXT = b"warren CryptoKey v1"


class CryptoError(Exception):
    """Becomes a DOMException (or TypeError) with this name in the isolate."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def _not_supported(message: str) -> CryptoError:
    return CryptoError("NotSupportedError", message)


def _syntax(message: str) -> CryptoError:
    return CryptoError("SyntaxError", message)


def _access(message: str) -> CryptoError:
    return CryptoError("InvalidAccessError", message)


def _operation(message: str) -> CryptoError:
    return CryptoError("OperationError", message)


def _data(message: str) -> CryptoError:
    return CryptoError("DataError", message)


# --- small helpers --------------------------------------------------------------


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise CryptoError("TypeError", f"{what} must be a BufferSource")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise CryptoError("TypeError", f"{what} must be a BufferSource") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _unb64url(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not _B64URL.fullmatch(value) or len(value) % 4 == 1:
        raise _data(f"The JWK member {what!r} is not valid base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _data(f"The JWK member {what!r} is not valid base64url") from None


def _int_bytes(value: int, length: int = 0) -> bytes:
    return value.to_bytes(max(length, (value.bit_length() + 7) // 8, 1), "big")


def _truncate_bits(secret: bytes, length: int | None) -> bytes:
    if length is None:
        return secret
    if length > len(secret) * 8:
        raise _operation(f"The requested length ({length} bits) exceeds the derived secret ({len(secret) * 8} bits)")
    out = bytearray(secret[: (length + 7) // 8])
    if length % 8:
        out[-1] &= (0xFF << (8 - length % 8)) & 0xFF
    return bytes(out)


def _hash_name(alg: dict[str, Any], what: str = "hash") -> str:
    value = alg.get(what)
    name = value.get("name") if isinstance(value, dict) else None
    if name not in HASH_SIZES:
        raise _not_supported(f"Unsupported hash algorithm: {name}")
    return str(name)


def _crypto_hash(name: str) -> hashes.HashAlgorithm:
    if name == "SHA-1":
        return hashes.SHA1()
    if name == "SHA-256":
        return hashes.SHA256()
    if name == "SHA-384":
        return hashes.SHA384()
    if name == "SHA-512":
        return hashes.SHA512()
    raise _not_supported(f"Unsupported hash algorithm: {name}")


def _new_hash(name: str) -> Any:
    if name not in HASH_LIBS:
        raise _not_supported(f"Unsupported digest algorithm: {name}")
    return hashlib.new(HASH_LIBS[name], usedforsecurity=name != "MD5")


def _normalized_usages(usages: Any) -> tuple[str, ...]:
    if not isinstance(usages, list) or not all(isinstance(u, str) and u in USAGES for u in usages):
        raise CryptoError("TypeError", "usages must be a list of KeyUsage values")
    return tuple(u for u in USAGES if u in usages)


def _check_usages(usages: tuple[str, ...], allowed: frozenset[str], algorithm: str) -> None:
    bad = [u for u in usages if u not in allowed]
    if bad:
        raise _syntax(f"Usage {bad[0]!r} is not valid for a key of this kind ({algorithm})")


# --- keys -------------------------------------------------------------------------


class Key:
    """A key's record: what the sealed handle holds."""

    __slots__ = ("_parsed", "algorithm", "extractable", "material", "type", "usages")

    def __init__(
        self, type_: str, algorithm: dict[str, Any], extractable: bool, usages: tuple[str, ...], material: bytes
    ) -> None:
        self.type = type_
        self.algorithm = algorithm
        self.extractable = extractable
        self.usages = usages
        self.material = material  # raw secret, PKCS#8 DER (private) or SPKI DER (public)
        self._parsed: Any = None

    @property
    def name(self) -> str:
        return str(self.algorithm["name"])

    def parsed(self) -> Any:
        """The ``cryptography`` object of an asymmetric key (loaded once, from our own DER)."""
        if self._parsed is None:
            if self.type == "private":
                self._parsed = serialization.load_der_private_key(
                    self.material, None, unsafe_skip_rsa_key_validation=True
                )
            elif self.type == "public":
                self._parsed = serialization.load_der_public_key(self.material)
            else:
                self._parsed = self.material
        return self._parsed

    def header(self) -> dict[str, Any]:
        return {"t": self.type, "a": self.algorithm, "x": self.extractable, "u": list(self.usages)}


def _private_key(key: Key) -> Key:
    if key.type != "private":
        raise _access("The key is not a private key")
    return key


def _public_key(key: Key) -> Key:
    if key.type != "public":
        raise _access("The key is not a public key")
    return key


def _private_der(private: Any) -> bytes:
    encoding, private_format = serialization.Encoding.DER, serialization.PrivateFormat.PKCS8
    return bytes(private.private_bytes(encoding, private_format, serialization.NoEncryption()))


def _public_der(public: Any) -> bytes:
    return bytes(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _load_spki(data: bytes) -> Any:
    try:
        return serialization.load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _data("Invalid SPKI data") from None


def _load_pkcs8(data: bytes) -> Any:
    try:
        # Unchecked first, so an RSA key's size is known before OpenSSL spends seconds testing its primes.
        obj = serialization.load_der_private_key(data, None, unsafe_skip_rsa_key_validation=True)
        if isinstance(obj, rsa.RSAPrivateKey):
            _check_rsa_import(obj.key_size, obj.private_numbers().public_numbers.e, private=True)
            obj = serialization.load_der_private_key(data, None)
        return obj
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _data("Invalid PKCS#8 data") from None


def _rsa_modulus_range(bits: int) -> None:
    if bits % 8 or not RSA_MIN_MODULUS <= bits <= RSA_MAX_MODULUS:
        raise _operation(
            f"The modulus length must be a multiple of 8 and between {RSA_MIN_MODULUS} and 16k, "
            f"but {bits} was requested."
        )


def _check_rsa_import(bits: int, exponent: int, private: bool) -> None:
    """workerd's checks of an imported RSA key (with strict_crypto_checks), and warren's CPU bound."""
    bits = (bits + 7) // 8 * 8  # workerd measures an imported modulus in whole bytes
    _rsa_modulus_range(bits)
    if exponent >= 2**32:
        raise _operation('The "publicExponent" must be either 3 or 65537, but got a number larger than 2^32.')
    if exponent not in RSA_IMPORTED_EXPONENTS:
        raise _operation(f"Imported RSA key has invalid publicExponent {exponent}.")
    if private and bits > RSA_MAX_IMPORTED_PRIVATE_MODULUS:
        raise _not_supported(
            f"RSA private keys of more than {RSA_MAX_IMPORTED_PRIVATE_MODULUS} bits cannot be imported here "
            f"(checking one takes seconds of CPU); this one has {bits}"
        )


def _load_der(fmt: str, data: bytes, public_cls: Any, private_cls: Any, what: str) -> tuple[str, Any]:
    """A DER key, spki (public) or pkcs8 (private), that must be of the algorithm's classes."""
    if fmt == "spki":
        obj = _load_spki(data)
        if not isinstance(obj, public_cls):
            raise _data(f"The SPKI data is not an {what} public key")
        return "public", obj
    obj = _load_pkcs8(data)
    if not isinstance(obj, private_cls):
        raise _data(f"The PKCS#8 data is not an {what} private key")
    return "private", obj


def _jwk_checks(jwk: dict[str, Any], kty: str, usages: tuple[str, ...], extractable: bool, use: str) -> None:
    if jwk.get("kty") != kty:
        raise _data(f"The JWK 'kty' member must be {kty!r}")
    if usages and "use" in jwk and jwk["use"] != use:
        raise _data(f"The JWK 'use' member must be {use!r}")
    key_ops = jwk.get("key_ops")
    if key_ops is not None:
        if not isinstance(key_ops, list) or not all(isinstance(op, str) for op in key_ops):
            raise _data("The JWK 'key_ops' member must be a list of strings")
        if len(set(key_ops)) != len(key_ops):
            raise _data("The JWK 'key_ops' member contains duplicates")
        if not set(usages) <= set(key_ops):
            raise _data("The JWK 'key_ops' member does not allow the requested usages")
    if jwk.get("ext") is False and extractable:
        raise _data("The JWK is not extractable ('ext' is false) but extractable was requested")


def _jwk_finish(jwk: dict[str, Any], key: Key) -> dict[str, Any]:
    jwk["key_ops"] = list(key.usages)
    jwk["ext"] = key.extractable
    return jwk


# --- algorithms -----------------------------------------------------------------------

Generated = Key | tuple[Key, Key]


class Algorithm:
    """One family of WebCrypto algorithms; every operation not overridden is unsupported."""

    exportable = True

    def generate(self, alg: dict[str, Any], extractable: bool, usages: tuple[str, ...]) -> Generated:
        raise _not_supported(f"{alg['name']} does not support generateKey")

    def import_key(
        self, fmt: str, data: bytes, jwk: dict[str, Any] | None, alg: dict[str, Any], extractable: bool,
        usages: tuple[str, ...],
    ) -> Key:
        raise _not_supported(f"{alg['name']} does not support importKey")

    def export(self, fmt: str, key: Key) -> bytes | dict[str, Any]:
        raise _not_supported(f"{key.name} keys cannot be exported")

    def sign(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        raise _not_supported(f"{alg['name']} does not support sign")

    def verify(self, alg: dict[str, Any], key: Key, signature: bytes, data: bytes) -> bool:
        raise _not_supported(f"{alg['name']} does not support verify")

    def encrypt(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        raise _not_supported(f"{alg['name']} does not support encrypt")

    def decrypt(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        raise _not_supported(f"{alg['name']} does not support decrypt")

    def derive_bits(self, host: CryptoHost, alg: dict[str, Any], key: Key, length: int | None) -> bytes:
        raise _not_supported(f"{alg['name']} does not support deriveBits")

    def key_length(self, alg: dict[str, Any]) -> int | None:
        raise _not_supported(f"{alg['name']} keys cannot be derived")

    def wrap(self, key: Key, data: bytes) -> bytes:
        raise _not_supported("wrapKey")

    def unwrap(self, key: Key, data: bytes) -> bytes:
        raise _not_supported("unwrapKey")


class Hmac(Algorithm):
    def _length(self, alg: dict[str, Any], default: int) -> int:
        length = alg.get("length")
        return default if length is None else int(length)

    def generate(self, alg: dict[str, Any], extractable: bool, usages: tuple[str, ...]) -> Generated:
        _check_usages(usages, SIGN | VERIFY, "HMAC")
        hash_name = _hash_name(alg)
        length = self._length(alg, HASH_BLOCK_BITS[hash_name])
        if length == 0 or length > HMAC_MAX_GENERATED_BITS:
            raise _operation(f"HMAC key length must be between 1 and {HMAC_MAX_GENERATED_BITS} bits")
        material = bytearray(os.urandom((length + 7) // 8))
        if length % 8:
            material[-1] &= (0xFF << (8 - length % 8)) & 0xFF
        algorithm = {"name": "HMAC", "hash": {"name": hash_name}, "length": length}
        return Key("secret", algorithm, extractable, usages, bytes(material))

    def import_key(
        self, fmt: str, data: bytes, jwk: dict[str, Any] | None, alg: dict[str, Any], extractable: bool,
        usages: tuple[str, ...],
    ) -> Key:
        _check_usages(usages, SIGN | VERIFY, "HMAC")
        hash_name = _hash_name(alg)
        if fmt == "raw":
            material = data
        elif fmt == "jwk":
            assert jwk is not None
            _jwk_checks(jwk, "oct", usages, extractable, "sig")
            if "k" not in jwk:
                raise _data("The JWK has no 'k' member")
            material = _unb64url(jwk["k"], "k")
            if "alg" in jwk and jwk["alg"] != "HS" + HASH_SUFFIX[hash_name]:
                raise _data(f"The JWK 'alg' member does not match HMAC with {hash_name}")
        else:
            raise _not_supported(f"HMAC keys cannot be imported as {fmt}")
        bits = len(material) * 8
        if bits == 0:
            raise _data("HMAC key data must not be empty")
        length = self._length(alg, bits)
        if length == 0 or length > bits or length <= bits - 8:
            raise _data(f"The HMAC length ({length}) does not match the key data ({bits} bits)")
        algorithm = {"name": "HMAC", "hash": {"name": hash_name}, "length": length}
        return Key("secret", algorithm, extractable, usages, material)

    def export(self, fmt: str, key: Key) -> bytes | dict[str, Any]:
        if fmt == "raw":
            return key.material
        if fmt == "jwk":
            alg = "HS" + HASH_SUFFIX[key.algorithm["hash"]["name"]]
            return _jwk_finish({"kty": "oct", "k": _b64url(key.material), "alg": alg}, key)
        raise _not_supported(f"HMAC keys cannot be exported as {fmt}")

    def _mac(self, key: Key, data: bytes) -> bytes:
        return hmac.new(key.material, data, HASH_LIBS[key.algorithm["hash"]["name"]]).digest()

    def sign(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        return self._mac(key, data)

    def verify(self, alg: dict[str, Any], key: Key, signature: bytes, data: bytes) -> bool:
        return hmac.compare_digest(self._mac(key, data), signature)

    def key_length(self, alg: dict[str, Any]) -> int | None:
        hash_name = _hash_name(alg)
        length = self._length(alg, HASH_BLOCK_BITS[hash_name])
        if length == 0:
            raise CryptoError("TypeError", "HMAC key length must not be zero")
        return length


class Aes(Algorithm):
    def __init__(self, mode: str) -> None:
        self.mode = mode  # GCM, CBC, CTR or KW
        self.name = "AES-" + mode
        self.allowed = frozenset({"wrapKey", "unwrapKey"}) if mode == "KW" else ENCRYPT_ALL

    def generate(self, alg: dict[str, Any], extractable: bool, usages: tuple[str, ...]) -> Generated:
        _check_usages(usages, self.allowed, self.name)
        length = int(alg.get("length", 0))
        if length not in (128, 192, 256):
            raise _operation("AES key length must be 128, 192 or 256 bits")
        return Key("secret", {"name": self.name, "length": length}, extractable, usages, os.urandom(length // 8))

    def import_key(
        self, fmt: str, data: bytes, jwk: dict[str, Any] | None, alg: dict[str, Any], extractable: bool,
        usages: tuple[str, ...],
    ) -> Key:
        _check_usages(usages, self.allowed, self.name)
        if fmt == "raw":
            material = data
            if len(material) not in (16, 24, 32):
                raise _data("AES key data must be 128, 192 or 256 bits")
        elif fmt == "jwk":
            assert jwk is not None
            _jwk_checks(jwk, "oct", usages, extractable, "enc")
            if "k" not in jwk:
                raise _data("The JWK has no 'k' member")
            material = _unb64url(jwk["k"], "k")
            if len(material) not in (16, 24, 32):
                raise _data("AES key data must be 128, 192 or 256 bits")
            if "alg" in jwk and jwk["alg"] != f"A{len(material) * 8}{self.mode}":
                raise _data(f"The JWK 'alg' member does not match {self.name} with a {len(material) * 8}-bit key")
        else:
            raise _not_supported(f"{self.name} keys cannot be imported as {fmt}")
        return Key("secret", {"name": self.name, "length": len(material) * 8}, extractable, usages, material)

    def export(self, fmt: str, key: Key) -> bytes | dict[str, Any]:
        if fmt == "raw":
            return key.material
        if fmt == "jwk":
            alg = f"A{len(key.material) * 8}{self.mode}"
            return _jwk_finish({"kty": "oct", "k": _b64url(key.material), "alg": alg}, key)
        raise _not_supported(f"{self.name} keys cannot be exported as {fmt}")

    def key_length(self, alg: dict[str, Any]) -> int | None:
        length = int(alg.get("length", 0))
        if length not in (128, 192, 256):
            raise _operation("AES key length must be 128, 192 or 256 bits")
        return length

    # -- GCM --

    def _tag_bytes(self, alg: dict[str, Any]) -> int:
        tag_length = int(alg.get("tagLength", 128))
        if tag_length not in (32, 64, 96, 104, 112, 120, 128):
            raise _operation(f"Invalid AES-GCM tag length: {tag_length}")
        return tag_length // 8

    def _gcm_iv(self, alg: dict[str, Any]) -> bytes:
        iv = _bytes(alg.get("iv"), "iv")
        if not 8 <= len(iv) <= 128:
            raise _operation("AES-GCM iv must be 8 to 128 bytes long here")
        return iv

    def _ctr(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        counter = _bytes(alg.get("counter"), "counter")
        length = int(alg.get("length", 0))
        if len(counter) != 16:
            raise _operation("AES-CTR counter must be 16 bytes")
        if not 1 <= length <= 128:
            raise _operation("AES-CTR length must be between 1 and 128")
        blocks = (len(data) + 15) // 16
        if length < 128 and blocks > 1 << length:
            raise _operation("The data is too long for the AES-CTR counter length")
        value = int.from_bytes(counter, "big")
        mask = (1 << length) - 1
        before_wrap = (1 << length) - (value & mask)

        def run(start: int, chunk: bytes) -> bytes:
            encryptor = Cipher(algorithms.AES(key.material), modes.CTR(start.to_bytes(16, "big"))).encryptor()
            return encryptor.update(chunk) + encryptor.finalize()

        if blocks <= before_wrap:
            return run(value, data)
        # The counter block's low `length` bits wrap to zero; the rest stay.
        split = before_wrap * 16
        return run(value, data[:split]) + run(value & ~mask & ((1 << 128) - 1), data[split:])

    def _cbc_iv(self, alg: dict[str, Any]) -> bytes:
        iv = _bytes(alg.get("iv"), "iv")
        if len(iv) != 16:
            raise _operation("AES-CBC iv must be 16 bytes")
        return iv

    def encrypt(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        if self.mode == "GCM":
            iv, tag_bytes = self._gcm_iv(alg), self._tag_bytes(alg)
            encryptor = Cipher(algorithms.AES(key.material), modes.GCM(iv)).encryptor()
            if alg.get("additionalData") is not None:
                encryptor.authenticate_additional_data(_bytes(alg["additionalData"], "additionalData"))
            out = encryptor.update(data) + encryptor.finalize()
            return out + encryptor.tag[:tag_bytes]
        if self.mode == "CBC":
            padder = block_padding.PKCS7(128).padder()
            padded = padder.update(data) + padder.finalize()
            cbc = Cipher(algorithms.AES(key.material), modes.CBC(self._cbc_iv(alg))).encryptor()
            return cbc.update(padded) + cbc.finalize()
        if self.mode == "CTR":
            return self._ctr(alg, key, data)
        return super().encrypt(alg, key, data)

    def decrypt(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        if self.mode == "GCM":
            iv, tag_bytes = self._gcm_iv(alg), self._tag_bytes(alg)
            if len(data) < tag_bytes:
                raise _operation("The data is shorter than the AES-GCM tag")
            body, tag = data[: len(data) - tag_bytes], data[len(data) - tag_bytes :]
            decryptor = Cipher(
                algorithms.AES(key.material), modes.GCM(iv, tag, min_tag_length=tag_bytes)
            ).decryptor()
            if alg.get("additionalData") is not None:
                decryptor.authenticate_additional_data(_bytes(alg["additionalData"], "additionalData"))
            try:
                return decryptor.update(body) + decryptor.finalize()
            except InvalidTag:
                raise _operation("AES-GCM decryption failed: the data or its tag is not authentic") from None
        if self.mode == "CBC":
            iv = self._cbc_iv(alg)
            if not data or len(data) % 16:
                raise _operation("AES-CBC data must be a non-empty multiple of 16 bytes")
            cbc = Cipher(algorithms.AES(key.material), modes.CBC(iv)).decryptor()
            padded = cbc.update(data) + cbc.finalize()
            unpadder = block_padding.PKCS7(128).unpadder()
            try:
                return unpadder.update(padded) + unpadder.finalize()
            except ValueError:
                raise _operation("AES-CBC decryption failed: bad padding") from None
        if self.mode == "CTR":
            return self._ctr(alg, key, data)
        return super().decrypt(alg, key, data)

    def wrap(self, key: Key, data: bytes) -> bytes:
        if len(data) < 16 or len(data) % 8:
            raise _operation("AES-KW can only wrap a multiple of 8 bytes, at least 16")
        return keywrap.aes_key_wrap(key.material, data)

    def unwrap(self, key: Key, data: bytes) -> bytes:
        try:
            return keywrap.aes_key_unwrap(key.material, data)
        except (keywrap.InvalidUnwrap, ValueError):
            raise _operation("AES-KW unwrapping failed") from None


class Rsa(Algorithm):
    def __init__(self, name: str) -> None:
        self.name = name
        if name == "RSA-OAEP":
            self.private_usages, self.public_usages, self.use = frozenset({"decrypt", "unwrapKey"}), frozenset(
                {"encrypt", "wrapKey"}
            ), "enc"
        else:
            self.private_usages, self.public_usages, self.use = SIGN, VERIFY, "sig"

    def _jwk_alg(self, hash_name: str) -> str:
        if self.name == "RSA-OAEP":
            return "RSA-OAEP" if hash_name == "SHA-1" else "RSA-OAEP-" + HASH_SUFFIX[hash_name]
        prefix = "RS" if self.name == "RSASSA-PKCS1-v1_5" else "PS"
        return prefix + HASH_SUFFIX[hash_name]

    def _key(self, type_: str, obj: Any, hash_name: str, extractable: bool, usages: tuple[str, ...]) -> Key:
        public_numbers = obj.public_key().public_numbers() if type_ == "private" else obj.public_numbers()
        _check_rsa_import(obj.key_size, public_numbers.e, private=type_ == "private")
        algorithm = {
            "name": self.name,
            "modulusLength": obj.key_size,
            "publicExponent": _int_bytes(public_numbers.e).decode("latin-1"),
            "hash": {"name": hash_name},
        }
        material = _private_der(obj) if type_ == "private" else _public_der(obj)
        key = Key(type_, algorithm, extractable, usages, material)
        key._parsed = obj
        return key

    def generate(self, alg: dict[str, Any], extractable: bool, usages: tuple[str, ...]) -> Generated:
        _check_usages(usages, self.private_usages | self.public_usages, self.name)
        hash_name = _hash_name(alg)
        modulus = int(alg.get("modulusLength", 0))
        exponent = int.from_bytes(_bytes(alg.get("publicExponent"), "publicExponent"), "big")
        # workerd's checks and messages (with strict_crypto_checks), then warren's narrower range.
        if modulus <= 0:
            raise _operation(f"modulusLength must be greater than zero (requested {modulus}).")
        _rsa_modulus_range(modulus)
        if exponent >= 2**32:
            raise _operation('The "publicExponent" must be either 3 or 65537, but got a number larger than 2^32.')
        if exponent not in RSA_GENERATED_EXPONENTS:
            raise _operation(f'The "publicExponent" must be either 3 or 65537, but got {exponent}.')
        if modulus % 128:
            raise _operation("Can't generate key: RSA key size is required to be a multiple of 128")
        if not RSA_MIN_GENERATED_MODULUS <= modulus <= RSA_MAX_GENERATED_MODULUS:
            raise _not_supported(
                f"RSA keys are generated here with {RSA_MIN_GENERATED_MODULUS} to {RSA_MAX_GENERATED_MODULUS} bits "
                f"(a larger one takes seconds of CPU), but {modulus} was requested."
            )
        private = rsa.generate_private_key(public_exponent=exponent, key_size=modulus)
        private_usages = tuple(u for u in usages if u in self.private_usages)
        public_usages = tuple(u for u in usages if u in self.public_usages)
        return (
            self._key("public", private.public_key(), hash_name, True, public_usages),
            self._key("private", private, hash_name, extractable, private_usages),
        )

    def import_key(
        self, fmt: str, data: bytes, jwk: dict[str, Any] | None, alg: dict[str, Any], extractable: bool,
        usages: tuple[str, ...],
    ) -> Key:
        hash_name = _hash_name(alg)
        obj: Any
        if fmt in ("spki", "pkcs8"):
            _check_usages(usages, self.public_usages if fmt == "spki" else self.private_usages, self.name)
            type_, obj = _load_der(fmt, data, rsa.RSAPublicKey, rsa.RSAPrivateKey, "RSA")
            return self._key(type_, obj, hash_name, extractable, usages)
        if fmt != "jwk":
            raise _not_supported(f"{self.name} keys cannot be imported as {fmt}")
        assert jwk is not None
        private = "d" in jwk
        _check_usages(usages, self.private_usages if private else self.public_usages, self.name)
        _jwk_checks(jwk, "RSA", usages, extractable, self.use)
        if "alg" in jwk and jwk["alg"] != self._jwk_alg(hash_name):
            raise _data(f"The JWK 'alg' member does not match {self.name} with {hash_name}")

        def number(member: str) -> int:
            if member not in jwk:
                raise _data(f"The RSA JWK has no {member!r} member")
            return int.from_bytes(_unb64url(jwk[member], member), "big")

        try:
            public_numbers = rsa.RSAPublicNumbers(number("e"), number("n"))
            # Before OpenSSL sees it: a huge private key would cost seconds of checks first.
            _check_rsa_import(public_numbers.n.bit_length(), public_numbers.e, private)
            if not private:
                return self._key("public", public_numbers.public_key(), hash_name, extractable, usages)
            if "oth" in jwk:
                raise _not_supported("RSA keys with more than two primes are not supported")
            private_numbers = rsa.RSAPrivateNumbers(
                number("p"), number("q"), number("d"), number("dp"), number("dq"), number("qi"), public_numbers
            )
            return self._key("private", private_numbers.private_key(), hash_name, extractable, usages)
        except (ValueError, TypeError):
            raise _data("The JWK is not a valid RSA key") from None

    def export(self, fmt: str, key: Key) -> bytes | dict[str, Any]:
        if fmt == "spki":
            return _public_key(key).material
        if fmt == "pkcs8":
            return _private_key(key).material
        if fmt != "jwk":
            raise _not_supported(f"{self.name} keys cannot be exported as {fmt}")
        obj = key.parsed()
        jwk: dict[str, Any] = {"kty": "RSA", "alg": self._jwk_alg(key.algorithm["hash"]["name"])}
        if key.type == "private":
            numbers = obj.private_numbers()
            public = numbers.public_numbers
            jwk.update(
                n=_b64url(_int_bytes(public.n)),
                e=_b64url(_int_bytes(public.e)),
                d=_b64url(_int_bytes(numbers.d)),
                p=_b64url(_int_bytes(numbers.p)),
                q=_b64url(_int_bytes(numbers.q)),
                dp=_b64url(_int_bytes(numbers.dmp1)),
                dq=_b64url(_int_bytes(numbers.dmq1)),
                qi=_b64url(_int_bytes(numbers.iqmp)),
            )
        else:
            public = obj.public_numbers()
            jwk.update(n=_b64url(_int_bytes(public.n)), e=_b64url(_int_bytes(public.e)))
        return _jwk_finish(jwk, key)

    def _padding(self, alg: dict[str, Any], key: Key) -> padding.AsymmetricPadding:
        hash_algorithm = _crypto_hash(key.algorithm["hash"]["name"])
        if self.name == "RSA-PSS":
            salt = int(alg.get("saltLength", -1))
            if salt < 0:
                raise CryptoError("TypeError", "RSA-PSS needs a saltLength")
            return padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=salt)
        if self.name == "RSA-OAEP":
            label = _bytes(alg["label"], "label") if alg.get("label") is not None else None
            return padding.OAEP(mgf=padding.MGF1(hash_algorithm), algorithm=hash_algorithm, label=label or None)
        return padding.PKCS1v15()

    def sign(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        if self.name == "RSA-OAEP":
            return super().sign(alg, key, data)
        private = _private_key(key).parsed()
        try:
            return bytes(private.sign(data, self._padding(alg, key), _crypto_hash(key.algorithm["hash"]["name"])))
        except ValueError as exc:
            raise _operation(f"{self.name} signing failed: {exc}") from None

    def verify(self, alg: dict[str, Any], key: Key, signature: bytes, data: bytes) -> bool:
        if self.name == "RSA-OAEP":
            return super().verify(alg, key, signature, data)
        public = _public_key(key).parsed()
        try:
            public.verify(signature, data, self._padding(alg, key), _crypto_hash(key.algorithm["hash"]["name"]))
        except (InvalidSignature, ValueError):
            return False
        return True

    def encrypt(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        if self.name != "RSA-OAEP":
            return super().encrypt(alg, key, data)
        public = _public_key(key).parsed()
        try:
            return bytes(public.encrypt(data, self._padding(alg, key)))
        except ValueError as exc:
            raise _operation(f"RSA-OAEP encryption failed: {exc}") from None

    def decrypt(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        if self.name != "RSA-OAEP":
            return super().decrypt(alg, key, data)
        private = _private_key(key).parsed()
        try:
            return bytes(private.decrypt(data, self._padding(alg, key)))
        except ValueError:
            raise _operation("RSA-OAEP decryption failed") from None


class Ec(Algorithm):
    def __init__(self, name: str) -> None:
        self.name = name
        if name == "ECDSA":
            self.private_usages, self.public_usages = SIGN, VERIFY
        else:
            self.private_usages, self.public_usages = DERIVE, NO_USAGES

    def _curve(self, alg: dict[str, Any]) -> str:
        curve = alg.get("namedCurve")
        if curve not in CURVES:
            raise _not_supported(f"Unsupported named curve: {curve}")
        return str(curve)

    def _key(self, type_: str, obj: Any, curve: str, extractable: bool, usages: tuple[str, ...]) -> Key:
        if CURVE_NAMES.get(obj.curve.name) != curve:
            raise _data(f"The key is not on curve {curve}")
        material = _private_der(obj) if type_ == "private" else _public_der(obj)
        key = Key(type_, {"name": self.name, "namedCurve": curve}, extractable, usages, material)
        key._parsed = obj
        return key

    def generate(self, alg: dict[str, Any], extractable: bool, usages: tuple[str, ...]) -> Generated:
        _check_usages(usages, self.private_usages | self.public_usages, self.name)
        curve = self._curve(alg)
        private = ec.generate_private_key(CURVES[curve]())
        return (
            self._key("public", private.public_key(), curve, True, tuple(u for u in usages if u in self.public_usages)),
            self._key("private", private, curve, extractable, tuple(u for u in usages if u in self.private_usages)),
        )

    def import_key(
        self, fmt: str, data: bytes, jwk: dict[str, Any] | None, alg: dict[str, Any], extractable: bool,
        usages: tuple[str, ...],
    ) -> Key:
        curve = self._curve(alg)
        obj: Any
        if fmt == "raw":
            _check_usages(usages, self.public_usages, self.name)
            try:
                obj = ec.EllipticCurvePublicKey.from_encoded_point(CURVES[curve](), data)
            except ValueError:
                raise _data(f"Invalid {curve} point") from None
            return self._key("public", obj, curve, extractable, usages)
        if fmt in ("spki", "pkcs8"):
            _check_usages(usages, self.public_usages if fmt == "spki" else self.private_usages, self.name)
            type_, obj = _load_der(fmt, data, ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey, "EC")
            return self._key(type_, obj, curve, extractable, usages)
        if fmt != "jwk":
            raise _not_supported(f"{self.name} keys cannot be imported as {fmt}")
        assert jwk is not None
        private = "d" in jwk
        _check_usages(usages, self.private_usages if private else self.public_usages, self.name)
        _jwk_checks(jwk, "EC", usages, extractable, "sig" if self.name == "ECDSA" else "enc")
        if jwk.get("crv") != curve:
            raise _data(f"The JWK 'crv' member must be {curve!r}")
        if self.name == "ECDSA" and "alg" in jwk and ECDSA_JWK_ALG.get(jwk["alg"]) != curve:
            raise _data(f"The JWK 'alg' member does not match ECDSA on {curve}")
        size = (CURVES[curve]().key_size + 7) // 8

        def coordinate(member: str) -> int:
            if member not in jwk:
                raise _data(f"The EC JWK has no {member!r} member")
            raw = _unb64url(jwk[member], member)
            if len(raw) != size:
                raise _data(f"The EC JWK member {member!r} has the wrong length")
            return int.from_bytes(raw, "big")

        try:
            public_numbers = ec.EllipticCurvePublicNumbers(coordinate("x"), coordinate("y"), CURVES[curve]())
            public = public_numbers.public_key()
            if not private:
                return self._key("public", public, curve, extractable, usages)
            obj = ec.derive_private_key(coordinate("d"), CURVES[curve]())
        except ValueError:
            raise _data("The JWK is not a valid EC key") from None
        if obj.public_key().public_numbers() != public_numbers:
            raise _data("The JWK's private and public parts do not match")
        return self._key("private", obj, curve, extractable, usages)

    def export(self, fmt: str, key: Key) -> bytes | dict[str, Any]:
        curve = key.algorithm["namedCurve"]
        if fmt == "raw":
            public = _public_key(key).parsed()
            return bytes(public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
        if fmt == "spki":
            return _public_key(key).material
        if fmt == "pkcs8":
            return _private_key(key).material
        if fmt != "jwk":
            raise _not_supported(f"{self.name} keys cannot be exported as {fmt}")
        obj = key.parsed()
        size = (obj.curve.key_size + 7) // 8
        public_numbers = (obj.public_key() if key.type == "private" else obj).public_numbers()
        jwk: dict[str, Any] = {
            "kty": "EC",
            "crv": curve,
            "x": _b64url(_int_bytes(public_numbers.x, size)),
            "y": _b64url(_int_bytes(public_numbers.y, size)),
        }
        if key.type == "private":
            jwk["d"] = _b64url(_int_bytes(obj.private_numbers().private_value, size))
        return _jwk_finish(jwk, key)

    def sign(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        if self.name != "ECDSA":
            return super().sign(alg, key, data)
        private = _private_key(key).parsed()
        der = private.sign(data, ec.ECDSA(_crypto_hash(_hash_name(alg))))
        r, s = utils.decode_dss_signature(der)
        size = (private.curve.key_size + 7) // 8
        return _int_bytes(r, size) + _int_bytes(s, size)

    def verify(self, alg: dict[str, Any], key: Key, signature: bytes, data: bytes) -> bool:
        if self.name != "ECDSA":
            return super().verify(alg, key, signature, data)
        public = _public_key(key).parsed()
        hash_algorithm = _crypto_hash(_hash_name(alg))
        size = (public.curve.key_size + 7) // 8
        if len(signature) != 2 * size:
            return False
        r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
        try:
            public.verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(hash_algorithm))
        except (InvalidSignature, ValueError):
            return False
        return True

    def derive_bits(self, host: CryptoHost, alg: dict[str, Any], key: Key, length: int | None) -> bytes:
        if self.name != "ECDH":
            return super().derive_bits(host, alg, key, length)
        private = _private_key(key).parsed()
        public_key = host.key(alg.get("public"))
        if public_key.type != "public":
            raise _access("The 'public' member must be a public key")
        if public_key.name != key.name or public_key.algorithm.get("namedCurve") != key.algorithm["namedCurve"]:
            raise _access("The public key is not an ECDH key on the same curve")
        try:
            secret = private.exchange(ec.ECDH(), public_key.parsed())
        except ValueError:
            raise _operation("ECDH key agreement failed") from None
        return _truncate_bits(bytes(secret), length)


class Okp(Algorithm):
    """Ed25519 (and Workers' NODE-ED25519) and X25519."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.signs = name in ("Ed25519", "NODE-ED25519")
        self.crv = "X25519" if name == "X25519" else "Ed25519"
        if self.signs:
            self.private_cls: Any = ed25519.Ed25519PrivateKey
            self.public_cls: Any = ed25519.Ed25519PublicKey
            self.private_usages, self.public_usages = SIGN, VERIFY
        else:
            self.private_cls, self.public_cls = x25519.X25519PrivateKey, x25519.X25519PublicKey
            self.private_usages, self.public_usages = DERIVE, NO_USAGES

    def _algorithm(self, alg: dict[str, Any]) -> dict[str, Any]:
        if self.name == "NODE-ED25519":
            if alg.get("namedCurve") != "NODE-ED25519":
                raise _not_supported("NODE-ED25519 needs namedCurve 'NODE-ED25519'")
            return {"name": self.name, "namedCurve": "NODE-ED25519"}
        return {"name": self.name}

    def _key(self, type_: str, obj: Any, alg: dict[str, Any], extractable: bool, usages: tuple[str, ...]) -> Key:
        material = _private_der(obj) if type_ == "private" else _public_der(obj)
        key = Key(type_, self._algorithm(alg), extractable, usages, material)
        key._parsed = obj
        return key

    def generate(self, alg: dict[str, Any], extractable: bool, usages: tuple[str, ...]) -> Generated:
        _check_usages(usages, self.private_usages | self.public_usages, self.name)
        private = self.private_cls.generate()
        return (
            self._key("public", private.public_key(), alg, True, tuple(u for u in usages if u in self.public_usages)),
            self._key("private", private, alg, extractable, tuple(u for u in usages if u in self.private_usages)),
        )

    def import_key(
        self, fmt: str, data: bytes, jwk: dict[str, Any] | None, alg: dict[str, Any], extractable: bool,
        usages: tuple[str, ...],
    ) -> Key:
        self._algorithm(alg)
        obj: Any
        if fmt == "raw":
            _check_usages(usages, self.public_usages, self.name)
            try:
                obj = self.public_cls.from_public_bytes(data)
            except ValueError:
                raise _data(f"Invalid {self.crv} public key") from None
            return self._key("public", obj, alg, extractable, usages)
        if fmt in ("spki", "pkcs8"):
            _check_usages(usages, self.public_usages if fmt == "spki" else self.private_usages, self.name)
            type_, obj = _load_der(fmt, data, self.public_cls, self.private_cls, self.crv)
            return self._key(type_, obj, alg, extractable, usages)
        if fmt != "jwk":
            raise _not_supported(f"{self.name} keys cannot be imported as {fmt}")
        assert jwk is not None
        private = "d" in jwk
        _check_usages(usages, self.private_usages if private else self.public_usages, self.name)
        _jwk_checks(jwk, "OKP", usages, extractable, "sig" if self.signs else "enc")
        if jwk.get("crv") != self.crv:
            raise _data(f"The JWK 'crv' member must be {self.crv!r}")
        if self.signs and "alg" in jwk and jwk["alg"] not in ("EdDSA", "Ed25519"):
            raise _data("The JWK 'alg' member must be 'EdDSA' or 'Ed25519'")
        if "x" not in jwk:
            raise _data("The JWK has no 'x' member")
        x = _unb64url(jwk["x"], "x")
        try:
            if not private:
                return self._key("public", self.public_cls.from_public_bytes(x), alg, extractable, usages)
            obj = self.private_cls.from_private_bytes(_unb64url(jwk["d"], "d"))
        except ValueError:
            raise _data(f"The JWK is not a valid {self.crv} key") from None
        raw = obj.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if not hmac.compare_digest(raw, x):
            raise _data("The JWK's private and public parts do not match")
        return self._key("private", obj, alg, extractable, usages)

    def export(self, fmt: str, key: Key) -> bytes | dict[str, Any]:
        raw_format = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if fmt == "raw":
            return bytes(_public_key(key).parsed().public_bytes(*raw_format))
        if fmt == "spki":
            return _public_key(key).material
        if fmt == "pkcs8":
            return _private_key(key).material
        if fmt != "jwk":
            raise _not_supported(f"{self.name} keys cannot be exported as {fmt}")
        obj = key.parsed()
        public = obj.public_key() if key.type == "private" else obj
        jwk: dict[str, Any] = {"kty": "OKP", "crv": self.crv, "x": _b64url(public.public_bytes(*raw_format))}
        if key.type == "private":
            private_raw = obj.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            jwk["d"] = _b64url(private_raw)
        return _jwk_finish(jwk, key)

    def sign(self, alg: dict[str, Any], key: Key, data: bytes) -> bytes:
        if not self.signs:
            return super().sign(alg, key, data)
        return bytes(_private_key(key).parsed().sign(data))

    def verify(self, alg: dict[str, Any], key: Key, signature: bytes, data: bytes) -> bool:
        if not self.signs:
            return super().verify(alg, key, signature, data)
        if len(signature) != 64:
            return False
        try:
            _public_key(key).parsed().verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def derive_bits(self, host: CryptoHost, alg: dict[str, Any], key: Key, length: int | None) -> bytes:
        if self.signs:
            return super().derive_bits(host, alg, key, length)
        private = _private_key(key).parsed()
        public_key = host.key(alg.get("public"))
        if public_key.type != "public":
            raise _access("The 'public' member must be a public key")
        if public_key.name != key.name:
            raise _access("The public key is not an X25519 key")
        try:
            secret = private.exchange(public_key.parsed())
        except ValueError:
            raise _operation("X25519 key agreement failed (a small-order public key?)") from None
        return _truncate_bits(bytes(secret), length)


class Kdf(Algorithm):
    """PBKDF2 and HKDF: raw, non-extractable base keys for deriveBits/deriveKey."""

    exportable = False

    def __init__(self, name: str) -> None:
        self.name = name

    def import_key(
        self, fmt: str, data: bytes, jwk: dict[str, Any] | None, alg: dict[str, Any], extractable: bool,
        usages: tuple[str, ...],
    ) -> Key:
        if fmt != "raw":
            raise _not_supported(f"{self.name} keys can only be imported as raw")
        _check_usages(usages, DERIVE, self.name)
        if extractable:
            raise _syntax(f"{self.name} keys cannot be extractable")
        return Key("secret", {"name": self.name}, False, usages, data)

    def key_length(self, alg: dict[str, Any]) -> int | None:
        return None

    def derive_bits(self, host: CryptoHost, alg: dict[str, Any], key: Key, length: int | None) -> bytes:
        if length is None or length % 8:
            raise _operation(f"{self.name} needs a length that is a multiple of 8")
        hash_name = _hash_name(alg)
        salt = _bytes(alg.get("salt"), "salt")
        if self.name == "PBKDF2":
            iterations = int(alg.get("iterations", 0))
            if iterations == 0:
                raise _operation("PBKDF2 iterations must not be zero")
            if iterations > PBKDF2_MAX_ITERATIONS:
                raise _not_supported(
                    f"Pbkdf2 failed: iteration counts above {PBKDF2_MAX_ITERATIONS} are not supported "
                    f"(requested {iterations})."
                )
            if length == 0:
                return b""
            blocks = -(-length // (8 * HASH_SIZES[hash_name]))
            if blocks * iterations > PBKDF2_MAX_WORK:
                raise _not_supported(
                    f"Pbkdf2 failed: {length} bits at {iterations} iterations is more work than is supported "
                    f"(output blocks x iterations at most {PBKDF2_MAX_WORK})."
                )
            return hashlib.pbkdf2_hmac(HASH_LIBS[hash_name], key.material, salt, iterations, length // 8)
        info = _bytes(alg.get("info"), "info")
        if length == 0:
            return b""
        if length // 8 > 255 * HASH_SIZES[hash_name]:
            raise _operation("HKDF cannot derive that many bits with this hash")
        return HKDF(algorithm=_crypto_hash(hash_name), length=length // 8, salt=salt, info=info).derive(key.material)


ALGORITHMS: dict[str, Algorithm] = {
    "HMAC": Hmac(),
    "AES-GCM": Aes("GCM"),
    "AES-CBC": Aes("CBC"),
    "AES-CTR": Aes("CTR"),
    "AES-KW": Aes("KW"),
    "RSASSA-PKCS1-v1_5": Rsa("RSASSA-PKCS1-v1_5"),
    "RSA-PSS": Rsa("RSA-PSS"),
    "RSA-OAEP": Rsa("RSA-OAEP"),
    "ECDSA": Ec("ECDSA"),
    "ECDH": Ec("ECDH"),
    "Ed25519": Okp("Ed25519"),
    "NODE-ED25519": Okp("NODE-ED25519"),
    "X25519": Okp("X25519"),
    "PBKDF2": Kdf("PBKDF2"),
    "HKDF": Kdf("HKDF"),
}
FORMATS = ("raw", "spki", "pkcs8", "jwk")


def _algorithm(value: Any) -> tuple[dict[str, Any], Algorithm]:
    name = value.get("name") if isinstance(value, dict) else None
    family = ALGORITHMS.get(name) if isinstance(name, str) else None
    if family is None or not isinstance(value, dict):
        raise _not_supported(f"Unrecognized or unsupported algorithm: {name}")
    return value, family


def _format(value: Any) -> str:
    if value not in FORMATS:
        raise CryptoError("TypeError", f"Unknown key format: {value}")
    return str(value)


def _check_key(key: Key, name: str, usage: str) -> None:
    if key.name != name:
        raise _access(f"The key is a {key.name} key, not {name}")
    if usage not in key.usages:
        raise _access(f"The key's usages do not include {usage!r}")


def _check_not_empty(result: Generated) -> None:
    key = result[1] if isinstance(result, tuple) else result
    if key.type in ("secret", "private") and not key.usages:
        raise _syntax("A secret or private key must have at least one usage")


Answer = tuple[dict[str, Any], bytes | None]


class CryptoHost:
    """One worker's WebCrypto: its sealing secret, parsed-key cache and digest streams."""

    def __init__(self) -> None:
        self._sealer = AESGCM(AESGCM.generate_key(bit_length=256))
        self._keys: OrderedDict[str, Key] = OrderedDict()
        self._digests: OrderedDict[int, Any] = OrderedDict()
        self._next_digest = 1
        self._operations: dict[str, Callable[[dict[str, Any], bytes], Answer]] = {
            "randomBytes": self._random_bytes,
            "digest": self._digest,
            "digestStream": self._digest_stream,
            "digestStreamAbort": self._digest_stream_abort,
            "generateKey": self._generate_key,
            "importKey": self._import_key,
            "exportKey": self._export_key,
            "sign": self._sign,
            "verify": self._verify,
            "encrypt": self._encrypt,
            "decrypt": self._decrypt,
            "deriveBits": self._derive_bits,
            "deriveKey": self._derive_key,
            "wrapKey": self._wrap_key,
            "unwrapKey": self._unwrap_key,
        }

    def call(self, operation: str, arguments: str, data: str | None) -> str:
        try:
            handler = self._operations.get(operation)
            if handler is None:
                raise _not_supported(f"{operation} is not supported")
            args = json.loads(arguments)
            if not isinstance(args, dict):
                raise CryptoError("TypeError", "bad arguments")
            payload = data.encode("latin-1") if data is not None else b""
            result, out = handler(args, payload)
        except CryptoError as exc:
            return json.dumps({"ok": False, "name": exc.name, "message": exc.message})
        except Exception as exc:  # a failure of a primitive that no check above anticipated
            message = f"The operation failed ({type(exc).__name__})."
            return json.dumps({"ok": False, "name": "OperationError", "message": message})
        answer = json.dumps({"ok": True, **result})
        return answer if out is None else answer + "\0" + out.decode("latin-1")

    # -- keys --

    def seal(self, key: Key) -> str:
        nonce = os.urandom(12)
        plaintext = json.dumps(key.header()).encode() + b"\n" + key.material
        handle = _b64url(nonce + self._sealer.encrypt(nonce, plaintext, _SEAL_CONTEXT))
        self._remember(handle, key)
        return handle

    def key(self, handle: Any) -> Key:
        """The key a handle names; only handles this host sealed open."""
        if not isinstance(handle, str):
            raise CryptoError("TypeError", "expected a CryptoKey")
        key = self._keys.get(handle)
        if key is not None:
            self._keys.move_to_end(handle)
            return key
        try:
            sealed = base64.urlsafe_b64decode(handle + "=" * (-len(handle) % 4))
            plaintext = self._sealer.decrypt(sealed[:12], sealed[12:], _SEAL_CONTEXT)
        except (InvalidTag, ValueError, binascii.Error):
            raise _access("The CryptoKey does not belong to this worker") from None
        header, _, material = plaintext.partition(b"\n")
        fields = json.loads(header)
        key = Key(fields["t"], fields["a"], bool(fields["x"]), tuple(fields["u"]), material)
        self._remember(handle, key)
        return key

    def _remember(self, handle: str, key: Key) -> None:
        self._keys[handle] = key
        while len(self._keys) > PARSED_KEY_CACHE:
            self._keys.popitem(last=False)

    def _describe(self, key: Key) -> dict[str, Any]:
        return {
            "handle": self.seal(key),
            "type": key.type,
            "extractable": key.extractable,
            "algorithm": key.algorithm,
            "usages": list(key.usages),
        }

    def _describe_result(self, result: Generated) -> dict[str, Any]:
        if isinstance(result, tuple):
            return {"publicKey": self._describe(result[0]), "privateKey": self._describe(result[1])}
        return {"key": self._describe(result)}

    # -- random and digests --

    def _random_bytes(self, args: dict[str, Any], data: bytes) -> Answer:
        count = int(args["length"])
        if not 0 <= count <= MAX_RANDOM_BYTES:
            raise CryptoError(
                "QuotaExceededError",
                f"The ArrayBufferView's byte length ({count}) exceeds the number of bytes of entropy available "
                f"via this API ({MAX_RANDOM_BYTES})",
            )
        return {}, os.urandom(count)

    def _digest(self, args: dict[str, Any], data: bytes) -> Answer:
        name = args.get("algorithm", {}).get("name")
        digest = _new_hash(str(name))
        digest.update(data)
        return {}, bytes(digest.digest())

    def _digest_stream(self, args: dict[str, Any], data: bytes) -> Answer:
        state = args.get("state")
        if state is None:
            digest = _new_hash(str(args.get("algorithm", {}).get("name")))
        else:
            digest = self._digests.pop(int(state), None)
            if digest is None:
                raise _operation("This DigestStream was discarded: too many were left open in this worker")
        digest.update(data)
        if args.get("finish"):
            return {}, bytes(digest.digest())
        state = self._next_digest if state is None else int(state)
        self._next_digest += 1
        self._digests[state] = digest
        while len(self._digests) > MAX_DIGEST_STREAMS:
            self._digests.popitem(last=False)
        return {"state": state}, None

    def _digest_stream_abort(self, args: dict[str, Any], data: bytes) -> Answer:
        if args.get("state") is not None:
            self._digests.pop(int(args["state"]), None)
        return {}, None

    # -- keys: generate, import, export --

    def _generate_key(self, args: dict[str, Any], data: bytes) -> Answer:
        alg, family = _algorithm(args.get("algorithm"))
        usages = _normalized_usages(args.get("usages"))
        result = family.generate(alg, bool(args.get("extractable")), usages)
        _check_not_empty(result)
        return self._describe_result(result), None

    def _import(
        self, fmt: str, data: bytes, jwk: Any, algorithm: Any, extractable: bool, usages_value: Any
    ) -> Key:
        alg, family = _algorithm(algorithm)
        usages = _normalized_usages(usages_value)
        if fmt == "jwk" and not isinstance(jwk, dict):
            raise _data("The JWK must be an object")
        key = family.import_key(fmt, data, jwk if fmt == "jwk" else None, alg, extractable, usages)
        _check_not_empty(key)
        return key

    def _import_key(self, args: dict[str, Any], data: bytes) -> Answer:
        fmt = _format(args.get("format"))
        key = self._import(fmt, data, args.get("jwk"), args.get("algorithm"), bool(args.get("extractable")),
                           args.get("usages"))
        return self._describe_result(key), None

    def _export(self, fmt: str, key: Key) -> bytes | dict[str, Any]:
        family = ALGORITHMS[key.name]
        if not family.exportable:
            raise _not_supported(f"{key.name} keys cannot be exported")
        if not key.extractable:
            raise _access("The key is not extractable")
        return family.export(fmt, key)

    def _export_key(self, args: dict[str, Any], data: bytes) -> Answer:
        exported = self._export(_format(args.get("format")), self.key(args.get("key")))
        if isinstance(exported, dict):
            return {"jwk": exported}, None
        return {}, exported

    # -- sign, verify, encrypt, decrypt --

    def _sign(self, args: dict[str, Any], data: bytes) -> Answer:
        alg, family = _algorithm(args.get("algorithm"))
        key = self.key(args.get("key"))
        _check_key(key, alg["name"], "sign")
        return {}, family.sign(alg, key, data)

    def _verify(self, args: dict[str, Any], data: bytes) -> Answer:
        alg, family = _algorithm(args.get("algorithm"))
        key = self.key(args.get("key"))
        signature = _bytes(args.get("signature"), "signature")
        _check_key(key, alg["name"], "verify")
        return {"result": family.verify(alg, key, signature, data)}, None

    def _encrypt(self, args: dict[str, Any], data: bytes) -> Answer:
        alg, family = _algorithm(args.get("algorithm"))
        key = self.key(args.get("key"))
        _check_key(key, alg["name"], "encrypt")
        return {}, family.encrypt(alg, key, data)

    def _decrypt(self, args: dict[str, Any], data: bytes) -> Answer:
        alg, family = _algorithm(args.get("algorithm"))
        key = self.key(args.get("key"))
        _check_key(key, alg["name"], "decrypt")
        return {}, family.decrypt(alg, key, data)

    # -- derivation --

    def _derive_bits(self, args: dict[str, Any], data: bytes) -> Answer:
        alg, family = _algorithm(args.get("algorithm"))
        key = self.key(args.get("key"))
        _check_key(key, alg["name"], "deriveBits")
        length = args.get("length")
        return {}, family.derive_bits(self, alg, key, None if length is None else int(length))

    def _derive_key(self, args: dict[str, Any], data: bytes) -> Answer:
        alg, family = _algorithm(args.get("algorithm"))
        derived_alg, derived_family = _algorithm(args.get("derivedKeyType"))
        key = self.key(args.get("key"))
        _check_key(key, alg["name"], "deriveKey")
        length = derived_family.key_length(derived_alg)
        secret = family.derive_bits(self, alg, key, length)
        derived = self._import(
            "raw", secret, None, derived_alg, bool(args.get("extractable")), args.get("usages")
        )
        return self._describe_result(derived), None

    # -- wrapping --

    def _wrap_key(self, args: dict[str, Any], data: bytes) -> Answer:
        fmt = _format(args.get("format"))
        alg, family = _algorithm(args.get("algorithm"))
        wrapping_key = self.key(args.get("wrappingKey"))
        key = self.key(args.get("key"))
        _check_key(wrapping_key, alg["name"], "wrapKey")
        exported = self._export(fmt, key)
        plain = json.dumps(exported, separators=(",", ":")).encode() if isinstance(exported, dict) else exported
        if alg["name"] == "AES-KW":
            return {}, family.wrap(wrapping_key, plain)
        return {}, family.encrypt(alg, wrapping_key, plain)

    def _unwrap_key(self, args: dict[str, Any], data: bytes) -> Answer:
        fmt = _format(args.get("format"))
        alg, family = _algorithm(args.get("algorithm"))
        unwrapping_key = self.key(args.get("unwrappingKey"))
        _check_key(unwrapping_key, alg["name"], "unwrapKey")
        if alg["name"] == "AES-KW":
            plain = family.unwrap(unwrapping_key, data)
        else:
            plain = family.decrypt(alg, unwrapping_key, data)
        jwk: Any = None
        if fmt == "jwk":
            try:
                jwk = json.loads(plain.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise _data("The unwrapped data is not a JSON Web Key") from None
        key = self._import(
            fmt, plain, jwk, args.get("unwrappedKeyAlgorithm"), bool(args.get("extractable")), args.get("usages")
        )
        return self._describe_result(key), None
