"""The link's demultiplexer: WireGuard's four messages go to the engine, everything else
to the handler registered for it (STUN by its magic cookie, probes by their prefix), with
a raw send from the WireGuard port; with no handler it is dropped and counted."""

from __future__ import annotations

import os
import selectors
import socket
import struct
from collections import Counter

import pytest

from wiresnake.io.demux import STUN_MAGIC_COOKIE, Demux, RawSend, is_stun, is_wireguard
from wiresnake.io.pump import Pump
from wiresnake.io.udp import UdpSockets
from wiresnake.protocol.device import Device
from wiresnake.protocol.peer import Endpoint

SRC = ("192.0.2.7", 51820)
PROBE = b"WSPROBE1"


def stun_request() -> bytes:
    """A STUN Binding request: type 0x0001, length 0, the cookie, a transaction id."""
    return struct.pack("!HH", 0x0001, 0) + STUN_MAGIC_COOKIE + os.urandom(12)


def transport(n: int = 64) -> bytes:
    return bytes([4, 0, 0, 0]) + os.urandom(n - 4)


class Seen:
    def __init__(self) -> None:
        self.got: list[tuple[Endpoint, bytes]] = []

    def __call__(self, src: Endpoint, data: bytes, send: RawSend) -> None:
        self.got.append((src, data))


def never_send(endpoint: Endpoint, data: bytes) -> bool:
    raise AssertionError("nothing should be sent")


def routed() -> tuple[Demux, Seen, Seen]:
    demux, stun, probe = Demux(), Seen(), Seen()
    demux.register_stun(stun)
    demux.register_prefix(PROBE, probe)
    return demux, stun, probe


def test_classifiers() -> None:
    for kind in (1, 2, 3, 4):
        assert is_wireguard(bytes([kind, 0, 0, 0]) + bytes(28))
    assert not is_wireguard(bytes([5, 0, 0, 0]) + bytes(28))
    assert not is_wireguard(bytes([4, 0, 1, 0]) + bytes(28))  # reserved bytes not zero
    assert not is_wireguard(b"\x04\x00")
    assert is_stun(stun_request())
    assert not is_stun(stun_request()[:19])
    assert not is_stun(transport())


def test_stun_and_probe_reach_their_handlers_with_the_source() -> None:
    demux, stun, probe = routed()
    request, ping, data = stun_request(), PROBE + b"hello", transport()
    counters: Counter[str] = Counter()
    kept = demux.split([(SRC, request, 0), (SRC, data, 0), (SRC, ping, 0)], never_send, counters)
    assert kept == [(SRC, data, 0)]
    assert stun.got == [(SRC, request)]
    assert probe.got == [(SRC, ping)]
    assert counters["malformed"] == 0


def test_wireguard_runs_pass_untouched() -> None:
    demux, stun, probe = routed()
    runs = [
        (SRC, b"".join(transport(100) for _ in range(5)) + transport(40), 100),
        (SRC, bytes([1, 0, 0, 0]) + bytes(144), 0),
        (SRC, b"".join(bytes([2, 0, 0, 0]) + bytes(88) for _ in range(3)), 92),
    ]
    counters: Counter[str] = Counter()
    assert demux.split(runs, never_send, counters) is runs
    assert not stun.got and not probe.got and not counters


def test_a_glued_run_with_a_stranger_is_cut_apart() -> None:
    # GRO glues one sender's datagrams of one size: a STUN message of the same size as
    # the data around it ends up inside the run
    demux, stun, _ = routed()
    size = 20
    a, b, c = transport(size), transport(size), transport(size)
    request = stun_request()
    assert len(request) == size
    counters: Counter[str] = Counter()
    kept = demux.split([(SRC, a + request + b + c, size)], never_send, counters)
    assert kept == [(SRC, a, 0), (SRC, b, 0), (SRC, c, 0)]
    assert stun.got == [(SRC, request)]


def test_reserved_bytes_are_checked_in_every_datagram_of_a_run() -> None:
    demux, _, _ = routed()
    size = 32
    bad = bytes([4, 0, 0, 1]) + bytes(size - 4)
    counters: Counter[str] = Counter()
    kept = demux.split([(SRC, transport(size) + bad + transport(size), size)], never_send, counters)
    assert len(kept) == 2 and all(is_wireguard(d) for _, d, _ in kept)
    assert counters["malformed"] == 1


def test_unclaimed_datagrams_are_dropped_and_counted() -> None:
    demux, stun, probe = routed()
    counters: Counter[str] = Counter()
    kept = demux.split([(SRC, b"\x17\x03\x03junk" * 3, 0), (SRC, b"x", 0)], never_send, counters)
    assert kept == []
    assert counters["malformed"] == 2
    assert not stun.got and not probe.got


def test_prefix_may_not_shadow_wireguard() -> None:
    with pytest.raises(ValueError):
        Demux().register_prefix(bytes([4, 0, 0, 0]), Seen())
    with pytest.raises(ValueError):
        Demux().register_prefix(b"", Seen())


def _read_until(pump: Pump, udp: UdpSockets, done: object, timeout: float = 2.0) -> None:
    sel = selectors.DefaultSelector()
    for s in udp.sockets():
        sel.register(s, selectors.EVENT_READ)
    try:
        for _ in range(int(timeout / 0.05)):
            for key, _events in sel.select(0.05):
                pump.read(key.fileobj)  # type: ignore[arg-type]
            if callable(done) and done():
                return
    finally:
        sel.close()


def test_a_handler_answers_from_the_wireguard_port() -> None:
    device = Device(mtu=1420)
    udp = UdpSockets(0, host="127.0.0.1")
    delivered: list[bytes] = []
    pump = Pump(device, udp.send_batch, lambda packets, _now: delivered.extend(packets))
    answered: list[Endpoint] = []

    def on_stun(src: Endpoint, data: bytes, send: RawSend) -> None:
        answered.append(src)
        # a Binding success response echoing the transaction id (attributes left out)
        assert send(src, struct.pack("!HH", 0x0101, 0) + data[4:20])

    pump.demux.register_stun(on_stun)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.bind(("127.0.0.1", 0))
        client.settimeout(2.0)
        request = stun_request()
        client.sendto(request, ("127.0.0.1", udp.port))
        client.sendto(b"nobody's", ("127.0.0.1", udp.port))
        _read_until(pump, udp, lambda: answered and device.counters["malformed"])
        reply, where = client.recvfrom(2048)
        assert where == ("127.0.0.1", udp.port)
        assert reply[4:20] == request[4:20] and reply[:2] == b"\x01\x01"
        assert [tuple(a) for a in answered] == [client.getsockname()]
        assert device.counters["malformed"] == 1
        assert not delivered
    finally:
        client.close()
        udp.close()


def test_without_handlers_the_engine_counts_as_before() -> None:
    device = Device(mtu=1420)
    udp = UdpSockets(0, host="127.0.0.1")
    pump = Pump(device, udp.send_batch, lambda packets, _now: None)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.sendto(stun_request(), ("127.0.0.1", udp.port))
        _read_until(pump, udp, lambda: device.counters["malformed"])
        assert device.counters["malformed"] == 1
    finally:
        client.close()
        udp.close()
