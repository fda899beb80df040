"""What else arrives on the WireGuard port: STUN, the mesh's probes, anything registered.

WireGuard's four messages begin with a type byte 1-4 and three zero bytes. The link looks
at those four bytes before the engine does and hands every other datagram to the first
handler whose predicate accepts it, with a raw send from the same port (STUN answers
must leave from the port they probe). A datagram no handler takes is dropped and counted
as `malformed`, the counter the engine uses for it.

GRO runs are one sender's datagrams of one size: their four header bytes are read with
strided slices (a few C-level operations per run), so a run of WireGuard data costs no
per-datagram Python work; only a run that is not all WireGuard is cut apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from wiresnake.protocol.peer import Endpoint

__all__ = ["STUN_MAGIC_COOKIE", "Demux", "Handler", "RawSend", "is_stun", "is_wireguard"]

STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"  # RFC 5389, bytes 4-8 of every STUN message
_STUN_HEADER = 20

RawSend = Callable[[Endpoint, bytes], bool]
"""Sends one datagram from the WireGuard port, outside the engine; False if refused."""
Handler = Callable[[Endpoint, bytes, RawSend], None]
"""Takes (source, datagram, raw send) for a datagram that is not WireGuard's."""
Predicate = Callable[[bytes], bool]
Run = tuple[Endpoint, bytes, int]

_WIREGUARD_HEADERS = frozenset(bytes([kind, 0, 0, 0]) for kind in (1, 2, 3, 4))
_NOT_A_TYPE = bytes(range(256)).translate(None, bytes([1, 2, 3, 4]))


def is_wireguard(data: bytes) -> bool:
    """Begins as one of WireGuard's four messages (sizes are the engine's to check)."""
    return data[:4] in _WIREGUARD_HEADERS


def is_stun(data: bytes) -> bool:
    """A STUN message: at least its 20-byte header, the magic cookie at bytes 4-8."""
    return len(data) >= _STUN_HEADER and data[4:8] == STUN_MAGIC_COOKIE and data[0] < 0x40


def _all_wireguard(data: bytes, size: int) -> bool:
    """Every `size`-byte datagram of a glued run begins with a WireGuard header."""
    count = -(-len(data) // size)
    if len(data) - (count - 1) * size < 4:
        return False  # a last datagram too short for a header: look at each
    types = data[0::size]
    if types.translate(None, _NOT_A_TYPE) != types:
        return False
    return all(data[k::size].count(0) == count for k in (1, 2, 3))


class Demux:
    """Routes of (predicate, handler), tried in the order registered."""

    def __init__(self) -> None:
        self._routes: list[tuple[Predicate, Handler]] = []

    def __bool__(self) -> bool:
        return bool(self._routes)

    def register(self, predicate: Predicate, handler: Handler) -> None:
        """`handler` takes non-WireGuard datagrams that `predicate` accepts."""
        self._routes.append((predicate, handler))

    def register_prefix(self, prefix: bytes, handler: Handler) -> None:
        if not prefix or prefix[:4] in _WIREGUARD_HEADERS:
            raise ValueError("a prefix must not be empty or begin a WireGuard message")
        self.register(lambda data: data.startswith(prefix), handler)

    def register_stun(self, handler: Handler) -> None:
        self.register(is_stun, handler)

    def unregister(self, handler: Handler) -> None:
        self._routes = [r for r in self._routes if r[1] is not handler]

    def dispatch(self, src: Endpoint, data: bytes, send: RawSend, counters: Counter[str]) -> None:
        """One datagram that is not WireGuard's: to its handler, or dropped and counted."""
        for predicate, handler in self._routes:
            if predicate(data):
                counters["demux_handled"] += 1
                handler(src, data, send)
                return
        counters["malformed"] += 1

    def split(self, runs: list[Run], send: RawSend, counters: Counter[str]) -> list[Run]:
        """The runs (or parts of runs) that are WireGuard's; the rest dispatched."""
        kept: list[Run] | None = None  # built only once something is taken out
        for i, run in enumerate(runs):
            src, data, size = run
            if (
                data[:4] in _WIREGUARD_HEADERS
                if not 0 < size < len(data)
                else _all_wireguard(data, size)
            ):
                if kept is not None:
                    kept.append(run)
                continue
            if kept is None:
                kept = runs[:i]
            if not 0 < size < len(data):
                self.dispatch(src, data, send, counters)
                continue
            for k in range(0, len(data), size):
                part = data[k : k + size]
                if part[:4] in _WIREGUARD_HEADERS:
                    kept.append((src, part, 0))
                else:
                    self.dispatch(src, part, send, counters)
        return runs if kept is None else kept
