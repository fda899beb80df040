"""SOCKS5 on this machine, CONNECTs and UDP through a rootless tunnel to a peer."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from proxy_lab import TableUpstream
from test_proxy_streams import _echo
from test_proxy_tunnel import _pair

from wiresnake.proxy.socks5 import Socks5Server, serve_socks5
from wiresnake.proxy.tunnel import Tunnel, UdpEndpoint
from wiresnake.proxy.upstream import NameResolutionError


def _v4(ip: str) -> bytes:
    return b"\x01" + ipaddress.IPv4Address(ip).packed


def _v6(ip: str) -> bytes:
    return b"\x04" + ipaddress.IPv6Address(ip).packed


def _name(name: str) -> bytes:
    return b"\x03" + bytes([len(name)]) + name.encode()


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, str, int]:
    """REP, BND.ADDR and BND.PORT of a SOCKS5 reply."""
    version, code, _rsv, atyp = await asyncio.wait_for(reader.readexactly(4), 10)
    assert version == 5
    if atyp == 1:
        host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
    elif atyp == 4:
        host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
    else:
        assert atyp == 3
        host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
    (port,) = struct.unpack("!H", await reader.readexactly(2))
    return code, host, port


async def _socks_request(
    port: int,
    cmd: int,
    address: bytes,
    dport: int,
    auth: tuple[bytes, bytes] | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, str, int]:
    """Negotiate and send one request; code -1 when authentication failed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x05\x01" + (b"\x02" if auth else b"\x00"))
    assert await reader.readexactly(2) == b"\x05" + (b"\x02" if auth else b"\x00")
    if auth:
        user, password = auth
        writer.write(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        status = await reader.readexactly(2)
        if status != b"\x01\x00":
            return reader, writer, -1, "", 0
    writer.write(bytes([5, cmd, 0]) + address + struct.pack("!H", dport))
    code, host, bport = await _read_reply(reader)
    return reader, writer, code, host, bport


async def _socks_connect(
    port: int, address: bytes, dport: int, auth: tuple[bytes, bytes] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    reader, writer, code, _, _ = await _socks_request(port, 1, address, dport, auth)
    return reader, writer, code


async def _start(upstream: Any, *args: Any, **kwargs: Any) -> tuple[Socks5Server, int]:
    server = Socks5Server(upstream, *args, **kwargs)
    listener = await server.start("127.0.0.1", 0)
    return server, listener.sockets[0].getsockname()[1]


async def _until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def _finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close and read to the end, so the echo behind the tunnel has finished too."""
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    """asyncio.run, failing on any error the loop only logs (a handler that raised...)."""
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        await scenario()

    asyncio.run(main())
    assert errors == []


# -- CONNECT ---------------------------------------------------------------------------------


def test_connect_through_socks5_and_the_tunnel_echoes_bytes_exact() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)
            proxy = await serve_socks5(TableUpstream(a), "127.0.0.1", 0)
            port = proxy.sockets[0].getsockname()[1]
            reader, writer, code, host, bport = await _socks_request(port, 1, _v4("10.60.0.2"), 7)
            assert code == 0
            assert host == "10.60.0.1" and bport > 0  # the tunnel side of the connection
            payload = bytes(range(256)) * 1024
            writer.write(payload)
            got = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
            assert got == payload
            await _finish(reader, writer)
            proxy.close()

    _run(scenario)


def test_connect_over_ipv6_answers_with_the_ipv6_bound_address() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)
            server, port = await _start(TableUpstream(a))
            reader, writer, code, host, bport = await _socks_request(port, 1, _v6("fd60::2"), 7)
            assert (code, host) == (0, "fd60::1") and bport > 0
            writer.write(b"over six")
            assert await asyncio.wait_for(reader.readexactly(8), 10) == b"over six"
            await _finish(reader, writer)
            server.close()
            await server.wait_closed()

    _run(scenario)


def test_connect_by_name_resolves_through_the_upstream_never_locally() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)
            upstream = TableUpstream(a, {"echo.test": ["10.60.0.2"]})
            server, port = await _start(upstream)
            reader, writer, code = await _socks_connect(port, _name("echo.test"), 7)
            assert code == 0
            writer.write(b"by name")
            assert await asyncio.wait_for(reader.readexactly(7), 10) == b"by name"
            await _finish(reader, writer)
            # an unknown name, and one only this machine knows, are host unreachable
            for name in ("nope.test", "localhost"):
                _, w, code = await _socks_connect(port, _name(name), 7)
                assert code == 4, name
                w.close()
            # an IP literal sent as a name is a literal
            r2, w2, code = await _socks_connect(port, _name("10.60.0.2"), 7)
            assert code == 0
            await _finish(r2, w2)
            server.close()
            await server.wait_closed()

    _run(scenario)


def test_a_closed_port_behind_the_tunnel_is_connection_refused() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            proxy = await serve_socks5(TableUpstream(a), "127.0.0.1", 0)
            port = proxy.sockets[0].getsockname()[1]
            _, writer, code = await _socks_connect(port, _v4("10.60.0.2"), 9)
            assert code == 5  # connection refused
            writer.close()
            proxy.close()

    _run(scenario)


def test_username_and_password_are_required_when_configured() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)
            proxy = await serve_socks5(TableUpstream(a), "127.0.0.1", 0, "alice", "s3cret")
            port = proxy.sockets[0].getsockname()[1]
            r1, w1, code = await _socks_connect(port, _v4("10.60.0.2"), 7, (b"alice", b"no"))
            assert code == -1
            assert await asyncio.wait_for(r1.read(), 5) == b""  # RFC 1929: then closed
            w1.close()
            r2, w2, code = await _socks_connect(port, _v4("10.60.0.2"), 7, (b"alice", b"s3cret"))
            assert code == 0
            w2.write(b"ping")
            assert await asyncio.wait_for(r2.readexactly(4), 10) == b"ping"
            await _finish(r2, w2)
            # a client offering no authentication at all is turned away
            r3, w3 = await asyncio.open_connection("127.0.0.1", port)
            w3.write(b"\x05\x01\x00")
            assert await asyncio.wait_for(r3.read(), 5) == b"\x05\xff"
            w3.close()
            proxy.close()

    _run(scenario)


class _Failing:
    """An upstream whose every connection fails with `error` (or hangs when None)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    async def open_connection(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.error is None:
            await asyncio.sleep(30)
        raise self.error or AssertionError

    async def resolve(self, host: str) -> list[str]:
        raise NameResolutionError(host)

    def udp_endpoint(self) -> UdpEndpoint:
        raise OSError(errno.EMFILE, "no more sockets")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NameResolutionError("no such host"), 4),
        (ConnectionRefusedError("refused"), 5),
        (TimeoutError("no answer"), 6),
        (None, 6),  # our own connect timeout
        (OSError(errno.ENETUNREACH, "no route"), 3),
        (OSError(errno.EHOSTUNREACH, "no host"), 4),
        (ConnectionResetError("reset"), 1),
        (RuntimeError("bug"), 1),
    ],
)
def test_connect_failures_map_to_reply_codes(error: BaseException | None, code: int) -> None:
    async def scenario() -> None:
        server, port = await _start(_Failing(error), connect_timeout=0.2)
        reader, writer, got = await _socks_connect(port, _name("example.test"), 80)
        assert got == code
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await _until(lambda: server.active_sessions == 0)
        server.close()
        await server.wait_closed()

    _run(scenario)


