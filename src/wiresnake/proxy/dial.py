"""The real `Upstream`: names resolved by the tunnel's DNS servers, then TCP through it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from wiresnake.proxy.config import ProxyConfig
from wiresnake.proxy.dns import Resolver
from wiresnake.proxy.tunnel import Tunnel, UdpEndpoint
from wiresnake.proxy.upstream import NameResolutionError

if TYPE_CHECKING:
    from wiresnake.proxy.upstream import Upstream

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "Dialer"]

DEFAULT_CONNECT_TIMEOUT = 10.0


class Dialer:
    """Dial `host:port` through `tunnel`, asking `resolver` for names.

    Each address is tried in the resolver's order with `connect_timeout` seconds for the
    handshake, so one dead address (an IPv6 one with no IPv6 route behind the peer, say)
    costs at most that before the next is tried. When all fail, the last error is raised.
    """

    def __init__(
        self,
        tunnel: Tunnel,
        resolver: Resolver,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.tunnel = tunnel
        self.resolver = resolver
        self.connect_timeout = connect_timeout

    @classmethod
    def for_config(
        cls,
        tunnel: Tunnel,
        config: ProxyConfig,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> Dialer:
        """The dialer wireproxy's configuration asks for: its DNS servers and strategy."""
        resolver = Resolver(tunnel, config.interface.dns, config.resolve_strategy)
        return cls(tunnel, resolver, connect_timeout=connect_timeout)

    async def resolve(self, host: str) -> list[str]:
        return await self.resolver.resolve(host)

    async def open_connection(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addresses = await self.resolver.resolve(host)
        last: OSError = NameResolutionError(f"{host!r} has no address")
        for address in addresses:
            try:
                return await self.tunnel.open_connection(
                    address, port, timeout=self.connect_timeout
                )
            except OSError as e:  # refused, timed out, unreachable: try the next address
                last = e
            except ValueError as e:  # an address the stack cannot use (a scoped one, say)
                last = OSError(f"cannot connect to {address}: {e}")
        raise last

    def udp_endpoint(self) -> UdpEndpoint:
        return self.tunnel.udp_endpoint()


if TYPE_CHECKING:
    _IS_AN_UPSTREAM: type[Upstream] = Dialer  # mypy checks that Dialer keeps the contract
