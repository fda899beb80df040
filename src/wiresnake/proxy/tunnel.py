"""The rootless core of proxy mode: engine and userspace stack over one UDP socket.

A `Tunnel` joins a `Device` (WireGuard) to an `Interface` (our IP stack) in asyncio, with
no TUN and no privileges: datagrams from the UDP socket go through the engine, the packets
it opens go into the stack, and what the stack sends goes back through the engine. Timers of
both are one `call_later`. Programs use it through `ping`, `UdpEndpoint` and (with TCP, next)
streams; the SOCKS5 and HTTP front ends sit on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from wiresnake.config import EndpointSpec, resolve_endpoint_async
from wiresnake.io.pump import Pump
from wiresnake.io.udp import UdpSockets
from wiresnake.netstack import tcpsock
from wiresnake.netstack.icmp import IcmpSocket
from wiresnake.netstack.iface import Interface
from wiresnake.netstack.sockets import Socket
from wiresnake.netstack.tcp import State, TcpError, TcpUsageError
from wiresnake.netstack.udp import UdpSocket
from wiresnake.protocol.device import Device
from wiresnake.protocol.peer import Endpoint
from wiresnake.protocol.settings import DeviceConfig
from wiresnake.reresolve import STALE_AFTER, Reresolver

__all__ = ["NoRouteError", "TcpServer", "Tunnel", "UdpEndpoint"]

log = logging.getLogger("wiresnake.proxy")

_READ_BATCH = 256  # datagrams per wake-up (more with UDP GRO)
ORPHAN_TIMEOUT = 60.0  # seconds a connection we closed may wait for the peer to finish

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


class NoRouteError(OSError):
    """No peer's AllowedIPs contain the destination: nothing could carry a packet there.

    errno is ENOKEY, as the kernel's WireGuard answers a send to such an address
    ("Required key not available"); raised at once rather than after a timeout.
    """

    def __init__(self, address: str) -> None:
        super().__init__(errno.ENOKEY, f"no peer's AllowedIPs contain {address}")
        self.address = address

    def __str__(self) -> str:
        return f"{self.strerror} (Required key not available)"


class Tunnel:
    """Use `await Tunnel.open(config, addresses)`; `close()` when done (or `async with`)."""

    def __init__(self, device: Device, iface: Interface) -> None:
        self.device = device
        self.iface = iface
        self._loop = asyncio.get_running_loop()
        self._udp: UdpSockets | None = None
        # the engine's cycle, once the sockets exist: the netstack is its tunnel side
        self.pump: Pump | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # set after every round of input, so waiters look at their sockets again
        self._changed = asyncio.Event()
        # TCP transports and servers; each is serviced when its socket was notified by the
        # stack or its application did something (_dirty), never all of them per event
        self._streams: dict[_TcpTransport | TcpServer, None] = {}
        self._by_sock: dict[Socket, _TcpTransport | TcpServer] = {}
        self._dirty: dict[_TcpTransport | TcpServer, None] = {}
        self._servicing = False
        self.orphan_timeout = ORPHAN_TIMEOUT
        self._reresolving: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        config: DeviceConfig,
        addresses: Sequence[str],
        *,
        mtu: int = 1420,
        listen_host: str | None = None,
    ) -> Tunnel:
        """Open the UDP socket and start the engine; `listen_host` None listens on every
        address of both families.

        Raises OSError when the UDP port cannot be bound (EADDRINUSE, EACCES...),
        ValueError for an unusable interface address or MTU."""
        device = Device(mtu=mtu, wall_offset=time.time() - time.monotonic())
        device.configure(config, time.monotonic())
        tunnel = cls(device, Interface(list(addresses), mtu=mtu, trust_checksums=True))
        udp = UdpSockets(config.listen_port, host=listen_host)
        tunnel._udp = udp
        tunnel.pump = Pump(device, udp.send_batch, tunnel.iface.receive, batch=_READ_BATCH)
        for sock in udp.sockets():
            tunnel._loop.add_reader(sock.fileno(), tunnel._read_ready, sock)
        device.listen_port = udp.port
        tunnel._reschedule()
        return tunnel

    @property
    def listen_port(self) -> int:
        return self.device.listen_port

    async def __aenter__(self) -> Tunnel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop at once: connections are cut (their streams see ConnectionAbortedError),
        since nothing can carry their last bytes or FIN any more. Never raises."""
        for stream in list(self._streams):
            stream._shutdown()
        self._streams.clear()
        self._by_sock.clear()
        self._dirty.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reresolving is not None:
            self._reresolving.cancel()
            self._reresolving = None
        if self.pump is not None:
            self.pump.close()
        if self._udp is not None:
            for sock in self._udp.sockets():
                self._loop.remove_reader(sock.fileno())
            self._udp.close()
            self._udp = None

    def reresolve(
        self,
        names: Mapping[bytes, EndpointSpec],
        *,
        stale_after: float = STALE_AFTER,
        lookup: Callable[[EndpointSpec], tuple[str, int]] | None = None,
    ) -> None:
        """Look each peer's Endpoint name (`names`: public key to name) up again whenever
        that peer has had no handshake for `stale_after` seconds, as wireguard-tools'
        reresolve-dns does, and point the peer at a new address (see `wiresnake.reresolve`).
        Look-ups never block the loop; `close()` ends it."""
        if self._reresolving is not None:
            self._reresolving.cancel()
            self._reresolving = None
        reresolver = Reresolver(stale_after)
        reresolver.set_names(names)
        if names and self._udp is not None:  # not once closed
            self._reresolving = self._loop.create_task(self._keep_resolving(reresolver, lookup))

    async def _keep_resolving(
        self, reresolver: Reresolver, lookup: Callable[[EndpointSpec], tuple[str, int]] | None
    ) -> None:
        async def one(key: bytes, spec: EndpointSpec) -> None:
            answer: tuple[str, int] | Exception
            try:
                if lookup is None:
                    answer = await resolve_endpoint_async(spec, retries=0, log=log.debug)
                else:
                    answer = await resolve_endpoint_async(spec, retries=0, lookup=lookup)
            except Exception as e:  # ValueError from ours; anything from a caller's `lookup`
                answer = e
            line = reresolver.answered(self.device, key, spec, answer, time.monotonic())
            if line is not None:
                log.info("%s", line)

        while True:
            await asyncio.sleep(1.0)
            due = reresolver.due(self.device, time.monotonic())
            if due:
                await asyncio.gather(*(one(key, spec) for key, spec in due))

    # ---------------------------------------------------------------- the pump

    def _read_ready(self, sock: socket.socket) -> None:
        # Everything queued, in one pass through the engine and the stack: per-datagram
        # callbacks cost more than the crypto and let the socket buffer overflow.
        if self.pump is not None and self.pump.read(sock):
            self._pump(time.monotonic())

    def _pump(self, now: float) -> None:
        """Move what the stack wants to send through the engine, then re-arm the timer."""
        pump = self.pump
        if pump is None or self._udp is None:
            return  # closed: nothing moves and no timer is armed again
        iface, by_sock, dirty = self.iface, self._by_sock, self._dirty
        for _ in range(4):  # servicing makes packets; sending them may notify again
            packets = iface.poll(now)
            if packets:
                pump.from_tunnel(packets, now)
            for sock in iface.take_notified():
                stream = by_sock.get(sock)
                if stream is not None:
                    dirty[stream] = None
            if self._servicing or not dirty:
                break
            # hand received bytes to the streams and take what they wrote
            self._servicing = True
            try:
                while dirty:
                    batch = list(dirty)
                    dirty.clear()
                    for stream in batch:
                        stream._service()
            finally:
                self._servicing = False
        self._changed.set()
        self._changed = asyncio.Event()
        self._reschedule()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = time.monotonic()
        if self.pump is not None:
            self.pump.tick(now)
        self._pump(now)

    def _reschedule(self) -> None:
        deadlines = [
            d for d in (self.device.next_deadline(), self.iface.next_deadline()) if d is not None
        ]
        if not deadlines:
            return
        at = min(deadlines)
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, at - time.monotonic())
        self._timer_at = at
        self._timer = self._loop.call_later(delay, self._on_timer)

    async def _wait_change(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), remaining)

    # ---------------------------------------------------------------- the API

    def check_route(self, address: str) -> None:
        """NoRouteError unless some peer's AllowedIPs contain `address` (an IP literal);
        ValueError if it is none."""
        packed = ipaddress.ip_address(address).packed
        if self.device.allowed_ips.lookup(packed) is None:
            raise NoRouteError(address)

    async def ping(self, address: str, timeout: float = 5.0, payload: bytes = b"") -> float:
        """Round-trip time in seconds of one ICMP echo to `address` (an IP literal).

        Raises TimeoutError when no answer comes within `timeout`, NoRouteError (an
        OSError) at once when no peer's AllowedIPs contain `address`, OSError when the
        interface has no address of its family, ValueError when it is no IP literal.
        """
        self.check_route(address)
        sock = IcmpSocket(self.iface)
        try:
            now = time.monotonic()
            sock.ping(address, 1, payload or b"wiresnake", now)
            self._pump(now)
            deadline = now + timeout
            while True:
                reply = sock.recv()
                if reply is not None:
                    return time.monotonic() - now
                await self._wait_change(deadline)
        finally:
            sock.close()

    def udp_endpoint(self, port: int = 0, address: str | None = None) -> UdpEndpoint:
        """A UDP socket on `port` (0: an ephemeral one) of the tunnel's addresses (or only
        `address`). OSError EADDRINUSE when the port is taken, EADDRNOTAVAIL when
        `address` is not one of the tunnel's."""
        return UdpEndpoint(self, UdpSocket(self.iface, port, address))

    def _kick(self, stream: _TcpTransport | TcpServer | None = None) -> None:
        if self._udp is not None:  # not once closed
            if stream is not None:
                self._dirty[stream] = None
            self._pump(time.monotonic())

    def _forget(self, stream: _TcpTransport | TcpServer, sock: Socket) -> None:
        self._streams.pop(stream, None)
        self._dirty.pop(stream, None)
        if self._by_sock.get(sock) is stream:
            del self._by_sock[sock]

    def _attach(
        self, sock: tcpsock.TcpSocket, protocol: asyncio.StreamReaderProtocol
    ) -> _TcpTransport:
        transport = _TcpTransport(self, sock, protocol)
        self._streams[transport] = None
        self._by_sock[sock] = transport
        protocol.connection_made(transport)
        # bytes may have come with the handshake
        self._loop.call_soon(self._kick, transport)
        return transport

    async def open_connection(
        self, host: str, port: int, *, limit: int = 2**16, timeout: float = 30.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection through the tunnel to (host, port); `host` is an IP literal.

        Raises ConnectionRefusedError if the peer resets the SYN, TimeoutError if nothing
        answers within `timeout`, NoRouteError (an OSError, errno ENOKEY) at once when no
        peer's AllowedIPs contain `host`, OSError when the interface has no address of
        its family, ValueError when `host` is no IP literal or `port` is not in 1..65535.
        """
        self.check_route(host)
        now = time.monotonic()
        sock = tcpsock.connect(self.iface, (host, port), now)
        self._pump(now)
        deadline = now + timeout
        try:
            while sock.state in (State.SYN_SENT, State.SYN_RECEIVED):
                await self._wait_change(deadline)
        except TimeoutError:
            sock.abort()
            self._kick()
            raise TimeoutError(f"no answer from {host} port {port} in {timeout:g} s") from None
        except BaseException:
            sock.abort()
            self._kick()
            raise
        if sock.state is State.CLOSED:
            raise _exception(sock.conn.error or TcpError.RESET)
        loop = self._loop
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport = self._attach(sock, protocol)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def start_server(
        self,
        client_connected_cb: ClientConnected,
        port: int,
        *,
        host: str | None = None,
        backlog: int = tcpsock.BACKLOG,
        limit: int = 2**16,
    ) -> TcpServer:
        """Accept TCP connections on `port` of the tunnel's addresses (or only `host`),
        calling `client_connected_cb(reader, writer)` for each, as `asyncio.start_server`.

        Raises OSError EADDRINUSE when the port is taken, EADDRNOTAVAIL when `host` is not
        one of the tunnel's addresses."""
        listener = tcpsock.TcpListener(self.iface, port, host, backlog=backlog)
        server = TcpServer(self, listener, client_connected_cb, limit)
        self._streams[server] = None
        self._by_sock[listener] = server
        return server


def _exception(error: TcpError) -> OSError:
    if error is TcpError.REFUSED:
        return ConnectionRefusedError(error.value)
    if error is TcpError.TIMEOUT:
        return TimeoutError(error.value)
    return ConnectionResetError(error.value)


class TcpServer:
    """What `Tunnel.start_server` answers: `close()` it (or `async with`) to stop."""

    def __init__(
        self,
        tunnel: Tunnel,
        listener: tcpsock.TcpListener,
        callback: ClientConnected,
        limit: int,
    ) -> None:
        self.tunnel = tunnel
        self.listener = listener
        self._callback = callback
        self._limit = limit

    @property
    def port(self) -> int:
        return self.listener.port

    def is_serving(self) -> bool:
        return not self.listener.closed

    def _service(self) -> None:
        tunnel = self.tunnel
        while (sock := self.listener.accept()) is not None:
            reader = asyncio.StreamReader(limit=self._limit, loop=tunnel._loop)
            protocol = asyncio.StreamReaderProtocol(reader, self._callback, loop=tunnel._loop)
            tunnel._attach(sock, protocol)

    def close(self) -> None:
        """Stop accepting; connections already accepted go on. Never raises."""
        self.listener.close()
        self.tunnel._forget(self, self.listener)

    def _shutdown(self) -> None:
        self.close()

    async def wait_closed(self) -> None:
        return None

    async def __aenter__(self) -> TcpServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class _TcpTransport(asyncio.Transport):
    """An asyncio transport over a `TcpSocket` of the tunnel's stack."""

    def __init__(
        self, tunnel: Tunnel, sock: tcpsock.TcpSocket, protocol: asyncio.StreamReaderProtocol
    ) -> None:
        super().__init__({"peername": sock.peername, "sockname": sock.sockname, "socket": None})
        self._tunnel = tunnel
        self._sock = sock
        self._protocol = protocol
        self._buffer = bytearray()
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._writing_paused = False
        self._reading_paused = False
        self._closing = False
        self._eof_requested = False
        self._shut = False
        self._eof_seen = False
        self._lost = False

    # -- asyncio.Transport -------------------------------------------------------------------

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("the protocol of a tunnel transport is fixed")

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._lost

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._tunnel._loop.call_soon(self._tunnel._kick, self)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high}) must be >= low ({low}) must be >= 0")
        self._high, self._low = high, low

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_requested or self._lost:
            return
        if not data:
            return
        self._buffer += data
        self._flush()
        self._tunnel._kick(self)

    def writelines(self, list_of_data: Iterable[Any]) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_requested:
            return
        self._eof_requested = True
        self._flush()
        self._tunnel._kick(self)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._flush()
        self._tunnel._kick(self)

    def abort(self) -> None:
        self._closing = True
        self._buffer.clear()
        self._sock.abort()
        self._forget()
        self._lose(None)
        self._tunnel._kick()  # sends the reset

    # -- the tunnel's side ---------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._closing = True
        self._buffer.clear()
        self._sock.abort()
        self._lose(ConnectionAbortedError("the tunnel was closed"))

    def _lose(self, exc: Exception | None) -> None:
        if not self._lost:
            self._lost = True
            conn = self._sock.conn
            log.debug("TCP %s %s: %s", self._sock.peername, conn.state.value, conn.stats)
            loop = self._tunnel._loop
            loop.call_soon(self._protocol.connection_lost, exc)
            if not self._sock.closed:
                # Closed by us but not yet by the peer: FIN-WAIT-2 (or a window that never
                # opens) could last for ever, so give it Linux's tcp_fin_timeout.
                loop.call_later(self._tunnel.orphan_timeout, self._reap)

    def _reap(self) -> None:
        sock = self._sock
        if not sock.closed and sock.state is not State.TIME_WAIT:
            sock.abort()
            self._forget()
            self._tunnel._kick()

    def _flush(self) -> None:
        sock, buffer = self._sock, self._buffer
        if buffer:
            if sock.conn.state is State.CLOSED:
                buffer.clear()
            else:
                try:
                    n = sock.send(buffer)
                except TcpUsageError:
                    buffer.clear()
                else:
                    del buffer[:n]
        if not buffer and (self._closing or self._eof_requested):
            if not self._shut:
                self._shut = True
                sock.shutdown()
            if self._closing:
                self._lose(None)
        size = len(buffer)
        if not self._writing_paused and size > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()
        elif self._writing_paused and size <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()

    def _service(self) -> None:
        sock = self._sock
        self._flush()
        if self._lost:
            while sock.recv(1 << 16):
                pass  # closed by us: what still arrives is discarded
        else:
            if not self._reading_paused:
                while not self._reading_paused and not self._lost:
                    data = sock.recv(1 << 16)
                    if not data:
                        break
                    self._protocol.data_received(data)
            conn = sock.conn
            if not self._lost and conn.error is not None:
                self._buffer.clear()
                self._lose(_exception(conn.error))
            elif not self._lost and not self._eof_seen and conn.eof:
                self._eof_seen = True
                if not self._protocol.eof_received():
                    self.close()
            if not self._lost and sock.closed:
                self._lose(None)
        if sock.closed:
            self._forget()

    def _forget(self) -> None:
        self._tunnel._forget(self, self._sock)


class UdpEndpoint:
    """A UDP socket on the tunnel's addresses, for asyncio code."""

    def __init__(self, tunnel: Tunnel, sock: UdpSocket) -> None:
        self.tunnel = tunnel
        self.sock = sock

    @property
    def port(self) -> int:
        return self.sock.port

    def sendto(self, payload: bytes, address: Endpoint) -> None:
        """Send one datagram to (host, port), `host` an IP literal.

        Raises NoRouteError (an OSError) when no peer's AllowedIPs contain the host,
        OSError EMSGSIZE when it does not fit the MTU, EBADF once closed, ValueError for a
        malformed address or port."""
        self.tunnel.check_route(address[0])
        self.sock.send_to(payload, address)
        self.tunnel._pump(time.monotonic())

    async def recvfrom(self, timeout: float = 5.0) -> tuple[bytes, Endpoint]:
        """The next datagram and its (host, port); TimeoutError if none within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.sock.recv_from()
            if got is not None:
                return got
            await self.tunnel._wait_change(deadline)

    def close(self) -> None:
        """Release the port; `sendto` then raises OSError EBADF. Never raises."""
        self.sock.close()
