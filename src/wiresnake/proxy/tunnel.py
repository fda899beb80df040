"""The rootless core of proxy mode: engine and userspace stack over one UDP socket.

A `Tunnel` joins a `Device` (WireGuard) to an `Interface` (our IP stack) in asyncio, with
no TUN and no privileges: datagrams from the UDP socket go through the engine, the packets
it opens go into the stack, and what the stack sends goes back through the engine. Timers of
both are one `call_later`. Programs use it through `ping`, `UdpEndpoint` and (with TCP, next)
streams; the SOCKS5 and HTTP front ends sit on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence

from wiresnake.netstack.icmp import IcmpSocket
from wiresnake.netstack.iface import Interface
from wiresnake.netstack.udp import UdpSocket
from wiresnake.protocol.device import Device, Output
from wiresnake.protocol.peer import Endpoint
from wiresnake.protocol.settings import DeviceConfig

__all__ = ["Tunnel", "UdpEndpoint"]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        host = addr[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        self.tunnel._from_network([((host, addr[1]), data)])

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors from the underlay (e.g. port unreachable) are not fatal


class Tunnel:
    """Use `await Tunnel.open(config, addresses)`; `close()` when done (or `async with`)."""

    def __init__(self, device: Device, iface: Interface) -> None:
        self.device = device
        self.iface = iface
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # set after every round of input, so waiters look at their sockets again
        self._changed = asyncio.Event()

    @classmethod
    async def open(
        cls,
        config: DeviceConfig,
        addresses: Sequence[str],
        *,
        mtu: int = 1420,
        listen_host: str = "0.0.0.0",
    ) -> Tunnel:
        device = Device(mtu=mtu, wall_offset=time.time() - time.monotonic())
        device.configure(config, time.monotonic())
        tunnel = cls(device, Interface(list(addresses), mtu=mtu))
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(tunnel), local_addr=(listen_host, config.listen_port)
        )
        tunnel._transport = transport
        device.listen_port = transport.get_extra_info("sockname")[1]
        tunnel._reschedule()
        return tunnel

    @property
    def listen_port(self) -> int:
        return self.device.listen_port

    async def __aenter__(self) -> Tunnel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # ---------------------------------------------------------------- the pump

    def _send(self, out: Output) -> None:
        transport = self._transport
        if transport is None:
            return
        for endpoint, data in out.datagrams:
            with contextlib.suppress(OSError):
                transport.sendto(data, endpoint)

    def _from_network(self, datagrams: Iterable[tuple[Endpoint, bytes]]) -> None:
        now = time.monotonic()
        out = self.device.from_network(list(datagrams), now)
        self._send(out)
        if out.packets:
            self.iface.receive(out.packets, now)
        self._pump(now)

    def _pump(self, now: float) -> None:
        """Move what the stack wants to send through the engine, then re-arm the timer."""
        packets = self.iface.poll(now)
        if packets:
            self._send(self.device.from_tunnel(packets, now))
        self._changed.set()
        self._changed = asyncio.Event()
        self._reschedule()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = time.monotonic()
        out = self.device.tick(now)
        self._send(out)
        if out.packets:
            self.iface.receive(out.packets, now)
        self._pump(now)

    def _reschedule(self) -> None:
        deadlines = [
            d for d in (self.device.next_deadline(), self.iface.next_deadline()) if d is not None
        ]
        if not deadlines:
            return
        at = min(deadlines)
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, at - time.monotonic())
        self._timer_at = at
        self._timer = self._loop.call_later(delay, self._on_timer)

    async def _wait_change(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), remaining)

    # ---------------------------------------------------------------- the API

    async def ping(self, address: str, timeout: float = 5.0, payload: bytes = b"") -> float:
        """Round-trip time in seconds of one ICMP echo through the tunnel (TimeoutError)."""
        sock = IcmpSocket(self.iface)
        try:
            now = time.monotonic()
            sock.ping(address, 1, payload or b"wiresnake", now)
            self._pump(now)
            deadline = now + timeout
            while True:
                reply = sock.recv()
                if reply is not None:
                    return time.monotonic() - now
                await self._wait_change(deadline)
        finally:
            sock.close()

    def udp_endpoint(self, port: int = 0, address: str | None = None) -> UdpEndpoint:
        return UdpEndpoint(self, UdpSocket(self.iface, port, address))


class UdpEndpoint:
    """A UDP socket on the tunnel's addresses, for asyncio code."""

    def __init__(self, tunnel: Tunnel, sock: UdpSocket) -> None:
        self.tunnel = tunnel
        self.sock = sock

    @property
    def port(self) -> int:
        return self.sock.port

    def sendto(self, payload: bytes, address: Endpoint) -> None:
        self.sock.send_to(payload, address)
        self.tunnel._pump(time.monotonic())

    async def recvfrom(self, timeout: float = 5.0) -> tuple[bytes, Endpoint]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.sock.recv_from()
            if got is not None:
                return got
            await self.tunnel._wait_change(deadline)

    def close(self) -> None:
        self.sock.close()
