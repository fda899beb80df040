"""ICMP: echo requests to our addresses are answered, pings go out and come back, errors
are sent (unreachable) and received (delivered to the socket whose packet caused them).

The packets fed in and the answers checked are built and read here with `struct` and a
word-by-word checksum, not with the stack's own code.
"""

from __future__ import annotations

import errno
import random
import socket
import struct

import pytest
from test_netstack_ip import A4, A6, B4, B6, naive_checksum, v4, v6

from wiresnake.netstack import icmp
from wiresnake.netstack.icmp import EchoReply, IcmpSocket
from wiresnake.netstack.iface import Interface
from wiresnake.netstack.ip import parse

THEM4, US4, THEM6, US6 = A4, B4, A6, B6  # they are ::1 and .1, we are ::2 and .2
NOW = 100.0


def host(**kw: object) -> Interface:
    return Interface(["10.0.0.2/24", "fd00::2/64"], rng=random.Random(1), **kw)  # type: ignore[arg-type]


def icmp4(kind: int, code: int, rest: bytes, data: bytes) -> bytes:
    msg = bytes([kind, code, 0, 0]) + rest + data
    return msg[:2] + naive_checksum(msg).to_bytes(2, "big") + msg[4:]


def icmp6(src: bytes, dst: bytes, kind: int, code: int, rest: bytes, data: bytes) -> bytes:
    msg = bytes([kind, code, 0, 0]) + rest + data
    pseudo = src + dst + struct.pack("!I3xB", len(msg), 58)
    return msg[:2] + naive_checksum(pseudo + msg).to_bytes(2, "big") + msg[4:]


def echo4(ident: int, seq: int, data: bytes, kind: int = 8) -> bytes:
    return v4(icmp4(kind, 0, struct.pack("!HH", ident, seq), data), src=THEM4, dst=US4, proto=1)


def echo6(ident: int, seq: int, data: bytes, kind: int = 128) -> bytes:
    msg = icmp6(THEM6, US6, kind, 0, struct.pack("!HH", ident, seq), data)
    return v6(msg, src=THEM6, dst=US6, nh=58)


def read_v4(pkt: bytes) -> tuple[bytes, bytes, int, int, bytes]:
    """(src, dst, protocol, ttl, payload) of an IPv4 packet, its header checksum checked."""
    ihl = (pkt[0] & 15) * 4
    assert pkt[0] >> 4 == 4 and naive_checksum(pkt[:ihl]) == 0
    assert struct.unpack("!H", pkt[2:4])[0] == len(pkt)
    return pkt[12:16], pkt[16:20], pkt[9], pkt[8], pkt[ihl:]


def read_v6(pkt: bytes) -> tuple[bytes, bytes, int, int, bytes]:
    assert pkt[0] >> 4 == 6 and struct.unpack("!H", pkt[4:6])[0] == len(pkt) - 40
    return pkt[8:24], pkt[24:40], pkt[6], pkt[7], pkt[40:]


def icmp6_checksum_ok(src: bytes, dst: bytes, msg: bytes) -> bool:
    return naive_checksum(src + dst + struct.pack("!I3xB", len(msg), 58) + msg) == 0


# ---------------------------------------------------------------- echo answered


def test_an_echo_request_to_our_ipv4_address_is_answered() -> None:
    iface = host()
    iface.receive([echo4(0x4242, 7, b"ping payload")], NOW)
    [reply] = iface.poll(NOW)
    src, dst, proto, ttl, msg = read_v4(reply)
    assert (src, dst, proto, ttl) == (US4, THEM4, 1, 64)
    assert naive_checksum(msg) == 0
    assert msg[:2] == b"\x00\x00"  # echo reply, code 0
    assert struct.unpack("!HH", msg[4:8]) == (0x4242, 7)
    assert msg[8:] == b"ping payload"
    assert iface.counters["icmp_echo_answered"] == 1


def test_an_echo_request_to_our_ipv6_address_is_answered() -> None:
    iface = host()
    iface.receive([echo6(0x4242, 7, b"ping payload six")], NOW)
    [reply] = iface.poll(NOW)
    src, dst, nh, hops, msg = read_v6(reply)
    assert (src, dst, nh, hops) == (US6, THEM6, 58, 64)
    assert icmp6_checksum_ok(src, dst, msg)
    assert msg[:2] == b"\x81\x00"  # echo reply (129), code 0
    assert struct.unpack("!HH", msg[4:8]) == (0x4242, 7)
    assert msg[8:] == b"ping payload six"


