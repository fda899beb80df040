"""Initial sequence numbers as RFC 6528 section 3 builds them: a 4 µs clock plus a keyed
hash of the connection's addresses and ports.

Random ISNs would do against blind attacks, but a peer holding the previous connection
of the same 4-tuple in TIME-WAIT accepts a new SYN only if its sequence number is above
the old one (RFC 1122 section 4.2.2.13; what Linux checks without timestamps). The clock
part makes each connection of a 4-tuple start above the last, so a quick reconnect is not
ignored for a whole SYN timeout.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["IsnGenerator"]

_TICKS_PER_SECOND = 250_000  # one tick every 4 microseconds, as RFC 793 suggested


class IsnGenerator:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(16)

    def __call__(
        self, local: bytes, local_port: int, remote: bytes, remote_port: int, now: float
    ) -> int:
        """The ISN for a connection from (local, local_port) to (remote, remote_port),
        with addresses packed; `now` is seconds on a monotonic clock."""
        tuple_ = local + local_port.to_bytes(2, "big") + remote + remote_port.to_bytes(2, "big")
        offset = int.from_bytes(
            hashlib.blake2s(tuple_, digest_size=4, key=self._key).digest(), "big"
        )
        return (int(now * _TICKS_PER_SECOND) + offset) & 0xFFFFFFFF
