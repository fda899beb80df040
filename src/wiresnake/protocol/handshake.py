"""One peer's handshake: WireGuard's framing of the two Noise messages (section 5.4).

A `Handshake` holds what lasts between messages: the symmetric state of a pending
initiation, the greatest timestamp seen from the peer (replay defence) and when its last
initiation was consumed (flood defence). MACs are stamped by `cookie`, indices are
allocated by the device; this module only builds and checks the Noise parts.
"""

from __future__ import annotations

import enum

from wiresnake.crypto import CryptoError, PrivateKey, hash
from wiresnake.protocol import noise
from wiresnake.protocol.constants import HANDSHAKE_INITIATION_RATE
from wiresnake.protocol.messages import Initiation, Response

__all__ = ["Handshake", "HandshakeState", "open_initiation"]

_ZERO16 = bytes(16)


class HandshakeState(enum.Enum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2


class Handshake:
    __slots__ = (
        "ephemeral",
        "initial_hash",
        "last_initiation_consumed",
        "latest_timestamp",
        "local_index",
        "preshared_key",
        "remote_ephemeral",
        "remote_index",
        "remote_static",
        "state",
        "static_static",
        "sym",
    )

    def __init__(self, remote_static: bytes) -> None:
        self.remote_static = remote_static
        self.initial_hash = hash(noise.INITIAL_HASH, remote_static)
        # None when the peer's key is of low order: then no handshake is ever made
        self.static_static: bytes | None = None
        self.preshared_key = bytes(32)
        self.latest_timestamp = bytes(12)
        self.last_initiation_consumed = float("-inf")
        self.state = HandshakeState.ZEROED
        self.sym: noise.SymmetricState | None = None
        self.ephemeral: PrivateKey | None = None
        self.remote_ephemeral = b""
        self.local_index = 0
        self.remote_index = 0

    def clear(self) -> None:
        self.state = HandshakeState.ZEROED
        self.sym = None
        self.ephemeral = None
        self.remote_ephemeral = b""
        self.local_index = 0
        self.remote_index = 0

    def create_initiation(
        self, static: PrivateKey, ephemeral: PrivateKey, local_index: int, timestamp: bytes
    ) -> bytearray | None:
        """Message 1 with zero MACs, or None if this peer cannot be handshaken with."""
        if self.static_static is None:
            return None
        sym = noise.SymmetricState(noise.INITIAL_CHAIN_KEY, self.initial_hash)
        e, s, ts = noise.write_initiation(
            sym, static, ephemeral, self.remote_static, self.static_static, timestamp
        )
        self.sym, self.ephemeral, self.local_index = sym, ephemeral, local_index
        self.state = HandshakeState.INITIATION_CREATED
        return bytearray(Initiation(local_index, e, s, ts, _ZERO16, _ZERO16).pack())

    def accept_initiation(
        self, sym: noise.SymmetricState, msg: Initiation, now: float
    ) -> str | None:
        """Finish reading message 1 opened by `open_initiation`; None, or why it is refused."""
        if self.static_static is None:
            return "low_order_peer"
        try:
            timestamp = noise.read_initiation_payload(sym, self.static_static, msg.timestamp)
        except CryptoError:
            return "handshake_failed"
        # big-endian fixed width, so byte order is time order
        if timestamp <= self.latest_timestamp:
            return "replayed_initiation"
        if now - self.last_initiation_consumed <= HANDSHAKE_INITIATION_RATE:
            return "initiation_flood"
        self.latest_timestamp = timestamp
        self.last_initiation_consumed = now
        self.sym = sym
        self.remote_ephemeral = msg.ephemeral
        self.remote_index = msg.sender
        self.state = HandshakeState.INITIATION_CONSUMED
        return None

    def create_response(
        self, ephemeral: PrivateKey, local_index: int
    ) -> tuple[bytearray, bytes, bytes] | None:
        """Message 2 with zero MACs and the (send, receive) transport keys."""
        if self.state is not HandshakeState.INITIATION_CONSUMED or self.sym is None:
            return None
        try:
            e, empty = noise.write_response(
                self.sym,
                ephemeral,
                self.remote_ephemeral,
                self.remote_static,
                self.preshared_key,
                b"",
            )
        except CryptoError:
            self.clear()
            return None
        receive_key, send_key = self.sym.split()
        msg = bytearray(Response(local_index, self.remote_index, e, empty, _ZERO16, _ZERO16).pack())
        self.clear()
        return msg, send_key, receive_key

    def consume_response(self, msg: Response, static: PrivateKey) -> tuple[bytes, bytes] | None:
        """Read message 2 answering our pending initiation: (send, receive) keys, or None."""
        if (
            self.state is not HandshakeState.INITIATION_CREATED
            or self.sym is None
            or self.ephemeral is None
            or msg.receiver != self.local_index
        ):
            return None
        sym = self.sym.copy()
        try:
            noise.read_response(
                sym, static, self.ephemeral, msg.ephemeral, self.preshared_key, msg.empty
            )
        except CryptoError:
            return None
        self.remote_index = msg.sender
        send_key, receive_key = sym.split()
        self.state = HandshakeState.ZEROED
        self.sym = None
        self.ephemeral = None
        return send_key, receive_key


def open_initiation(
    msg: Initiation, static: PrivateKey, own_initial_hash: bytes
) -> tuple[noise.SymmetricState, bytes] | None:
    """First half of reading message 1: (state so far, initiator's static key), or None."""
    sym = noise.SymmetricState(noise.INITIAL_CHAIN_KEY, own_initial_hash)
    try:
        remote = noise.read_initiation_static(sym, static, msg.ephemeral, msg.static)
    except CryptoError:
        return None
    return sym, remote
