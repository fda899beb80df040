"""Splitting what a TUN with offloads hands us back into packets the wire can carry.

With TUNSETOFFLOAD (CSUM, TSO4/6, USO4/6) the kernel stops segmenting and checksumming
what it routes into the tunnel: a read returns a virtio-net header and then either one
packet whose transport checksum is only seeded (NEEDS_CSUM: the field holds the
pseudo-header sum, the rest is ours to add) or a TCP/UDP super-packet of up to 64 KiB to
be cut into `gso_size` pieces. The peer's kernel checks every checksum, so each piece
leaves here complete, built as Linux's own GSO would build it: IPv4 total length, ID
(first ID plus the piece's index) and header checksum per piece, IPv6 payload length;
TCP sequence numbers advance, FIN and PSH stay only on the last piece, CWR only on the
first; UDP length per piece. Transport checksums are computed afresh over each piece.
Pure functions: no I/O here.
"""

from __future__ import annotations

from wiresnake.io.vnet import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VNET,
    VNET_HDR_LEN,
)
from wiresnake.netstack.checksum import checksum, pseudo_header

__all__ = ["split"]

_TCP, _UDP = 6, 17
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80
# 64 KiB in pieces of Linux's smallest MSS (tcp_min_snd_mss, 48): the kernel may send that
_MAX_PIECES = 65535 // 48 + 1


def split(buf: bytes) -> list[bytes] | None:
    """The packets in one TUN read (virtio-net header first), or None when the read
    cannot be what the kernel sends (the caller drops and counts it)."""
    if len(buf) < VNET_HDR_LEN:
        return None
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(buf)
    pkt = buf[VNET_HDR_LEN:]
    gso_type &= ~GSO_ECN
    if gso_type == GSO_NONE:
        if not flags & F_NEEDS_CSUM:
            return [pkt]
        return _finish(pkt, csum_start, csum_offset)
    if not flags & F_NEEDS_CSUM or gso_size == 0:
        return None
    if gso_type in (GSO_TCPV4, GSO_TCPV6):
        return _pieces(pkt, gso_size, csum_start, _TCP)
    if gso_type == GSO_UDP_L4:
        return _pieces(pkt, gso_size, csum_start, _UDP)
    return None  # UFO (IP fragmentation) is never offered, nor anything newer


def _finish(pkt: bytes, start: int, offset: int) -> list[bytes] | None:
    """One packet whose checksum field holds the seed: sum from `start`, store at `offset`."""
    at = start + offset
    if at + 2 > len(pkt):
        return None
    out = bytearray(pkt)
    value = checksum(memoryview(out)[start:])
    if value == 0 and offset == 6:  # UDP sends a computed zero as all ones (RFC 768)
        value = 0xFFFF
    out[at : at + 2] = value.to_bytes(2, "big")
    return [bytes(out)]


def _pieces(pkt: bytes, size: int, th: int, proto: int) -> list[bytes] | None:
    n = len(pkt)
    if n < 20:
        return None
    v4 = pkt[0] >> 4 == 4
    if v4:
        ihl = (pkt[0] & 0x0F) * 4
        if ihl < 20 or th != ihl or pkt[9] != proto or (pkt[2] << 8 | pkt[3]) != n:
            return None
        src, dst = pkt[12:16], pkt[16:20]
    else:
        if pkt[0] >> 4 != 6 or th < 40 or n < 40 or 40 + (pkt[4] << 8 | pkt[5]) != n:
            return None
        # extension headers (th > 40) are copied into every piece as they are; the GSO
        # type says what follows them
        if th == 40 and pkt[6] != proto:
            return None
        src, dst = pkt[8:24], pkt[24:40]
    if proto == _TCP:
        if th + 20 > n:
            return None
        thlen = (pkt[th + 12] >> 4) * 4
        check_at = 16
        if thlen < 20:
            return None
    else:
        thlen = 8
        check_at = 6
    header = th + thlen
    if header > n:
        return None
    total = n - header
    if total <= size:  # too small to be a real GSO packet: one piece, seed in place
        return _finish(pkt, th, check_at)
    if (total + size - 1) // size > _MAX_PIECES:
        return None
    head = bytearray(pkt[:header])
    ip_id = int.from_bytes(pkt[4:6], "big") if v4 else 0
    seq = int.from_bytes(pkt[th + 4 : th + 8], "big") if proto == _TCP else 0
    tcp_flags = pkt[th + 13] if proto == _TCP else 0
    view = memoryview(pkt)
    out: list[bytes] = []
    for index, off in enumerate(range(header, n, size)):
        chunk = view[off : off + size]
        plen = len(chunk)
        l4len = thlen + plen
        if v4:
            head[2:4] = (th + l4len).to_bytes(2, "big")
            head[4:6] = ((ip_id + index) & 0xFFFF).to_bytes(2, "big")
            head[10:12] = b"\0\0"
            head[10:12] = checksum(memoryview(head)[:th]).to_bytes(2, "big")
        else:
            head[4:6] = (th - 40 + l4len).to_bytes(2, "big")
        if proto == _TCP:
            head[th + 4 : th + 8] = ((seq + off - header) & 0xFFFFFFFF).to_bytes(4, "big")
            f = tcp_flags
            if off + size < n:
                f &= ~(_FIN | _PSH)
            if index:
                f &= ~_CWR
            head[th + 13] = f
        else:
            head[th + 4 : th + 6] = l4len.to_bytes(2, "big")
        head[th + check_at : th + check_at + 2] = b"\0\0"
        piece = head + chunk
        value = checksum(memoryview(piece)[th:], pseudo_header(src, dst, proto, l4len))
        if value == 0 and proto == _UDP:
            value = 0xFFFF
        piece[th + check_at : th + check_at + 2] = value.to_bytes(2, "big")
        out.append(bytes(piece))
    return out
