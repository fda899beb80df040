"""wireproxy's port forwards (TCP both ways, stdin/stdout, UDP) over two loopback tunnels."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import threading
from collections.abc import Awaitable, Callable

import pytest
from proxy_lab import TableUpstream
from test_proxy_streams import _echo
from test_proxy_tunnel import _pair

from wiresnake.config import EndpointSpec
from wiresnake.proxy.config import STDIOTunnel, TCPClientTunnel, TCPServerTunnel, UDPProxyTunnel
from wiresnake.proxy.forward import (
    UdpProxy,
    run_stdio_tunnel,
    serve_tcp_client_tunnel,
    serve_tcp_server_tunnel,
    serve_udp_proxy_tunnel,
)
from wiresnake.proxy.tunnel import Tunnel

LOCAL = EndpointSpec("127.0.0.1", 0)
PAYLOAD = random.Random(7).randbytes(256 * 1024)


def _run(scenario: Callable[[], Awaitable[None]], limit: float = 4.5) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), limit)

    asyncio.run(bounded())


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    """Send `payload`, half-close, and read what comes back up to the end of stream."""

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    echoed = await reader.read(-1)
    await sender
    return echoed


async def _ends(reader: asyncio.StreamReader) -> bool:
    """True when the connection ends (EOF or reset) without any data."""
    try:
        return await reader.read(1) == b""
    except ConnectionError:
        return True


async def _quiet_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """`_echo` for connections that the test resets on purpose."""
    with contextlib.suppress(ConnectionError):
        await _echo(reader, writer)


def _free_port() -> int:
    """A loopback TCP port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---------------------------------------------------------------------------------------
# TCPClientTunnel


def test_client_tunnel_carries_256k_exact_and_passes_the_half_close() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)
            upstream = TableUpstream(a, {"echo.test": ["10.60.0.2"]})
            spec = TCPClientTunnel(LOCAL, EndpointSpec("echo.test", 7))
            server = await serve_tcp_client_tunnel(upstream, spec)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # the echo only stops (and closes) once our half-close has reached it
            echoed = await _exchange(reader, writer, PAYLOAD)
            assert len(echoed) == len(PAYLOAD) and echoed == PAYLOAD
            writer.close()
            server.close()
            await server.wait_closed()

    _run(scenario)


def test_client_tunnel_closes_the_local_connection_when_the_target_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            spec = TCPClientTunnel(LOCAL, EndpointSpec("10.60.0.2", 9))  # nobody listens
            server = await serve_tcp_client_tunnel(TableUpstream(a), spec)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await _ends(reader)
            writer.close()
            server.close()
            await server.wait_closed()

    with caplog.at_level(logging.WARNING, logger="wiresnake.proxy"):
        _run(scenario)
    assert any("10.60.0.2:9" in r.getMessage() for r in caplog.records)


def test_closing_the_client_tunnel_ends_its_open_connections() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_quiet_echo, 7)
            spec = TCPClientTunnel(LOCAL, EndpointSpec("10.60.0.2", 7))
            server = await serve_tcp_client_tunnel(TableUpstream(a), spec)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            server.close()
            assert await _ends(reader)
            # asyncio's wait_closed waits for the accepted connections: they are gone
            await asyncio.wait_for(server.wait_closed(), 2)
            writer.close()

    _run(scenario)


# ---------------------------------------------------------------------------------------
# TCPServerTunnel


def test_server_tunnel_reaches_a_local_server_byte_exact() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            local = await asyncio.start_server(_echo, "127.0.0.1", 0)
            local_port = local.sockets[0].getsockname()[1]
            spec = TCPServerTunnel(2222, EndpointSpec("127.0.0.1", local_port))
            server = await serve_tcp_server_tunnel(a, spec)
            await a.ping("10.60.0.2", timeout=2)  # b learns a's endpoint from the handshake
            assert server.port == 2222
            reader, writer = await b.open_connection("10.60.0.1", 2222, timeout=3)
            echoed = await _exchange(reader, writer, PAYLOAD)
            assert len(echoed) == len(PAYLOAD) and echoed == PAYLOAD
            writer.close()
            server.close()
            local.close()
            await local.wait_closed()

    _run(scenario)


