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
  `Limits.for_listeners` keeps the caps of all listeners within it. Should accept() still
  fail with EMFILE (descriptors used elsewhere), the oldest idle connection is closed to
  make room, or when there is none the listener stops accepting for half a second: a
  line in the log then, not one per attempt.

The caps and the timeout come from the environment (wireproxy's file has no such keys):
WIRESNAKE_PROXY_MAX_CONNECTIONS (per listener), WIRESNAKE_PROXY_MAX_PER_CLIENT (per client
address and listener), WIRESNAKE_PROXY_HANDSHAKE_TIMEOUT (seconds).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import ipaddress
import logging
import os
import resource
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from ssl import SSLContext

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

BACKLOG = 128  # the listen() queue
ACCEPT_BATCH = 64  # accept() calls per wake-up
ACCEPT_PAUSE = 0.5  # seconds without accepting after EMFILE with no idle one to close
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

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

    def __init__(self, client: str) -> None:
        self.client = client
        self.writer: asyncio.StreamWriter | None = None  # once the handler runs
        self.idle = True


def client_name(writer: asyncio.StreamWriter) -> str:
    """The client's address and port as logs show them: 192.0.2.1:4000, [2001:db8::1]:4000."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(EndpointSpec(str(peer[0]), int(peer[1])))
    return str(peer)


def _client_of(address: object) -> str:
    """The client address a cap counts: IPv4-mapped IPv6 as IPv4, no port."""
    if not isinstance(address, tuple) or not address:
        return str(address)
    host = str(address[0])
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # one client, whichever family its socket shows
    return str(ip)


class Gate:
    """Admission to one listener (see the module text): `start_server` listens as
    `asyncio.start_server` does, but decides on each connection as it is accepted, so a
    refused one costs no transport, and copes with accept() running out of descriptors.

    `refused`, `evicted` and `paused` count the connections closed at once, those pushed
    out for a new one, and the pauses for want of descriptors.
    """

    def __init__(self, what: str, limits: Limits) -> None:
        self.what = what
        self.limits = limits
        self._open: dict[_Ticket, None] = {}  # in order of arrival: the oldest first
        self._per_client: Counter[str] = Counter()
        self.refused = 0
        self.evicted = 0
        self.paused = 0
        self._starting: set[asyncio.Task[None]] = set()  # held, so none is collected

    @property
    def connections(self) -> int:
        return len(self._open)

    async def start_server(
        self,
        handler: Handler,
        host: str | None,
        port: int,
        *,
        ssl: SSLContext | None = None,
        limit: int = 2**16,
    ) -> asyncio.Server:
        """Listen on (host, port) (host "" or None: every address); `handler(reader,
        writer)` runs for each admitted connection. OSError when it cannot bind."""
        loop = asyncio.get_running_loop()
        # bound, not yet listening: the accepting is ours
        server = await loop.create_server(
            asyncio.Protocol, host or None, port, start_serving=False, backlog=BACKLOG
        )
        for tsock in server.sockets:
            sock = socket.socket(fileno=os.dup(tsock.fileno()))  # a handle to accept on
            sock.setblocking(False)
            sock.listen(BACKLOG)
            self._listen(loop, server, sock, handler, ssl, limit)
        return server

    def _listen(
        self,
        loop: asyncio.AbstractEventLoop,
        server: asyncio.Server,
        sock: socket.socket,
        handler: Handler,
        ssl: SSLContext | None,
        limit: int,
    ) -> None:
        def readable() -> None:
            if not server.sockets:  # the server was closed
                loop.remove_reader(sock.fileno())
                sock.close()
                return
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, address = sock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as e:
                    if e.errno in _OUT_OF_RESOURCES:
                        out_of_descriptors(e)
                    else:
                        log.error("%s: accept() failed: %s", self.what, e.strerror or e)
                    return
                ticket = self._admit(_client_of(address))
                if ticket is None:
                    conn.close()
                    continue
                conn.setblocking(False)
                task = loop.create_task(self._serve(conn, ticket, handler, ssl, limit))
                self._starting.add(task)
                task.add_done_callback(self._starting.discard)

        def out_of_descriptors(error: OSError) -> None:
            # EMFILE leaves the socket readable: close the oldest idle connection, whose
            # descriptor is free on the next turn of the loop, or else stop accepting a
            # moment rather than fail on every turn
            if self._evict(None):
                return
            self.paused += 1
            log.warning(
                "%s: accept() failed: %s; accepting again in %g s",
                self.what,
                error.strerror or error,
                ACCEPT_PAUSE,
            )
            loop.remove_reader(sock.fileno())
            loop.call_later(ACCEPT_PAUSE, resume)

        def resume() -> None:
            if server.sockets:
                loop.add_reader(sock.fileno(), readable)
            else:
                sock.close()

        loop.add_reader(sock.fileno(), readable)
        original_close = server.close

        def close() -> None:
            original_close()
            if sock.fileno() != -1:
                loop.remove_reader(sock.fileno())
                sock.close()

        server.close = close  # type: ignore[method-assign]

    async def _serve(
        self,
        conn: socket.socket,
        ticket: _Ticket,
        handler: Handler,
        ssl: SSLContext | None,
        limit: int,
    ) -> None:
        loop = asyncio.get_running_loop()

        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _current.set(ticket)  # this handler task's own context
            ticket.writer = writer
            if ticket not in self._open:  # pushed out before it started
                writer.transport.abort()
                return
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:
                # the loop shutting down; Python 3.11's StreamReaderProtocol would log a
                # cancelled handler task as an error
                writer.transport.abort()
            finally:
                self._release(ticket)

        def protocol() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, guarded, loop=loop)

        try:
            await loop.connect_accepted_socket(
                protocol,
                conn,
                ssl=ssl,
                ssl_handshake_timeout=self.limits.handshake_timeout if ssl else None,
            )
        except (Exception, asyncio.CancelledError) as e:  # a failed TLS handshake, say
            log.debug("%s: connection from %s dropped: %r", self.what, ticket.client, e)
            self._release(ticket)
            conn.close()

    def _admit(self, client: str) -> _Ticket | None:
        limits = self.limits
        if self._per_client[client] >= limits.max_per_client and not self._evict(client):
            self._refuse(client, f"{limits.max_per_client} connections from it open")
            return None
        if len(self._open) >= limits.max_connections and not self._evict(None):
            self._refuse(client, f"{limits.max_connections} connections open")
            return None
        ticket = _Ticket(client)
        self._open[ticket] = None
        self._per_client[client] += 1
        return ticket

    def _refuse(self, client: str, why: str) -> None:
        self.refused += 1
        log.warning("%s: connection from %s refused: %s, the most allowed", self.what, client, why)

    def _evict(self, client: str | None) -> bool:
        """Close the oldest connection still in its handshake (of `client`, if given)."""
        for ticket in self._open:
            writer = ticket.writer
            if ticket.idle and writer is not None and client in (None, ticket.client):
                self.evicted += 1
                log.debug(
                    "%s: idle connection from %s closed for a new one", self.what, ticket.client
                )
                self._release(ticket)
                writer.transport.abort()
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
