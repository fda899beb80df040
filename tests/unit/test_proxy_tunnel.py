"""Two rootless tunnels (engine + userspace stack) talking over loopback UDP."""

from __future__ import annotations

import asyncio
import errno
import socket
import time

import pytest

from wiresnake.crypto import generate_private_key, public_key
from wiresnake.io.demux import STUN_MAGIC_COOKIE, RawSend
from wiresnake.protocol.settings import DeviceConfig, PeerConfig, parse_network
from wiresnake.proxy.tunnel import NoRouteError, Tunnel


async def _pair() -> tuple[Tunnel, Tunnel]:
    ka, kb = generate_private_key(), generate_private_key()
    a = await Tunnel.open(DeviceConfig(ka), ["10.60.0.1/24", "fd60::1/64"], listen_host="127.0.0.1")
    b = await Tunnel.open(DeviceConfig(kb), ["10.60.0.2/24", "fd60::2/64"], listen_host="127.0.0.1")
    now = time.monotonic()
    a.device.apply_peer(
        PeerConfig(
            public_key(kb),
            endpoint=("127.0.0.1", b.listen_port),
            allowed_ips=(parse_network("10.60.0.2/32"), parse_network("fd60::2/128")),
        ),
        now,
    )
    b.device.apply_peer(
        PeerConfig(
            public_key(ka),
            allowed_ips=(parse_network("10.60.0.1/32"), parse_network("fd60::1/128")),
        ),
        now,
    )
    return a, b


def test_ping_through_two_rootless_tunnels_over_ipv4_and_ipv6() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            rtt = await a.ping("10.60.0.2", timeout=5)
            assert 0 < rtt < 5
            assert await a.ping("fd60::2", timeout=5) > 0
            # b learned a's endpoint from the handshake and can ping back
            assert await b.ping("10.60.0.1", timeout=5) > 0

    asyncio.run(scenario())


def test_udp_request_and_answer_through_the_tunnels() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            server = b.udp_endpoint(53)
            client = a.udp_endpoint()
            client.sendto(b"query", ("10.60.0.2", 53))
            data, (host, port) = await server.recvfrom(timeout=5)
            assert (data, host, port) == (b"query", "10.60.0.1", client.port)
            server.sendto(b"answer:" + data, (host, port))
            assert (await client.recvfrom(timeout=5))[0] == b"answer:query"

    asyncio.run(scenario())


def test_ping_to_nobody_times_out() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            (peer,) = a.device.peers
            a.device.allow(peer, "10.60.0.99/32")  # routed to b, which does not answer
            with pytest.raises(TimeoutError):
                await a.ping("10.60.0.99", timeout=0.5)

    asyncio.run(scenario())


def test_destinations_outside_every_allowed_ips_fail_at_once_with_enokey() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            started = time.monotonic()
            with pytest.raises(NoRouteError) as ping:
                await a.ping("10.60.0.99", timeout=5)
            with pytest.raises(NoRouteError) as tcp:
                await a.open_connection("10.99.0.1", 80, timeout=5)
            with pytest.raises(NoRouteError) as tcp6:
                await a.open_connection("fd99::1", 80, timeout=5)
            with pytest.raises(NoRouteError) as udp:
                a.udp_endpoint().sendto(b"x", ("192.0.2.1", 53))
            assert time.monotonic() - started < 2  # not a timeout
            for caught in (ping, tcp, tcp6, udp):
                assert caught.value.errno == errno.ENOKEY
                assert isinstance(caught.value, OSError)
                assert not isinstance(caught.value, TimeoutError)
            assert "10.99.0.1" in str(tcp.value) and "AllowedIPs" in str(tcp.value)
            assert "Required key not available" in str(tcp.value)
            # nothing was queued for the stack to send
            assert a.device.counters["no_route"] == 0

    asyncio.run(scenario())


def test_tunnels_over_an_ipv6_underlay() -> None:
    async def scenario() -> None:
        ka, kb = generate_private_key(), generate_private_key()
        a = await Tunnel.open(DeviceConfig(ka), ["10.63.0.1/24"], listen_host="::1")
        b = await Tunnel.open(DeviceConfig(kb), ["10.63.0.2/24"], listen_host="::1")
        now = time.monotonic()
        a.device.apply_peer(
            PeerConfig(
                public_key(kb),
                endpoint=("::1", b.listen_port),
                allowed_ips=(parse_network("10.63.0.2/32"),),
            ),
            now,
        )
        b.device.apply_peer(
            PeerConfig(public_key(ka), allowed_ips=(parse_network("10.63.0.1/32"),)), now
        )
        async with a, b:
            assert await a.ping("10.63.0.2", timeout=5) > 0
            peer = next(b.device.peers).endpoint
            assert peer is not None and peer == ("::1", a.listen_port)

    asyncio.run(scenario())


def test_a_stun_handler_on_the_tunnel_port_answers_while_pings_cross() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            assert a.pump is not None
            seen: list[bytes] = []

            def on_stun(src: tuple[str, int], data: bytes, send: RawSend) -> None:
                seen.append(data)
                send(src, b"\x01\x01\x00\x00" + data[4:20])

            a.pump.demux.register_stun(on_stun)
            loop = asyncio.get_running_loop()
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.bind(("127.0.0.1", 0))
            client.setblocking(False)
            try:
                request = b"\x00\x01\x00\x00" + STUN_MAGIC_COOKIE + bytes(range(12))
                client.sendto(request, ("127.0.0.1", a.listen_port))
                reply = await asyncio.wait_for(loop.sock_recv(client, 2048), 5)
                assert reply[4:20] == request[4:20] and seen == [request]
                assert await a.ping("10.60.0.2", timeout=5) > 0
            finally:
                client.close()

    asyncio.run(scenario())
