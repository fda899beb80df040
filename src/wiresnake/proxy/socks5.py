"""A SOCKS5 front end (RFC 1928, RFC 1929) whose traffic goes through a rootless tunnel.

Clients on this machine connect to a local TCP listener. Everything beyond it goes through
an `Upstream`: CONNECTs are dialled with `Upstream.open_connection`, host names (ATYP 3) are
resolved by the upstream, that is by the tunnel's DNS servers, never on this machine.

Commands: CONNECT, and UDP ASSOCIATE (a local UDP relay socket per association, bound to
the address the client reached the TCP listener on, and one `Upstream.udp_endpoint()` on
the tunnel side). BIND is not supported (reply 7). Methods: no authentication, or
username/password (RFC 1929) when credentials are configured; a client that offers only
username/password to a server without credentials is let in with any.

CONNECT failures answer with these RFC 1928 reply codes (curl prints their names):

    NameResolutionError, an unusable name            4  host unreachable
    ConnectionRefusedError (RST to the SYN)          5  connection refused
    TimeoutError (nothing answered the SYN)          6  TTL expired (as Tor does)
    NoRouteError (outside every peer's AllowedIPs)   3  network unreachable
    OSError ENETUNREACH / ENETDOWN                   3  network unreachable
    OSError EHOSTUNREACH / EHOSTDOWN                 4  host unreachable
    OSError EACCES / EPERM                           2  not allowed by ruleset
    any other OSError or failure                     1  general SOCKS server failure
    a command other than CONNECT / UDP ASSOCIATE     7  command not supported
    an unknown address type                          8  address type not supported

The success reply of a CONNECT carries the tunnel-side address and port of the connection.
The whole negotiation (greeting, authentication, request) must arrive within
`handshake_timeout` (5 s); malformed or truncated input closes the connection quietly. A
failed CONNECT is logged (warning) with the client, the destination and the cause. The
listener's `Gate` caps its connections (see `wiresnake.proxy.limits`).

UDP datagrams are accepted only from the client's IP (the non-zero DST.ADDR of the
request if it gave one, else the address of its TCP connection), and only from one port:
DST.PORT if given, else the port of the first datagram. Fragments (FRAG != 0) are not
reassembled but dropped, as RFC 1928 allows. Dropped datagrams are counted in
`Socks5Server.udp_dropped`, the malformed among them also in `udp_malformed`. The
association ends when its TCP connection does.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import logging
import struct
import time

from wiresnake.proxy import limits
from wiresnake.proxy.relay import relay
from wiresnake.proxy.tunnel import NoRouteError, UdpEndpoint
from wiresnake.proxy.upstream import NameResolutionError, Upstream

__all__ = ["Socks5Server", "serve_socks5"]

log = logging.getLogger("wiresnake.proxy.socks5")

VERSION = 5
NO_AUTH, USER_PASS, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CMD_CONNECT, CMD_BIND, CMD_UDP_ASSOCIATE = 1, 2, 3
ATYP_V4, ATYP_DOMAIN, ATYP_V6 = 1, 3, 4
REP_OK, REP_FAILURE, REP_NOT_ALLOWED, REP_NET_UNREACH = 0, 1, 2, 3
REP_HOST_UNREACH, REP_REFUSED, REP_TTL, REP_CMD, REP_ATYP = 4, 5, 6, 7, 8

HANDSHAKE_TIMEOUT = limits.HANDSHAKE_TIMEOUT
CONNECT_TIMEOUT = 120.0  # a safety net: the upstream has its own, per address
RESOLVE_TIMEOUT = 15.0
NAME_CACHE_SECONDS = 60.0
NAME_CACHE_SIZE = 256
PENDING_DATAGRAMS = 256  # waiting for a name to resolve, per association

_Address = tuple[str, int]


class _Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Malformed(ValueError):
    pass


def _normalize_ip(host: str) -> str:
    """The canonical text of an IP literal, IPv4-mapped IPv6 as IPv4; else `host` itself."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _decode_name(raw: bytes) -> str:
    """The host of an ATYP 3 address: an IP literal (canonical) or an ASCII name; "" when
    the bytes are no usable name."""
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        try:  # some clients send UTF-8: pass the name on as IDNA, as a resolver wants it
            name = raw.decode("utf-8").encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name or any(not 0x20 < ord(c) < 0x7F for c in name):
        return ""
    return _normalize_ip(name) if _is_ip(name) else name


