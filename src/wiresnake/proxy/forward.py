"""wireproxy's port forwards: TCP both ways, stdin/stdout, and UDP.

- `[TCPClientTunnel]`: listen on BindAddress here; each connection goes through the tunnel
  to Target (a name is resolved by the tunnel's DNS).
- `[TCPServerTunnel]`: listen on ListenPort of the tunnel's own addresses; each connection is
  dialled to Target with this machine's ordinary network (names resolved here).
- `[STDIOTunnel]`: stdin and stdout joined to Target through the tunnel, for an ssh
  ProxyCommand.
- `[UDPProxyTunnel]`: datagrams on BindAddress here are relayed to Target through the tunnel,
  with one tunnel UDP socket per local sender, dropped after InactivityTimeout idle seconds.

A connection whose target cannot be reached is logged (logger `wiresnake.proxy`) and closed;
nothing escapes from a connection's handler. Closing what a `serve_*` function returns also
ends the connections and associations it is serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

from wiresnake.config import EndpointSpec
from wiresnake.proxy import limits
from wiresnake.proxy.config import STDIOTunnel, TCPClientTunnel, TCPServerTunnel, UDPProxyTunnel
from wiresnake.proxy.relay import relay
from wiresnake.proxy.tunnel import TcpServer, Tunnel, UdpEndpoint
from wiresnake.proxy.upstream import Upstream

__all__ = [
    "UdpProxy",
    "run_stdio_tunnel",
    "serve_tcp_client_tunnel",
    "serve_tcp_server_tunnel",
    "serve_udp_proxy_tunnel",
]

log = logging.getLogger("wiresnake.proxy")

# Datagrams kept per new UDP association while its target is still being resolved.
_PENDING_LIMIT = 64
# Longest wait between looks at an association's idle time; bounds how late an injected
# clock's jump is noticed (with the real clock the wait is exact).
_IDLE_POLL = 1.0


class _Connections:
    """The handler tasks of one listener and their streams, so that closing the listener
    ends them too (asyncio's own servers leave accepted connections running)."""

    def __init__(self) -> None:
        self._open: dict[asyncio.Task[Any], list[asyncio.StreamWriter]] = {}
        self.closed = False

    def add(self, writer: asyncio.StreamWriter) -> bool:
        """Record `writer` as belonging to the running handler; False (and `writer` reset)
        once the listener is closed."""
        if self.closed:
            writer.transport.abort()
            return False
        task = asyncio.current_task()
        if task is None:
            return True
        if task not in self._open:
            self._open[task] = []
            task.add_done_callback(self._forget)
        self._open[task].append(writer)
        return True

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._open.pop(task, None)

    def close(self) -> None:
        self.closed = True
        for task, writers in list(self._open.items()):
            # abort first: a graceful close may wait forever on a peer that does not read
            for writer in writers:
                writer.transport.abort()
            task.cancel()
        self._open.clear()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Reset the connection (RST), so the peer sees a failure rather than a clean end."""
    writer.transport.abort()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


Dial = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def _serve_connection(
    kind: str,
    target: EndpointSpec,
    dial: Dial,
    connections: _Connections,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """One accepted connection: dial the other side, then relay until both ways end.

    Nothing is raised: a failed dial is logged and the accepted connection reset.
    """
    if not connections.add(writer):
        return
    peer = _name(writer.get_extra_info("peername"))
    try:
        try:
            o_reader, o_writer = await dial()
        except OSError as e:
            log.warning("%s: %s to %s: %s", kind, peer, target, _why(e))
            _abort(writer)
            return
        if not connections.add(o_writer):
            _abort(writer)
            return
        try:
            await relay(reader, writer, o_reader, o_writer)
        finally:
            await _close(writer)
    except asyncio.CancelledError:
        # Only our own close() cancels these tasks, and it has reset both streams.
        # Ending quietly matters: Python 3.11's StreamReaderProtocol calls exception() on
        # the finished task, which raises (and logs an error) for a cancelled one.
        _abort(writer)
    except Exception:
        log.exception("%s: %s to %s failed", kind, peer, target)
        _abort(writer)


# ---------------------------------------------------------------------------------------
# TCP


async def serve_tcp_client_tunnel(
    upstream: Upstream, spec: TCPClientTunnel, caps: limits.Limits | None = None
) -> asyncio.Server:
    """Listen on `spec.bind` here; carry each connection to `spec.target` through the tunnel.

    An empty bind host listens on every address. A connection whose target cannot be
    reached is reset. `close()` on the server also ends the connections it accepted.
    `caps` bounds them (by default: what descriptors allow); having no handshake, none is
    pushed out for a new one.
    """
    target = spec.target
    connections = _Connections()

    def dial() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        return upstream.open_connection(target.host, target.port)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits.handshake_done()
        await _serve_connection("TCPClientTunnel", target, dial, connections, reader, writer)

    gate = limits.Gate("TCPClientTunnel", caps or limits.Limits.for_listeners(1, env={}))
    server = await gate.start_server(handle, spec.bind.host or None, spec.bind.port)
    _close_also(server, connections)
    log.info("TCPClientTunnel listening on %s, forwarding to %s", _sockname(server), target)
    return server


async def serve_tcp_server_tunnel(tunnel: Tunnel, spec: TCPServerTunnel) -> TcpServer:
    """Listen on `spec.listen_port` of the tunnel's addresses; carry each connection to
    `spec.target`, dialled here with the host's own network (names resolved here).

    When the target cannot be reached the tunnel-side connection is reset, so the peer sees
    the failure. `close()` on the server also ends the connections it accepted.
    """
    target = spec.target
    connections = _Connections()

    def dial() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        return asyncio.open_connection(target.host, target.port)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection("TCPServerTunnel", target, dial, connections, reader, writer)

    server = await tunnel.start_server(handle, spec.listen_port)
    _close_also(server, connections)
    log.info("TCPServerTunnel listening on tunnel port %d, forwarding to %s", server.port, target)
    return server


def _close_also(server: asyncio.Server | TcpServer, connections: _Connections) -> None:
    """Make `server.close()` end the accepted connections as well.

    The callers expect the plain server types, and `Tunnel.close()` closes its servers by
    calling `close()`, so the method is replaced on this one instance.
    """
    close = server.close

    def close_all() -> None:
        close()
        connections.close()

    server.close = close_all  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------
# stdin / stdout


async def run_stdio_tunnel(
    upstream: Upstream, spec: STDIOTunnel, stdin_fd: int = 0, stdout_fd: int = 1
) -> bool:
    """Join `stdin_fd` and `stdout_fd` to `spec.target` through the tunnel, until both ways end.

    The descriptors may be pipes, sockets or terminals (what ssh gives a ProxyCommand, or
    an interactive shell); asyncio's pipe transports do not take regular files. The end of
    stdin is passed on as a half-close, and data from the target keeps flowing to stdout
    until the target ends too. The descriptors are not closed (the caller owns them); their
    blocking mode is restored on return. A target that cannot be reached is logged and
    this returns at once. True when the target was reached.
    """
    target = spec.target
    for fd, name in ((stdin_fd, "stdin"), (stdout_fd, "stdout")):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            # asyncio's pipe transports refuse regular files
            log.error("STDIOTunnel: %s is a regular file; use a pipe, socket or terminal", name)
            return False
    try:
        t_reader, t_writer = await upstream.open_connection(target.host, target.port)
    except OSError as e:
        log.error("STDIOTunnel to %s: %s", target, _why(e))
        return False
    loop = asyncio.get_running_loop()
    # pipe transports switch the descriptors to non-blocking; a terminal shares that
    # setting with the shell, so it is put back afterwards
    blocking: dict[int, bool] = {}
    files: list[BinaryIO] = []
    transports: list[asyncio.BaseTransport] = []
    try:
        for fd in (stdin_fd, stdout_fd):
            blocking[fd] = os.get_blocking(fd)
        # file objects that leave the descriptors open when the transports close them
        stdin = open(stdin_fd, "rb", buffering=0, closefd=False)  # noqa: SIM115
        files.append(stdin)
        stdout = open(stdout_fd, "wb", buffering=0, closefd=False)  # noqa: SIM115
        files.append(stdout)
        reader = asyncio.StreamReader()
        in_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), stdin
        )
        transports.append(in_transport)
        out_protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())
        out_transport, _ = await loop.connect_write_pipe(lambda: out_protocol, stdout)
        transports.append(out_transport)
        writer = asyncio.StreamWriter(out_transport, out_protocol, None, loop)
        await relay(reader, writer, t_reader, t_writer)
        # the end of the target's data closed the stdout transport once its buffer is
        # written: wait for that before giving the descriptor back
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    except asyncio.CancelledError:
        _abort(t_writer)  # stopped from outside: do not linger on a graceful close
        raise
    except Exception:
        log.exception("STDIOTunnel to %s failed", target)
    finally:
        t_writer.close()
        for transport in transports:
            transport.close()
        for file in files:
            file.close()
        for fd, mode in blocking.items():
            with contextlib.suppress(OSError):
                os.set_blocking(fd, mode)
    return True


# ---------------------------------------------------------------------------------------
# UDP


class _Association:
    """One local sender's flow: its tunnel socket, and when it was last used either way."""

    def __init__(self, client: tuple[Any, ...], now: float) -> None:
        self.client = client  # as the local socket reported it, to answer to
        self.last_active = now
        self.pending: list[bytes] = []
        self.endpoint: UdpEndpoint | None = None
        self.target: tuple[str, int] | None = None
        self.task: asyncio.Task[None] | None = None


class _LocalProtocol(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.proxy._from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # e.g. ICMP port unreachable from a client that went away: not fatal


class UdpProxy:
    """A running `[UDPProxyTunnel]`; `close()` (or `async with`) stops it."""

    def __init__(
        self, upstream: Upstream, spec: UDPProxyTunnel, clock: Callable[[], float]
    ) -> None:
        self.upstream = upstream
        self.spec = spec
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self._associations: dict[tuple[str, int], _Association] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        """The local (host, port) listened on."""
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    @property
    def associations(self) -> int:
        """How many local senders have a flow open."""
        return len(self._associations)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for association in list(self._associations.values()):
            self._drop(association)
        self._associations.clear()

    async def wait_closed(self) -> None:
        """Wait until the association tasks have finished (after `close()`)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> UdpProxy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _drop(self, association: _Association) -> None:
        if association.task is not None:
            association.task.cancel()
        if association.endpoint is not None:
            association.endpoint.close()
        key = _key(association.client)
        if self._associations.get(key) is association:
            del self._associations[key]

    def _from_client(self, data: bytes, addr: tuple[Any, ...]) -> None:
        key = _key(addr)
        association = self._associations.get(key)
        now = self.clock()
        if association is None:
            association = _Association(addr, now)
            self._associations[key] = association
            task = asyncio.get_running_loop().create_task(self._serve(association))
            association.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        association.last_active = now
        if association.endpoint is None or association.target is None:
            # still resolving the target: keep a few, as a socket buffer would
            if len(association.pending) < _PENDING_LIMIT:
                association.pending.append(data)
            return
        self._send(association.endpoint, data, association.target)

    def _send(self, endpoint: UdpEndpoint, data: bytes, target: tuple[str, int]) -> None:
        try:
            endpoint.sendto(data, target)
        except (OSError, ValueError) as e:
            # one datagram lost (too big, no route): UDP's own way of failing
            log.debug("UDPProxyTunnel: datagram to %s dropped: %s", self.spec.target, e)

    async def _serve(self, association: _Association) -> None:
        """Open the association's tunnel socket, then carry the answers back until idle."""
        spec = self.spec
        timeout = spec.inactivity_timeout
        try:
            try:
                host = (await self.upstream.resolve(spec.target.host))[0]
                endpoint = self.upstream.udp_endpoint()
            except OSError as e:
                log.warning(
                    "UDPProxyTunnel: %s to %s: %s", _name(association.client), spec.target, _why(e)
                )
                return
            association.target = target = (host, spec.target.port)
            try:
                endpoint.tunnel.check_route(host)
            except OSError as e:  # no peer routes there: every datagram would be lost
                log.warning(
                    "UDPProxyTunnel: %s to %s: %s", _name(association.client), spec.target, _why(e)
                )
                endpoint.close()
                return
            association.endpoint = endpoint
            for data in association.pending:
                self._send(endpoint, data, target)
            association.pending.clear()
            while True:
                wait = 3600.0
                if timeout > 0:
                    remaining = association.last_active + timeout - self.clock()
                    if remaining <= 0:
                        log.debug(
                            "UDPProxyTunnel: %s idle for %ds, closed",
                            _name(association.client),
                            timeout,
                        )
                        return
                    wait = min(remaining, _IDLE_POLL)
                try:
                    data, source = await endpoint.recvfrom(wait)
                except TimeoutError:
                    continue
                if not _same_endpoint(source, target):
                    continue  # like a connected socket: only the target's answers
                association.last_active = self.clock()
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.sendto(data, association.client)
        except Exception:
            log.exception("UDPProxyTunnel: %s failed", _name(association.client))
        finally:
            association.task = None  # finished: nothing to cancel
            self._drop(association)


async def serve_udp_proxy_tunnel(
    upstream: Upstream, spec: UDPProxyTunnel, clock: Callable[[], float] = time.monotonic
) -> UdpProxy:
    """Relay datagrams between `spec.bind` here and `spec.target` through the tunnel.

    Each local sender gets its own tunnel UDP socket, so answers find their way back; it is
    closed after `spec.inactivity_timeout` seconds (by `clock`) with no datagram either way,
    never when that is 0 or less. An empty bind host listens on every address.
    """
    proxy = UdpProxy(upstream, spec, clock)
    loop = asyncio.get_running_loop()
    bind = spec.bind
    if bind.host:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _LocalProtocol(proxy), local_addr=(bind.host, bind.port)
        )
    else:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _LocalProtocol(proxy), sock=_any_address_socket(bind.port)
        )
    proxy.transport = transport
    log.info("UDPProxyTunnel listening on %s, forwarding to %s", bind, spec.target)
    return proxy


def _any_address_socket(port: int) -> socket.socket:
    """A UDP socket on every address, IPv6 and IPv4 both when the host has IPv6 (as Go)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        address: tuple[str, int] = ("0.0.0.0", port)
    else:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address = ("::", port)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


# ---------------------------------------------------------------------------------------
# helpers


def _key(addr: tuple[Any, ...]) -> tuple[str, int]:
    return str(addr[0]), int(addr[1])


def _same_endpoint(got: tuple[str, int], want: tuple[str, int]) -> bool:
    if got[1] != want[1]:
        return False
    try:
        return ipaddress.ip_address(got[0]) == ipaddress.ip_address(want[0])
    except ValueError:
        return got[0] == want[0]


def _name(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(EndpointSpec(str(peer[0]), int(peer[1])))
    return str(peer)


def _sockname(server: asyncio.Server) -> str:
    return ", ".join(_name(sock.getsockname()) for sock in server.sockets)


def _why(error: BaseException) -> str:
    return str(error) or type(error).__name__