# -- malformed input ---------------------------------------------------------------------------


GREET = b"\x05\x01\x00"


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        (b"", b""),
        (b"\x05", b""),  # truncated greeting
        (b"\x05\x03\x00", b""),  # fewer methods than announced
        (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b""),  # SOCKS4
        (b"GET / HTTP/1.1\r\n\r\n", b""),
        (b"\x05\x00", b"\x05\xff"),  # no methods
        (b"\x05\x01\x80", b"\x05\xff"),  # only a private method
        (GREET + b"\x05\x01\x00", b"\x05\x00"),  # truncated request
        (GREET + b"\x05\x01\x00\x01\x0a\x00", b"\x05\x00"),  # truncated address
        (GREET + b"\x05\x01\x00\x03\x09abc", b"\x05\x00"),  # truncated name
        (GREET + b"\x04\x01\x00\x01" + bytes(6), b"\x05\x00\x05\x01\x00\x01" + bytes(6)),
        (GREET + b"\x05\x01\x00\x09" + bytes(6), b"\x05\x00\x05\x08\x00\x01" + bytes(6)),
        (GREET + b"\x05\x02\x00\x01" + bytes(6), b"\x05\x00\x05\x07\x00\x01" + bytes(6)),
        (GREET + b"\x05\x09\x00\x03\x01x\x00\x50", b"\x05\x00\x05\x07\x00\x01" + bytes(6)),
        (GREET + b"\x05\x01\x00\x03\x00\x00\x50", b"\x05\x00\x05\x04\x00\x01" + bytes(6)),
        (GREET + b"\x05\x01\x00\x03\x02\xff\xfe\x00\x50", b"\x05\x00\x05\x04\x00\x01" + bytes(6)),
        # no credentials configured, but the client offers only username/password: let in
        (
            b"\x05\x01\x02\x01\x01u\x01p\x05\x01\x00\x01" + bytes(6),
            b"\x05\x02\x01\x00\x05\x05\x00\x01" + bytes(6),
        ),
        # UDP ASSOCIATE when the upstream has no UDP endpoint to give
        (GREET + b"\x05\x03\x00\x01" + bytes(6), b"\x05\x00\x05\x01\x00\x01" + bytes(6)),
    ],
)
def test_malformed_or_truncated_input_closes_cleanly(sent: bytes, answer: bytes) -> None:
    async def scenario() -> None:
        server, port = await _start(_Failing(ConnectionRefusedError()))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == answer
        writer.close()
        await _until(lambda: server.active_sessions == 0)
        server.close()
        await server.wait_closed()

    _run(scenario)


