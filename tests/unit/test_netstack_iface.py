"""The interface: its addresses, its three calls, and two stacks talking through two real
WireGuard engines on a fake clock (netstack -> Device -> datagrams -> Device -> netstack)."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_netstack_icmp import US4, host, read_v4
from test_netstack_ip import v4, v6

from wiresnake.crypto import generate_private_key
from wiresnake.netstack import IcmpSocket, Interface, Socket, UdpSocket
from wiresnake.netstack.ip import build_ipv4
from wiresnake.protocol.device import Device
from wiresnake.protocol.peer import Endpoint

# ---------------------------------------------------------------- the interface itself


def test_addresses_come_from_a_wg_quick_address_list() -> None:
    iface = Interface(
        ["10.0.0.2/24", IPv6Interface("fd00::2/64"), IPv4Interface("10.1.0.2/32"), "fd01::2"]
    )
    assert iface.addresses == (
        ip_address("10.0.0.2"),
        ip_address("10.1.0.2"),
        ip_address("fd00::2"),
        ip_address("fd01::2"),
    )
    assert iface.mtu == 1420


@pytest.mark.parametrize(
    ("addresses", "kw"),
    [
        ([], {}),
        (["224.0.0.1"], {}),
        (["::"], {}),
        (["127.0.0.1"], {}),
        (["not an address"], {}),
        (["10.0.0.1"], {"mtu": 67}),
        (["fd00::1"], {"mtu": 1279}),
        (["10.0.0.1"], {"ttl": 0}),
    ],
)
def test_impossible_interfaces_are_refused(addresses: list[str], kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Interface(addresses, **kw)  # type: ignore[arg-type]


def test_packets_for_other_destinations_are_dropped_and_counted() -> None:
    iface = host()
    UdpSocket(iface, 53)
    iface.receive(
        [
            v4(b"\0" * 8, src=socket.inet_aton("10.0.0.1"), dst=socket.inet_aton("10.0.0.3")),
            v6(b"\0" * 8, dst=socket.inet_pton(socket.AF_INET6, "ff02::1")),
        ],
        0.0,
    )
    assert iface.counters["not_ours"] == 2 and iface.counters["received"] == 2
    assert iface.poll(0.0) == []


def test_nothing_to_do_means_no_deadline() -> None:
    iface = host()
    assert iface.next_deadline() is None
    UdpSocket(iface).send_to(b"x", ("10.0.0.1", 9))
    assert iface.next_deadline() == float("-inf")  # a packet waits: poll at once
    assert len(iface.poll(0.0)) == 1
    assert iface.next_deadline() is None


class Beacon(Socket):
    """A socket with a timer, the shape TCP will have: it sends one packet every
    `interval` seconds while started, and says when it next needs the interface."""

    def __init__(self, iface: Interface, interval: float) -> None:
        super().__init__(iface)
        self.interval = interval
        self.due: float | None = None
        self.sent: list[float] = []

    def start(self, now: float) -> None:
        self.due = now
        self.iface.wake(self)

    def stop(self) -> None:
        self.due = None
        self.iface.wake(self)

    def poll_at(self) -> float | None:
        return self.due

    def dispatch(self, now: float) -> None:
        assert self.due is not None and self.due <= now
        self.iface.transmit(US4, socket.inet_aton("10.0.0.1"), 253, b"beacon")
        self.sent.append(now)
        self.due = now + self.interval


def test_a_socket_with_a_timer_is_dispatched_when_its_deadline_comes() -> None:
    iface = host()
    beacon = Beacon(iface, 2.0)
    beacon.start(10.0)
    assert iface.next_deadline() == float("-inf")
    assert len(iface.poll(10.0)) == 1
    assert iface.next_deadline() == 12.0
    assert iface.poll(11.9) == []
    assert len(iface.poll(12.5)) == 1
    assert iface.next_deadline() == 14.5
    beacon.stop()
    assert iface.poll(20.0) == []
    assert iface.next_deadline() is None
    assert beacon.sent == [10.0, 12.5]


def test_moved_deadlines_leave_no_stale_wakeups_behind() -> None:
    iface = host()
    beacons = [Beacon(iface, 1.0) for _ in range(3)]
    for i, b in enumerate(beacons):
        b.start(100.0 + i)
    iface.poll(0.0)
    for _ in range(500):  # a deadline pushed back again and again, as TCP's RTO is
        beacons[0].due = (beacons[0].due or 0) + 0.001
        iface.wake(beacons[0])
        iface.poll(0.0)
    assert len(iface._timers) < 100
    assert iface.next_deadline() == pytest.approx(100.5)
    beacons[1].close()
    assert len(iface.poll(102.0)) == 2  # beacons 0 (moved to 100.5) and 2; 1 is closed
    assert [len(b.sent) for b in beacons] == [1, 0, 1]
    assert iface.next_deadline() == 103.0


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=5))
def test_random_bytes_never_raise(packets: list[bytes]) -> None:
    iface = host()
    UdpSocket(iface, 53)
    IcmpSocket(iface, ident=1)
    iface.receive(packets, 0.0)
    iface.receive([b"\x45" + p for p in packets] + [b"\x60" + p for p in packets], 0.0)
    iface.poll(0.0)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([1, 17, 58, 6]),
    st.binary(max_size=60),
    st.booleans(),
)
def test_well_formed_ip_around_random_payloads_never_raises(
    proto: int, payload: bytes, six: bool
) -> None:
    iface = host()
    UdpSocket(iface, 53)
    if six:
        pkt = v6(payload, dst=socket.inet_pton(socket.AF_INET6, "fd00::2"), nh=proto)
    else:
        pkt = build_ipv4(socket.inet_aton("10.0.0.1"), US4, proto, payload)
    iface.receive([pkt], 0.0)
    for out in iface.poll(0.0):
        if out[0] >> 4 == 4:
            read_v4(out)  # anything we answer has a valid header


# ---------------------------------------------------------------- through two engines


@dataclass
class Side:
    iface: Interface
    device: Device
    endpoint: Endpoint
    sent: list[bytes] = field(default_factory=list)


class Tunnel:
    """Two stacks, each behind its own WireGuard engine; the engines' UDP datagrams cross
    in memory. What the proxy will do with a real socket, on a fake clock."""

    def __init__(self, mtu: int = 1420) -> None:
        self.now = 1000.0
        rng = random.Random(5)
        self.a = Side(
            Interface(["10.0.0.1/24", "fd00::1/64"], mtu=mtu, rng=random.Random(1)),
            Device(generate_private_key(), mtu=mtu, rng=rng.randbytes),
            ("192.0.2.1", 51820),
        )
        self.b = Side(
            Interface(["10.0.0.2/24", "fd00::2/64"], mtu=mtu, rng=random.Random(2)),
            Device(generate_private_key(), mtu=mtu, rng=rng.randbytes),
            ("192.0.2.2", 51820),
        )
        for x, y, ips in (
            (self.a, self.b, ("10.0.0.2/32", "fd00::2/128")),
            (self.b, self.a, ("10.0.0.1/32", "fd00::1/128")),
        ):
            assert y.device.public_key is not None
            peer = x.device.add_peer(y.device.public_key)
            for ip in ips:
                x.device.allow(peer, ip)
            x.device.set_endpoint(peer, y.endpoint)
        self.datagrams = 0

    def sides(self) -> Iterator[tuple[Side, Side]]:
        yield self.a, self.b
        yield self.b, self.a

    def run(self, seconds: float = 0.0) -> None:
        """Move packets until both sides are quiet, then let `seconds` pass."""
        busy = True
        while busy:
            busy = False
            for src, dst in self.sides():
                packets = src.iface.poll(self.now)
                if not packets:
                    continue
                busy = True
                src.sent.extend(packets)
                pending = [
                    (src, dst, data)
                    for _, data in src.device.from_tunnel(packets, self.now).datagrams
                ]
                while pending:
                    s, d, data = pending.pop(0)
                    self.datagrams += 1
                    out = d.device.from_network([(s.endpoint, data)], self.now)
                    d.iface.receive(out.packets, self.now)
                    pending.extend((d, s, x) for _, x in out.datagrams)
        self.now += seconds


def test_ping_through_two_engines_over_both_families() -> None:
    t = Tunnel()
    sock = IcmpSocket(t.a.iface, ident=0x1234)
    sock.ping("10.0.0.2", 1, b"over the tunnel", t.now)
    sock.ping("fd00::2", 2, b"and in six", t.now)
    t.run()
    r1, r2 = sock.recv(), sock.recv()
    assert r1 is not None and (r1.source, r1.seq, r1.payload) == ("10.0.0.2", 1, b"over the tunnel")
    assert r2 is not None and (r2.source, r2.seq, r2.payload) == ("fd00::2", 2, b"and in six")
    assert r1.rtt == 0.0
    assert t.b.iface.counters["icmp_echo_answered"] == 2
    # first packet staged behind a handshake: initiation, response, then data both ways
    assert t.datagrams >= 4


@pytest.mark.parametrize(
    ("server_ip", "client_ip"), [("10.0.0.2", "10.0.0.1"), ("fd00::2", "fd00::1")]
)
def test_udp_exchange_both_ways(server_ip: str, client_ip: str) -> None:
    t = Tunnel()
    server = UdpSocket(t.b.iface, 7000)
    client = UdpSocket(t.a.iface)
    for i in range(20):
        client.send_to(b"request %d" % i, (server_ip, 7000))
    t.run()
    got = []
    while (d := server.recv_from()) is not None:
        got.append(d)
    assert [data for data, _ in got] == [b"request %d" % i for i in range(20)]
    assert {addr for _, addr in got} == {(client_ip, client.port)}
    for data, addr in got:
        server.send_to(data.replace(b"request", b"answer"), addr)
    t.run()
    answers = []
    while (d := client.recv_from()) is not None:
        answers.append(d)
    assert answers == [(b"answer %d" % i, (server_ip, 7000)) for i in range(20)]
    for side in (t.a, t.b):
        bad = {
            k: v
            for k, v in side.iface.counters.items()
            if k not in ("received", "sent", "udp_delivered")
        }
        assert not bad


def test_full_size_datagrams_cross_the_tunnel_at_the_mtu() -> None:
    t = Tunnel()
    server = UdpSocket(t.b.iface, 9)
    client = UdpSocket(t.a.iface)
    big4, big6 = bytes(client.max_payload(4)), bytes(client.max_payload(6))
    client.send_to(big4, ("10.0.0.2", 9))
    client.send_to(big6, ("fd00::2", 9))
    t.run()
    assert [len(p) for p in t.a.sent] == [1420, 1420]
    r1, r2 = server.recv_from(), server.recv_from()
    assert r1 is not None and r1[0] == big4 and r2 is not None and r2[0] == big6


def test_port_unreachable_comes_back_through_the_tunnel() -> None:
    t = Tunnel()
    client = UdpSocket(t.a.iface)
    client.send_to(b"anyone?", ("10.0.0.2", 4444))
    t.run()
    error = client.recv_error()
    assert error is not None
    assert (error.reason, error.reporter, error.remote) == (
        "port_unreachable",
        "10.0.0.2",
        ("10.0.0.2", 4444),
    )
    assert t.b.iface.counters["udp_no_socket"] == 1


# a DNS-like protocol: a 12-byte header (id, flags, counts) and one question; the server
# answers with the question and one A record, as a resolver on the far side would

_DNS_HEADER = struct.Struct("!HHHHHH")


def dns_query(ident: int, name: str) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return _DNS_HEADER.pack(ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def dns_answer(query: bytes, records: dict[str, str]) -> bytes:
    ident, _, _, _, _, _ = _DNS_HEADER.unpack_from(query)
    i, labels = 12, []
    while query[i]:
        labels.append(query[i + 1 : i + 1 + query[i]].decode())
        i += 1 + query[i]
    question = query[12 : i + 5]
    name = ".".join(labels)
    if name not in records:
        return _DNS_HEADER.pack(ident, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + socket.inet_aton(records[name])
    return _DNS_HEADER.pack(ident, 0x8180, 1, 1, 0, 0) + question + answer


def test_a_dns_like_request_and_response_between_two_stacks() -> None:
    t = Tunnel()
    resolver = UdpSocket(t.b.iface, 53, "10.0.0.2")
    records = {"example.internal": "10.9.8.7", "db.example.internal": "10.9.8.6"}
    stub = UdpSocket(t.a.iface)
    queries = {0x1001: "example.internal", 0x1002: "nope.internal", 0x1003: "db.example.internal"}
    for ident, name in queries.items():
        stub.send_to(dns_query(ident, name), ("10.0.0.2", 53))
    t.run(0.01)
    while (request := resolver.recv_from()) is not None:
        query, client = request
        resolver.send_to(dns_answer(query, records), client)
    t.run()
    results = {}
    while (reply := stub.recv_from()) is not None:
        data, source = reply
        assert source == ("10.0.0.2", 53)
        ident, flags, _, ancount, _, _ = _DNS_HEADER.unpack_from(data)
        results[ident] = (
            socket.inet_ntoa(data[-4:]) if flags & 0xF == 0 and ancount == 1 else "NXDOMAIN"
        )
    assert results == {0x1001: "10.9.8.7", 0x1002: "NXDOMAIN", 0x1003: "10.9.8.6"}


def test_a_socket_bound_to_any_answers_from_the_address_it_was_asked_on() -> None:
    # a resolver bound to every address replies from each family's own address
    t = Tunnel()
    server = UdpSocket(t.b.iface, 53)
    client = UdpSocket(t.a.iface)
    client.send_to(b"q4", ("10.0.0.2", 53))
    client.send_to(b"q6", ("fd00::2", 53))
    t.run()
    while (request := server.recv_from()) is not None:
        server.send_to(request[0].upper(), request[1])
    t.run()
    assert client.recv_from() == (b"Q4", ("10.0.0.2", 53))
    assert client.recv_from() == (b"Q6", ("fd00::2", 53))
