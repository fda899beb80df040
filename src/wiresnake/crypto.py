"""The primitives WireGuard is built from, over `cryptography` and `hashlib`.

HASH is BLAKE2s-256, MAC is keyed BLAKE2s-128, HMAC is HMAC-BLAKE2s and KDF is HKDF
over it; AEAD is ChaCha20-Poly1305 with a 64-bit little-endian counter as nonce, XAEAD
is XChaCha20-Poly1305 (cookie replies only) and DH is X25519. Keys are 32 raw bytes
here; base64 (files, CLI) and hex (the configuration socket) are codecs at the edge.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac as _hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = [
    "KEY_LEN",
    "NONCE",
    "ZERO_KEY",
    "ChaCha20Poly1305",
    "CryptoError",
    "InvalidTag",
    "KeyFormatError",
    "PrivateKey",
    "aead_decrypt",
    "aead_encrypt",
    "clamp_private_key",
    "dh",
    "generate_private_key",
    "hash",
    "hchacha20",
    "hmac",
    "kdf1",
    "kdf2",
    "kdf3",
    "key_from_base64",
    "key_from_hex",
    "key_to_base64",
    "key_to_hex",
    "mac",
    "public_key",
    "tai64n",
    "xaead_decrypt",
    "xaead_encrypt",
]

KEY_LEN = 32
ZERO_KEY = bytes(KEY_LEN)
# Nonce of the transport AEAD: 4 zero bytes, then the 64-bit counter little-endian.
NONCE = struct.Struct("<4xQ")


class CryptoError(Exception):
    """A cryptographic operation failed (bad tag, low-order point)."""


class KeyFormatError(ValueError):
    """A key string is not a valid base64 or hex encoding of 32 bytes."""


def hash(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hmac(key: bytes, data: bytes) -> bytes:
    return _hmac.new(key, data, hashlib.blake2s).digest()


def kdf1(key: bytes, data: bytes) -> bytes:
    t0 = hmac(key, data)
    return hmac(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = hmac(key, data)
    t1 = hmac(t0, b"\x01")
    t2 = hmac(t0, t1 + b"\x02")
    return t1, t2


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    t0 = hmac(key, data)
    t1 = hmac(t0, b"\x01")
    t2 = hmac(t0, t1 + b"\x02")
    t3 = hmac(t0, t2 + b"\x03")
    return t1, t2, t3


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(NONCE.pack(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(NONCE.pack(counter), ciphertext, ad)
    except InvalidTag:
        raise CryptoError("AEAD authentication failed") from None


_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_WORDS16 = struct.Struct("<16I")
_WORDS4 = struct.Struct("<4I")


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha), derived from one ChaCha20 block.

    A ChaCha20 block is rounds(state) + state. `cryptography` takes a 16-byte nonce
    whose words fill state words 12..15, exactly where HChaCha20 puts its nonce, so the
    HChaCha20 output (rounds(state) words 0..3 and 12..15) is that block minus the
    known constants and nonce words.
    """
    enc = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor()
    block = _WORDS16.unpack(enc.update(bytes(64)))
    n = _WORDS4.unpack(nonce16)
    out = [(block[i] - _SIGMA[i]) & 0xFFFFFFFF for i in range(4)]
    out += [(block[12 + i] - n[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *out)


def _xaead(key: bytes, nonce: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    if len(nonce) != 24:
        raise ValueError("XChaCha20-Poly1305 nonce must be 24 bytes")
    return ChaCha20Poly1305(hchacha20(key, nonce[:16])), b"\0\0\0\0" + nonce[16:]


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    aead, n = _xaead(key, nonce)
    return aead.encrypt(n, plaintext, ad)


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    aead, n = _xaead(key, nonce)
    try:
        return aead.decrypt(n, ciphertext, ad)
    except InvalidTag:
        raise CryptoError("XAEAD authentication failed") from None


class PrivateKey:
    """An X25519 private key kept as a ready object, so DH does not re-parse it."""

    __slots__ = ("_key", "public")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise KeyFormatError("private key must be 32 bytes")
        self._key = X25519PrivateKey.from_private_bytes(raw)
        self.public: bytes = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(generate_private_key())

    def raw(self) -> bytes:
        return self._key.private_bytes_raw()

    def exchange(self, peer_public: bytes) -> bytes:
        """DH; a low-order peer key (all-zero result) is refused with CryptoError."""
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise CryptoError("X25519 with a low-order point") from None
        if shared == ZERO_KEY:
            raise CryptoError("X25519 with a low-order point")
        return shared

    def __repr__(self) -> str:
        return "PrivateKey(<secret>)"


def dh(private: PrivateKey, peer_public: bytes) -> bytes:
    return private.exchange(peer_public)


def clamp_private_key(raw: bytes) -> bytes:
    """The key as X25519 uses it (RFC 7748): low three bits and the top bit cleared, the
    next bit set. The kernel and wireguard-go store keys clamped, so they read back so."""
    if len(raw) != KEY_LEN:
        raise KeyFormatError("private key must be 32 bytes")
    k = bytearray(raw)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def generate_private_key() -> bytes:
    """32 random bytes clamped as Curve25519 scalars are, as `wg genkey` prints them."""
    return clamp_private_key(os.urandom(KEY_LEN))


def public_key(private: bytes) -> bytes:
    return PrivateKey(private).public


_TAI64_BASE = (1 << 62) + 10
_TAI64N = struct.Struct(">QI")


def tai64n(wall: float) -> bytes:
    """TAI64N of a wall-clock time; the low 24 bits of the nanoseconds are masked
    so the timestamp does not leak a precise clock."""
    secs = int(wall // 1)
    nanos = int((wall - secs) * 1e9) & ~0xFFFFFF
    return _TAI64N.pack(_TAI64_BASE + secs, nanos)


def key_from_base64(text: str) -> bytes:
    """Exactly 44 characters of canonical base64, as `wg` accepts: no surrounding space,
    and the unused low bits of the last character must be zero."""
    if len(text) != 44 or text[43] != "=":
        raise KeyFormatError("key is not the correct length or format")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("key is not the correct length or format") from None
    if len(raw) != KEY_LEN or base64.b64encode(raw).decode("ascii") != text:
        raise KeyFormatError("key is not the correct length or format")
    return raw


def key_to_base64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


_HEX_DIGITS = "0123456789abcdefABCDEF"


def key_from_hex(text: str) -> bytes:
    if len(text) != 64:
        raise KeyFormatError("hex key must be 64 characters")
    if text.strip(_HEX_DIGITS):
        raise KeyFormatError("hex key has a non-hex character")
    return bytes.fromhex(text)


def key_to_hex(key: bytes) -> str:
    return key.hex()