def test_server_tunnel_resets_the_tunnel_side_when_the_local_target_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            spec = TCPServerTunnel(2222, EndpointSpec("127.0.0.1", _free_port()))
            server = await serve_tcp_server_tunnel(a, spec)
            await a.ping("10.60.0.2", timeout=2)  # b learns a's endpoint from the handshake
            reader, writer = await b.open_connection("10.60.0.1", 2222, timeout=3)
            assert await _ends(reader)
            writer.close()
            server.close()

    with caplog.at_level(logging.WARNING, logger="wiresnake.proxy"):
        _run(scenario)
    assert any("TCPServerTunnel" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------
# STDIOTunnel


def test_stdio_tunnel_over_pipes_echoes_byte_exact() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            received = bytearray()

            def feed() -> None:
                with open(in_w, "wb") as f:  # closing it is stdin's end of file
                    f.write(PAYLOAD)

            def drain() -> None:
                with open(out_r, "rb") as f:
                    while chunk := f.read(65536):
                        received.extend(chunk)

            threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
            for thread in threads:
                thread.start()
            try:
                spec = STDIOTunnel(EndpointSpec("10.60.0.2", 7))
                await run_stdio_tunnel(TableUpstream(a), spec, in_r, out_w)
                # the descriptors are left open, in the blocking mode they had
                assert os.get_blocking(in_r) and os.get_blocking(out_w)
            finally:
                os.close(in_r)
                os.close(out_w)  # the drain thread sees its end of file
                for thread in threads:
                    await asyncio.to_thread(thread.join, 2)
            assert len(received) == len(PAYLOAD) and bytes(received) == PAYLOAD

    _run(scenario)


def test_stdio_tunnel_returns_when_the_target_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            try:
                spec = STDIOTunnel(EndpointSpec("10.60.0.2", 9))
                await run_stdio_tunnel(TableUpstream(a), spec, in_r, out_w)
            finally:
                for fd in (in_r, in_w, out_r, out_w):
                    os.close(fd)

    with caplog.at_level(logging.ERROR, logger="wiresnake.proxy"):
        _run(scenario)
    assert any("STDIOTunnel" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------
# UDPProxyTunnel


class _Client(asyncio.DatagramProtocol):
    """A local UDP client that queues what it receives."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)


async def _client(port: int) -> tuple[asyncio.DatagramTransport, _Client]:
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(_Client, remote_addr=("127.0.0.1", port))


def _udp_echo(tunnel: Tunnel, port: int) -> asyncio.Task[None]:
    """A UDP echo on `tunnel` that answers `<sender port>:<data>`."""
    server = tunnel.udp_endpoint(port)

    async def serve() -> None:
        try:
            while True:
                try:
                    data, (host, sport) = await server.recvfrom(timeout=10)
                except TimeoutError:
                    continue
                server.sendto(b"%d:" % sport + data, (host, sport))
        finally:
            server.close()

    return asyncio.create_task(serve())


async def _ask(transport: asyncio.DatagramTransport, client: _Client, data: bytes) -> bytes:
    transport.sendto(data)
    return await asyncio.wait_for(client.received.get(), 2)


def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()


def test_udp_proxy_relays_and_keeps_two_clients_apart() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            echo = _udp_echo(b, 5353)
            upstream = TableUpstream(a, {"dns.test": ["10.60.0.2"]})
            spec = UDPProxyTunnel(LOCAL, EndpointSpec("dns.test", 5353))
            proxy = await serve_udp_proxy_tunnel(upstream, spec)
            port = proxy.address[1]
            t1, c1 = await _client(port)
            t2, c2 = await _client(port)
            try:
                port1, _, data = (await _ask(t1, c1, b"one")).partition(b":")
                assert data == b"one"
                port2, _, data = (await _ask(t2, c2, b"two")).partition(b":")
                assert data == b"two"
                assert port1 != port2  # a tunnel socket each
                assert proxy.associations == 2
                # and each keeps its own: answers go only to their sender
                assert await _ask(t1, c1, b"again") == port1 + b":again"
                assert await _ask(t2, c2, b"more") == port2 + b":more"
                assert c1.received.empty() and c2.received.empty()
            finally:
                t1.close()
                t2.close()
                proxy.close()
                await proxy.wait_closed()
                _stop(echo)
            assert proxy.associations == 0

    _run(scenario)


def test_udp_proxy_closes_an_idle_association() -> None:
    async def scenario() -> None:
        now = [1000.0]
        a, b = await _pair()
        async with a, b:
            echo = _udp_echo(b, 5353)
            spec = UDPProxyTunnel(LOCAL, EndpointSpec("10.60.0.2", 5353), inactivity_timeout=30)
            proxy: UdpProxy = await serve_udp_proxy_tunnel(
                TableUpstream(a), spec, clock=lambda: now[0]
            )
            transport, client = await _client(proxy.address[1])
            try:
                first = (await _ask(transport, client, b"x")).partition(b":")[0]
                now[0] += 29  # not yet idle long enough
                await asyncio.sleep(1.2)
                assert proxy.associations == 1
                assert (await _ask(transport, client, b"y")).partition(b":")[0] == first
                now[0] += 31
                for _ in range(30):
                    if proxy.associations == 0:
                        break
                    await asyncio.sleep(0.1)
                assert proxy.associations == 0
                # the next datagram opens a new tunnel socket
                second = (await _ask(transport, client, b"z")).partition(b":")[0]
                assert second != first
            finally:
                transport.close()
                proxy.close()
                await proxy.wait_closed()
                _stop(echo)

    _run(scenario)


def test_udp_proxy_with_no_timeout_keeps_associations() -> None:
    async def scenario() -> None:
        now = [0.0]
        a, b = await _pair()
        async with a, b:
            echo = _udp_echo(b, 5353)
            spec = UDPProxyTunnel(LOCAL, EndpointSpec("10.60.0.2", 5353), inactivity_timeout=0)
            proxy = await serve_udp_proxy_tunnel(TableUpstream(a), spec, clock=lambda: now[0])
            transport, client = await _client(proxy.address[1])
            with contextlib.ExitStack() as stack:
                stack.callback(_stop, echo)
                stack.callback(proxy.close)
                stack.callback(transport.close)
                assert (await _ask(transport, client, b"x")).endswith(b":x")
                now[0] += 1e9
                await asyncio.sleep(0.3)
                assert proxy.associations == 1

    _run(scenario)
