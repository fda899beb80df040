"""The SNI front end: names from real ClientHellos, routed through a tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proxy_lab import TableUpstream
from test_proxy_streams import _echo
from test_proxy_tunnel import _pair

from wiresnake.proxy.sni import SniError, read_client_hello, serve_sni, server_name


def client_hello_records(name: str | None) -> bytes:
    """The first flight Python's TLS client sends for `name` (no network involved)."""
    ctx = ssl.create_default_context()
    if name is None:
        ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def _hello_of(records: bytes) -> tuple[bytes, bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(records)
    reader.feed_eof()
    return await read_client_hello(reader)


def test_server_name_of_a_real_client_hello() -> None:
    records = client_hello_records("echo.test")
    raw, hello = asyncio.run(_hello_of(records))
    assert raw == records
    assert server_name(hello) == "echo.test"


def test_a_hello_split_over_several_records_is_reassembled() -> None:
    records = client_hello_records("split.example")
    body = records[5:]
    split = b"".join(
        bytes([22, 3, 1]) + len(part).to_bytes(2, "big") + part
        for part in (body[:40], body[40:41], body[41:])
    )
    raw, hello = asyncio.run(_hello_of(split))
    assert raw == split and server_name(hello) == "split.example"


def test_no_name_and_not_tls_are_errors() -> None:
    _, hello = asyncio.run(_hello_of(client_hello_records(None)))
    with pytest.raises(SniError, match="no server_name"):
        server_name(hello)
    with pytest.raises(SniError, match="not a TLS"):
        asyncio.run(_hello_of(b"GET / HTTP/1.1\r\n\r\n"))


@given(st.binary(max_size=300))
def test_garbage_hellos_raise_only_sni_error(data: bytes) -> None:
    with contextlib.suppress(SniError):
        server_name(b"\x01" + len(data).to_bytes(3, "big") + data)


def test_tls_connection_is_routed_by_name_through_the_tunnel() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 443)  # stands in for the TLS server
            upstream = TableUpstream(a, {"echo.test": ["10.60.0.2"]})
            server = await serve_sni(upstream, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            records = client_hello_records("echo.test")
            writer.write(records + b"more bytes")
            echoed = await asyncio.wait_for(reader.readexactly(len(records) + 10), 10)
            assert echoed == records + b"more bytes"  # the hello replayed, then relayed
            writer.close()
            # an unknown name or plain text: closed without a byte
            for first in (client_hello_records("nope.test"), b"GET / HTTP/1.1\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(first)
                assert await asyncio.wait_for(reader.read(), 10) == b""
                writer.close()
            server.close()

    asyncio.run(scenario())
