"""Initial sequence numbers (RFC 6528) and ephemeral ports that do not come back soon."""

from __future__ import annotations

import random

from wiresnake.netstack.isn import IsnGenerator
from wiresnake.netstack.sockets import EPHEMERAL_PORTS, SocketSet

A, B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def _after(x: int, y: int) -> bool:
    """x is after y in sequence space."""
    return 0 < (x - y) & 0xFFFFFFFF < 0x80000000


def test_a_reconnect_on_the_same_four_tuple_starts_above_the_last() -> None:
    isn = IsnGenerator(b"k" * 16)
    first = isn(A, 50000, B, 80, 100.0)
    # a millisecond later the old connection has sent at most a few kilobytes; the new
    # one starts ahead of all of them, as a TIME-WAIT peer requires
    assert _after(isn(A, 50000, B, 80, 100.001), first)
    assert isn(A, 50000, B, 80, 100.001) - first & 0xFFFFFFFF == 250


def test_different_connections_and_keys_are_unrelated() -> None:
    isn = IsnGenerator(b"k" * 16)
    values = {isn(A, port, B, 80, 5.0) for port in range(50000, 50100)}
    assert len(values) == 100
    assert IsnGenerator(b"x" * 16)(A, 50000, B, 80, 5.0) != isn(A, 50000, B, 80, 5.0)
    assert IsnGenerator()(A, 1, B, 2, 0.0) != IsnGenerator()(A, 1, B, 2, 0.0)


def test_ephemeral_ports_go_round_before_one_is_used_again() -> None:
    sockets = SocketSet(random.Random(1))
    seen = []
    for i in range(1000):
        sock = object()
        port = sockets.bind(sock, 6, None, 0, (B, 80 + i % 3))  # type: ignore[arg-type]
        seen.append(port)
        sockets.remove(sock)  # type: ignore[arg-type]
    assert len(set(seen)) == 1000
    assert all(p in EPHEMERAL_PORTS for p in seen)