@pytest.mark.parametrize("size", [0, 1, 2, 3, 100, 1372])
def test_echo_replies_have_correct_checksums_for_every_payload_size(size: int) -> None:
    iface = host()
    data = random.Random(size).randbytes(size)
    iface.receive([echo4(1, size, data), echo6(1, size, data)], NOW)
    r4, r6 = iface.poll(NOW)
    assert naive_checksum(read_v4(r4)[4]) == 0
    assert icmp6_checksum_ok(US6, THEM6, read_v6(r6)[4])


def test_an_echo_request_to_another_address_is_not_ours_to_answer() -> None:
    iface = host()
    msg = icmp4(8, 0, b"\0\1\0\1", b"")
    iface.receive([v4(msg, src=THEM4, dst=socket.inet_aton("10.0.0.3"), proto=1)], NOW)
    assert iface.poll(NOW) == []
    assert iface.counters["not_ours"] == 1


def test_echo_requests_with_bad_checksums_are_dropped_and_counted() -> None:
    iface = host()
    bad4 = bytearray(echo4(1, 1, b"abc"))
    bad4[-1] ^= 1
    bad6 = bytearray(echo6(1, 1, b"abc"))
    bad6[-1] ^= 1
    iface.receive([bytes(bad4), bytes(bad6)], NOW)
    assert iface.poll(NOW) == []
    assert iface.counters["icmpv4_bad_checksum"] == 1
    assert iface.counters["icmpv6_bad_checksum"] == 1


def test_truncated_icmp_is_dropped_and_counted() -> None:
    iface = host()
    iface.receive([v4(b"\x08\x00\xf7\xff", src=THEM4, dst=US4, proto=1)], NOW)
    iface.receive([v6(b"\x80\x00", src=THEM6, dst=US6, nh=58)], NOW)
    assert iface.poll(NOW) == []
    assert iface.counters["icmpv4_truncated"] == iface.counters["icmpv6_truncated"] == 1


def test_neighbour_discovery_is_ignored_on_a_layer_3_link() -> None:
    iface = host()
    solicit = icmp6(THEM6, US6, 135, 0, bytes(4), US6)
    iface.receive([v6(solicit, src=THEM6, dst=US6, nh=58)], NOW)
    assert iface.poll(NOW) == []
    assert iface.counters["icmpv6_ignored"] == 1


def test_an_echo_request_bigger_than_our_mtu_is_not_answered() -> None:
    # we never fragment, so a reply that would not fit is not sent
    iface = Interface(["10.0.0.2"], mtu=576)
    iface.receive([echo4(1, 1, bytes(1000))], NOW)
    assert iface.poll(NOW) == []
    assert iface.counters["icmp_echo_too_big"] == 1


# ---------------------------------------------------------------- pinging out


def wire(a: Interface, b: Interface, now: float) -> None:
    """Carry packets between two interfaces, back to back, until both are quiet."""
    while True:
        pa, pb = a.poll(now), b.poll(now)
        if not pa and not pb:
            return
        b.receive(pa, now)
        a.receive(pb, now)


def test_ping_from_one_interface_to_another_over_both_families() -> None:
    a = Interface(["10.0.0.1/24", "fd00::1/64"], rng=random.Random(2))
    b = host()
    sock = IcmpSocket(a, ident=77)
    sock.ping("10.0.0.2", 1, b"four", NOW)
    sock.ping("fd00::2", 2, b"six", NOW + 0.5)
    assert sock.recv() is None
    wire(a, b, NOW + 0.75)
    assert sock.recv() == EchoReply("10.0.0.2", 77, 1, b"four", NOW + 0.75, 0.75)
    assert sock.recv() == EchoReply("fd00::2", 77, 2, b"six", NOW + 0.75, 0.25)
    assert sock.recv() is None
    assert b.counters["icmp_echo_answered"] == 2


def test_each_ping_socket_gets_only_its_own_replies() -> None:
    a = Interface(["10.0.0.1/24"], rng=random.Random(2))
    b = host()
    first, second = IcmpSocket(a), IcmpSocket(a)
    assert first.ident != second.ident
    first.ping("10.0.0.2", 1, b"1", NOW)
    second.ping("10.0.0.2", 1, b"2", NOW)
    wire(a, b, NOW)
    r1, r2 = first.recv(), second.recv()
    assert r1 is not None and r1.payload == b"1" and first.recv() is None
    assert r2 is not None and r2.payload == b"2" and second.recv() is None


