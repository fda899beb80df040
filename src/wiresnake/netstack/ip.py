"""IPv4 and IPv6 headers: strict parsing of what arrives, building of what leaves.

`parse()` never raises on what the network sends: a packet it refuses is counted under the
reason in the caller's `Counter` and None comes back.  IPv4 options are skipped; IPv6
hop-by-hop, routing (with no segments left) and destination options headers are skipped.
Fragments of either family are dropped and counted, since this stack neither reassembles
nor fragments: what it sends fits the MTU or is refused.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import NamedTuple

from wiresnake.netstack.checksum import checksum

__all__ = [
    "DEFAULT_TTL",
    "IPV4_HEADER_SIZE",
    "IPV6_HEADER_SIZE",
    "PROTO_ICMP",
    "PROTO_ICMPV6",
    "PROTO_TCP",
    "PROTO_UDP",
    "AddressLike",
    "IpPacket",
    "build",
    "build_ipv4",
    "build_ipv6",
    "format_address",
    "pack_address",
    "parse",
    "parse_quoted",
]

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
DEFAULT_TTL = 64
IPV4_HEADER_SIZE = 20
IPV6_HEADER_SIZE = 40

_HOP_BY_HOP = 0
_ROUTING = 43
_FRAGMENT = 44
_NO_NEXT_HEADER = 59
_DESTINATION_OPTIONS = 60

# version/IHL, TOS, total length, identification, flags/fragment offset, TTL, protocol,
# header checksum, source, destination
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
# version/traffic class/flow label, payload length, next header, hop limit, source, dest
_IPV6 = struct.Struct("!IHBB16s16s")
_UNPACK_V4 = _IPV4.unpack_from
_UNPACK_V6 = _IPV6.unpack_from
_DONT_FRAGMENT = 0x4000
_MORE_FRAGMENTS_OR_OFFSET = 0x3FFF
_V6_MARTIANS = (bytes(15) + b"\x01", bytes(16))  # loopback, unspecified
_SKIPPED = (_HOP_BY_HOP, _ROUTING, _DESTINATION_OPTIONS)

AddressLike = str | IPv4Address | IPv6Address | IPv4Interface | IPv6Interface


class IpPacket(NamedTuple):
    """One IP packet addressed somewhere, as `parse()` found it."""

    src: bytes  # 4 bytes (IPv4) or 16 (IPv6)
    dst: bytes
    protocol: int  # the upper-layer protocol, after any IPv6 extension headers
    ttl: int  # TTL or hop limit
    payload: bytes  # the upper-layer message
    packet: bytes  # the whole packet, cut to its stated length (ICMP errors quote it)

    @property
    def version(self) -> int:
        return 4 if len(self.src) == 4 else 6


def parse(packet: bytes, counters: Counter[str]) -> IpPacket | None:
    """The packet's header fields and payload, or None (the reason counted)."""
    n = len(packet)
    if n < 20:
        counters["ip_truncated"] += 1
        return None
    version = packet[0] >> 4
    if version == 4:
        return _parse_v4(packet, n, counters)
    if version == 6:
        return _parse_v6(packet, n, counters)
    counters["ip_bad_version"] += 1
    return None


def _parse_v4(packet: bytes, n: int, counters: Counter[str]) -> IpPacket | None:
    first, _, total, _, fragment, ttl, protocol, _, src, dst = _UNPACK_V4(packet)
    ihl = (first & 15) << 2
    if ihl < 20 or ihl > n:
        counters["ipv4_bad_header_length"] += 1
        return None
    if total < ihl or total > n:
        counters["ipv4_bad_total_length"] += 1
        return None
    # checksum() inlined: a header that verifies sums to ffff, a nonzero multiple of ffff
    v = int.from_bytes(packet[:ihl], "little")
    if v % 0xFFFF or not v:
        counters["ipv4_bad_checksum"] += 1
        return None
    if fragment & _MORE_FRAGMENTS_OR_OFFSET:
        counters["ipv4_fragment"] += 1
        return None
    # this network (0/8), loopback, multicast and class E never source a packet that
    # arrives from a tunnel, and nothing should ever be sent back to them
    a = src[0]
    if a == 0 or a == 127 or a >= 224:
        counters["ipv4_martian_source"] += 1
        return None
    if total != n:
        packet = packet[:total]
    return IpPacket(src, dst, protocol, ttl, packet[ihl:], packet)


