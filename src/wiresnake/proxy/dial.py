"""The real `Upstream`: names resolved by the tunnel's DNS servers, then TCP through it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from wiresnake.config import EndpointSpec
from wiresnake.proxy.config import ProxyConfig, read_proxy_config
from wiresnake.proxy.dns import Resolver
from wiresnake.proxy.tunnel import ClientConnected, TcpServer, Tunnel, UdpEndpoint
from wiresnake.proxy.upstream import NameResolutionError
from wiresnake.reresolve import endpoint_names, proxy_enabled, stale_after_from_env

if TYPE_CHECKING:
    from wiresnake.proxy.upstream import Upstream

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "Dialer", "NameResolver", "OpeningTunnel", "open_tunnel"]

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
        """IP literals for `host`, the preferred family first (a literal answers itself).

        Raises NameResolutionError (an OSError) when there are none: no DNS server
        configured, NXDOMAIN, no answer in time, a DNS server no peer routes to."""
        return await self.resolver.resolve(host)

    async def open_connection(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """TCP through the tunnel to (host, port), `host` a name or an IP literal; each of
        its addresses is tried in turn and the last failure is raised:
        NameResolutionError (no address), NoRouteError (ENOKEY: outside every peer's
        AllowedIPs, at once), ConnectionRefusedError, TimeoutError (no answer within
        `connect_timeout`), other OSError."""
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
        """A UDP socket on an ephemeral port of the tunnel's addresses (its `sendto`
        raises NoRouteError for a destination no peer routes to)."""
        return self.tunnel.udp_endpoint()

    async def ping(self, host: str, timeout: float = 5.0) -> float:
        """Round-trip seconds of one ICMP echo to `host` (a name or an address).

        Raises NameResolutionError, NoRouteError (at once), TimeoutError, as
        `resolve` and `Tunnel.ping`."""
        return await self.tunnel.ping((await self.resolve(host))[0], timeout=timeout)

    async def start_server(
        self, client_connected_cb: ClientConnected, port: int, *, host: str | None = None
    ) -> TcpServer:
        """Accept TCP connections on the tunnel's own addresses (see `Tunnel.start_server`;
        OSError when the port is taken)."""
        return await self.tunnel.start_server(client_connected_cb, port, host=host)

    def close(self) -> None:
        """Close the tunnel: its connections are cut. Never raises."""
        self.tunnel.close()

    async def __aenter__(self) -> Dialer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class OpeningTunnel:
    """What `open_tunnel` answers: `await` it for the `Dialer`, or `async with` it to have
    the tunnel closed at the end of the block (as aiohttp's `ClientSession`)."""

    def __init__(self, opening: Callable[[], Coroutine[Any, Any, Dialer]]) -> None:
        self._opening = opening
        self._dialer: Dialer | None = None

    def __await__(self) -> Generator[Any, None, Dialer]:
        return self._opening().__await__()

    async def __aenter__(self) -> Dialer:
        self._dialer = await self._opening()
        return self._dialer

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._dialer is not None:
            self._dialer.close()
            self._dialer = None


def open_tunnel(
    config: str | os.PathLike[str] | ProxyConfig,
    *,
    resolve: Callable[[EndpointSpec], tuple[str, int]] | None = None,
) -> OpeningTunnel:
    """A rootless tunnel from a wireproxy or wg-quick file (or a parsed `ProxyConfig`).

    `async with open_tunnel("wg0.conf") as net:` opens it and closes it at the end of the
    block; `net = await open_tunnel(...)` gives the `Dialer` to `close()` yourself. It
    dials names through the tunnel's `DNS` servers. Only `[Interface]` and `[Peer]`
    matter here: the front ends a file may also list are `wiresnake proxy`'s job.
    `resolve` looks up Endpoint names (see `ProxyConfig.to_device_config`; by default they
    are looked up without blocking the loop), then again whenever a peer's handshakes go
    stale, unless WIRESNAKE_RERESOLVE=0.

    Opening raises ProxyConfigError (a ValueError naming FILE:LINE) for a bad or missing
    file or an Endpoint name that does not resolve, OSError when the UDP port cannot be
    bound.
    """

    async def opening() -> Dialer:
        cfg = config if isinstance(config, ProxyConfig) else read_proxy_config(os.fspath(config))
        stale_after = stale_after_from_env(os.environ)
        first = resolve or (await cfg.lookup_endpoints()).__getitem__
        tunnel = await Tunnel.open(
            cfg.to_device_config(first),
            [str(a) for a in cfg.interface.addresses],
            mtu=cfg.interface.mtu,
        )
        try:
            if proxy_enabled(os.environ):
                names = endpoint_names((p.public_key, p.endpoint) for p in cfg.peers)
                tunnel.reresolve(names, stale_after=stale_after, lookup=resolve)
            return Dialer.for_config(tunnel, cfg)
        except BaseException:
            tunnel.close()  # its socket and timer must not outlive a failed open
            raise

    return OpeningTunnel(opening)


if TYPE_CHECKING:
    _IS_AN_UPSTREAM: type[Upstream] = Dialer  # mypy checks that Dialer keeps the contract