def test_a_ping_request_leaves_with_correct_checksums() -> None:
    a = host()
    sock = IcmpSocket(a, ident=5)
    sock.ping("10.0.0.1", 9, b"abc", NOW)
    sock.ping("fd00::1", 9, b"abc", NOW)
    p4, p6 = a.poll(NOW)
    msg4 = read_v4(p4)[4]
    assert naive_checksum(msg4) == 0 and msg4[0] == 8
    msg6 = read_v6(p6)[4]
    assert icmp6_checksum_ok(US6, THEM6, msg6) and msg6[0] == 128


def test_an_echo_reply_nobody_waits_for_is_counted() -> None:
    iface = host()
    iface.receive([echo4(999, 1, b"", kind=0), echo6(999, 1, b"", kind=129)], NOW)
    assert iface.counters["icmp_echo_reply_unmatched"] == 2


def test_replies_beyond_the_queue_are_dropped_and_counted() -> None:
    iface = host()
    sock = IcmpSocket(iface, ident=3, queue=2)
    iface.receive([echo4(3, seq, b"", kind=0) for seq in range(5)], NOW)
    assert sock.pending == 2
    assert iface.counters["icmp_queue_full"] == 3


def test_echo_identifiers_are_exclusive_and_freed_on_close() -> None:
    iface = host()
    sock = IcmpSocket(iface, ident=10)
    with pytest.raises(OSError) as e:
        IcmpSocket(iface, ident=10)
    assert e.value.errno == errno.EADDRINUSE
    sock.close()
    assert IcmpSocket(iface, ident=10).ident == 10
    with pytest.raises(ValueError):
        IcmpSocket(iface, ident=0x10000)
    with pytest.raises(OSError):
        sock.ping("10.0.0.1", 1, b"", NOW)


def test_an_error_about_our_ping_reaches_the_ping_socket() -> None:
    iface = host()
    sock = IcmpSocket(iface, ident=0x99)
    sock.ping("10.0.9.9", 4, b"lost", NOW)
    [request] = iface.poll(NOW)
    router = socket.inet_aton("10.0.0.254")
    unreachable = icmp4(3, 1, bytes(4), request[:28])  # host unreachable, quoting 28 bytes
    iface.receive([v4(unreachable, src=router, dst=US4, proto=1)], NOW + 1)
    error = sock.recv_error()
    assert error is not None
    assert (error.reason, error.reporter, error.remote) == (
        "host_unreachable",
        "10.0.0.254",
        ("10.0.9.9", 0x99),
    )
    assert (error.version, error.type, error.code, error.time) == (4, 3, 1, NOW + 1)


# ---------------------------------------------------------------- errors we send


def test_an_unknown_protocol_is_answered_with_protocol_unreachable() -> None:
    iface = host()
    sctp = v4(b"\0" * 12, src=THEM4, dst=US4, proto=132)
    iface.receive([sctp], NOW)
    [error] = iface.poll(NOW)
    src, dst, proto, _, msg = read_v4(error)
    assert (src, dst, proto) == (US4, THEM4, 1)
    assert naive_checksum(msg) == 0 and msg[:2] == b"\x03\x02"
    assert msg[8:] == sctp  # the whole packet fits the quote
    assert iface.counters["unknown_protocol"] == 1


def test_an_unknown_ipv6_next_header_is_a_parameter_problem_pointing_at_it() -> None:
    iface = host()
    plain = v6(bytes(12), src=THEM6, dst=US6, nh=132)
    dest_opts = bytes([132, 0, 1, 4, 0, 0, 0, 0])
    behind = v6(bytes(12), src=THEM6, dst=US6, nh=60, extensions=dest_opts)
    iface.receive([plain, behind], NOW)
    e1, e2 = iface.poll(NOW)
    for error, pointer, quoted in ((e1, 6, plain), (e2, 40, behind)):
        src, dst, nh, _, msg = read_v6(error)
        assert (src, dst, nh) == (US6, THEM6, 58) and icmp6_checksum_ok(src, dst, msg)
        assert msg[:2] == b"\x04\x01"  # parameter problem, unrecognized next header
        assert struct.unpack("!I", msg[4:8])[0] == pointer
        assert msg[8:] == quoted


def test_no_error_is_ever_sent_about_an_icmp_error() -> None:
    iface = host()
    counters = iface.counters
    about = v4(icmp4(3, 3, bytes(4), bytes(28)), src=THEM4, dst=US4, proto=1)
    p = parse(about, counters)
    assert p is not None
    icmp.port_unreachable(iface, p, NOW)
    icmp.protocol_unreachable(iface, p, NOW)
    assert iface.poll(NOW) == []
