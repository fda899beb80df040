"""`wiresnake proxy`: one tunnel, and every front end a wireproxy configuration asks for.

`ProxyApp.start()` opens the tunnel (no root, one UDP socket), then the SOCKS5 and HTTP
listeners, the port forwards, the STDIO tunnel, CheckAlive and the info endpoint. A
listener that cannot bind fails the start with the section's FILE:LINE, and everything
started before it is closed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from wiresnake.config import EndpointSpec
from wiresnake.proxy import forward, limits
from wiresnake.proxy.config import ProxyConfig, Source
from wiresnake.proxy.dial import Dialer, open_tunnel
from wiresnake.proxy.health import AliveChecker, InfoServer
from wiresnake.proxy.http import serve_http
from wiresnake.proxy.sni import serve_sni
from wiresnake.proxy.socks5 import Socks5Server
from wiresnake.proxy.tunnel import Tunnel

__all__ = ["ProxyApp", "StartError"]

log = logging.getLogger("wiresnake.proxy")


class StartError(Exception):
    """A listener or the tunnel could not start; the message names the config line."""


class _Closable(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Bound:
    what: str
    host: str
    port: int


def _split(spec: EndpointSpec) -> tuple[str | None, int]:
    # An empty host binds every address, as Go's net.Listen does with ":1080".
    return (spec.host or None), spec.port


class ProxyApp:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        info: EndpointSpec | None = None,
        stdio: tuple[int, int] = (0, 1),
        resolve: Callable[[EndpointSpec], tuple[str, int]] | None = None,
    ) -> None:
        self.config = config
        self.info = info
        self.stdio = stdio
        self.resolve = resolve
        self.tunnel: Tunnel | None = None
        self.dialer: Dialer | None = None
        self.checker: AliveChecker | None = None
        self.bound: list[_Bound] = []
        self._closables: list[_Closable] = []
        self._servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.done = asyncio.Event()  # set when a STDIO tunnel ends: the process should exit
        self.exit_status = 0

    async def _listen(
        self, what: str, source: Source, start: Any, key: str = "BindAddress"
    ) -> None:
        try:
            server = await start
        except OSError as e:
            where = f"{source.path}:{source.line_of(key)}"
            raise StartError(f"{where}: cannot listen for {what}: {e.strerror or e}") from None
        if isinstance(server, asyncio.Server):
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                self.bound.append(_Bound(what, host, port))
        else:
            self._closables.append(server)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        cfg = self.config
        try:
            self.dialer = dialer = await open_tunnel(cfg, resolve=self.resolve)
        except OSError as e:
            src = cfg.interface.source
            raise StartError(
                f"{src.path}:{src.line_of('ListenPort')}: cannot open UDP port "
                f"{cfg.interface.listen_port or 0}: {e.strerror or e}"
            ) from None
        self.tunnel = tunnel = dialer.tunnel
        listeners = len(cfg.socks5) + len(cfg.http) + len(cfg.sni) + len(cfg.tunnels.tcp_client)
        try:
            caps = limits.Limits.for_listeners(listeners)
        except ValueError as e:
            raise StartError(str(e)) from None
        for s in cfg.socks5:
            host, port = _split(s.bind)
            socks = Socks5Server(
                dialer,
                s.username,
                s.password,
                handshake_timeout=caps.handshake_timeout,
                caps=caps,
            )
            self._closables.append(socks)  # closing it ends its sessions too
            await self._listen("SOCKS5", s.source, socks.start(host or "", port))
        for h in cfg.http:
            host, port = _split(h.bind)
            ssl_ctx = None
            if h.tls:
                import ssl

                ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                try:
                    ssl_ctx.load_cert_chain(h.cert_file, h.key_file)
                except (OSError, ssl.SSLError) as e:
                    raise StartError(f"{h.source}: cannot load certificate: {e}") from None
            serving = serve_http(
                dialer, host or "", port, h.username, h.password, ssl_ctx, caps=caps
            )
            await self._listen("HTTP", h.source, serving)
        for sn in cfg.sni:
            host, port = _split(sn.bind)
            await self._listen("SNI", sn.source, serve_sni(dialer, host or "", port, caps))
        for c in cfg.tunnels.tcp_client:
            serving = forward.serve_tcp_client_tunnel(dialer, c, caps)
            await self._listen("TCPClientTunnel", c.source, serving)
        for t in cfg.tunnels.tcp_server:
            exposing = forward.serve_tcp_server_tunnel(tunnel, t)
            await self._listen("TCPServerTunnel", t.source, exposing, "ListenPort")
        for u in cfg.tunnels.udp_proxy:
            relaying = forward.serve_udp_proxy_tunnel(dialer, u)
            await self._listen("UDPProxyTunnel", u.source, relaying)
        for st in cfg.tunnels.stdio:
            self._tasks.append(asyncio.create_task(self._stdio(dialer, st)))
        targets = [str(a) for a in cfg.interface.check_alive]
        self.checker = AliveChecker(tunnel, targets, cfg.interface.check_alive_interval)
        if targets:
            self._tasks.append(asyncio.create_task(self.checker.run()))
        if self.info is not None:
            info = InfoServer(tunnel, self.checker)
            host, port = _split(self.info)
            try:
                server = await info.serve(host or "", port)
            except OSError as e:
                raise StartError(f"cannot listen for -i {self.info}: {e.strerror or e}") from None
            self._servers.append(server)
            for sock in server.sockets:
                self.bound.append(_Bound("info", *sock.getsockname()[:2]))

    async def _stdio(self, dialer: Dialer, spec: Any) -> None:
        reached = await forward.run_stdio_tunnel(dialer, spec, *self.stdio)
        if not reached:
            self.exit_status = 1
        cfg, tunnels = self.config, self.config.tunnels
        if not any(
            (cfg.socks5, cfg.http, cfg.sni, tunnels.tcp_client, tunnels.tcp_server,
             tunnels.udp_proxy, self.info)
        ):  # fmt: skip
            # only the stdio tunnel (ssh's ProxyCommand): its end is the process's end
            self.done.set()

    def port_of(self, what: str) -> int:
        """The port a front end listens on (useful with port 0 in tests)."""
        for b in self.bound:
            if b.what == what:
                return b.port
        raise KeyError(what)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for server in self._servers:
            server.close()
        for c in self._closables:
            c.close()
        if self.tunnel is not None:
            self.tunnel.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        self._servers.clear()
        self._closables.clear()
        self._tasks.clear()
