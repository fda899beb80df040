"""UDP (RFC 768, and RFC 8200 section 8.1 for IPv6): datagram sockets on the interface.

A `UdpSocket` is bound to a port on one of our addresses or on all of them (both
families).  Checksums are always sent, over IPv4 too where they are optional, and always
checked; a zero checksum is accepted over IPv4 (the sender chose none) and refused over
IPv6, where it is mandatory.  A datagram for a port nobody holds is answered with ICMP port
unreachable, within the interface's ICMP error rate.  Nothing is fragmented: a datagram
whose packet would exceed the MTU is refused with OSError(EMSGSIZE).
"""

from __future__ import annotations

import errno
import struct
from collections import deque
from typing import TYPE_CHECKING

from wiresnake.netstack.checksum import checksum, ones_sum, pseudo_header
from wiresnake.netstack.icmp import IcmpError, port_unreachable
from wiresnake.netstack.ip import PROTO_UDP, AddressLike, IpPacket, format_address, pack_address
from wiresnake.netstack.sockets import Endpoint, Socket

if TYPE_CHECKING:
    from wiresnake.netstack.iface import Interface

__all__ = ["HEADER_SIZE", "RECEIVE_QUEUE", "UdpSocket", "build_datagram", "receive"]

HEADER_SIZE = 8
RECEIVE_QUEUE = 256
"""Datagrams a socket holds for `recv_from()`; more are dropped (counted), as a full
receive buffer drops them."""

_HEADER = struct.Struct("!HHHH")
_UNPACK = _HEADER.unpack_from


class UdpSocket(Socket):
    """A UDP socket bound to (address, port); address None is every address we have.

    Port 0 picks a free ephemeral port (see `port`).  OSError(EADDRINUSE) if the port is
    held, OSError(EADDRNOTAVAIL) if the address is not one of the interface's.
    """

    def __init__(
        self,
        iface: Interface,
        port: int = 0,
        address: AddressLike | None = None,
        *,
        queue: int = RECEIVE_QUEUE,
    ) -> None:
        super().__init__(iface)
        bound = iface.bind_address(address)
        self._bound = bound
        self.port = iface.sockets.bind(self, PROTO_UDP, bound, port)
        self.queue = queue
        self.ttl: int | None = None  # None: the interface's
        self._received: deque[tuple[bytes, Endpoint]] = deque()
        self._errors: deque[IcmpError] = deque(maxlen=16)

    @property
    def address(self) -> str | None:
        """The address bound to, or None for all of the interface's."""
        return None if self._bound is None else format_address(self._bound)

    def max_payload(self, version: int = 4) -> int:
        """The largest payload `send_to` takes over IPv4 (4) or IPv6 (6)."""
        return self.iface.mtu - (20 if version == 4 else 40) - HEADER_SIZE

    def send_to(self, payload: bytes, address: Endpoint) -> None:
        """Send one datagram to (address, port): it leaves on the next `Interface.poll`.

        OSError: EMSGSIZE if it does not fit the MTU, ENETUNREACH if the interface has no
        address of the destination's family, EAFNOSUPPORT if the socket is bound to an
        address of the other family, EBADF once closed.  ValueError for a malformed address.
        """
        if self.closed:
            raise OSError(errno.EBADF, "the socket is closed")
        host, port = address
        if not 1 <= port <= 0xFFFF:
            raise ValueError(f"destination port {port} is not in 1..65535")
        iface = self.iface
        dst = pack_address(host)
        src = iface.source_for(dst, self._bound)
        n = len(payload)
        room = iface.mtu - (20 if len(dst) == 4 else 40) - HEADER_SIZE
        if n > room:
            raise OSError(
                errno.EMSGSIZE,
                f"a UDP payload of {n} bytes does not fit the MTU of {iface.mtu}: "
                f"at most {max(room, 0)} bytes over IPv{4 if len(dst) == 4 else 6}",
            )
        iface.transmit(
            src, dst, PROTO_UDP, build_datagram(src, dst, self.port, port, payload), self.ttl
        )

    def recv_from(self) -> tuple[bytes, Endpoint] | None:
        """The next datagram and who sent it, or None when there is none."""
        return self._received.popleft() if self._received else None

    def recv_error(self) -> IcmpError | None:
        """The next ICMP error about a datagram this socket sent (port unreachable...)."""
        return self._errors.popleft() if self._errors else None

    @property
    def pending(self) -> int:
        """Datagrams waiting for `recv_from()`."""
        return len(self._received)

    def icmp_error(self, error: IcmpError) -> None:
        self._errors.append(error)


def build_datagram(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header and payload, with the checksum over the pseudo-header of src and dst."""
    length = HEADER_SIZE + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"a UDP payload of {len(payload)} bytes does not fit 65535")
    header_sum = ones_sum(
        _HEADER.pack(sport, dport, length, 0), pseudo_header(src, dst, PROTO_UDP, length)
    )
    # RFC 768: a computed zero is sent as all ones, zero meaning "no checksum"
    return _HEADER.pack(sport, dport, length, checksum(payload, header_sum) or 0xFFFF) + payload


def receive(iface: Interface, p: IpPacket, now: float) -> None:
    """Deliver a datagram addressed to us to its socket, or answer port unreachable."""
    msg = p.payload
    counters = iface.counters
    n = len(msg)
    if n < HEADER_SIZE:
        counters["udp_truncated"] += 1
        return
    sport, dport, length, sent_checksum = _UNPACK(msg)
    if length < HEADER_SIZE or length > n:
        counters["udp_bad_length"] += 1
        return
    if length < n:
        msg = msg[:length]
    if sent_checksum:
        if not iface.trust_checksums and checksum(
            msg, pseudo_header(p.src, p.dst, PROTO_UDP, length)
        ):
            counters["udp_bad_checksum"] += 1
            return
    elif len(p.src) == 16:
        counters["udp_missing_checksum"] += 1
        return
    sock = iface.sockets.lookup(PROTO_UDP, p.dst, dport, p.src, sport)
    if not isinstance(sock, UdpSocket):
        counters["udp_no_socket"] += 1
        port_unreachable(iface, p, now)
        return
    received = sock._received
    if len(received) >= sock.queue:
        counters["udp_queue_full"] += 1
        return
    received.append((msg[HEADER_SIZE:], (format_address(p.src), sport)))
    counters["udp_delivered"] += 1
