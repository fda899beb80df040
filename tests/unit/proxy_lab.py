"""Test harness for the proxy front ends: an Upstream over a real tunnel pair whose names
come from a fixed table instead of DNS (the DNS resolver has its own tests)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping

from wiresnake.proxy.tunnel import Tunnel, UdpEndpoint
from wiresnake.proxy.upstream import NameResolutionError


class TableUpstream:
    """Dials through `tunnel`; `names` maps host names to IP literals."""

    def __init__(self, tunnel: Tunnel, names: Mapping[str, list[str]] | None = None) -> None:
        self.tunnel = tunnel
        self.names = dict(names or {})

    async def resolve(self, host: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        found = self.names.get(host.lower())
        if not found:
            raise NameResolutionError(f"no such host: {host}")
        return list(found)

    async def open_connection(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        last: OSError = NameResolutionError(f"no such host: {host}")
        for address in await self.resolve(host):
            try:
                return await self.tunnel.open_connection(address, port, timeout=10)
            except OSError as e:
                last = e
        raise last

    def udp_endpoint(self) -> UdpEndpoint:
        return self.tunnel.udp_endpoint()
