"""A transparent TLS front end (`[SNI]`): route each connection by its ClientHello's name.

The client speaks TLS to us as if we were the server; we read its first flight only far
enough to find the server_name extension (RFC 6066 section 3), dial that name on port 443
through the tunnel, replay what we read and relay both ways. TLS itself stays end to end:
nothing is decrypted. A connection whose hello does not arrive within 5 seconds, is not
TLS, or names no server is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct

from wiresnake.proxy import limits
from wiresnake.proxy.relay import relay
from wiresnake.proxy.upstream import Upstream

__all__ = ["SniError", "read_client_hello", "serve_sni", "server_name"]

log = logging.getLogger("wiresnake.proxy")

HELLO_TIMEOUT = 5.0
TLS_PORT = 443
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_HOST_NAME = 0
_MAX_HELLO = 1 << 16  # a ClientHello body can be at most 2^24 in theory; none is this big


class SniError(ValueError):
    """Not a TLS ClientHello, or one without a usable server name."""


def server_name(hello: bytes) -> str:
    """The host name in a ClientHello handshake message (type, 24-bit length, body)."""
    try:
        if hello[0] != _CLIENT_HELLO:
            raise SniError("first handshake message is not a ClientHello")
        body = memoryview(hello)[4 : 4 + int.from_bytes(hello[1:4], "big")]
        at = 2 + 32  # legacy_version, random
        at += 1 + body[at]  # legacy_session_id
        at += 2 + int.from_bytes(body[at : at + 2], "big")  # cipher_suites
        at += 1 + body[at]  # legacy_compression_methods
        end = at + 2 + int.from_bytes(body[at : at + 2], "big")
        at += 2
        if end > len(body):
            raise SniError("extensions run past the hello")
        while at + 4 <= end:
            kind, size = struct.unpack_from("!HH", body, at)
            at += 4
            if kind == _EXT_SERVER_NAME:
                return _host_name(body[at : at + size])
            at += size
    except (IndexError, struct.error):
        raise SniError("truncated ClientHello") from None
    raise SniError("no server_name in the ClientHello")


def _host_name(ext: memoryview) -> str:
    listed = int.from_bytes(ext[0:2], "big")
    at, end = 2, min(2 + listed, len(ext))
    while at + 3 <= end:
        kind, size = ext[at], int.from_bytes(ext[at + 1 : at + 3], "big")
        at += 3
        if kind == _HOST_NAME:
            name = bytes(ext[at : at + size])
            if not name or len(name) > 253 or not name.isascii():
                raise SniError("server_name is not a DNS host name")
            return name.decode("ascii").rstrip(".")
        at += size
    raise SniError("server_name lists no host name")


async def read_client_hello(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(every byte read, the ClientHello message) from TLS records of type handshake; the
    hello may span several records."""
    raw = bytearray()
    handshake = bytearray()
    while True:
        header = await reader.readexactly(5)
        raw += header
        if header[0] != _HANDSHAKE or header[1] != 3:
            raise SniError("not a TLS handshake record")
        fragment = await reader.readexactly(int.from_bytes(header[3:5], "big"))
        raw += fragment
        handshake += fragment
        if len(handshake) >= 4:
            needed = 4 + int.from_bytes(handshake[1:4], "big")
            if needed > _MAX_HELLO:
                raise SniError("ClientHello too large")
            if len(handshake) >= needed:
                return bytes(raw), bytes(handshake[:needed])


class SniProxy:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                raw, hello = await asyncio.wait_for(read_client_hello(reader), HELLO_TIMEOUT)
                name = server_name(hello)
            except (SniError, TimeoutError, asyncio.IncompleteReadError) as e:
                log.info("SNI proxy: %s", e or "no ClientHello in time")
                return
            limits.handshake_done()
            try:
                remote_r, remote_w = await self.upstream.open_connection(name, TLS_PORT)
            except OSError as e:
                client = limits.client_name(writer)
                log.warning("SNI proxy from %s: %s port %d failed: %s", client, name, TLS_PORT, e)
                return
            remote_w.write(raw)
            await relay(reader, writer, remote_r, remote_w)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # shutting down; Python 3.11 would log a cancelled handler as an error
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def serve_sni(
    upstream: Upstream, host: str, port: int, caps: limits.Limits | None = None
) -> asyncio.Server:
    """Listen on the local (host, port) and route TLS connections by name through
    `upstream`; `caps` bounds the listener's connections (by default: what descriptors
    allow)."""
    gate = limits.Gate("SNI proxy", caps or limits.Limits.for_listeners(1, env={}))
    return await gate.start_server(SniProxy(upstream).handle, host, port)
