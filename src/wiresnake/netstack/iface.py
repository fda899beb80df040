"""The interface: our addresses, the MTU, and the one place IP packets enter and leave.

Like smoltcp's `Interface`, it is driven from outside and never blocks: `receive(packets,
now)` takes IP packets from the tunnel (the engine's `from_network(...).packets`),
`poll(now)` answers the IP packets to send (for the engine's `from_tunnel`) and
`next_deadline()` says when `poll` is next needed even if nothing arrives.  The sockets live
in `sockets`; each IP protocol has an input function in `PROTOCOLS` that finds the socket a
packet is for, or answers for the missing one (ICMP port unreachable, a TCP reset).  Time
is only ever an argument.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_interface

from wiresnake.netstack import icmp, tcpsock, udp
from wiresnake.netstack.ip import (
    DEFAULT_TTL,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    AddressLike,
    IpPacket,
    build_ipv4,
    build_ipv6,
    pack_address,
    parse,
)
from wiresnake.netstack.isn import IsnGenerator
from wiresnake.netstack.sockets import Socket, SocketSet
from wiresnake.protocol.constants import DEFAULT_MTU

__all__ = [
    "ICMP_ERRORS_BURST",
    "ICMP_ERRORS_PER_SECOND",
    "PROTOCOLS",
    "Input",
    "Interface",
]

Input = Callable[["Interface", IpPacket, float], None]

PROTOCOLS: dict[int, Input] = {
    PROTO_ICMP: icmp.receive_v4,
    PROTO_ICMPV6: icmp.receive_v6,
    PROTO_UDP: udp.receive,
    PROTO_TCP: tcpsock.receive,
}
"""The input function of each IP protocol the stack speaks; others get protocol
unreachable."""

# Linux's net.ipv4.icmp_msgs_per_sec and icmp_msgs_burst
ICMP_ERRORS_PER_SECOND = 1000.0
ICMP_ERRORS_BURST = 50

_UNSPECIFIED = (bytes(4), bytes(16))
_MIN_MTU_V4 = 68  # RFC 791
_MIN_MTU_V6 = 1280  # RFC 8200 section 5


class Interface:
    """A userspace IP host on a layer 3 link: no ARP, no neighbour discovery, no routes.

    `addresses` are ours (wg-quick's Address list: "10.0.0.2/32", IPv6Interface, ...; the
    prefix length is ignored).  Packets to other destinations are dropped and counted.
    Every drop, and other events worth a metric, is counted in `counters`.
    """

    def __init__(
        self,
        addresses: Iterable[AddressLike],
        *,
        mtu: int = DEFAULT_MTU,
        ttl: int = DEFAULT_TTL,
        rng: random.Random | None = None,
        icmp_errors_per_second: float = ICMP_ERRORS_PER_SECOND,
        icmp_errors_burst: int = ICMP_ERRORS_BURST,
        trust_checksums: bool = False,
    ) -> None:
        # With `trust_checksums`, TCP and UDP checksums of received packets are not
        # verified: packets that came out of WireGuard's AEAD cannot have been damaged on
        # the way (the kernel marks them CHECKSUM_UNNECESSARY too), and summing every
        # byte in Python is a fifth of a download's cost.
        self.trust_checksums = trust_checksums
        self._v4: list[bytes] = []
        self._v6: list[bytes] = []
        for a in addresses:
            packed = ip_interface(a).ip.packed if isinstance(a, str) else pack_address(a)
            obj = ip_address(packed)
            if obj.is_multicast or obj.is_unspecified or obj.is_loopback:
                raise ValueError(f"{obj} cannot be an interface address")
            family = self._v4 if len(packed) == 4 else self._v6
            if packed not in family:
                family.append(packed)
        if not self._v4 and not self._v6:
            raise ValueError("an interface needs at least one address")
        if not _MIN_MTU_V4 <= mtu <= 0xFFFF:
            raise ValueError(f"MTU {mtu} is not in {_MIN_MTU_V4}..65535")
        if self._v6 and mtu < _MIN_MTU_V6:
            raise ValueError(f"IPv6 needs an MTU of at least {_MIN_MTU_V6}, not {mtu}")
        if not 1 <= ttl <= 255:
            raise ValueError(f"TTL {ttl} is not in 1..255")
        self.mtu = mtu
        self.ttl = ttl
        self.counters: Counter[str] = Counter()
        self.rng = rng if rng is not None else random.Random()
        self.sockets = SocketSet(self.rng)
        self.isn = IsnGenerator(self.rng.randbytes(16))
        self.icmp_errors = icmp.TokenBucket(icmp_errors_per_second, icmp_errors_burst)
        self._local = frozenset(self._v4 + self._v6)
        self._ident = self.rng.randrange(0x10000)
        self._out: list[bytes] = []
        # sockets whose poll_at() may have changed, and the deadlines of the others
        self._woken: dict[Socket, None] = {}
        # sockets with news for their application (input, a timer fired, a connection
        # accepted), so that glue can look at those only; see take_notified
        self._notified: dict[Socket, None] = {}
        self._timers: list[tuple[float, int, Socket]] = []
        self._scheduled: dict[Socket, float] = {}
        self._seq = itertools.count()

    @property
    def addresses(self) -> tuple[IPv4Address | IPv6Address, ...]:
        return tuple(ip_address(a) for a in self._v4 + self._v6)

    def is_local(self, address: bytes) -> bool:
        return address in self._local

    def bind_address(self, address: AddressLike | None) -> bytes | None:
        """The packed address a socket binds to; None (and 0.0.0.0 or ::) mean every one."""
        bound = None if address is None else pack_address(address)
        if bound in _UNSPECIFIED:
            return None
        if bound is not None and not self.is_local(bound):
            raise OSError(errno.EADDRNOTAVAIL, f"{address} is not an address of the interface")
        return bound

    # ------------------------------------------------------------------ the three calls

    def receive(self, packets: Iterable[bytes], now: float) -> None:
        """Take IP packets from the tunnel; what they cause leaves on the next `poll`."""
        counters = self.counters
        local = self._local
        protocols = PROTOCOLS
        received = 0
        for packet in packets:
            received += 1
            p = parse(packet, counters)
            if p is None:
                continue
            if p.dst not in local:
                counters["not_ours"] += 1
                continue
            handler = protocols.get(p.protocol)
            if handler is None:
                counters["unknown_protocol"] += 1
                icmp.protocol_unreachable(self, p, now)
            else:
                handler(self, p, now)
        counters["received"] += received

    def poll(self, now: float) -> list[bytes]:
        """The IP packets to send now: replies, datagrams, and whatever sockets had due."""
        due = self._woken
        self._woken = {}
        timers, scheduled = self._timers, self._scheduled
        while timers and timers[0][0] <= now:
            at, _, sock = heapq.heappop(timers)
            if scheduled.get(sock) == at:
                del scheduled[sock]
                due[sock] = None
        for sock in due:
            if sock.closed:
                scheduled.pop(sock, None)
                continue
            when = sock.poll_at()
            if when is not None and when <= now:
                sock.dispatch(now)
                when = sock.poll_at()
                if when is not None and when <= now:
                    # still something to send: at once, on the next poll
                    self._woken[sock] = None
                    continue
            self._schedule(sock, when)
        out = self._out
        self._out = []
        self.counters["sent"] += len(out)
        return out

    def next_deadline(self) -> float | None:
        """When `poll` is next needed if nothing arrives: None for never, `-inf` for now."""
        if self._out or self._woken:
            return float("-inf")
        timers, scheduled = self._timers, self._scheduled
        while timers:
            at, _, sock = timers[0]
            if scheduled.get(sock) == at and not sock.closed:
                return at
            heapq.heappop(timers)
            if sock.closed:
                scheduled.pop(sock, None)
        return None

    # ------------------------------------------------------------------ for sockets

    def wake(self, sock: Socket) -> None:
        """`sock` has something to send or a new deadline: consult it on the next poll."""
        self._woken[sock] = None

    def notify(self, sock: Socket) -> None:
        """`sock` changed in a way its application may want to see."""
        self._notified[sock] = None

    def take_notified(self) -> dict[Socket, None]:
        """The sockets notified since the last call (in order), and forget them."""
        notified = self._notified
        self._notified = {}
        return notified

    def _schedule(self, sock: Socket, at: float | None) -> None:
        scheduled = self._scheduled
        if at is None:
            scheduled.pop(sock, None)
            return
        if scheduled.get(sock) == at:
            return
        scheduled[sock] = at
        timers = self._timers
        heapq.heappush(timers, (at, next(self._seq), sock))
        if len(timers) > 2 * len(scheduled) + 64:
            # moved deadlines leave stale entries behind: drop them all now and then
            self._timers = [t for t in timers if scheduled.get(t[2]) == t[0]]
            heapq.heapify(self._timers)

    def source_for(self, dst: bytes, bound: bytes | None = None) -> bytes:
        """Our address to send to `dst` from: `bound` if the socket has one, else the one
        sharing the longest prefix with `dst` (RFC 6724 rule 8)."""
        if bound is not None:
            if len(bound) != len(dst):
                raise OSError(
                    errno.EAFNOSUPPORT, "the socket is bound to an address of the other family"
                )
            return bound
        candidates = self._v4 if len(dst) == 4 else self._v6
        if not candidates:
            raise OSError(
                errno.ENETUNREACH,
                f"the interface has no IPv{4 if len(dst) == 4 else 6} address",
            )
        if len(candidates) == 1:
            return candidates[0]
        d = int.from_bytes(dst, "big")
        return min(candidates, key=lambda a: int.from_bytes(a, "big") ^ d)

    def transmit(
        self, src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int | None = None
    ) -> None:
        """Queue one IP packet for the next `poll`; OSError(EMSGSIZE) past the MTU."""
        v4 = len(src) == 4
        size = len(payload) + (20 if v4 else 40)
        if size > self.mtu:
            raise OSError(
                errno.EMSGSIZE, f"a packet of {size} bytes does not fit the MTU of {self.mtu}"
            )
        if v4:
            ident = self._ident
            self._ident = (ident + 1) & 0xFFFF
            packet = build_ipv4(src, dst, protocol, payload, ttl or self.ttl, ident)
        else:
            packet = build_ipv6(src, dst, protocol, payload, ttl or self.ttl)
        self._out.append(packet)