def test_a_bad_password_subnegotiation_version_fails_authentication() -> None:
    async def scenario() -> None:
        server, port = await _start(_Failing(None), "u", "p")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x05\x01\x02" + b"\x05\x01u\x01p")
        assert await asyncio.wait_for(reader.read(), 5) == b"\x05\x02\x01\x01"
        writer.close()
        server.close()
        await server.wait_closed()

    _run(scenario)


def test_a_silent_client_is_closed_after_the_handshake_timeout() -> None:
    async def scenario() -> None:
        server, port = await _start(_Failing(None), handshake_timeout=0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x05\x01")  # and then nothing
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await _until(lambda: server.active_sessions == 0)
        server.close()
        await server.wait_closed()

    _run(scenario)


def test_closing_the_server_ends_every_session() -> None:
    async def scenario() -> None:
        server, port = await _start(_Failing(None))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x05\x01")
        await _until(lambda: server.active_sessions == 1)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        assert server.active_sessions == 0
        # a reset when the bytes were still unread on the server's side
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

    _run(scenario)


# -- UDP ASSOCIATE -----------------------------------------------------------------------------


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))


async def _udp_socket(host: str = "127.0.0.1") -> tuple[asyncio.DatagramTransport, _UdpClient]:
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(_UdpClient, local_addr=(host, 0))


async def _udp_echo(endpoint: UdpEndpoint) -> None:
    while True:
        try:
            data, source = await endpoint.recvfrom(timeout=60)
        except TimeoutError:
            continue
        endpoint.sendto(b"echo:" + data, source)


class _Recording(TableUpstream):
    """A TableUpstream that keeps the UDP endpoints it gave out."""

    def __init__(self, tunnel: Tunnel, names: dict[str, list[str]] | None = None) -> None:
        super().__init__(tunnel, names)
        self.endpoints: list[UdpEndpoint] = []

    def udp_endpoint(self) -> UdpEndpoint:
        endpoint = super().udp_endpoint()
        self.endpoints.append(endpoint)
        return endpoint


def _header(address: bytes, port: int, frag: int = 0) -> bytes:
    return bytes([0, 0, frag]) + address + struct.pack("!H", port)


