"""Coalescing TCP segments into one TSO packet per flow before they enter the TUN.

The kernel's TCP stack costs the same per packet whatever its size, so a batch of
consecutive segments of one flow is written as one super-packet with a virtio-net header
saying "segment me by gso_size, and finish the checksum" (GSO + NEEDS_CSUM). The merged
packet keeps the first segment's headers with lengths, the IPv4 header checksum and the
TCP checksum seed (the pseudo-header sum) redone; payloads are joined, never edited.
Only plain ACK segments (PSH allowed on the last) with identical headers but for the
sequence number, IP ID and checksums are merged; anything else passes through as it is.
Inner checksums are not verified: the segments came in authenticated transport messages,
and kernel WireGuard marks what it decrypts CHECKSUM_UNNECESSARY likewise. Pure
functions: no I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence

from wiresnake.io.vnet import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, VNET, VNET_PLAIN
from wiresnake.netstack.checksum import checksum, pseudo_header

__all__ = ["coalesce"]

_MAX_SEGMENTS = 64
_MAX_BYTES = 65535
_TCP_ACK, _TCP_PSH = 0x10, 0x08

# one packet as the merge loop sees it: (flow key, seq, payload length, header length, flags)
_Info = tuple[bytes, int, int, int, int]


def _inspect(pkt: bytes) -> _Info | None:
    """What merging needs of a TCP segment, or None when it must pass alone."""
    n = len(pkt)
    if n < 40:
        return None
    version = pkt[0] >> 4
    if version == 4:
        if pkt[0] != 0x45 or pkt[9] != 6 or (pkt[6] & 0x3F) or pkt[7]:
            return None  # IP options, not TCP, or a fragment
        if (pkt[2] << 8 | pkt[3]) != n:
            return None
        ip_len = 20
        # everything but total length, ID and header checksum must match
        key_ip = pkt[1:2] + pkt[6:7] + pkt[8:10] + pkt[12:20]
    elif version == 6:
        if n < 60 or pkt[6] != 6 or 40 + (pkt[4] << 8 | pkt[5]) != n:
            return None
        ip_len = 40
        key_ip = pkt[0:4] + pkt[6:40]
    else:
        return None
    tcp_len = (pkt[ip_len + 12] >> 4) * 4
    header = ip_len + tcp_len
    flags = pkt[ip_len + 13]
    if tcp_len < 20 or header >= n or flags & ~(_TCP_ACK | _TCP_PSH) or not flags & _TCP_ACK:
        return None
    seq = int.from_bytes(pkt[ip_len + 4 : ip_len + 8], "big")
    # ports, ack, window, urgent pointer and options must match; flags are checked apart
    tcp = pkt[ip_len : ip_len + tcp_len]
    key = key_ip + tcp[0:4] + tcp[8:12] + tcp[14:16] + tcp[18:]
    return key, seq, n - header, header, flags


def _merge(
    group: Sequence[bytes], header: int, gso_size: int, psh: bool
) -> tuple[bytes | memoryview, ...]:
    first = group[0]
    total = header + sum(len(p) - header for p in group)
    head = bytearray(first[:header])
    v4 = first[0] >> 4 == 4
    ip_len = 20 if v4 else 40
    tcp_total = total - ip_len
    if v4:
        head[2:4] = total.to_bytes(2, "big")
        head[10:12] = b"\0\0"
        head[10:12] = checksum(head[:20]).to_bytes(2, "big")
        pseudo = pseudo_header(bytes(head[12:16]), bytes(head[16:20]), 6, tcp_total)
        gso_type = GSO_TCPV4
    else:
        head[4:6] = tcp_total.to_bytes(2, "big")
        pseudo = pseudo_header(bytes(head[8:24]), bytes(head[24:40]), 6, tcp_total)
        gso_type = GSO_TCPV6
    if psh:
        head[ip_len + 13] |= _TCP_PSH
    # NEEDS_CSUM: the field holds the folded pseudo-header sum, the kernel adds the rest
    head[ip_len + 16 : ip_len + 18] = pseudo.to_bytes(2, "big")
    vnet = VNET.pack(F_NEEDS_CSUM, gso_type, header, gso_size, ip_len, 16)
    parts: list[bytes | memoryview] = [vnet, bytes(head)]
    parts += [memoryview(p)[header:] for p in group]
    return tuple(parts)


_MASKS: dict[tuple[int, int], int] = {}


def _mask(ip_len: int, header: int) -> int:
    """The header bytes every segment of a merge shares, as an integer mask: all but the
    IP length, IPv4 ID and header checksum, TCP sequence number, checksum and PSH bit."""
    mask = _MASKS.get((ip_len, header))
    if mask is None:
        keep = bytearray(b"\xff" * header)
        varying = [(2, 6), (10, 12)] if ip_len == 20 else [(4, 6)]
        varying += [(ip_len + 4, ip_len + 8), (ip_len + 16, ip_len + 18)]
        for a, b in varying:
            keep[a:b] = bytes(b - a)
        keep[ip_len + 13] = 0xFF & ~_TCP_PSH
        mask = _MASKS[(ip_len, header)] = int.from_bytes(keep, "big")
    return mask


def coalesce(packets: Sequence[bytes]) -> list[tuple[bytes | memoryview, ...]]:
    """Each item is the buffers of one TUN write: a virtio-net header, then the packet
    (one piece, or the merged headers followed by the joined payloads)."""
    out: list[tuple[bytes | memoryview, ...]] = []
    from_bytes = int.from_bytes
    i, count = 0, len(packets)
    while i < count:
        p = packets[i]
        info = _inspect(p)
        if info is None:
            out.append((VNET_PLAIN, p))
            i += 1
            continue
        _key, seq, size, header, flags = info
        o = 20 if p[0] >> 4 == 4 else 40
        # a follower must match p in every header byte but lengths, IPv4 ID and checksums,
        # sequence number and PSH: one masked comparison of the headers as integers
        mask = _mask(o, header)
        key = from_bytes(p[:header], "big") & mask
        at = 2 if o == 20 else 4  # IPv4 total length, IPv6 payload length
        extra = 0 if o == 20 else 40
        expected = (seq + size) & 0xFFFFFFFF
        length = len(p)
        psh = bool(flags & _TCP_PSH)
        j = i + 1
        while j < count and j - i < _MAX_SEGMENTS and not psh:
            q = packets[j]
            n = len(q)
            z = n - header
            if (
                z <= 0
                or z > size
                or length + z > _MAX_BYTES
                or from_bytes(q[:header], "big") & mask != key
                or (q[at] << 8 | q[at + 1]) + extra != n
                or from_bytes(q[o + 4 : o + 8], "big") != expected
            ):
                break
            length += z
            expected = (expected + z) & 0xFFFFFFFF
            psh = bool(q[o + 13] & _TCP_PSH)
            j += 1
            if z < size:
                break  # a short segment can only end a run
        if j - i == 1:
            out.append((VNET_PLAIN, p))
        else:
            out.append(_merge(packets[i:j], header, size, psh))
        i = j
    return out
