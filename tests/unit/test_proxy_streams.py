"""TCP streams through two rootless tunnels over loopback UDP."""

from __future__ import annotations

import asyncio
import random

import pytest
from test_proxy_tunnel import _pair


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def test_a_megabyte_echoed_byte_exact() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            server = await b.start_server(_echo, 7)
            reader, writer = await asyncio.wait_for(a.open_connection("10.60.0.2", 7), 10)
            host, port = writer.get_extra_info("peername")
            assert (host, port) == ("10.60.0.2", 7)
            assert writer.get_extra_info("sockname")[0] == "10.60.0.1"
            payload = random.Random(5).randbytes(1 << 20)

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            echoed = await asyncio.wait_for(reader.read(-1), 60)  # to EOF
            await sender
            assert len(echoed) == len(payload) and echoed == payload
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 10)
            server.close()

    asyncio.run(scenario())


def test_several_concurrent_connections_over_both_families() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)

            async def client(i: int) -> bytes:
                host = "10.60.0.2" if i % 2 else "fd60::2"
                reader, writer = await a.open_connection(host, 7)
                data = random.Random(i).randbytes(50_000 + i * 1000)
                writer.write(data)
                await writer.drain()
                got = await reader.readexactly(len(data))
                writer.close()
                await writer.wait_closed()
                return got if got == data else b""

            results = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(8))), 60)
            assert all(results)

    asyncio.run(scenario())


def test_a_refused_connection_raises_connection_refused_error() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            with pytest.raises(ConnectionRefusedError):
                await asyncio.wait_for(a.open_connection("10.60.0.2", 9), 10)

    asyncio.run(scenario())


def test_a_reset_surfaces_to_the_reader() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

            async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await accepted.put(writer)

            await b.start_server(hold, 8)
            reader, writer = await a.open_connection("10.60.0.2", 8)
            server_side = await asyncio.wait_for(accepted.get(), 10)
            server_side.transport.abort()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(10), 10)
            writer.close()

    asyncio.run(scenario())


def test_only_streams_with_news_are_serviced(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event on one connection must not walk every open one (it made 200 concurrent
    SOCKS5 connections quadratic)."""
    from wiresnake.proxy import tunnel as tunnel_module

    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)
            conns = [await a.open_connection("10.60.0.2", 7) for _ in range(40)]
            for reader, writer in conns:  # every connection established and idle
                writer.write(b"x")
                assert await asyncio.wait_for(reader.readexactly(1), 10) == b"x"
            calls = []
            real = tunnel_module._TcpTransport._service

            def counting(self: tunnel_module._TcpTransport) -> None:
                calls.append(self)
                real(self)

            monkeypatch.setattr(tunnel_module._TcpTransport, "_service", counting)
            reader, writer = conns[0]
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
            touched = {id(t) for t in calls}
            assert 0 < len(touched) <= 4, len(touched)  # ours and b's side, not 80
            for _, writer in conns:
                writer.close()

    asyncio.run(scenario())