def _parse_v6(packet: bytes, n: int, counters: Counter[str]) -> IpPacket | None:
    if n < 40:
        counters["ip_truncated"] += 1
        return None
    _, length, nh, hop_limit, src, dst = _UNPACK_V6(packet)
    end = 40 + length
    if end > n:
        counters["ipv6_bad_payload_length"] += 1
        return None
    if src[0] == 0xFF or src in _V6_MARTIANS:
        counters["ipv6_martian_source"] += 1
        return None
    if end != n:
        packet = packet[:end]
    offset = 40
    while nh in _SKIPPED:
        if offset + 8 > end:
            counters["ipv6_bad_extension_header"] += 1
            return None
        size = (packet[offset + 1] + 1) << 3
        if offset + size > end or (nh == _HOP_BY_HOP and offset != 40):
            counters["ipv6_bad_extension_header"] += 1
            return None
        if nh == _ROUTING:
            # segments left: we would have to forward it, and we are no router
            if packet[offset + 3]:
                counters["ipv6_routing_header"] += 1
                return None
        else:
            refused = _refused_option(packet, offset + 2, offset + size)
            if refused:
                counters[refused] += 1
                return None
        nh = packet[offset]
        offset += size
    if nh == _FRAGMENT:
        counters["ipv6_fragment"] += 1
        return None
    if nh == _NO_NEXT_HEADER:
        counters["ipv6_no_next_header"] += 1
        return None
    return IpPacket(src, dst, nh, hop_limit, packet[offset:], packet)


def _refused_option(packet: bytes, i: int, end: int) -> str:
    """Why the options from i to end refuse the packet ("" if they do not).

    RFC 8200 section 4.2: the top two bits of an unknown option's type say whether to skip
    it (00) or to discard the packet (01, 10, 11).  Pad1 and PadN are the only ones known.
    """
    while i < end:
        kind = packet[i]
        if kind == 0:
            i += 1
            continue
        if i + 2 > end:
            return "ipv6_bad_extension_header"
        i += 2 + packet[i + 1]
        if i > end:
            return "ipv6_bad_extension_header"
        if kind != 1 and kind >> 6:
            return "ipv6_unknown_option"
    return ""


def parse_quoted(quoted: bytes) -> tuple[bytes, bytes, int, bytes] | None:
    """(source, destination, protocol, start of payload) of the packet an ICMP error
    quotes, or None; lenient, since the quote is usually cut short."""
    n = len(quoted)
    if n < 20:
        return None
    version = quoted[0] >> 4
    if version == 4:
        ihl = (quoted[0] & 15) << 2
        if ihl < 20 or n < ihl:
            return None
        return quoted[12:16], quoted[16:20], quoted[9], quoted[ihl:]
    if version != 6 or n < 40:
        return None
    nh = quoted[6]
    offset = 40
    while nh in _SKIPPED:
        if offset + 2 > n:
            return None
        nh, offset = quoted[offset], offset + ((quoted[offset + 1] + 1) << 3)
    if offset > n:
        return None
    return quoted[8:24], quoted[24:40], nh, quoted[offset:]


def build_ipv4(
    src: bytes,
    dst: bytes,
    protocol: int,
    payload: bytes,
    ttl: int = DEFAULT_TTL,
    ident: int = 0,
    tos: int = 0,
) -> bytes:
    """An IPv4 packet (no options, Don't Fragment set) with its header checksum."""
    total = 20 + len(payload)
    if total > 0xFFFF:
        raise ValueError(f"an IPv4 payload of {len(payload)} bytes does not fit 65535")
    header = _IPV4.pack(0x45, tos, total, ident, _DONT_FRAGMENT, ttl, protocol, 0, src, dst)
    return (
        _IPV4.pack(
            0x45, tos, total, ident, _DONT_FRAGMENT, ttl, protocol, checksum(header), src, dst
        )
        + payload
    )


def build_ipv6(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload: bytes,
    hop_limit: int = DEFAULT_TTL,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """An IPv6 packet without extension headers."""
    if len(payload) > 0xFFFF:
        raise ValueError(f"an IPv6 payload of {len(payload)} bytes needs a jumbogram")
    first = 0x60000000 | (traffic_class << 20) | (flow_label & 0xFFFFF)
    return _IPV6.pack(first, len(payload), next_header, hop_limit, src, dst) + payload


def build(
    src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int = DEFAULT_TTL, ident: int = 0
) -> bytes:
    """An IPv4 or IPv6 packet, by the length of the addresses."""
    if len(src) == 4:
        return build_ipv4(src, dst, protocol, payload, ttl, ident)
    return build_ipv6(src, dst, protocol, payload, ttl)


def pack_address(address: AddressLike) -> bytes:
    """An address in its wire form (4 or 16 bytes); ValueError if it is not one."""
    if isinstance(address, IPv4Interface | IPv6Interface):
        return address.ip.packed
    if isinstance(address, IPv4Address | IPv6Address):
        return address.packed
    try:
        if ":" in address:
            return socket.inet_pton(socket.AF_INET6, address)
        return socket.inet_pton(socket.AF_INET, address)
    except (OSError, TypeError):
        raise ValueError(f"not an IP address: {address!r}") from None


def format_address(address: bytes) -> str:
    """The text form of a 4- or 16-byte address, as Python's sockets give it."""
    if len(address) == 4:
        return socket.inet_ntop(socket.AF_INET, address)
    return socket.inet_ntop(socket.AF_INET6, address)
