"""IPv4 and IPv6 headers: what is built parses back, and what is malformed is counted."""

from __future__ import annotations

import socket
import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiresnake.netstack.ip import (
    PROTO_UDP,
    IpPacket,
    build,
    build_ipv4,
    build_ipv6,
    format_address,
    pack_address,
    parse,
    parse_quoted,
)

A4, B4 = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
A6, B6 = socket.inet_pton(socket.AF_INET6, "fd00::1"), socket.inet_pton(socket.AF_INET6, "fd00::2")


def naive_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(w for (w,) in struct.iter_unpack("!H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def v4(
    payload: bytes = b"data",
    *,
    src: bytes = A4,
    dst: bytes = B4,
    proto: int = PROTO_UDP,
    ttl: int = 64,
    flags_fragment: int = 0x4000,
    options: bytes = b"",
    total: int | None = None,
    version_ihl: int | None = None,
    good_checksum: bool = True,
) -> bytes:
    """An IPv4 packet built here, independently of the stack."""
    ihl = 5 + len(options) // 4
    if total is None:
        total = 4 * ihl + len(payload)
    first = version_ihl if version_ihl is not None else 0x40 | ihl
    header = struct.pack(
        "!BBHHHBBH4s4s", first, 0, total, 7, flags_fragment, ttl, proto, 0, src, dst
    )
    header += options
    c = naive_checksum(header) if good_checksum else naive_checksum(header) ^ 0x0101
    return header[:10] + c.to_bytes(2, "big") + header[12:] + payload


def v6(
    payload: bytes = b"data",
    *,
    src: bytes = A6,
    dst: bytes = B6,
    nh: int = PROTO_UDP,
    extensions: bytes = b"",
    length: int | None = None,
) -> bytes:
    body = extensions + payload
    n = len(body) if length is None else length
    return struct.pack("!IHBB16s16s", 0x60000000, n, nh, 64, src, dst) + body


def ext(next_header: int, body: bytes) -> bytes:
    """An extension header: next header, length in 8-byte units past the first, body."""
    assert (len(body) + 2) % 8 == 0
    return bytes([next_header, (len(body) + 2) // 8 - 1]) + body


def parsed(packet: bytes) -> tuple[IpPacket | None, Counter[str]]:
    counters: Counter[str] = Counter()
    return parse(packet, counters), counters


# ---------------------------------------------------------------- round trips


def test_an_ipv4_packet_built_here_parses_back() -> None:
    pkt = build_ipv4(A4, B4, PROTO_UDP, b"hello", ttl=33, ident=0x1234)
    assert naive_checksum(pkt[:20]) == 0
    assert pkt[6] & 0x40  # Don't Fragment: we never fragment, so neither should others
    assert struct.unpack("!H", pkt[4:6])[0] == 0x1234
    p, counters = parsed(pkt)
    assert p == IpPacket(A4, B4, PROTO_UDP, 33, b"hello", pkt)
    assert p.version == 4 and not counters


def test_an_ipv6_packet_built_here_parses_back() -> None:
    pkt = build_ipv6(A6, B6, PROTO_UDP, b"hello", hop_limit=9, traffic_class=0xB8, flow_label=5)
    assert pkt[0] >> 4 == 6 and len(pkt) == 45
    p, counters = parsed(pkt)
    assert p == IpPacket(A6, B6, PROTO_UDP, 9, b"hello", pkt)
    assert p.version == 6 and not counters


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([(A4, B4), (A6, B6), (B4, A4)]),
    st.integers(0, 255),
    st.integers(1, 255),
    st.binary(max_size=1500),
)
def test_build_and_parse_round_trip(
    addrs: tuple[bytes, bytes], proto: int, ttl: int, payload: bytes
) -> None:
    src, dst = addrs
    if len(src) == 16 and proto in (0, 43, 44, 59, 60):
        proto = PROTO_UDP  # those are extension headers, not upper layers
    pkt = build(src, dst, proto, payload, ttl)
    p, counters = parsed(pkt)
    assert p is not None, counters
    assert (p.src, p.dst, p.protocol, p.ttl, p.payload) == (src, dst, proto, ttl, payload)


def test_payloads_too_big_for_the_length_fields_are_refused() -> None:
    with pytest.raises(ValueError):
        build_ipv4(A4, B4, PROTO_UDP, bytes(65516))
    with pytest.raises(ValueError):
        build_ipv6(A6, B6, PROTO_UDP, bytes(65536))


def test_addresses_convert_both_ways() -> None:
    assert pack_address("10.0.0.1") == A4 and format_address(A4) == "10.0.0.1"
    assert pack_address("fd00:0::1") == A6 and format_address(A6) == "fd00::1"
    for bad in ("10.0.0", "10.0.0.256", "fd00:::1", "", "example.com"):
        with pytest.raises(ValueError):
            pack_address(bad)


# ---------------------------------------------------------------- IPv4 input


def test_ipv4_options_are_tolerated_and_skipped() -> None:
    options = b"\x01\x01\x01\x00"  # three no-ops and end of list
    p, counters = parsed(v4(b"payload", options=options))
    assert p is not None and p.payload == b"payload" and not counters


def test_bytes_past_the_ipv4_total_length_are_cut_off() -> None:
    pkt = v4(b"payload") + b"\0" * 9  # WireGuard pads to 16 bytes
    p, _ = parsed(pkt)
    assert p is not None and p.payload == b"payload" and p.packet == pkt[:-9]


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (v4()[:19], "ip_truncated"),
        (b"", "ip_truncated"),
        (v4(version_ihl=0x55), "ip_bad_version"),
        (v4(version_ihl=0x44), "ipv4_bad_header_length"),
        (v4(version_ihl=0x4F), "ipv4_bad_header_length"),
        (v4(total=19), "ipv4_bad_total_length"),
        (v4(b"data", total=200), "ipv4_bad_total_length"),
        (v4(good_checksum=False), "ipv4_bad_checksum"),
        (v4(flags_fragment=0x2000), "ipv4_fragment"),  # first fragment: more follow
        (v4(flags_fragment=0x0010), "ipv4_fragment"),  # last fragment: an offset
        (v4(src=socket.inet_aton("127.0.0.1")), "ipv4_martian_source"),
        (v4(src=socket.inet_aton("224.0.0.1")), "ipv4_martian_source"),
        (v4(src=socket.inet_aton("255.255.255.255")), "ipv4_martian_source"),
        (v4(src=socket.inet_aton("0.0.0.0")), "ipv4_martian_source"),
    ],
)
def test_malformed_ipv4_is_dropped_and_counted(packet: bytes, reason: str) -> None:
    p, counters = parsed(packet)
    assert p is None
    assert counters == Counter({reason: 1})


