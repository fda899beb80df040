"""What keeps proxy mode serving under a local flood of connections.

Every accepted client connection holds a descriptor, so a few hundred clients that connect
and say nothing could use them all: then accept() fails with EMFILE and legitimate
clients are turned away. Three things prevent that:

- a `Gate` per listener caps its connections, and those of each client address. When a
  cap is reached, the oldest connection still in its handshake (one that has not finished
  its SOCKS5 or HTTP request) makes room for the new one; if none is, the new one is
  refused (closed at once). A client that finishes its request in good time is therefore
  never pushed out by idle ones.
- the front ends close a client that has not finished its request within
  `handshake_timeout` seconds.
- `raise_nofile_limit` lifts the soft descriptor limit to the hard one, and
  `Limits.for_listeners` keeps the caps of all listeners within it.

The caps and the timeout come from the environment (wireproxy's file has no such keys):
WIRESNAKE_PROXY_MAX_CONNECTIONS (per listener), WIRESNAKE_PROXY_MAX_PER_CLIENT (per client
address and listener), WIRESNAKE_PROXY_HANDSHAKE_TIMEOUT (seconds).
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import os
import resource
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from wiresnake.config import EndpointSpec

__all__ = [
    "ENV_HANDSHAKE_TIMEOUT",
    "ENV_MAX_CONNECTIONS",
    "ENV_MAX_PER_CLIENT",
    "Gate",
    "Limits",
    "client_name",
    "handshake_done",
    "raise_nofile_limit",
]

log = logging.getLogger("wiresnake.proxy")

ENV_MAX_CONNECTIONS = "WIRESNAKE_PROXY_MAX_CONNECTIONS"
ENV_MAX_PER_CLIENT = "WIRESNAKE_PROXY_MAX_PER_CLIENT"
ENV_HANDSHAKE_TIMEOUT = "WIRESNAKE_PROXY_HANDSHAKE_TIMEOUT"

MAX_CONNECTIONS = 4096  # per listener, when descriptors allow
MAX_PER_CLIENT = 1024  # per client address and listener
HANDSHAKE_TIMEOUT = 5.0
# descriptors kept for everything but client connections: the UDP socket, UDP ASSOCIATE
# relays, TCPServerTunnel's outgoing connections, logs, imports
FD_RESERVE = 64

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def raise_nofile_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; the soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass  # the limit is what it is; the caps below follow it
    return soft


def _env_number(env: Mapping[str, str], name: str, default: float, *, integer: bool) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number of seconds"
        raise ValueError(f"{name}={text}: expected {kind}") from None
    if not value > 0:
        raise ValueError(f"{name}={text}: must be more than 0")
    return value


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps for one listener, and how long a client may take over its request."""

    max_connections: int = MAX_CONNECTIONS
    max_per_client: int = MAX_PER_CLIENT
    handshake_timeout: float = HANDSHAKE_TIMEOUT

    @classmethod
    def for_listeners(
        cls,
        listeners: int,
        *,
        env: Mapping[str, str] = os.environ,
        nofile: int | None = None,
    ) -> Limits:
        """The environment's caps (or the defaults), shrunk so that `listeners` full
        listeners stay within the descriptor limit `nofile` (the current soft limit).
        ValueError names a malformed variable."""
        total = int(_env_number(env, ENV_MAX_CONNECTIONS, MAX_CONNECTIONS, integer=True))
        per_client = int(_env_number(env, ENV_MAX_PER_CLIENT, MAX_PER_CLIENT, integer=True))
        timeout = _env_number(env, ENV_HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT, integer=False)
        if nofile is None:
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile != resource.RLIM_INFINITY:
            budget = max(nofile - FD_RESERVE, nofile // 2)
            total = max(1, min(total, budget // max(1, listeners)))
        return cls(total, max(1, min(per_client, total)), timeout)


_current: contextvars.ContextVar[_Ticket] = contextvars.ContextVar("wiresnake_proxy_ticket")


def handshake_done() -> None:
    """Called by a front end's handler once its client's request is complete: from now on
    the connection is not pushed out to make room for new ones."""
    ticket = _current.get(None)
    if ticket is not None:
        ticket.idle = False


class _Ticket:
    __slots__ = ("client", "idle", "writer")

    def __init__(self, client: str, writer: asyncio.StreamWriter) -> None:
        self.client = client
        self.writer = writer
        self.idle = True


def client_name(writer: asyncio.StreamWriter) -> str:
    """The client's address and port as logs show them: 192.0.2.1:4000, [2001:db8::1]:4000."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(EndpointSpec(str(peer[0]), int(peer[1])))
    return str(peer)


def _client_of(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return str(peer)
    host = str(peer[0])
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # one client, whichever family its socket shows
    return str(ip)


class Gate:
    """Admission to one listener (see the module text); `guard(handler)` applies it.

    `refused` and `evicted` count the connections closed at once and those pushed out.
    """

    def __init__(self, what: str, limits: Limits) -> None:
        self.what = what
        self.limits = limits
        self._open: dict[_Ticket, None] = {}  # in order of arrival: the oldest first
        self._per_client: Counter[str] = Counter()
        self.refused = 0
        self.evicted = 0

    @property
    def connections(self) -> int:
        return len(self._open)

    def guard(self, handler: Handler) -> Handler:
        """`handler`, run only for admitted connections; the others are closed at once."""

        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ticket = self._admit(writer)
            if ticket is None:
                writer.transport.abort()
                return
            _current.set(ticket)  # this task's own context
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:
                # the loop shutting down; Python 3.11's StreamReaderProtocol would log a
                # cancelled handler task as an error
                writer.transport.abort()
            finally:
                self._release(ticket)

        return guarded

    def _admit(self, writer: asyncio.StreamWriter) -> _Ticket | None:
        client = _client_of(writer)
        limits = self.limits
        if self._per_client[client] >= limits.max_per_client and not self._evict(client):
            self._refuse(client, f"{limits.max_per_client} connections from it open")
            return None
        if len(self._open) >= limits.max_connections and not self._evict(None):
            self._refuse(client, f"{limits.max_connections} connections open")
            return None
        ticket = _Ticket(client, writer)
        self._open[ticket] = None
        self._per_client[client] += 1
        return ticket

    def _refuse(self, client: str, why: str) -> None:
        self.refused += 1
        log.warning("%s: connection from %s refused: %s, the most allowed", self.what, client, why)

    def _evict(self, client: str | None) -> bool:
        """Close the oldest connection still in its handshake (of `client`, if given)."""
        for ticket in self._open:
            if ticket.idle and (client is None or ticket.client == client):
                self.evicted += 1
                log.debug(
                    "%s: closed an idle connection from %s for a new one", self.what, ticket.client
                )
                self._release(ticket)
                ticket.writer.transport.abort()
                return True
        return False

    def _release(self, ticket: _Ticket) -> None:
        if ticket in self._open:
            del self._open[ticket]
            left = self._per_client[ticket.client] - 1
            if left > 0:
                self._per_client[ticket.client] = left
            else:
                del self._per_client[ticket.client]
