"""The pump: the one receive, send, give back, deliver, tick cycle every host runs."""

from __future__ import annotations

import selectors
import time

from lab import ipv4_packet

from wiresnake.crypto import generate_private_key, public_key
from wiresnake.io.pump import Pump
from wiresnake.io.udp import UdpSockets
from wiresnake.protocol.constants import REKEY_TIMEOUT
from wiresnake.protocol.device import Datagram, Device


class Side:
    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.device = Device(generate_private_key(), mtu=1420)
        self.udp = UdpSockets(0, host="127.0.0.1")
        self.delivered: list[bytes] = []
        self.pump = Pump(self.device, self.udp.send_batch, self.deliver)

    def deliver(self, packets: list[bytes], _now: float) -> None:
        self.delivered.extend(packets)


def _pair() -> tuple[Side, Side]:
    a, b = Side("10.9.0.1"), Side("10.9.0.2")
    for x, y in ((a, b), (b, a)):
        assert y.device.public_key is not None
        peer = x.device.add_peer(y.device.public_key)
        x.device.allow(peer, y.ip + "/32")
        x.device.set_endpoint(peer, ("127.0.0.1", y.udp.port))
    return a, b


def test_two_engines_talk_through_their_pumps() -> None:
    a, b = _pair()
    sel = selectors.DefaultSelector()
    try:
        for side in (a, b):
            for s in side.udp.sockets():
                sel.register(s, selectors.EVENT_READ, (side, s))
        hello = ipv4_packet(a.ip, b.ip, b"hello")
        a.pump.from_tunnel([hello], time.monotonic())  # starts the handshake, queues hello
        deadline = time.monotonic() + 3.0
        while not b.delivered and time.monotonic() < deadline:
            for key, _ in sel.select(0.05):
                side, s = key.data
                assert side.pump.read(s)
            for side in (a, b):
                side.pump.due(time.monotonic())
        assert b.delivered == [hello]
        assert a.device.public_key is not None
        peer = b.device.peer(a.device.public_key)
        assert peer is not None and peer.rx_bytes > 0 and peer.endpoint == ("127.0.0.1", a.udp.port)
    finally:
        sel.close()
        a.udp.close()
        b.udp.close()


def test_unsent_datagrams_are_given_back_and_nothing_sends_once_closed() -> None:
    device = Device(generate_private_key(), mtu=1420)
    peer = device.add_peer(public_key(generate_private_key()))
    device.allow(peer, "10.9.0.2/32")
    device.set_endpoint(peer, ("127.0.0.1", 9))
    sent: list[list[Datagram]] = []

    def refuse(datagrams: list[Datagram]) -> list[Datagram]:
        sent.append(datagrams)
        return list(datagrams)

    pump = Pump(device, refuse, lambda packets, now: None)
    now = 1000.0
    pump.from_tunnel([ipv4_packet("10.9.0.1", "10.9.0.2", b"x")], now)
    assert len(sent) == 1 and sent[0][0][1][0] == 1  # a handshake initiation
    assert peer.tx_bytes == 0  # refused, so not counted as sent
    assert not pump.due(now)  # the retry is not due yet
    assert pump.due(now + REKEY_TIMEOUT + 1)
    assert len(sent) == 2
    pump.close()
    assert not pump.send_raw(("127.0.0.1", 9), b"probe")
    pump.tick(now + 3 * (REKEY_TIMEOUT + 1))
    assert len(sent) == 2
