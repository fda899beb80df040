"""Per-source handshake ratelimiting: the token bucket of the kernel's ratelimiter.c.

Each source gets a bucket of at most PACKETS_BURSTABLE packets that refills at
PACKETS_PER_SECOND.  An IPv4 source is its whole address; an IPv6 source is its /64, so that
one host cannot dodge the limit by walking its own subnet.  Time is passed in (monotonic
seconds) and kept internally as integer nanoseconds, as the kernel does, so that refills of
exactly one packet cost are never lost to float rounding.  Buckets idle for more than a
second are full again and carry no state, so they are dropped; the table is capped, and new
sources are refused while it is full, so memory stays bounded under a spoofed-source flood.

`take` and `ready` name a bucket by any key as it is (a cookie reply's is the address and port
it goes to); a table built with `admit_when_full` lets new keys through untracked while full,
for a limit whose work something else bounds as well.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_ENTRIES", "PACKETS_BURSTABLE", "PACKETS_PER_SECOND", "Ratelimiter"]

PACKETS_PER_SECOND = 20
PACKETS_BURSTABLE = 5
DEFAULT_MAX_ENTRIES = 65536

_NSEC_PER_SEC = 1_000_000_000
_PACKET_COST = _NSEC_PER_SEC // PACKETS_PER_SECOND
_TOKEN_MAX = _PACKET_COST * PACKETS_BURSTABLE
_GC_INTERVAL = _NSEC_PER_SEC
_IDLE_AFTER = _NSEC_PER_SEC


class Ratelimiter:
    """Token buckets keyed by source address; not thread-safe."""

    __slots__ = ("_admit_when_full", "_last_gc", "_max_entries", "_table")

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, *, admit_when_full: bool = False
    ) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, not {max_entries}")
        self._max_entries = max_entries
        self._admit_when_full = admit_when_full
        # key -> [last time (ns), tokens (ns)], updated in place rather than replaced per call
        self._table: dict[bytes, list[int]] = {}
        self._last_gc: int | None = None

    def __len__(self) -> int:
        return len(self._table)

    def allow(self, ip: bytes, now: float) -> bool:
        """Charge one packet to the bucket of ``ip`` (packed, 4 or 16 bytes) at ``now``.

        Returns whether the packet may be processed (see `take`).
        """
        n = len(ip)
        if n == 4:
            key = bytes(ip)
        elif n == 16:
            key = bytes(ip[:8])  # the /64
        else:
            raise ValueError(f"source address must be 4 or 16 bytes, not {n}")
        return self.take(key, now)

    def take(self, key: bytes, now: float) -> bool:
        """Charge one packet to the bucket of ``key`` (used as it is) at ``now``: whether the
        packet may be processed. Sweeps idle buckets, at most once a second."""
        now_ns = round(now * _NSEC_PER_SEC)
        last_gc = self._last_gc
        if last_gc is None:
            self._last_gc = now_ns
        elif now_ns - last_gc >= _GC_INTERVAL:
            self._sweep(now_ns)
        entry = self._table.get(key)
        if entry is not None:
            # As the kernel: the burst is part of the bucket size, not of the rate.
            tokens = entry[1] + now_ns - entry[0]
            if tokens > _TOKEN_MAX:
                tokens = _TOKEN_MAX
            entry[0] = now_ns
            if tokens >= _PACKET_COST:
                entry[1] = tokens - _PACKET_COST
                return True
            entry[1] = tokens
            return False
        if len(self._table) >= self._max_entries:
            return self._admit_when_full
        self._table[key] = [now_ns, _TOKEN_MAX - _PACKET_COST]
        return True

    def ready(self, key: bytes, now: float) -> bool:
        """Whether `take` would allow ``key`` at ``now``; charges nothing."""
        entry = self._table.get(key)
        if entry is None:
            return self._admit_when_full or len(self._table) < self._max_entries
        return entry[1] + round(now * _NSEC_PER_SEC) - entry[0] >= _PACKET_COST

    def gc(self, now: float) -> None:
        """Drop every bucket idle for more than a second at ``now``."""
        self._sweep(round(now * _NSEC_PER_SEC))

    def clear(self) -> None:
        """Drop every bucket."""
        self._table.clear()

    def _sweep(self, now_ns: int) -> None:
        self._last_gc = now_ns
        table = self._table
        stale = [key for key, entry in table.items() if now_ns - entry[0] > _IDLE_AFTER]
        if len(stale) * 2 > len(table):
            # Mostly idle (say after a flood): rebuild, so that the dict shrinks too.
            self._table = {k: e for k, e in table.items() if now_ns - e[0] <= _IDLE_AFTER}
        else:
            for key in stale:
                del table[key]
