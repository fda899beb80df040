"""ICMPv4 (RFC 792) and ICMPv6 (RFC 4443): echo both ways, errors both ways.

The interface answers echo requests to its addresses by itself.  An `IcmpSocket` pings out
under one identifier (either family) and receives the replies, and the errors that come
back about its requests; errors about UDP (later TCP) packets go to the socket that sent
them.  The errors this stack sends (port and protocol unreachable) follow RFC 1122 section
3.2.2 and RFC 4443 section 2.4: never about an ICMP error, quoting as much of the packet as
fits 576 (IPv4) or 1280 (IPv6) bytes, and rate limited by a token bucket.  Neighbour
discovery has no place here: the tunnel is layer 3, so its messages are ignored.
"""

from __future__ import annotations

import errno
import struct
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from wiresnake.netstack.checksum import checksum, ones_sum, pseudo_header
from wiresnake.netstack.ip import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    AddressLike,
    IpPacket,
    format_address,
    pack_address,
    parse_quoted,
)
from wiresnake.netstack.sockets import Endpoint, Socket

if TYPE_CHECKING:
    from wiresnake.netstack.iface import Interface

__all__ = [
    "ECHO_REPLY_V4",
    "ECHO_REPLY_V6",
    "ECHO_REQUEST_V4",
    "ECHO_REQUEST_V6",
    "EchoReply",
    "IcmpError",
    "IcmpSocket",
    "TokenBucket",
    "build_echo",
    "build_error",
    "port_unreachable",
    "protocol_unreachable",
    "receive_v4",
    "receive_v6",
]

ECHO_REPLY_V4 = 0
DEST_UNREACHABLE_V4 = 3
ECHO_REQUEST_V4 = 8
TIME_EXCEEDED_V4 = 11
PARAMETER_PROBLEM_V4 = 12
DEST_UNREACHABLE_V6 = 1
PACKET_TOO_BIG_V6 = 2
TIME_EXCEEDED_V6 = 3
PARAMETER_PROBLEM_V6 = 4
ECHO_REQUEST_V6 = 128
ECHO_REPLY_V6 = 129

# type, code, checksum, then identifier and sequence (echo) or 32 bits of "rest of header"
_ECHO = struct.Struct("!BBHHH")
_ERROR = struct.Struct("!BBHI")
_UNPACK_ECHO = _ECHO.unpack_from

_REASONS = {
    (4, 3, 0): "net_unreachable",
    (4, 3, 1): "host_unreachable",
    (4, 3, 2): "protocol_unreachable",
    (4, 3, 3): "port_unreachable",
    (4, 3, 4): "packet_too_big",
    (4, 3, 9): "administratively_prohibited",
    (4, 3, 10): "administratively_prohibited",
    (4, 3, 13): "administratively_prohibited",
    (6, 1, 0): "net_unreachable",
    (6, 1, 1): "administratively_prohibited",
    (6, 1, 3): "host_unreachable",
    (6, 1, 4): "port_unreachable",
}
_TYPE_REASONS = {
    (4, TIME_EXCEEDED_V4): "ttl_exceeded",
    (4, PARAMETER_PROBLEM_V4): "parameter_problem",
    (6, PACKET_TOO_BIG_V6): "packet_too_big",
    (6, TIME_EXCEEDED_V6): "ttl_exceeded",
    (6, PARAMETER_PROBLEM_V6): "parameter_problem",
}

QUOTE_LIMIT_V4 = 576  # RFC 1812 section 4.3.2.3
QUOTE_LIMIT_V6 = 1280  # RFC 4443 section 2.4 (c)
RECEIVE_QUEUE = 64
_REMEMBERED_PINGS = 1024


class EchoReply(NamedTuple):
    source: str
    ident: int
    seq: int
    payload: bytes
    time: float  # when it arrived
    rtt: float | None  # since this socket's ping() of the same sequence to that address


class IcmpError(NamedTuple):
    """An ICMP error about a packet one of our sockets sent."""

    reason: str  # "port_unreachable", "host_unreachable", "packet_too_big", ...
    reporter: str  # who sent the error: the destination itself or a router on the way
    remote: Endpoint  # where the packet was going (for echo: address and identifier)
    version: int  # 4 or 6
    type: int
    code: int
    mtu: int | None  # the next-hop MTU, for "packet_too_big"
    time: float