def _encode_address(host: str | None, port: int) -> bytes:
    """ATYP, address and port; an unknown address is 0.0.0.0."""
    try:
        ip = ipaddress.ip_address((host or "0.0.0.0").split("%", 1)[0])
    except ValueError:
        raw = (host or "").encode("idna")[:255]
        return bytes([ATYP_DOMAIN, len(raw)]) + raw + struct.pack("!H", port)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    atyp = ATYP_V4 if ip.version == 4 else ATYP_V6
    return bytes([atyp]) + ip.packed + struct.pack("!H", port)


def _reply(code: int, bound: object = None) -> bytes:
    host, port = None, 0
    if isinstance(bound, tuple) and len(bound) >= 2:
        host, port = str(bound[0]), int(bound[1])
    return bytes([VERSION, code, 0]) + _encode_address(host, port)


def _reply_code(error: BaseException) -> int:
    """The RFC 1928 reply for a failed CONNECT (the table in the module docstring)."""
    if isinstance(error, NameResolutionError):
        return REP_HOST_UNREACH
    if isinstance(error, NoRouteError):
        return REP_NET_UNREACH
    if isinstance(error, ConnectionRefusedError):
        return REP_REFUSED
    if isinstance(error, TimeoutError):
        return REP_TTL
    if isinstance(error, OSError):
        if error.errno in (errno.ENETUNREACH, errno.ENETDOWN):
            return REP_NET_UNREACH
        if error.errno in (errno.EHOSTUNREACH, errno.EHOSTDOWN):
            return REP_HOST_UNREACH
        if error.errno in (errno.EACCES, errno.EPERM):
            return REP_NOT_ALLOWED
    return REP_FAILURE


async def _read_address(reader: asyncio.StreamReader, atyp: int) -> _Address:
    if atyp == ATYP_V4:
        host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
    elif atyp == ATYP_V6:
        host = _normalize_ip(str(ipaddress.IPv6Address(await reader.readexactly(16))))
    elif atyp == ATYP_DOMAIN:
        (n,) = await reader.readexactly(1)
        host = _decode_name(await reader.readexactly(n))
    else:
        raise _Refused(REP_ATYP)  # its length is unknown: nothing after it can be read
    (port,) = struct.unpack("!H", await reader.readexactly(2))
    return host, port


def parse_udp_header(data: bytes) -> tuple[int, str, int, bytes]:
    """FRAG, host, port and payload of a SOCKS5 UDP request; _Malformed if it is none."""
    if len(data) < 4:
        raise _Malformed("too short")
    # RSV (data[0:2]) should be zero; like most servers we do not insist
    frag, atyp = data[2], data[3]
    if atyp == ATYP_V4:
        end = 8
        if len(data) < end + 2:
            raise _Malformed("truncated IPv4 address")
        host = str(ipaddress.IPv4Address(data[4:end]))
    elif atyp == ATYP_V6:
        end = 20
        if len(data) < end + 2:
            raise _Malformed("truncated IPv6 address")
        host = _normalize_ip(str(ipaddress.IPv6Address(data[4:end])))
    elif atyp == ATYP_DOMAIN:
        if len(data) < 5:
            raise _Malformed("truncated name")
        end = 5 + data[4]
        if len(data) < end + 2:
            raise _Malformed("truncated name")
        host = _decode_name(data[5:end])
        if not host:
            raise _Malformed("unusable name")
    else:
        raise _Malformed(f"address type {atyp}")
    (port,) = struct.unpack_from("!H", data, end)
    if port == 0:
        raise _Malformed("port 0")
    return frag, host, port, data[end + 2 :]


