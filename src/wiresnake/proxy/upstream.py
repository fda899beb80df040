"""What the proxy front ends (SOCKS5, HTTP, port forwards) need from the tunnel.

Front ends never touch the `Tunnel` directly: they get an `Upstream`, which dials names
through the tunnel's DNS servers and hands out UDP endpoints on the tunnel's addresses.
`wiresnake.proxy.dial.Dialer` is the real one; tests may pass a plain `Tunnel` wrapper.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from wiresnake.proxy.tunnel import UdpEndpoint

__all__ = ["NameResolutionError", "Upstream"]


class NameResolutionError(OSError):
    """A host name had no usable address (no DNS server, NXDOMAIN, no answer in time)."""


class Upstream(Protocol):
    async def open_connection(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """TCP through the tunnel to `host` (IP literal or name), trying each address in
        turn. ConnectionRefusedError, TimeoutError, NameResolutionError or OSError."""
        ...

    async def resolve(self, host: str) -> list[str]:
        """IP literals for `host`, preferred family first (a literal answers itself);
        NameResolutionError when there are none."""
        ...

    def udp_endpoint(self) -> UdpEndpoint:
        """A fresh UDP socket on an ephemeral port of the tunnel's addresses."""
        ...
