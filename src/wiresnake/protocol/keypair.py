"""A session: the pair of transport keys one handshake derives, and their counters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wiresnake.crypto import ChaCha20Poly1305
from wiresnake.protocol.replay import ReplayWindow

if TYPE_CHECKING:
    from wiresnake.protocol.peer import Peer

__all__ = ["Keypair"]


class Keypair:
    __slots__ = (
        "created",
        "initiator",
        "local_index",
        "peer",
        "receive",
        "remote_index",
        "replay",
        "send",
        "send_counter",
    )

    def __init__(
        self,
        peer: Peer,
        send_key: bytes,
        receive_key: bytes,
        *,
        initiator: bool,
        local_index: int,
        remote_index: int,
        created: float,
    ) -> None:
        self.peer = peer
        self.send = ChaCha20Poly1305(send_key)
        self.receive = ChaCha20Poly1305(receive_key)
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.initiator = initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created

    def __repr__(self) -> str:
        return f"Keypair(local={self.local_index:#x}, remote={self.remote_index:#x})"
