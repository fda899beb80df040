"""A SOCKS5 front end (RFC 1928, RFC 1929) whose CONNECTs go through a rootless tunnel.

Clients on this machine connect to a local TCP listener; each CONNECT is opened with
`Tunnel.open_connection` and bytes are relayed both ways. Methods: no authentication, or
username/password when configured. Failures answer with RFC 1928 reply codes. UDP
ASSOCIATE and name resolution through the tunnel's DNS come next; a domain name is
accepted only when it is an IP literal.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import struct
from collections.abc import Awaitable, Callable

from wiresnake.proxy.relay import relay

__all__ = ["Socks5Server", "serve_socks5"]

VERSION = 5
NO_AUTH, USER_PASS, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CMD_CONNECT = 1
ATYP_V4, ATYP_DOMAIN, ATYP_V6 = 1, 3, 4
REP_OK, REP_FAILURE, REP_NOT_ALLOWED, REP_NET_UNREACH = 0, 1, 2, 3
REP_HOST_UNREACH, REP_REFUSED, REP_TTL, REP_CMD, REP_ATYP = 4, 5, 6, 7, 8

Opener = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class _Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _reply(code: int) -> bytes:
    return bytes([VERSION, code, 0, ATYP_V4]) + bytes(4) + b"\0\0"


class Socks5Server:
    def __init__(self, open_connection: Opener, username: str = "", password: str = "") -> None:
        self.open_connection = open_connection
        self.username = username.encode()
        self.password = password.encode()

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        version, count = await reader.readexactly(2)
        if version != VERSION:
            return False
        methods = await reader.readexactly(count)
        wanted = USER_PASS if self.username else NO_AUTH
        if wanted not in methods:
            writer.write(bytes([VERSION, NO_ACCEPTABLE]))
            return False
        writer.write(bytes([VERSION, wanted]))
        if wanted == NO_AUTH:
            return True
        sub, ulen = await reader.readexactly(2)
        user = await reader.readexactly(ulen)
        (plen,) = await reader.readexactly(1)
        password = await reader.readexactly(plen)
        ok = (
            sub == 1
            and hmac.compare_digest(user, self.username)
            and hmac.compare_digest(password, self.password)
        )
        writer.write(bytes([1, 0 if ok else 1]))
        return ok

    async def _request(self, reader: asyncio.StreamReader) -> tuple[str, int]:
        version, cmd, _rsv, atyp = await reader.readexactly(4)
        if version != VERSION:
            raise _Refused(REP_FAILURE)
        if atyp == ATYP_V4:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif atyp == ATYP_V6:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif atyp == ATYP_DOMAIN:
            (n,) = await reader.readexactly(1)
            name = (await reader.readexactly(n)).decode("idna", errors="replace")
            try:
                host = str(ipaddress.ip_address(name))
            except ValueError:
                raise _Refused(REP_HOST_UNREACH) from None  # no resolver through the tunnel yet
        else:
            raise _Refused(REP_ATYP)
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        if cmd != CMD_CONNECT:
            raise _Refused(REP_CMD)
        return host, port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not await self._authenticate(reader, writer):
                return
            try:
                host, port = await self._request(reader)
                try:
                    remote_r, remote_w = await self.open_connection(host, port)
                except ConnectionRefusedError:
                    raise _Refused(REP_REFUSED) from None
                except TimeoutError:
                    raise _Refused(REP_TTL) from None
                except OSError:
                    raise _Refused(REP_NET_UNREACH) from None
            except _Refused as e:
                writer.write(_reply(e.code))
                return
            writer.write(_reply(REP_OK))
            await writer.drain()
            await relay(reader, writer, remote_r, remote_w)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()


async def serve_socks5(
    open_connection: Opener, host: str, port: int, username: str = "", password: str = ""
) -> asyncio.Server:
    """Listen on the local (host, port) and serve SOCKS5 through `open_connection`."""
    server = Socks5Server(open_connection, username, password)
    return await asyncio.start_server(server.handle, host, port)