class _Association(asyncio.DatagramProtocol):
    """One UDP ASSOCIATE: a local relay socket <-> one UDP endpoint in the tunnel."""

    def __init__(self, server: Socks5Server, allowed_ip: str, allowed_port: int) -> None:
        self.server = server
        self.allowed_ip = allowed_ip
        self.allowed_port = allowed_port  # 0: learnt from the first datagram
        self.client: tuple[str, int] | None = None  # as the socket reports it, to reply to
        self.transport: asyncio.DatagramTransport | None = None
        self.endpoint: UdpEndpoint | None = None
        self.closed = False
        self._names: dict[str, tuple[str, float]] = {}
        self._pending: asyncio.Queue[tuple[bytes, str, int]] = asyncio.Queue(PENDING_DATAGRAMS)
        self._backlog = 0  # datagrams queued or being resolved
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, transport: asyncio.DatagramTransport, endpoint: UdpEndpoint) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self._tasks = [
            asyncio.create_task(self._replies()),
            asyncio.create_task(self._resolving()),
        ]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        if self.transport is not None:
            self.transport.close()
        if self.endpoint is not None:
            self.endpoint.close()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks)

    # -- client -> tunnel ----------------------------------------------------------------------

    def _drop(self, reason: str, malformed: bool = False) -> None:
        self.server.udp_dropped += 1
        if malformed:
            self.server.udp_malformed += 1
        log.debug("SOCKS5 UDP: dropped a datagram: %s", reason)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.closed or self.endpoint is None:
            return
        if _normalize_ip(addr[0]) != self.allowed_ip:
            return self._drop(f"from {addr[0]}, not the client")
        if self.allowed_port and addr[1] != self.allowed_port:
            return self._drop(f"from port {addr[1]}, not the client's")
        try:
            frag, host, port, payload = parse_udp_header(data)
        except ValueError as e:
            return self._drop(f"malformed: {e}", malformed=True)
        if frag != 0:
            return self._drop("a fragment")
        if self.client is None:  # the association is now bound to this port
            self.client = addr
            self.allowed_port = addr[1]
        ip = host if _is_ip(host) else self._cached(host)
        if ip is not None and not self._backlog:  # else keep the order of the queue
            self._forward(payload, ip, port)
            return None
        try:
            self._pending.put_nowait((payload, host, port))
        except asyncio.QueueFull:
            return self._drop("too many datagrams waiting for names")
        self._backlog += 1
        return None

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP from the client's side (port unreachable...) is not fatal

    def _cached(self, name: str) -> str | None:
        entry = self._names.get(name.lower())
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def _forward(self, payload: bytes, ip: str, port: int) -> None:
        assert self.endpoint is not None
        try:
            self.endpoint.sendto(payload, (ip, port))
        except (OSError, ValueError) as e:  # too big for the MTU, no route of that family...
            self._drop(f"cannot send to {ip} port {port}: {e}")

    async def _lookup(self, host: str) -> str | None:
        if _is_ip(host):
            return host
        if (ip := self._cached(host)) is not None:
            return ip
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                addresses = await self.server.upstream.resolve(host)
        except Exception as e:
            log.debug("SOCKS5 UDP: cannot resolve %r: %s", host, e)
            return None
        if not addresses:
            return None
        if len(self._names) >= NAME_CACHE_SIZE:
            self._names.clear()
        ip = _normalize_ip(addresses[0])
        self._names[host.lower()] = (ip, time.monotonic() + NAME_CACHE_SECONDS)
        return ip

    async def _resolving(self) -> None:
        while True:
            payload, host, port = await self._pending.get()
            try:
                ip = await self._lookup(host)
            finally:
                self._backlog -= 1
            if ip is None:
                self._drop(f"no address for {host}")
            elif not self.closed:
                self._forward(payload, ip, port)

    # -- tunnel -> client ----------------------------------------------------------------------

    async def _replies(self) -> None:
        endpoint = self.endpoint
        assert endpoint is not None
        while True:
            try:
                data, (host, port) = await endpoint.recvfrom(timeout=60.0)
            except TimeoutError:
                continue
            transport, client = self.transport, self.client
            if client is None or transport is None or transport.is_closing():
                continue  # nobody to hand it to yet
            header = b"\0\0\0" + _encode_address(host, port)
            transport.sendto(header + data, client)