def test_ttl_zero_addressed_to_us_is_still_delivered() -> None:
    # TTL matters to routers; a host takes what reaches it (RFC 1122 3.2.1.7)
    p, _ = parsed(v4(ttl=0))
    assert p is not None and p.ttl == 0


# ---------------------------------------------------------------- IPv6 input

PADN4 = b"\x01\x02\0\0"  # PadN with 2 bytes of padding: 4 bytes in all
PADN6 = b"\x01\x04" + bytes(4)  # fills the options of a minimal (8-byte) header


def test_ipv6_hop_by_hop_routing_and_destination_options_are_skipped() -> None:
    exts = (
        ext(43, PADN6)  # hop-by-hop, then a routing header
        + ext(60, b"\x00\x00" + b"\0" * 4)  # routing type 0, segments left 0
        + ext(PROTO_UDP, b"\x00" + PADN4 + b"\x00")  # destination options: Pad1, PadN, Pad1
    )
    p, counters = parsed(v6(b"payload", nh=0, extensions=exts))
    assert p is not None and not counters
    assert p.protocol == PROTO_UDP and p.payload == b"payload"


def test_an_unknown_option_that_may_be_skipped_is_skipped() -> None:
    option = b"\x1e\x04" + bytes(4)  # type 0x1e: top bits 00, skip
    p, _ = parsed(v6(b"x", nh=60, extensions=ext(PROTO_UDP, option)))
    assert p is not None and p.payload == b"x"


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (v6()[:39], "ip_truncated"),
        (v6(length=100), "ipv6_bad_payload_length"),
        (v6(nh=44, extensions=bytes([17, 0, 0, 1, 0, 0, 0, 1])), "ipv6_fragment"),
        (v6(nh=43, extensions=ext(17, b"\x00\x01" + bytes(4))), "ipv6_routing_header"),
        (v6(nh=60, extensions=ext(17, b"\x80\x04" + bytes(4))), "ipv6_unknown_option"),
        (v6(nh=0, extensions=ext(17, b"\xc2\x04" + bytes(4))), "ipv6_unknown_option"),
        (v6(nh=60, extensions=ext(17, b"\x01\x09" + bytes(4))), "ipv6_bad_extension_header"),
        (v6(b"", nh=60, extensions=bytes([17, 3, 1, 0])), "ipv6_bad_extension_header"),
        (v6(nh=60, extensions=ext(0, PADN6) + ext(17, PADN6)), "ipv6_bad_extension_header"),
        (v6(b"", nh=59), "ipv6_no_next_header"),
        (v6(src=socket.inet_pton(socket.AF_INET6, "ff02::1")), "ipv6_martian_source"),
        (v6(src=socket.inet_pton(socket.AF_INET6, "::1")), "ipv6_martian_source"),
        (v6(src=bytes(16)), "ipv6_martian_source"),
    ],
)
def test_malformed_ipv6_is_dropped_and_counted(packet: bytes, reason: str) -> None:
    p, counters = parsed(packet)
    assert p is None
    assert counters == Counter({reason: 1})


def test_bytes_past_the_ipv6_payload_length_are_cut_off() -> None:
    pkt = v6(b"payload") + bytes(7)
    p, _ = parsed(pkt)
    assert p is not None and p.payload == b"payload" and len(p.packet) == 47


# ---------------------------------------------------------------- hostile bytes


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_and_every_refusal_is_counted_once(data: bytes) -> None:
    p, counters = parsed(data)
    assert (p is None) == (sum(counters.values()) == 1)


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from([v4(b"x" * 30), v6(b"y" * 30), v4(b"", options=b"\x01" * 8)]),
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=4),
    st.integers(0, 90),
)
def test_mutated_packets_never_raise_and_are_counted(
    packet: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(packet)
    for i, value in flips:
        if i < len(data):
            data[i] = value
    mutated = bytes(data[: len(data) - cut])
    p, counters = parsed(mutated)
    assert (p is None) == (sum(counters.values()) == 1)
    if p is not None:
        assert len(p.payload) <= len(mutated)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_quoted_packets_in_icmp_errors_never_raise(data: bytes) -> None:
    parse_quoted(data)
    parse_quoted(b"\x45" + data)
    parse_quoted(b"\x60" + data)