def test_udp_associate_relays_through_the_tunnel_and_ends_with_its_tcp_connection() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            echo = asyncio.create_task(_udp_echo(b.udp_endpoint(5353)))
            upstream = _Recording(a, {"dns.test": ["10.60.0.2"]})
            server, port = await _start(upstream)
            _, writer, code, rhost, rport = await _socks_request(port, 3, _v4("0.0.0.0"), 0)
            assert (code, rhost) == (0, "127.0.0.1") and rport > 0
            relay_addr = (rhost, rport)
            client, inbox = await _udp_socket()

            async def ask(header: bytes, payload: bytes) -> tuple[bytes, tuple[str, int]]:
                client.sendto(header + payload, relay_addr)
                return await asyncio.wait_for(inbox.received.get(), 5)

            # to an IP literal: the answer names its source
            data, source = await ask(_header(_v4("10.60.0.2"), 5353), b"one")
            assert source == relay_addr
            assert data == _header(_v4("10.60.0.2"), 5353) + b"echo:one"
            # to a name, resolved through the upstream: the answer names the address
            data, _ = await ask(_header(_name("dns.test"), 5353), b"two")
            assert data == _header(_v4("10.60.0.2"), 5353) + b"echo:two"
            # over IPv6 inside the tunnel
            data, _ = await ask(_header(_v6("fd60::2"), 5353), b"six")
            assert data == _header(_v6("fd60::2"), 5353) + b"echo:six"

            # dropped: another local port, another local IP, a fragment, garbage, no name
            other_port, _ = await _udp_socket()
            other_ip, _ = await _udp_socket("127.0.0.2")
            for sock, datagram in [
                (other_port, _header(_v4("10.60.0.2"), 5353) + b"bad"),
                (other_ip, _header(_v4("10.60.0.2"), 5353) + b"bad"),
                (client, _header(_v4("10.60.0.2"), 5353, frag=1) + b"bad"),
                (client, b"\x00\x00"),
                (client, _header(b"\x07", 5353) + b"bad"),
                (client, _header(_name("nope.test"), 5353) + b"bad"),
            ]:
                sock.sendto(datagram, relay_addr)
            await _until(lambda: server.udp_dropped == 6)
            assert server.udp_malformed == 2
            data, _ = await ask(_header(_v4("10.60.0.2"), 5353), b"three")
            assert data.endswith(b"echo:three")  # nothing of the dropped ones came back
            other_port.close()
            other_ip.close()

            # the association ends with its TCP connection: relay and tunnel sockets close
            assert len(server.associations) == 1
            writer.close()
            await _until(lambda: not server.associations)
            assert [e.sock.closed for e in upstream.endpoints] == [True]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(relay_addr)  # the relay's port is free again
            client.close()
            await _until(lambda: server.active_sessions == 0)
            echo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await echo
            server.close()
            await server.wait_closed()

    _run(scenario)


def test_udp_associate_honours_the_client_port_given_in_the_request() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            echo = asyncio.create_task(_udp_echo(b.udp_endpoint(5353)))
            server, port = await _start(TableUpstream(a))
            client, inbox = await _udp_socket()
            stranger, _ = await _udp_socket()
            client_port = client.get_extra_info("sockname")[1]
            # the client announces its address and port before sending anything
            _, writer, code, rhost, rport = await _socks_request(
                port, 3, _v4("127.0.0.1"), client_port
            )
            assert code == 0
            stranger.sendto(_header(_v4("10.60.0.2"), 5353) + b"first", (rhost, rport))
            await _until(lambda: server.udp_dropped == 1)
            client.sendto(_header(_v4("10.60.0.2"), 5353) + b"mine", (rhost, rport))
            data, _ = await asyncio.wait_for(inbox.received.get(), 5)
            assert data.endswith(b"echo:mine")
            writer.close()
            await _until(lambda: not server.associations)
            client.close()
            stranger.close()
            echo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await echo
            server.close()
            await server.wait_closed()

    _run(scenario)


def test_udp_associate_over_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            echo = asyncio.create_task(_udp_echo(b.udp_endpoint(5353)))
            server = Socks5Server(TableUpstream(a))
            try:
                listener = await server.start("::1", 0)
            except OSError:
                pytest.skip("no ::1")
            port = listener.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("::1", port)
            writer.write(b"\x05\x01\x00\x05\x03\x00" + _v6("::") + b"\x00\x00")
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\x05\x00"
            code, rhost, rport = await _read_reply(reader)
            assert (code, rhost) == (0, "::1")
            client, inbox = await _udp_socket("::1")
            client.sendto(_header(_v4("10.60.0.2"), 5353) + b"v6", (rhost, rport))
            data, _ = await asyncio.wait_for(inbox.received.get(), 5)
            assert data == _header(_v4("10.60.0.2"), 5353) + b"echo:v6"
            writer.close()
            await _until(lambda: not server.associations)
            client.close()
            echo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await echo
            server.close()
            await server.wait_closed()

    _run(scenario)