class TokenBucket:
    """At most `burst` at once, refilled at `rate` per second."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def take(self, now: float) -> bool:
        """Spend one token if there is one; time going backwards refills nothing."""
        last = self._last
        if last is None or now > last:
            if last is not None:
                self._tokens = min(float(self.burst), self._tokens + (now - last) * self.rate)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class IcmpSocket(Socket):
    """Pings under one echo identifier, to IPv4 and IPv6 destinations alike.

    `ping()` sends an echo request (OSError as `UdpSocket.send_to` for what cannot be sent);
    `recv()` answers the next reply or None, `recv_error()` the next error or None.
    """

    def __init__(
        self, iface: Interface, ident: int | None = None, *, queue: int = RECEIVE_QUEUE
    ) -> None:
        super().__init__(iface)
        if ident is not None and not 1 <= ident <= 0xFFFF:
            raise ValueError(f"echo identifier {ident} is not in 1..65535")
        # one identifier space for both families: keyed under IPv4's protocol number
        self.ident = iface.sockets.bind(self, PROTO_ICMP, None, ident or 0)
        self.queue = queue
        self.ttl: int | None = None
        self._replies: deque[EchoReply] = deque()
        self._errors: deque[IcmpError] = deque(maxlen=queue)
        self._sent: dict[tuple[bytes, int], float] = {}

    def ping(self, dst: AddressLike, seq: int, payload: bytes, now: float) -> None:
        """Send an echo request; its reply, if one comes, carries the round trip time."""
        if self.closed:
            raise OSError(errno.EBADF, "the socket is closed")
        if not 0 <= seq <= 0xFFFF:
            raise ValueError(f"echo sequence {seq} is not in 0..65535")
        iface = self.iface
        daddr = pack_address(dst)
        src = iface.source_for(daddr)
        msg = build_echo(src, daddr, True, self.ident, seq, payload)
        iface.transmit(src, daddr, PROTO_ICMP if len(src) == 4 else PROTO_ICMPV6, msg, self.ttl)
        sent = self._sent
        sent.pop((daddr, seq), None)
        sent[(daddr, seq)] = now
        if len(sent) > _REMEMBERED_PINGS:
            del sent[next(iter(sent))]

    def recv(self) -> EchoReply | None:
        return self._replies.popleft() if self._replies else None

    def recv_error(self) -> IcmpError | None:
        return self._errors.popleft() if self._errors else None

    @property
    def pending(self) -> int:
        """Replies waiting for `recv()`."""
        return len(self._replies)

    def icmp_error(self, error: IcmpError) -> None:
        self._errors.append(error)

    def _deliver(self, p: IpPacket, ident: int, seq: int, payload: bytes, now: float) -> None:
        if len(self._replies) >= self.queue:
            self.iface.counters["icmp_queue_full"] += 1
            return
        sent = self._sent.pop((p.src, seq), None)
        rtt = None if sent is None else now - sent
        self._replies.append(EchoReply(format_address(p.src), ident, seq, payload, now, rtt))


def build_echo(src: bytes, dst: bytes, request: bool, ident: int, seq: int, data: bytes) -> bytes:
    """An echo request or reply message (the ICMP part, checksum filled in)."""
    if len(src) == 4:
        kind = ECHO_REQUEST_V4 if request else ECHO_REPLY_V4
        initial = 0
    else:
        kind = ECHO_REQUEST_V6 if request else ECHO_REPLY_V6
        initial = pseudo_header(src, dst, PROTO_ICMPV6, 8 + len(data))
    c = checksum(data, ones_sum(_ECHO.pack(kind, 0, 0, ident, seq), initial))
    return _ECHO.pack(kind, 0, c, ident, seq) + data


def build_error(src: bytes, dst: bytes, kind: int, code: int, rest: int, quote: bytes) -> bytes:
    """An error message (the ICMP part) quoting `quote`."""
    initial = 0
    if len(src) == 16:
        initial = pseudo_header(src, dst, PROTO_ICMPV6, 8 + len(quote))
    c = checksum(quote, ones_sum(_ERROR.pack(kind, code, 0, rest), initial))
    return _ERROR.pack(kind, code, c, rest) + quote


def receive_v4(iface: Interface, p: IpPacket, now: float) -> None:
    msg = p.payload
    counters = iface.counters
    if len(msg) < 8:
        counters["icmpv4_truncated"] += 1
        return
    if checksum(msg) != 0:
        counters["icmpv4_bad_checksum"] += 1
        return
    kind = msg[0]
    if kind == ECHO_REQUEST_V4:
        _answer_echo(iface, p, msg)
    elif kind == ECHO_REPLY_V4:
        _echo_reply(iface, p, msg, now)
    elif kind in (DEST_UNREACHABLE_V4, TIME_EXCEEDED_V4, PARAMETER_PROBLEM_V4):
        _error(iface, p, msg, now)
    else:
        counters["icmpv4_ignored"] += 1


def receive_v6(iface: Interface, p: IpPacket, now: float) -> None:
    msg = p.payload
    counters = iface.counters
    if len(msg) < 8:
        counters["icmpv6_truncated"] += 1
        return
    if checksum(msg, pseudo_header(p.src, p.dst, PROTO_ICMPV6, len(msg))) != 0:
        counters["icmpv6_bad_checksum"] += 1
        return
    kind = msg[0]
    if kind == ECHO_REQUEST_V6:
        _answer_echo(iface, p, msg)
    elif kind == ECHO_REPLY_V6:
        _echo_reply(iface, p, msg, now)
    elif kind < 128:
        _error(iface, p, msg, now)
    else:
        # neighbour discovery, multicast listener and router messages: a layer 3 tunnel
        # has no neighbours to discover
        counters["icmpv6_ignored"] += 1


def _answer_echo(iface: Interface, p: IpPacket, msg: bytes) -> None:
    _, _, _, ident, seq = _UNPACK_ECHO(msg)
    answer = build_echo(p.dst, p.src, False, ident, seq, msg[8:])
    if len(answer) + (20 if p.version == 4 else 40) > iface.mtu:
        # the request came in bigger than we may send, and we never fragment
        iface.counters["icmp_echo_too_big"] += 1
        return
    iface.transmit(p.dst, p.src, p.protocol, answer)
    iface.counters["icmp_echo_answered"] += 1


def _echo_reply(iface: Interface, p: IpPacket, msg: bytes, now: float) -> None:
    _, _, _, ident, seq = _UNPACK_ECHO(msg)
    sock = iface.sockets.lookup(PROTO_ICMP, p.dst, ident, p.src, 0)
    if isinstance(sock, IcmpSocket):
        sock._deliver(p, ident, seq, msg[8:], now)
    else:
        iface.counters["icmp_echo_reply_unmatched"] += 1


def _error(iface: Interface, p: IpPacket, msg: bytes, now: float) -> None:
    counters = iface.counters
    quoted = parse_quoted(msg[8:])
    if quoted is None:
        counters["icmp_error_malformed"] += 1
        return
    src, dst, protocol, head = quoted
    if len(src) != len(p.src) or len(head) < 8:
        counters["icmp_error_malformed"] += 1
        return
    if not iface.is_local(src):
        counters["icmp_error_unmatched"] += 1
        return
    if protocol in (PROTO_ICMP, PROTO_ICMPV6):
        if head[0] not in (ECHO_REQUEST_V4, ECHO_REQUEST_V6):
            counters["icmp_error_unmatched"] += 1
            return
        protocol = PROTO_ICMP
        port = remote_port = int.from_bytes(head[4:6], "big")
        sock = iface.sockets.lookup(protocol, src, port, dst, 0)
    else:
        port = int.from_bytes(head[0:2], "big")
        remote_port = int.from_bytes(head[2:4], "big")
        sock = iface.sockets.lookup(protocol, src, port, dst, remote_port)
    if sock is None:
        counters["icmp_error_unmatched"] += 1
        return
    version = p.version
    kind, code = msg[0], msg[1]
    reason = _REASONS.get((version, kind, code)) or _TYPE_REASONS.get((version, kind))
    mtu = None
    if reason == "packet_too_big":
        mtu = int.from_bytes(msg[6:8] if version == 4 else msg[4:8], "big")
    error = IcmpError(
        reason or "unreachable",
        format_address(p.src),
        (format_address(dst), remote_port),
        version,
        kind,
        code,
        mtu,
        now,
    )
    counters["icmp_errors_received"] += 1
    sock.icmp_error(error)


def port_unreachable(iface: Interface, p: IpPacket, now: float) -> None:
    if p.version == 4:
        _send_error(iface, p, DEST_UNREACHABLE_V4, 3, 0, now)
    else:
        _send_error(iface, p, DEST_UNREACHABLE_V6, 4, 0, now)


def protocol_unreachable(iface: Interface, p: IpPacket, now: float) -> None:
    if p.version == 4:
        _send_error(iface, p, DEST_UNREACHABLE_V4, 2, 0, now)
    else:
        # RFC 4443 section 3.4: a parameter problem pointing at the next header field
        # that named the protocol
        pkt = p.packet
        start = len(pkt) - len(p.payload)
        field, offset = 6, 40
        while offset < start:
            field = offset
            offset += (pkt[offset + 1] + 1) << 3
        _send_error(iface, p, PARAMETER_PROBLEM_V6, 1, field, now)


def _send_error(iface: Interface, p: IpPacket, kind: int, code: int, rest: int, now: float) -> None:
    payload = p.payload
    if p.protocol == PROTO_ICMP and (not payload or payload[0] not in (0, 8)):
        return
    if p.protocol == PROTO_ICMPV6 and (not payload or payload[0] < 128):
        return
    if not iface.icmp_errors.take(now):
        iface.counters["icmp_errors_rate_limited"] += 1
        return
    v4 = p.version == 4
    limit = min(QUOTE_LIMIT_V4 if v4 else QUOTE_LIMIT_V6, iface.mtu) - (28 if v4 else 48)
    msg = build_error(p.dst, p.src, kind, code, rest, p.packet[:limit])
    iface.transmit(p.dst, p.src, PROTO_ICMP if v4 else PROTO_ICMPV6, msg)
    iface.counters["icmp_errors_sent"] += 1
