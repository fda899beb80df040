"""TCP on the interface: two stacks back to back in memory, on a fake clock."""

from __future__ import annotations

import random
import socket
from collections import Counter
from collections.abc import Callable

import pytest

from wiresnake.netstack import Interface
from wiresnake.netstack.checksum import checksum, pseudo_header
from wiresnake.netstack.ip import PROTO_TCP, build_ipv4, parse
from wiresnake.netstack.tcp import ACK, SYN, Segment, State, TcpError
from wiresnake.netstack.tcpsock import (
    TcpListener,
    TcpSocket,
    build_segment,
    connect,
    mss_for,
    parse_segment,
)

A4, B4 = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")


def _pair() -> tuple[Interface, Interface]:
    a = Interface(["10.0.0.1/24", "fd00::1/64"], rng=random.Random(1))
    b = Interface(["10.0.0.2/24", "fd00::2/64"], rng=random.Random(2))
    return a, b


class Clock:
    def __init__(self) -> None:
        self.now = 100.0


def _step(a: Interface, b: Interface, clock: Clock) -> bool:
    """One exchange both ways; advance the clock to the next deadline if nothing moved."""
    moved = False
    for _ in range(4):
        pa = a.poll(clock.now)
        if pa:
            b.receive(pa, clock.now)
        pb = b.poll(clock.now)
        if pb:
            a.receive(pb, clock.now)
        moved = moved or bool(pa or pb)
        if not (pa or pb):
            break
    if not moved:
        deadlines = [d for d in (a.next_deadline(), b.next_deadline()) if d is not None]
        if deadlines:
            clock.now = max(clock.now, min(deadlines))
    return moved


def _run(
    a: Interface, b: Interface, clock: Clock, until: Callable[[], bool], limit: int = 100000
) -> None:
    for _ in range(limit):
        if until():
            return
        _step(a, b, clock)
    raise AssertionError("did not converge")


def _connected(
    a: Interface, b: Interface, clock: Clock, dst: str = "10.0.0.2"
) -> tuple[TcpSocket, TcpSocket]:
    listener = TcpListener(b, 8080)
    client = connect(a, (dst, 8080), clock.now)
    accepted: list[TcpSocket] = []

    def done() -> bool:
        s = listener.accept()
        if s is not None:
            accepted.append(s)
        return bool(accepted) and client.state is State.ESTABLISHED

    _run(a, b, clock, done)
    return client, accepted[0]


def test_header_round_trip_with_options() -> None:
    seg = Segment(1234, 80, 0xFFFFFFF0, 0, SYN, 65535, b"", 1380, 7)
    packet = build_ipv4(A4, B4, PROTO_TCP, build_segment(A4, B4, seg), 64, 0)
    counters: Counter[str] = Counter()
    p = parse(packet, counters)
    assert p is not None
    assert parse_segment(p, counters) == seg
    assert mss_for(1420, 4) == 1380 and mss_for(1420, 6) == 1360


def _round_trip(seg: Segment) -> tuple[Segment | None, Counter[str]]:
    packet = build_ipv4(A4, B4, PROTO_TCP, build_segment(A4, B4, seg), 64, 0)
    counters: Counter[str] = Counter()
    p = parse(packet, counters)
    assert p is not None
    return parse_segment(p, counters), counters


def test_sack_options_round_trip() -> None:
    syn = Segment(1234, 80, 7, 0, SYN, 65535, b"", 1380, 7, True)
    assert _round_trip(syn)[0] == syn
    blocks = ((0xFFFFFF00, 0x100), (10, 20), (30, 40), (50, 60))
    ack = Segment(1234, 80, 7, 9, ACK, 500, b"data", sack=blocks)
    assert _round_trip(ack)[0] == ack
    # SYN options on a segment without SYN mean nothing; a fifth block does not fit.
    assert _round_trip(ack._replace(mss=1000))[0] == ack
    assert _round_trip(ack._replace(sack=(*blocks, (70, 80))))[0] == ack


def test_a_malformed_sack_option_is_counted_and_ignored() -> None:
    seg = bytearray(build_segment(A4, B4, Segment(1, 2, 3, 4, ACK, 5, b"", sack=((1, 2),))))
    seg[23] = 9  # block length not a multiple of 8
    seg[16:18] = b"\0\0"
    seg[16:18] = checksum(bytes(seg), pseudo_header(A4, B4, PROTO_TCP, len(seg))).to_bytes(2, "big")
    counters: Counter[str] = Counter()
    p = parse(build_ipv4(A4, B4, PROTO_TCP, bytes(seg), 64, 0), counters)
    assert p is not None
    parsed = parse_segment(p, counters)
    assert parsed is not None and parsed.sack == () and parsed.ack == 4
    assert counters["tcp_bad_option"] >= 1


