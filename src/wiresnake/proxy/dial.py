"""The real `Upstream`: names resolved by the tunnel's DNS servers, then TCP through it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from wiresnake.config import EndpointSpec
from wiresnake.proxy.config import ProxyConfig, read_proxy_config
from wiresnake.proxy.dns import Resolver
from wiresnake.proxy.tunnel import ClientConnected, TcpServer, Tunnel, UdpEndpoint
from wiresnake.proxy.upstream import NameResolutionError
from wiresnake.reresolve import endpoint_names, proxy_enabled, stale_after_from_env

if TYPE_CHECKING:
    from wiresnake.proxy.upstream import Upstream

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "Dialer", "NameResolver", "open_tunnel"]

DEFAULT_CONNECT_TIMEOUT = 10.0


class NameResolver(Protocol):
    async def resolve(self, host: str) -> list[str]: ...


class Dialer:
    """Dial `host:port` through `tunnel`, asking `resolver` (a DNS `Resolver`, say) for
    names.

    Each address is tried in the resolver's order with `connect_timeout` seconds for the
    handshake, so one dead address (an IPv6 one with no IPv6 route behind the peer, say)
    costs at most that before the next is tried. When all fail, the last error is raised.
    """

    def __init__(
        self,
        tunnel: Tunnel,
        resolver: NameResolver,
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

    async def ping(self, host: str, timeout: float = 5.0) -> float:
        """Round-trip seconds of one ICMP echo to `host` (a name or an address)."""
        return await self.tunnel.ping((await self.resolve(host))[0], timeout=timeout)

    async def start_server(
        self, client_connected_cb: ClientConnected, port: int, *, host: str | None = None
    ) -> TcpServer:
        """Accept TCP connections on the tunnel's own addresses (see `Tunnel.start_server`)."""
        return await self.tunnel.start_server(client_connected_cb, port, host=host)

    def close(self) -> None:
        self.tunnel.close()

    async def __aenter__(self) -> Dialer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def open_tunnel(
    config: str | os.PathLike[str] | ProxyConfig,
    *,
    resolve: Callable[[EndpointSpec], tuple[str, int]] | None = None,
) -> Dialer:
    """A rootless tunnel from a wireproxy or wg-quick file (or a parsed `ProxyConfig`).

    What it answers dials names through the tunnel's `DNS` servers; `async with` it, or
    `close()` it when done. Only `[Interface]` and `[Peer]` matter here: the front ends a
    file may also list are `wiresnake proxy`'s job. `resolve` looks up Endpoint names
    (see `ProxyConfig.to_device_config`; by default they are looked up without blocking the
    loop), then again whenever a peer's handshakes go stale, unless WIRESNAKE_RERESOLVE=0.
    """
    if not isinstance(config, ProxyConfig):
        config = read_proxy_config(os.fspath(config))
    stale_after = stale_after_from_env(os.environ)
    first = resolve or (await config.lookup_endpoints()).__getitem__
    tunnel = await Tunnel.open(
        config.to_device_config(first),
        [str(a) for a in config.interface.addresses],
        mtu=config.interface.mtu,
    )
    if proxy_enabled(os.environ):
        names = endpoint_names((p.public_key, p.endpoint) for p in config.peers)
        tunnel.reresolve(names, stale_after=stale_after, lookup=resolve)
    return Dialer.for_config(tunnel, config)


if TYPE_CHECKING:
    _IS_AN_UPSTREAM: type[Upstream] = Dialer  # mypy checks that Dialer keeps the contract