class Socks5Server:
    """The SOCKS5 protocol; `start()` (or `serve_socks5`) listens for it.

    `udp_dropped` counts the UDP datagrams dropped (not from the client, fragments,
    unresolvable or unsendable, malformed); `udp_malformed` the malformed among them.
    """

    def __init__(
        self,
        upstream: Upstream,
        username: str = "",
        password: str = "",
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        caps: limits.Limits | None = None,
    ) -> None:
        """`caps` bounds the listener's connections (by default: what the descriptor limit
        allows, see `Limits.for_listeners`)."""
        self.upstream = upstream
        self.gate = limits.Gate("SOCKS5", caps or limits.Limits.for_listeners(1, env={}))
        self.username = username.encode()
        self.password = password.encode()
        self.auth_required = bool(username or password)
        self.handshake_timeout = handshake_timeout
        self.connect_timeout = connect_timeout
        self.udp_dropped = 0
        self.udp_malformed = 0
        self.associations: set[_Association] = set()
        self.listener: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[object]] = set()

    @property
    def active_sessions(self) -> int:
        """Client connections being served (negotiating, relaying or associated)."""
        return len(self._sessions)

    async def start(self, host: str | None, port: int) -> asyncio.Server:
        """Listen on the local (host, port); host "" or None is every address."""
        self.listener = await self.gate.start_server(self.handle, host, port)
        return self.listener

    def close(self) -> None:
        """Stop listening and end every session and association."""
        if self.listener is not None:
            self.listener.close()
        for task in self._sessions:
            task.cancel()

    async def wait_closed(self) -> None:
        if self._sessions:
            await asyncio.wait(list(self._sessions))
        if self.listener is not None:
            await self.listener.wait_closed()

    # -- the session ---------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection; never raises (but for cancellation)."""
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        try:
            await self._session(reader, writer)
        except asyncio.CancelledError:
            # close() or the loop's shutdown; asyncio would log a cancelled callback task
            # as an error, and this task is ours, so it ends quietly
            pass
        except Exception as e:  # truncated, reset, timed out: the client has gone
            log.debug("SOCKS5 session from %s ended: %r", writer.get_extra_info("peername"), e)
        finally:
            if task is not None:
                self._sessions.discard(task)
            writer.close()
            try:
                async with asyncio.timeout(5):
                    await writer.wait_closed()
            except (Exception, asyncio.CancelledError):
                # a client that reads nothing holds no socket; cancelled here (the loop
                # shutting down), the session still ends quietly, as above
                writer.transport.abort()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.handshake_timeout):
                if not await self._authenticate(reader, writer):
                    await _drain(writer)
                    return
                cmd, host, port = await self._request(reader)
            limits.handshake_done()
        except _Refused as e:
            writer.write(_reply(e.code))
            await _drain(writer)
            return
        if cmd == CMD_CONNECT:
            await self._connect(reader, writer, host, port)
        else:
            await self._associate(reader, writer, host, port)

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        version, count = await reader.readexactly(2)
        if version != VERSION:
            return False
        methods = await reader.readexactly(count)
        if self.auth_required:
            method = USER_PASS if USER_PASS in methods else NO_ACCEPTABLE
        elif NO_AUTH in methods:
            method = NO_AUTH
        else:
            method = USER_PASS if USER_PASS in methods else NO_ACCEPTABLE
        writer.write(bytes([VERSION, method]))
        if method == NO_ACCEPTABLE:
            return False
        if method == NO_AUTH:
            return True
        # RFC 1929: VER=1, ULEN, UNAME, PLEN, PASSWD; STATUS 0 is success, else close
        sub, ulen = await reader.readexactly(2)
        user = await reader.readexactly(ulen)
        (plen,) = await reader.readexactly(1)
        password = await reader.readexactly(plen)
        ok = sub == 1 and (
            not self.auth_required
            or (
                # both compared, so the time does not tell which one was wrong
                hmac.compare_digest(user, self.username)
                & hmac.compare_digest(password, self.password)
            )
        )
        writer.write(bytes([1, 0 if ok else 1]))
        return ok

    async def _request(self, reader: asyncio.StreamReader) -> tuple[int, str, int]:
        version, cmd, _rsv, atyp = await reader.readexactly(4)
        if version != VERSION:
            raise _Refused(REP_FAILURE)
        host, port = await _read_address(reader, atyp)
        if cmd not in (CMD_CONNECT, CMD_UDP_ASSOCIATE):
            raise _Refused(REP_CMD)
        return cmd, host, port

    async def _connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
    ) -> None:
        if not host:
            writer.write(_reply(REP_HOST_UNREACH))
            await _drain(writer)
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                remote_r, remote_w = await self.upstream.open_connection(host, port)
        except Exception as e:
            log.warning(
                "SOCKS5 from %s: CONNECT to %s port %d failed: %s",
                limits.client_name(writer),
                host,
                port,
                _why(e, self.connect_timeout),
            )
            writer.write(_reply(_reply_code(e)))
            await _drain(writer)
            return
        try:
            writer.write(_reply(REP_OK, remote_w.get_extra_info("sockname")))
            await writer.drain()
            await relay(reader, writer, remote_r, remote_w)
        finally:
            remote_w.close()  # relay() closes it too; this is for a failed reply

    async def _associate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
    ) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        if not (isinstance(peer, tuple) and isinstance(local, tuple)):
            writer.write(_reply(REP_FAILURE))
            await _drain(writer)
            return
        # RFC 1928: DST.ADDR/DST.PORT name where the client will send from; zeros (or a
        # name, which some clients send) mean it does not know yet
        allowed_ip = _normalize_ip(peer[0])
        if _is_ip(host) and not ipaddress.ip_address(host).is_unspecified:
            allowed_ip = host
        association = _Association(self, allowed_ip, port)
        loop = asyncio.get_running_loop()
        bind_host = _normalize_ip(local[0])  # the address the client reached us on
        if "%" in str(local[0]) and ":" in bind_host:
            bind_host = str(local[0])  # a link-local address needs its scope to bind
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: association, local_addr=(bind_host, 0)
            )
        except OSError as e:
            log.debug("SOCKS5 UDP ASSOCIATE: cannot open a relay socket: %r", e)
            writer.write(_reply(REP_FAILURE))
            await _drain(writer)
            return
        try:
            try:
                endpoint = self.upstream.udp_endpoint()
            except Exception as e:
                log.debug("SOCKS5 UDP ASSOCIATE: no tunnel endpoint: %r", e)
                writer.write(_reply(REP_FAILURE))
                await _drain(writer)
                return
            association.start(transport, endpoint)
            self.associations.add(association)
            relay_host, relay_port = transport.get_extra_info("sockname")[:2]
            writer.write(_reply(REP_OK, (relay_host, relay_port)))
            await writer.drain()
            # the TCP connection now only keeps the association alive: read it to its end
            while await reader.read(4096):
                pass
        finally:
            self.associations.discard(association)
            association.close()
            transport.close()
            await association.wait_closed()


def _why(error: BaseException, timeout: float) -> str:
    """The cause of a failed dial, for the log: the error's own words where it has some."""
    if isinstance(error, TimeoutError) and not str(error):
        return f"no answer within {timeout:g} s"
    return str(error) or type(error).__name__


async def _drain(writer: asyncio.StreamWriter) -> None:
    """Flush a last reply if the client takes it; a client that has gone is no error."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await writer.drain()


async def serve_socks5(
    upstream: Upstream, host: str | None, port: int, username: str = "", password: str = ""
) -> asyncio.Server:
    """Listen on the local (host, port) and serve SOCKS5 through `upstream`."""
    return await Socks5Server(upstream, username, password).start(host, port)
