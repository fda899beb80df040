"""`gso.split`: what a TUN read with offloads becomes, held to what Linux's GSO would send.

Super-packets are built here the way the kernel hands them to a TUN with TSO/USO on: the
first piece's headers with the whole length, the union of the pieces' TCP flags and the
transport checksum field holding only the pseudo-header seed. Splitting must give back,
byte for byte, the packets built independently with full checksums (the packet builders
and the reference kernel come from test_gro).
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gro import (
    ACK,
    CWR,
    DST4,
    DST6,
    ECE,
    FIN,
    FLOWS,
    PSH,
    SRC4,
    SRC6,
    Flow,
    coalesce,
    data,
    ipv4,
    ipv6,
    kernel_receive,
    ones_sum,
    pseudo_sum,
    tcp_packet,
    udp_packet,
)

from wiresnake.io.gso import split

VNET = struct.Struct("<BBHHHH")
NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 3, 4, 5, 0x80


def seeded(pkt: bytes, at: int) -> bytes:
    """`pkt` with its transport checksum replaced by the pseudo-header seed (CHECKSUM_PARTIAL)."""
    v6 = pkt[0] >> 4 == 6
    th = 40 if v6 else (pkt[0] & 0x0F) * 4
    src, dst = (pkt[8:24], pkt[24:40]) if v6 else (pkt[12:16], pkt[16:20])
    proto = pkt[6] if v6 else pkt[9]
    seed = pseudo_sum(v6, src, dst, proto, len(pkt) - th)
    return pkt[: th + at] + seed.to_bytes(2, "big") + pkt[th + at + 2 :]


def vnet(gso_type: int, gso_size: int, th: int, at: int) -> bytes:
    return VNET.pack(NEEDS_CSUM, gso_type, th, gso_size, th, at)


def tcp_super(flow: Flow, sizes: list[int], flags: int) -> tuple[bytes, list[bytes]]:
    """The TUN read for segments of these sizes, and the segments Linux would send."""
    th = 40 if flow.v6 else 20
    chunks = [data(i, n, 7) for i, n in enumerate(sizes)]
    whole = flow.seg(flow.seq0, b"".join(chunks), 0, flags=flags)
    gso = GSO_TCPV6 if flow.v6 else GSO_TCPV4
    read = vnet(gso, sizes[0], th, 16) + seeded(whole, 16)
    expected, seq = [], flow.seq0
    for k, chunk in enumerate(chunks):
        f = flags
        if k < len(chunks) - 1:
            f &= ~(FIN | PSH)
        if k:
            f &= ~CWR
        expected.append(flow.seg(seq & 0xFFFFFFFF, chunk, k, flags=f))
        seq += len(chunk)
    return read, expected


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize(
    "sizes", [[1368, 1368], [1368] * 47, [1368] * 10 + [1], [1000, 1000, 999]], ids=str
)
def test_tcp_super_packet_splits_into_what_linux_would_send(flow: Flow, sizes: list[int]) -> None:
    flow = Flow(**{**flow.__dict__, "id_step": 1})
    read, expected = tcp_super(flow, sizes, ACK)
    assert split(read) == expected


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_fin_and_psh_only_on_the_last_piece_cwr_only_on_the_first(v6: bool) -> None:
    flow = Flow(v6=v6, id_step=1)
    read, expected = tcp_super(flow, [500, 500, 500], ACK | PSH | FIN | CWR | ECE)
    got = split(read)
    assert got == expected
    th = 40 if v6 else 20
    assert [p[th + 13] for p in got or []] == [ACK | CWR | ECE, ACK | ECE, ACK | PSH | FIN | ECE]


def test_ecn_bit_of_the_gso_type_is_accepted() -> None:
    read, expected = tcp_super(Flow(id_step=1), [700, 700], ACK | CWR)
    read = bytes([read[0], read[1] | GSO_ECN]) + read[2:]
    assert split(read) == expected


def test_sequence_numbers_wrap_inside_a_super_packet() -> None:
    flow = Flow(seq0=0xFFFFFF00, id_step=1)
    read, expected = tcp_super(flow, [200, 200, 200], ACK)
    assert split(read) == expected


@pytest.mark.parametrize("flow", FLOWS)
def test_agrees_with_the_reference_kernel_on_what_gro_writes(flow: Flow) -> None:
    # gro.coalesce writes exactly what a TSO read hands us: each must cut the same way
    flow = Flow(**{**flow.__dict__, "id_step": 1})
    for item in coalesce(flow.run([1368] * 20 + [77])):
        assert split(b"".join(bytes(p) for p in item)) == kernel_receive(item)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_udp_super_packet_splits_into_datagrams(v6: bool) -> None:
    sizes = [1200, 1200, 1200, 345]
    chunks = [data(i, n, 3) for i, n in enumerate(sizes)]
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)

    def datagram(payload: bytes, ip_id: int, fill: bool) -> bytes:
        udp = struct.pack("!HHHH", 4000, 5000, 8 + len(payload), 0) + payload
        if fill:
            seed = pseudo_sum(v6, src, dst, 17, len(udp))
            csum = ~ones_sum(udp, seed) & 0xFFFF or 0xFFFF
            udp = udp[:6] + csum.to_bytes(2, "big") + udp[8:]
        return ipv6(17, udp) if v6 else ipv4(17, udp, ip_id=ip_id)

    th = 40 if v6 else 20
    read = vnet(GSO_UDP_L4, 1200, th, 6) + seeded(datagram(b"".join(chunks), 9, False), 6)
    assert split(read) == [datagram(c, 9 + k, True) for k, c in enumerate(chunks)]


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_partial_checksums_are_finished(v6: bool) -> None:
    th = 40 if v6 else 20
    tcp = tcp_packet(v6=v6, seq=5, payload=b"abc", flags=ACK | PSH)
    assert split(vnet(GSO_NONE, 0, th, 16) + seeded(tcp, 16)) == [tcp]
    udp = udp_packet(v6, b"hello, world")
    assert split(vnet(GSO_NONE, 0, th, 6) + seeded(udp, 6)) == [udp]
    # a super-packet no bigger than one piece is one packet, finished
    read, expected = tcp_super(Flow(v6=v6), [900], ACK)
    assert split(read) == expected


def test_udp_checksum_that_computes_to_zero_is_sent_as_all_ones() -> None:
    # find a payload whose UDP checksum computes to zero: it must go out as 0xFFFF
    rng = random.Random(5)
    for _ in range(200_000):
        payload = rng.randbytes(2)
        pkt = udp_packet(False, payload)
        if pkt[26:28] == b"\xff\xff":
            break
    else:
        pytest.fail("no zero-checksum payload found")
    assert split(vnet(GSO_NONE, 0, 20, 6) + seeded(pkt, 6)) == [pkt]


def test_plain_reads_pass_through() -> None:
    pkt = tcp_packet(payload=b"x" * 50)
    assert split(bytes(10) + pkt) == [pkt]


def _bad_reads() -> dict[str, bytes]:
    read, _ = tcp_super(Flow(id_step=1), [600, 600], ACK)
    hdr = list(VNET.unpack(read[:10]))
    body = read[10:]

    def with_vnet(**kw: int) -> bytes:
        fields = dict(zip(["flags", "type", "hlen", "size", "start", "off"], hdr, strict=True))
        fields.update(kw)
        return VNET.pack(*fields.values()) + body

    too_many = tcp_super(Flow(id_step=1), [40] * 1367, ACK)[0]
    v6read, _ = tcp_super(Flow(v6=True), [600, 600], ACK)

    def with_doff(doff: int) -> bytes:
        # data offset in the TCP header's byte 12 (IPv4 header of 20, vnet header of 10)
        return read[:42] + bytes([doff << 4]) + read[43:]

    def cut(b: bytes) -> bytes:
        return b[:-100]  # a read shorter than its IP length says

    return {
        "short": b"\x01\x01\x00",
        "gso without NEEDS_CSUM": with_vnet(flags=0),
        "gso size zero": with_vnet(size=0),
        "UFO": with_vnet(type=GSO_UDP),
        "unknown type": with_vnet(type=9),
        "start not the transport header": with_vnet(start=24),
        "udp type on tcp": with_vnet(type=GSO_UDP_L4),
        "checksum field past the end": VNET.pack(NEEDS_CSUM, 0, 0, 0, 60, 16) + body[:50],
        "more pieces than the smallest MSS allows": too_many,
        "tcp data offset 2": with_doff(2),
        "tcp data offset 3": with_doff(3),
        "tcp data offset 4": with_doff(4),
        "ipv4 shorter than its total length": cut(read),
        "ipv6 shorter than its payload length": cut(v6read),
        "not IP": with_vnet()[:10] + b"\x00" * 80,
    }


@pytest.mark.parametrize("read", list(_bad_reads().values()), ids=list(_bad_reads()))
def test_reads_the_kernel_cannot_send_are_refused(read: bytes) -> None:
    assert split(read) is None


def test_many_small_pieces_are_cut_too() -> None:
    # Linux's smallest MSS is 48: a burst of 64 KiB then holds over a thousand pieces
    flow = Flow(id_step=1)
    read, expected = tcp_super(flow, [48] * 1300, ACK)
    assert split(read) == expected


def test_ipv6_extension_headers_are_copied_into_every_piece() -> None:
    dest_opts = bytes([6, 0, 1, 4, 0, 0, 0, 0])  # next header TCP, PadN of 4

    def v6_with_opts(seq: int, payload: bytes, flags: int) -> bytes:
        plain = tcp_packet(v6=True, seq=seq, payload=payload, flags=flags)
        # the TCP checksum's pseudo-header is the same: addresses, upper-layer length
        head = bytearray(plain[:40])
        head[4:6] = (len(plain) - 40 + len(dest_opts)).to_bytes(2, "big")
        head[6] = 60  # destination options
        return bytes(head) + dest_opts + plain[40:]

    chunks = [data(i, 700, 9) for i in range(3)]
    whole = v6_with_opts(5000, b"".join(chunks), ACK | PSH)
    read = vnet(GSO_TCPV6, 700, 48, 16) + seeded_at(whole, 48, 16, 6)
    expected = [
        v6_with_opts(5000 + 700 * k, c, ACK | PSH if k == 2 else ACK) for k, c in enumerate(chunks)
    ]
    assert split(read) == expected


def seeded_at(pkt: bytes, th: int, at: int, proto: int) -> bytes:
    seed = pseudo_sum(True, pkt[8:24], pkt[24:40], proto, len(pkt) - th)
    return pkt[: th + at] + seed.to_bytes(2, "big") + pkt[th + at + 2 :]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([False, True]),
    st.sampled_from([GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_NONE]),
    st.integers(0, 80),
    st.integers(0, 0xFF),
    st.integers(0, 3000),
    st.integers(-64, 64),
    st.integers(0, 0xFF),
)
def test_mangled_real_packets_never_raise(
    v6: bool, gso_type: int, at: int, value: int, size: int, start_delta: int, flags: int
) -> None:
    # a valid super-packet with one header byte and the vnet fields changed: headers that
    # look almost right reach the deep paths that random bytes never do
    read, _ = tcp_super(Flow(v6=v6, id_step=1), [900, 900, 900], ACK)
    body = bytearray(read[10:])
    body[at] = value
    th = 40 if v6 else 20
    start = max(0, th + start_delta)
    result = split(VNET.pack(flags, gso_type, 0, size, start, 16) + bytes(body))
    assert result is None or all(isinstance(p, bytes) for p in result)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.integers(0, 255), st.integers(0, 2000))
def test_garbage_never_raises(body: bytes, gso_type: int, size: int) -> None:
    for start, off in ((20, 16), (40, 6), (0, 0), (199, 16)):
        result = split(VNET.pack(NEEDS_CSUM, gso_type, 0, size, start, off) + body)
        assert result is None or all(isinstance(p, bytes) for p in result)
