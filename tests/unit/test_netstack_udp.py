"""UDP sockets: binding, checksums both ways, port unreachable, limits.

Datagrams fed in are built here with `struct` and a word-by-word checksum; datagrams sent are
read back the same way.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
from ipaddress import ip_address

import pytest
from test_netstack_icmp import THEM4, THEM6, US4, US6, host, icmp4, icmp6, read_v4, read_v6
from test_netstack_ip import naive_checksum, v4, v6

from wiresnake.netstack.iface import Interface
from wiresnake.netstack.sockets import EPHEMERAL_PORTS
from wiresnake.netstack.udp import UdpSocket

NOW = 50.0


def udp(
    src: bytes, dst: bytes, sport: int, dport: int, data: bytes, csum: int | None = None
) -> bytes:
    """A UDP datagram, its checksum over the pseudo-header of its family unless given."""
    length = 8 + len(data)
    if csum is None:
        if len(src) == 4:
            pseudo = src + dst + struct.pack("!BBH", 0, 17, length)
        else:
            pseudo = src + dst + struct.pack("!I3xB", length, 17)
        csum = naive_checksum(pseudo + struct.pack("!HHHH", sport, dport, length, 0) + data)
        csum = csum or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, csum) + data


def udp4(sport: int, dport: int, data: bytes, csum: int | None = None) -> bytes:
    return v4(udp(THEM4, US4, sport, dport, data, csum), src=THEM4, dst=US4, proto=17)


def udp6(sport: int, dport: int, data: bytes, csum: int | None = None) -> bytes:
    return v6(udp(THEM6, US6, sport, dport, data, csum), src=THEM6, dst=US6, nh=17)


def udp_checksum_ok(src: bytes, dst: bytes, datagram: bytes) -> bool:
    n = len(datagram)
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 17, n)
    else:
        pseudo = src + dst + struct.pack("!I3xB", n, 17)
    return naive_checksum(pseudo + datagram) == 0


# ---------------------------------------------------------------- receiving


def test_a_datagram_reaches_the_socket_bound_to_its_port_over_both_families() -> None:
    iface = host()
    sock = UdpSocket(iface, 5353)
    iface.receive([udp4(1111, 5353, b"four"), udp6(2222, 5353, b"six")], NOW)
    assert sock.pending == 2
    assert sock.recv_from() == (b"four", ("10.0.0.1", 1111))
    assert sock.recv_from() == (b"six", ("fd00::1", 2222))
    assert sock.recv_from() is None
    assert iface.poll(NOW) == []


def test_a_socket_bound_to_one_address_hears_only_that_address() -> None:
    iface = host()
    sock = UdpSocket(iface, 53, "fd00::2")
    assert sock.address == "fd00::2"
    iface.receive([udp6(1, 53, b"six"), udp4(1, 53, b"four")], NOW)
    assert sock.recv_from() == (b"six", ("fd00::1", 1))
    assert sock.recv_from() is None
    assert iface.counters["udp_no_socket"] == 1


def test_bad_checksums_are_dropped_and_counted() -> None:
    iface = host()
    sock = UdpSocket(iface, 53)
    iface.receive([udp4(1, 53, b"x", csum=0x1234), udp6(1, 53, b"x", csum=0x1234)], NOW)
    assert sock.recv_from() is None
    assert iface.counters["udp_bad_checksum"] == 2
    assert iface.poll(NOW) == []  # no unreachable for a datagram that is not one


def test_a_link_that_authenticates_packets_skips_the_checksum() -> None:
    iface = host()
    iface.trust_checksums = True
    sock = UdpSocket(iface, 53)
    iface.receive([udp4(1, 53, b"x", csum=0x1234)], NOW)
    assert sock.recv_from() == (b"x", ("10.0.0.1", 1))
    assert iface.counters["udp_bad_checksum"] == 0


def test_a_zero_checksum_means_none_over_ipv4_and_is_refused_over_ipv6() -> None:
    iface = host()
    sock = UdpSocket(iface, 53)
    iface.receive([udp4(1, 53, b"no checksum", csum=0), udp6(1, 53, b"x", csum=0)], NOW)
    assert sock.recv_from() == (b"no checksum", ("10.0.0.1", 1))
    assert sock.recv_from() is None
    assert iface.counters["udp_missing_checksum"] == 1


def test_a_datagram_whose_checksum_computes_to_zero_carries_all_ones() -> None:
    # a payload word equal to the checksum without it makes the sum all ones: checksum 0
    iface = host()
    sock = UdpSocket(iface, 53)
    payload = udp(THEM4, US4, 7, 53, b"\0\0")[6:8]
    dgram = udp(THEM4, US4, 7, 53, payload)
    assert dgram[6:8] == b"\xff\xff"
    iface.receive([v4(dgram, src=THEM4, dst=US4, proto=17)], NOW)
    assert sock.recv_from() == (payload, ("10.0.0.1", 7))


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"\0\1\0\x35\0", "udp_truncated"),
        (struct.pack("!HHHH", 1, 53, 7, 0), "udp_bad_length"),
        (struct.pack("!HHHH", 1, 53, 30, 0) + b"short", "udp_bad_length"),
    ],
)
def test_malformed_datagrams_are_dropped_and_counted(datagram: bytes, reason: str) -> None:
    iface = host()
    UdpSocket(iface, 53)
    iface.receive([v4(datagram, src=THEM4, dst=US4, proto=17)], NOW)
    assert iface.counters[reason] == 1
    assert iface.poll(NOW) == []


def test_bytes_past_the_udp_length_are_ignored() -> None:
    iface = host()
    sock = UdpSocket(iface, 53)
    iface.receive(
        [v4(udp(THEM4, US4, 1, 53, b"data") + b"junk", src=THEM4, dst=US4, proto=17)], NOW
    )
    assert sock.recv_from() == (b"data", ("10.0.0.1", 1))


def test_datagrams_beyond_the_queue_are_dropped_and_counted() -> None:
    iface = host()
    sock = UdpSocket(iface, 53, queue=3)
    iface.receive([udp4(1, 53, bytes([i])) for i in range(5)], NOW)
    assert sock.pending == 3 and iface.counters["udp_queue_full"] == 2


# ---------------------------------------------------------------- sending


@pytest.mark.parametrize("size", [0, 1, 2, 3, 511, 1372])
def test_datagrams_leave_with_correct_checksums_over_both_families(size: int) -> None:
    iface = host()
    sock = UdpSocket(iface, 4000)
    data = random.Random(size).randbytes(size)
    sock.send_to(data, ("10.0.0.1", 53))
    sock.send_to(data, ("fd00::1", 53))
    p4, p6 = iface.poll(NOW)
    src, dst, proto, _, dgram = read_v4(p4)
    assert (src, dst, proto) == (US4, THEM4, 17)
    assert struct.unpack("!HHH", dgram[:6]) == (4000, 53, 8 + size)
    assert dgram[6:8] != b"\0\0" and udp_checksum_ok(src, dst, dgram) and dgram[8:] == data
    src, dst, nh, _, dgram = read_v6(p6)
    assert (src, dst, nh) == (US6, THEM6, 17)
    assert dgram[6:8] != b"\0\0" and udp_checksum_ok(src, dst, dgram) and dgram[8:] == data


def test_the_ttl_is_the_interfaces_unless_the_socket_sets_one() -> None:
    iface = host(ttl=100)
    sock = UdpSocket(iface)
    sock.send_to(b"", ("10.0.0.1", 9))
    sock.ttl = 3
    sock.send_to(b"", ("fd00::1", 9))
    p4, p6 = iface.poll(NOW)
    assert read_v4(p4)[3] == 100 and read_v6(p6)[3] == 3


def test_a_payload_too_big_for_the_mtu_is_refused_with_a_clear_error() -> None:
    iface = host()  # MTU 1420: 1392 bytes of UDP payload over IPv4, 1372 over IPv6
    sock = UdpSocket(iface)
    assert (sock.max_payload(4), sock.max_payload(6)) == (1392, 1372)
    sock.send_to(bytes(1392), ("10.0.0.1", 9))
    sock.send_to(bytes(1372), ("fd00::1", 9))
    assert [len(p) for p in iface.poll(NOW)] == [1420, 1420]
    with pytest.raises(OSError) as e:
        sock.send_to(bytes(1393), ("10.0.0.1", 9))
    assert e.value.errno == errno.EMSGSIZE
    assert "1393" in str(e.value) and "1420" in str(e.value) and "1392" in str(e.value)
    with pytest.raises(OSError) as e:
        sock.send_to(bytes(1373), ("fd00::1", 9))
    assert e.value.errno == errno.EMSGSIZE and "1372" in str(e.value)
    assert iface.poll(NOW) == []


def test_sending_needs_an_address_of_the_destinations_family() -> None:
    only4 = Interface(["10.0.0.2"])
    with pytest.raises(OSError) as e:
        UdpSocket(only4).send_to(b"x", ("fd00::1", 53))
    assert e.value.errno == errno.ENETUNREACH
    iface = host()
    with pytest.raises(OSError) as e:
        UdpSocket(iface, address="10.0.0.2").send_to(b"x", ("fd00::1", 53))
    assert e.value.errno == errno.EAFNOSUPPORT


@pytest.mark.parametrize("address", [("10.0.0.1", 0), ("10.0.0.1", 65536), ("nonsense", 53)])
def test_malformed_destinations_are_value_errors(address: tuple[str, int]) -> None:
    with pytest.raises(ValueError):
        UdpSocket(host()).send_to(b"x", address)


def test_the_source_address_is_the_one_sharing_the_longest_prefix() -> None:
    iface = Interface(["10.0.0.2/24", "192.168.7.2/24", "fd00::2/64", "fd99::2/64"])
    sock = UdpSocket(iface)
    sock.send_to(b"", ("192.168.7.1", 9))
    sock.send_to(b"", ("10.0.0.1", 9))
    sock.send_to(b"", ("fd99::1", 9))
    sources = [p[12:16] if p[0] >> 4 == 4 else p[8:24] for p in iface.poll(NOW)]
    assert [str(ip_address(s)) for s in sources] == ["192.168.7.2", "10.0.0.2", "fd99::2"]


# ---------------------------------------------------------------- ports


def test_ephemeral_ports_are_distinct_and_in_the_dynamic_range() -> None:
    iface = host()
    ports = [UdpSocket(iface).port for _ in range(200)]
    assert len(set(ports)) == 200
    assert all(p in EPHEMERAL_PORTS for p in ports)


def test_a_held_port_cannot_be_bound_again_until_closed() -> None:
    iface = host()
    sock = UdpSocket(iface, 53)
    for address in (None, "10.0.0.2", "fd00::2"):
        with pytest.raises(OSError) as e:
            UdpSocket(iface, 53, address)
        assert e.value.errno == errno.EADDRINUSE
    sock.close()
    four, six = UdpSocket(iface, 53, "10.0.0.2"), UdpSocket(iface, 53, "fd00::2")
    assert four.port == six.port == 53
    with pytest.raises(OSError):
        UdpSocket(iface, 53)  # "every address" overlaps both


def test_binding_an_address_that_is_not_ours_is_refused() -> None:
    with pytest.raises(OSError) as e:
        UdpSocket(host(), 53, "10.0.0.9")
    assert e.value.errno == errno.EADDRNOTAVAIL


def test_the_unspecified_address_means_every_address() -> None:
    iface = host()
    sock = UdpSocket(iface, 53, "0.0.0.0")
    assert sock.address is None
    iface.receive([udp6(1, 53, b"six")], NOW)
    assert sock.recv_from() is not None


def test_a_closed_socket_sends_nothing_and_its_port_is_unreachable() -> None:
    iface = host()
    sock = UdpSocket(iface, 53)
    sock.close()
    with pytest.raises(OSError) as e:
        sock.send_to(b"x", ("10.0.0.1", 1))
    assert e.value.errno == errno.EBADF
    iface.receive([udp4(1, 53, b"x")], NOW)
    assert len(iface.poll(NOW)) == 1 and iface.counters["udp_no_socket"] == 1


# ---------------------------------------------------------------- port unreachable


def test_a_datagram_to_an_unbound_port_is_answered_with_port_unreachable() -> None:
    iface = host()
    d4, d6 = udp4(1234, 9999, b"anyone?"), udp6(1234, 9999, b"anyone?")
    iface.receive([d4, d6], NOW)
    e4, e6 = iface.poll(NOW)
    src, dst, proto, _, msg = read_v4(e4)
    assert (src, dst, proto) == (US4, THEM4, 1)
    assert naive_checksum(msg) == 0
    assert msg[:2] == b"\x03\x03" and msg[4:8] == bytes(4) and msg[8:] == d4
    src, dst, nh, _, msg = read_v6(e6)
    assert (src, dst, nh) == (US6, THEM6, 58)
    pseudo = src + dst + struct.pack("!I3xB", len(msg), 58)
    assert naive_checksum(pseudo + msg) == 0
    assert msg[:2] == b"\x01\x04" and msg[8:] == d6
    assert iface.counters["udp_no_socket"] == 2 and iface.counters["icmp_errors_sent"] == 2


def test_the_quote_in_an_error_is_cut_to_576_bytes_over_ipv4_and_1280_over_ipv6() -> None:
    iface = host()
    iface.receive([udp4(1, 9, bytes(1300)), udp6(1, 9, bytes(1300))], NOW)
    e4, e6 = iface.poll(NOW)
    assert len(e4) == 576 and len(e6) == 1280


def test_port_unreachable_is_rate_limited_and_counted() -> None:
    iface = host(icmp_errors_per_second=10, icmp_errors_burst=5)
    iface.receive([udp4(1, 9, b"") for _ in range(8)], NOW)
    assert len(iface.poll(NOW)) == 5
    assert iface.counters["icmp_errors_rate_limited"] == 3
    assert iface.counters["udp_no_socket"] == 8
    iface.receive([udp4(1, 9, b"") for _ in range(3)], NOW + 0.1)  # one token back
    assert len(iface.poll(NOW + 0.1)) == 1
    iface.receive([udp4(1, 9, b"") for _ in range(9)], NOW + 10)  # full again, no more
    assert len(iface.poll(NOW + 10)) == 5


def test_port_unreachable_from_the_far_end_reaches_the_sending_socket() -> None:
    iface = host()
    sock = UdpSocket(iface, 4000)
    sock.send_to(b"hello?", ("10.0.0.1", 53))
    sock.send_to(b"hello?", ("fd00::1", 53))
    sent4, sent6 = iface.poll(NOW)
    iface.receive(
        [
            v4(icmp4(3, 3, bytes(4), sent4), src=THEM4, dst=US4, proto=1),
            v6(icmp6(THEM6, US6, 1, 4, bytes(4), sent6), src=THEM6, dst=US6, nh=58),
        ],
        NOW + 1,
    )
    e4, e6 = sock.recv_error(), sock.recv_error()
    assert e4 is not None and e6 is not None and sock.recv_error() is None
    assert (e4.reason, e4.reporter, e4.remote, e4.version) == (
        "port_unreachable",
        "10.0.0.1",
        ("10.0.0.1", 53),
        4,
    )
    assert (e6.reason, e6.reporter, e6.remote, e6.version) == (
        "port_unreachable",
        "fd00::1",
        ("fd00::1", 53),
        6,
    )


def test_packet_too_big_carries_the_next_hop_mtu_to_the_socket() -> None:
    iface = host()
    sock = UdpSocket(iface, 4000)
    sock.send_to(bytes(1300), ("fd00::1", 53))
    [sent] = iface.poll(NOW)
    router = socket.inet_pton(socket.AF_INET6, "fd00::fe")
    too_big = icmp6(router, US6, 2, 0, struct.pack("!I", 1280), sent[:1232])
    iface.receive([v6(too_big, src=router, dst=US6, nh=58)], NOW)
    error = sock.recv_error()
    assert error is not None and error.reason == "packet_too_big" and error.mtu == 1280


def test_an_error_about_a_packet_we_did_not_send_is_counted_not_delivered() -> None:
    iface = host()
    sock = UdpSocket(iface, 4000)
    forged = v4(udp(socket.inet_aton("10.0.0.77"), THEM4, 4000, 53, b""), src=THEM4, dst=THEM4)
    iface.receive([v4(icmp4(3, 3, bytes(4), forged), src=THEM4, dst=US4, proto=1)], NOW)
    assert sock.recv_error() is None
    assert iface.counters["icmp_error_unmatched"] == 1
