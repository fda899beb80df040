"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, the two handshake messages and the split.

Only the Noise math lives here: WireGuard's framing (indices, MACs, cookies) is added by
`handshake`. The prologue and payloads are parameters so the math can be held to the
cacophony test vector, whose prologue and payloads differ from WireGuard's.
"""

from __future__ import annotations

from wiresnake.crypto import (
    PrivateKey,
    aead_decrypt,
    aead_encrypt,
    hash,
    kdf1,
    kdf2,
    kdf3,
)
from wiresnake.protocol.constants import CONSTRUCTION, IDENTIFIER

__all__ = [
    "INITIAL_CHAIN_KEY",
    "INITIAL_HASH",
    "SymmetricState",
    "read_initiation_payload",
    "read_initiation_static",
    "read_response",
    "write_initiation",
    "write_response",
]

INITIAL_CHAIN_KEY = hash(CONSTRUCTION)
INITIAL_HASH = hash(INITIAL_CHAIN_KEY, IDENTIFIER)


class SymmetricState:
    """The chaining key and handshake hash that both sides evolve in step."""

    __slots__ = ("ck", "h")

    def __init__(self, ck: bytes, h: bytes) -> None:
        self.ck = ck
        self.h = h

    @classmethod
    def initialize(cls, responder_static: bytes, prologue: bytes = IDENTIFIER) -> SymmetricState:
        ck = INITIAL_CHAIN_KEY
        h = INITIAL_HASH if prologue == IDENTIFIER else hash(ck, prologue)
        return cls(ck, hash(h, responder_static))

    def copy(self) -> SymmetricState:
        return SymmetricState(self.ck, self.h)

    def mix_hash(self, data: bytes) -> None:
        self.h = hash(self.h, data)

    def mix_ephemeral(self, ephemeral_public: bytes) -> None:
        # psk modes mix the ephemeral into the chaining key as well as the hash
        self.ck = kdf1(self.ck, ephemeral_public)
        self.mix_hash(ephemeral_public)

    def mix_key(self, shared: bytes) -> bytes:
        self.ck, key = kdf2(self.ck, shared)
        return key

    def mix_chain(self, shared: bytes) -> None:
        self.ck = kdf1(self.ck, shared)

    def mix_psk(self, psk: bytes) -> bytes:
        self.ck, tau, key = kdf3(self.ck, psk)
        self.mix_hash(tau)
        return key

    def encrypt_and_hash(self, key: bytes, plaintext: bytes) -> bytes:
        ct = aead_encrypt(key, 0, plaintext, self.h)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, key: bytes, ciphertext: bytes) -> bytes:
        pt = aead_decrypt(key, 0, ciphertext, self.h)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[bytes, bytes]:
        """(initiator-to-responder key, responder-to-initiator key)."""
        return kdf2(self.ck, b"")


def write_initiation(
    sym: SymmetricState,
    static: PrivateKey,
    ephemeral: PrivateKey,
    responder_static: bytes,
    static_static: bytes,
    payload: bytes,
) -> tuple[bytes, bytes, bytes]:
    """Message 1 (-> e, es, s, ss): (ephemeral public, sealed static, sealed payload)."""
    sym.mix_ephemeral(ephemeral.public)
    key = sym.mix_key(ephemeral.exchange(responder_static))
    sealed_static = sym.encrypt_and_hash(key, static.public)
    key = sym.mix_key(static_static)
    sealed_payload = sym.encrypt_and_hash(key, payload)
    return ephemeral.public, sealed_static, sealed_payload


def read_initiation_static(
    sym: SymmetricState, static: PrivateKey, ephemeral_public: bytes, sealed_static: bytes
) -> bytes:
    """First half of reading message 1: who claims to be initiating."""
    sym.mix_ephemeral(ephemeral_public)
    key = sym.mix_key(static.exchange(ephemeral_public))
    return sym.decrypt_and_hash(key, sealed_static)


def read_initiation_payload(sym: SymmetricState, static_static: bytes, sealed: bytes) -> bytes:
    """Second half, once the caller has found the static-static secret for that peer."""
    key = sym.mix_key(static_static)
    return sym.decrypt_and_hash(key, sealed)


def write_response(
    sym: SymmetricState,
    ephemeral: PrivateKey,
    initiator_ephemeral: bytes,
    initiator_static: bytes,
    psk: bytes,
    payload: bytes,
) -> tuple[bytes, bytes]:
    """Message 2 (<- e, ee, se, psk): (ephemeral public, sealed payload)."""
    sym.mix_ephemeral(ephemeral.public)
    sym.mix_chain(ephemeral.exchange(initiator_ephemeral))
    sym.mix_chain(ephemeral.exchange(initiator_static))
    key = sym.mix_psk(psk)
    return ephemeral.public, sym.encrypt_and_hash(key, payload)


def read_response(
    sym: SymmetricState,
    static: PrivateKey,
    ephemeral: PrivateKey,
    responder_ephemeral: bytes,
    psk: bytes,
    sealed: bytes,
) -> bytes:
    sym.mix_ephemeral(responder_ephemeral)
    sym.mix_chain(ephemeral.exchange(responder_ephemeral))
    sym.mix_chain(static.exchange(responder_ephemeral))
    key = sym.mix_psk(psk)
    return sym.decrypt_and_hash(key, sealed)
