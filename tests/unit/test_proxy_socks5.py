"""SOCKS5 on this machine, CONNECTs through a rootless tunnel to a server behind the peer."""

from __future__ import annotations

import asyncio
import struct

from test_proxy_streams import _echo
from test_proxy_tunnel import _pair

from wiresnake.proxy.socks5 import serve_socks5


async def _socks_connect(
    port: int, host: bytes, dport: int, auth: tuple[bytes, bytes] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x05\x01" + (b"\x02" if auth else b"\x00"))
    assert await reader.readexactly(2) == b"\x05" + (b"\x02" if auth else b"\x00")
    if auth:
        user, password = auth
        writer.write(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        status = await reader.readexactly(2)
        if status != b"\x01\x00":
            return reader, writer, -1
    writer.write(b"\x05\x01\x00\x01" + host + struct.pack("!H", dport))
    reply = await reader.readexactly(10)
    return reader, writer, reply[1]


def test_connect_through_socks5_and_the_tunnel_echoes_bytes_exact() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)
            proxy = await serve_socks5(a.open_connection, "127.0.0.1", 0)
            port = proxy.sockets[0].getsockname()[1]
            reader, writer, code = await _socks_connect(port, bytes([10, 60, 0, 2]), 7)
            assert code == 0
            payload = bytes(range(256)) * 1024
            writer.write(payload)
            got = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
            assert got == payload
            writer.close()
            proxy.close()

    asyncio.run(scenario())


def test_a_closed_port_behind_the_tunnel_is_connection_refused() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            proxy = await serve_socks5(a.open_connection, "127.0.0.1", 0)
            port = proxy.sockets[0].getsockname()[1]
            _, writer, code = await _socks_connect(port, bytes([10, 60, 0, 2]), 9)
            assert code == 5  # connection refused
            writer.close()
            proxy.close()

    asyncio.run(scenario())


def test_username_and_password_are_required_when_configured() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)
            proxy = await serve_socks5(a.open_connection, "127.0.0.1", 0, "alice", "s3cret")
            port = proxy.sockets[0].getsockname()[1]
            _, w1, code = await _socks_connect(port, bytes([10, 60, 0, 2]), 7, (b"alice", b"no"))
            assert code == -1
            w1.close()
            r2, w2, code = await _socks_connect(
                port, bytes([10, 60, 0, 2]), 7, (b"alice", b"s3cret")
            )
            assert code == 0
            w2.write(b"ping")
            assert await asyncio.wait_for(r2.readexactly(4), 10) == b"ping"
            w2.close()
            proxy.close()

    asyncio.run(scenario())
