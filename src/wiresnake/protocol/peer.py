"""A peer: its identity, its sessions, its staged packets, counters and timer deadlines.

The peer holds state only; the engine (`device`) drives it. Timers are deadlines in the
engine's monotonic seconds, None when not armed, named after the whitepaper's timers.
"""

from __future__ import annotations

from collections import deque

from wiresnake.protocol.cookie import CookieGenerator
from wiresnake.protocol.handshake import Handshake
from wiresnake.protocol.keypair import Keypair

__all__ = ["Endpoint", "Peer"]

Endpoint = tuple[str, int]


class Peer:
    __slots__ = (
        "cookie",
        "current",
        "endpoint",
        "handshake",
        "handshake_attempts",
        "idle",
        "keepalive_at",
        "last_handshake",
        "last_sent_handshake",
        "need_another_keepalive",
        "new_handshake_at",
        "next",
        "persistent_keepalive",
        "persistent_keepalive_at",
        "previous",
        "public_key",
        "removed",
        "retransmit_at",
        "rx_bytes",
        "scheduled",
        "sent_last_minute_handshake",
        "staged",
        "tx_bytes",
        "zero_keys_at",
    )

    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.handshake = Handshake(public_key)
        self.cookie = CookieGenerator(public_key)
        self.endpoint: Endpoint | None = None
        self.persistent_keepalive = 0
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: deque[bytes] = deque()
        self.rx_bytes = 0
        self.tx_bytes = 0
        # wall-clock seconds of the last completed handshake, None if never
        self.last_handshake: float | None = None
        self.last_sent_handshake = float("-inf")
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False
        self.removed = False
        # reported idle (events.PeerIdle) and not heard from since
        self.idle = False
        # timer deadlines
        self.retransmit_at: float | None = None
        self.keepalive_at: float | None = None
        self.new_handshake_at: float | None = None
        self.zero_keys_at: float | None = None
        self.persistent_keepalive_at: float | None = None
        # the earliest time this peer sits in the engine's timer heap
        self.scheduled: float | None = None

    @property
    def preshared_key(self) -> bytes:
        return self.handshake.preshared_key

    def next_deadline(self) -> float | None:
        t: float | None = None
        for d in (
            self.retransmit_at,
            self.keepalive_at,
            self.new_handshake_at,
            self.zero_keys_at,
            self.persistent_keepalive_at,
        ):
            if d is not None and (t is None or d < t):
                t = d
        return t

    def keypairs(self) -> list[Keypair]:
        return [k for k in (self.previous, self.current, self.next) if k is not None]

    def __repr__(self) -> str:
        from wiresnake.crypto import key_to_base64

        return f"Peer({key_to_base64(self.public_key)[:8]}…)"
