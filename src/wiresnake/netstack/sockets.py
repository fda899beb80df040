"""Sockets and the set that finds them, shaped after smoltcp's `socket` and `SocketSet`.

Every kind of socket (ICMP echo, UDP, and TCP to come) is a `Socket` and lives in its
interface's `SocketSet` from creation to `close()`.  The set finds the socket an arriving
packet is for by its addresses and ports, most specific first: a connected socket (both
ends), then one bound to the local address, then one bound to any of our addresses.  The
interface asks a socket only two things about time, smoltcp's `poll_at` and `dispatch`:
when it next has something to send, and to send it; a socket whose answer changes (data
queued, a timer moved) says so with `Interface.wake(socket)`.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wiresnake.netstack.icmp import IcmpError
    from wiresnake.netstack.iface import Interface

__all__ = ["EPHEMERAL_PORTS", "Endpoint", "Socket", "SocketSet"]

Endpoint = tuple[str, int]
"""(address, port), as Python's sockets spell it: ("10.0.0.1", 53), ("fd00::1", 53)."""

EPHEMERAL_PORTS = range(49152, 65536)
"""Where ports (and echo identifiers) chosen for the caller come from (RFC 6335)."""

# (protocol, local address or None for any, local port, remote address or None, remote port)
_Key = tuple[int, bytes | None, int, bytes | None, int]


class Socket:
    """What every kind of socket is to the interface; the defaults suit a socket that
    sends only when its user calls it (UDP, ICMP echo)."""

    def __init__(self, iface: Interface) -> None:
        self.iface = iface
        self.closed = False

    def poll_at(self) -> float | None:
        """When `dispatch` is next needed: None for never, `-inf` for at once."""
        return None

    def dispatch(self, now: float) -> None:
        """Send, through `self.iface.transmit`, whatever is due at `now`."""

    def icmp_error(self, error: IcmpError) -> None:
        """An ICMP error came back about a packet this socket sent."""

    def close(self) -> None:
        """Leave the interface: the socket's ports are free again and nothing reaches it."""
        if not self.closed:
            self.closed = True
            self.iface.sockets.remove(self)


class SocketSet:
    """The sockets of one interface, indexed by what they are bound to."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._table: dict[_Key, Socket] = {}
        self._keys: dict[Socket, list[_Key]] = {}
        self._ports: dict[tuple[int, int], list[_Key]] = {}
        # the next ephemeral port to try, per protocol; see _ephemeral
        self._next: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Socket]:
        return iter(list(self._keys))

    def __contains__(self, sock: object) -> bool:
        return sock in self._keys

    def bind(
        self,
        sock: Socket,
        protocol: int,
        address: bytes | None,
        port: int,
        remote: tuple[bytes, int] | None = None,
    ) -> int:
        """Add `sock` under (protocol, address, port[, remote]) and answer the port; port 0
        picks a free ephemeral one.  OSError(EADDRINUSE) if another socket holds it."""
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} is not in 0..65535")
        if port == 0:
            port = self._ephemeral(protocol)
        raddr, rport = remote if remote is not None else (None, 0)
        key = (protocol, address, port, raddr, rport)
        same_port = self._ports.get((protocol, port), [])
        for other in same_port:
            if (
                other[3] == raddr
                and other[4] == rport
                and (other[1] is None or address is None or other[1] == address)
            ):
                raise OSError(errno.EADDRINUSE, f"port {port} is in use")
        self._table[key] = sock
        self._keys.setdefault(sock, []).append(key)
        self._ports.setdefault((protocol, port), same_port).append(key)
        return port

    def _ephemeral(self, protocol: int) -> int:
        # Onward from a random start (RFC 6056 section 3.3.2's idea): a port comes round
        # again only after all the others, so a new connection rarely lands on a 4-tuple
        # the peer still holds in TIME-WAIT, which would cost it a SYN retransmission.
        lo, n = EPHEMERAL_PORTS.start, len(EPHEMERAL_PORTS)
        start = self._next.get(protocol)
        if start is None:
            start = self._rng.randrange(n)
        ports = self._ports
        for i in range(n):
            port = lo + (start + i) % n
            if (protocol, port) not in ports:
                self._next[protocol] = (start + i + 1) % n
                return port
        raise OSError(errno.EADDRINUSE, "no ephemeral port is free")

    def remove(self, sock: Socket) -> None:
        for key in self._keys.pop(sock, ()):
            del self._table[key]
            pk = (key[0], key[2])
            same_port = self._ports[pk]
            same_port.remove(key)
            if not same_port:
                del self._ports[pk]

    def lookup(
        self, protocol: int, local: bytes, port: int, remote: bytes, remote_port: int
    ) -> Socket | None:
        """The socket a packet from (remote, remote_port) to (local, port) is for."""
        table = self._table
        sock = table.get((protocol, local, port, remote, remote_port))
        if sock is None:
            sock = table.get((protocol, local, port, None, 0))
            if sock is None:
                sock = table.get((protocol, None, port, None, 0))
        return sock