@pytest.mark.parametrize("dst", ["10.0.0.2", "fd00::2"])
def test_connect_exchange_a_megabyte_both_ways_and_close(dst: str) -> None:
    a, b = _pair()
    clock = Clock()
    client, server = _connected(a, b, clock, dst)
    assert client.conn._mss == mss_for(1420, 4 if "." in dst else 6)
    assert server.peername == (
        ("10.0.0.1" if "." in dst else "fd00::1"),
        client.conn.local_port,
    )
    rng = random.Random(3)
    up = rng.randbytes(1 << 20)
    down = rng.randbytes(1 << 20)
    sent = {"up": 0, "down": 0}
    got_up, got_down = bytearray(), bytearray()

    def pump() -> bool:
        if sent["up"] < len(up):
            sent["up"] += client.send(up[sent["up"] : sent["up"] + 65536])
        if sent["down"] < len(down):
            sent["down"] += server.send(down[sent["down"] : sent["down"] + 65536])
        got_up.extend(server.recv(1 << 20))
        got_down.extend(client.recv(1 << 20))
        return len(got_up) == len(up) and len(got_down) == len(down)

    _run(a, b, clock, pump)
    assert bytes(got_up) == up and bytes(got_down) == down
    client.close()
    server.close()
    _run(
        a,
        b,
        clock,
        lambda: client.state in (State.TIME_WAIT, State.CLOSED) and server.state is State.CLOSED,
    )
    assert client.conn.eof and server.conn.eof
    assert server.closed and server not in b.sockets
    # TIME-WAIT ends and frees the port
    _run(a, b, clock, lambda: client.closed)
    assert client.conn.error is None and server.conn.error is None
    assert a.counters["tcp_bad_checksum"] == b.counters["tcp_bad_checksum"] == 0


def test_a_syn_to_a_port_nobody_listens_on_is_refused() -> None:
    a, b = _pair()
    clock = Clock()
    client = connect(a, ("10.0.0.2", 9), clock.now)
    _run(a, b, clock, lambda: client.state is State.CLOSED)
    assert client.conn.error is TcpError.REFUSED
    assert b.counters["tcp_resets_sent"] == 1
    assert client.closed
    # a RST is never answered with a RST
    rst = build_segment(A4, B4, Segment(5555, 9, 1, 0, 0x04, 0))
    b.receive([build_ipv4(A4, B4, PROTO_TCP, rst, 64, 1)], clock.now)
    assert b.poll(clock.now) == []
    assert b.counters["tcp_resets_sent"] == 1


def test_a_corrupted_checksum_is_dropped_and_counted() -> None:
    _, b = _pair()
    TcpListener(b, 80)
    seg = bytearray(build_segment(A4, B4, Segment(4000, 80, 1, 0, SYN, 1000, b"", 1380)))
    seg[4] ^= 0x40
    b.receive([build_ipv4(A4, B4, PROTO_TCP, bytes(seg), 64, 0)], 0.0)
    assert b.counters["tcp_bad_checksum"] == 1
    assert b.counters["tcp_accepted"] == 0
    assert b.poll(0.0) == []


def test_a_link_that_authenticates_packets_skips_the_checksum() -> None:
    _, b = _pair()
    b.trust_checksums = True  # as the rootless tunnel sets it: the AEAD has checked
    TcpListener(b, 80)
    seg = bytearray(build_segment(A4, B4, Segment(4000, 80, 1, 0, SYN, 1000, b"", 1380)))
    seg[16] ^= 0x40  # the checksum field itself
    b.receive([build_ipv4(A4, B4, PROTO_TCP, bytes(seg), 64, 0)], 0.0)
    assert b.counters["tcp_bad_checksum"] == 0
    assert b.counters["tcp_accepted"] == 1


def test_a_stray_ack_to_a_listener_gets_a_reset() -> None:
    _, b = _pair()
    TcpListener(b, 80)
    seg = build_segment(A4, B4, Segment(4000, 80, 1, 77, ACK, 1000))
    b.receive([build_ipv4(A4, B4, PROTO_TCP, seg, 64, 0)], 0.0)
    out = b.poll(0.0)
    assert len(out) == 1
    p = parse(out[0], b.counters)
    assert p is not None
    rst = parse_segment(p, b.counters)
    assert rst is not None and rst.flags == 0x04 and rst.seq == 77


def test_the_backlog_bounds_half_open_connections() -> None:
    _, b = _pair()
    TcpListener(b, 80, backlog=2)
    for port in (4000, 4001, 4002):
        seg = build_segment(A4, B4, Segment(port, 80, 1, 0, SYN, 1000))
        b.receive([build_ipv4(A4, B4, PROTO_TCP, seg, 64, 0)], 0.0)
    assert b.counters["tcp_accepted"] == 2
    assert b.counters["tcp_backlog_full"] == 1
    assert len(b.poll(0.0)) == 2  # two SYN-ACKs
