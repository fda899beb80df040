"""Failed requests in proxy mode: unroutable destinations fail at once, with a clear error,
through the asyncio API and every front end, and each failure is logged with its cause."""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from proxy_lab import TableResolver, TableUpstream
from test_proxy_socks5 import _name, _run, _socks_connect, _v4
from test_proxy_streams import _echo
from test_proxy_tunnel import _pair

from wiresnake.config import EndpointSpec
from wiresnake.crypto import generate_private_key, public_key
from wiresnake.protocol.settings import DeviceConfig, PeerConfig, parse_network
from wiresnake.proxy.app import ProxyApp
from wiresnake.proxy.config import TCPClientTunnel, parse_proxy_config
from wiresnake.proxy.dial import Dialer
from wiresnake.proxy.forward import serve_tcp_client_tunnel
from wiresnake.proxy.http import serve_http
from wiresnake.proxy.socks5 import serve_socks5
from wiresnake.proxy.tunnel import NoRouteError, Tunnel

SOON = 2.0  # seconds: far below any dial timeout (10 s), far above a slow machine's work


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@asynccontextmanager
async def _far_side(tmp_path: Path) -> AsyncIterator[Path]:
    """A tunnel with an echo server on 10.80.0.1 port 7, and a file to reach it by."""
    server_key, our_key = generate_private_key(), generate_private_key()
    far = await Tunnel.open(DeviceConfig(server_key), ["10.80.0.1/24"], listen_host="127.0.0.1")
    far.device.apply_peer(
        PeerConfig(public_key(our_key), allowed_ips=(parse_network("10.80.0.2/32"),)),
        time.monotonic(),
    )
    await far.start_server(_echo, 7)
    conf = tmp_path / "wg.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {_b64(our_key)}\nAddress = 10.80.0.2/32\n\n"
        f"[Peer]\nPublicKey = {_b64(public_key(server_key))}\n"
        f"Endpoint = 127.0.0.1:{far.listen_port}\nAllowedIPs = 10.80.0.0/24\n"
    )
    try:
        yield conf
    finally:
        far.close()


# -- the asyncio API -------------------------------------------------------------------------


def test_async_with_open_tunnel_from_the_top_level_package(tmp_path: Path) -> None:
    from wiresnake import Device, open_tunnel
    from wiresnake.protocol import device

    assert Device is device.Device

    async def scenario() -> None:
        async with _far_side(tmp_path) as conf:
            async with open_tunnel(conf) as net:  # no await inside the with
                assert isinstance(net, Dialer)
                reader, writer = await net.open_connection("10.80.0.1", 7)
                writer.write(b"hello")
                assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
                writer.close()
            assert net.tunnel._udp is None  # closed by the with
        # the older form still works (a fresh peer: the far side would take a second
        # initiation from the same key this soon as a flood and drop it)
        async with _far_side(tmp_path) as conf, await open_tunnel(conf) as old:
            assert await old.ping("10.80.0.1") > 0
        assert old.tunnel._udp is None

    asyncio.run(scenario())


def test_importing_the_package_loads_neither_engine_nor_proxy() -> None:
    import subprocess

    code = (
        "import sys, wiresnake\n"
        "heavy = ('wiresnake.proxy', 'wiresnake.protocol')\n"
        "print([m for m in sys.modules if m.startswith(heavy)])\n"
        "print(sorted(n for n in dir(wiresnake) if not n.startswith('_')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "[]"
    assert {"Device", "open_tunnel"} <= set(eval(out[1]))


def test_the_api_fails_at_once_outside_every_allowed_ips(tmp_path: Path) -> None:
    from wiresnake import open_tunnel

    async def scenario() -> None:
        async with _far_side(tmp_path) as conf, open_tunnel(conf) as net:
            started = time.monotonic()
            with pytest.raises(NoRouteError) as tcp:
                await net.open_connection("10.99.0.1", 80)
            with pytest.raises(OSError) as udp:
                net.udp_endpoint().sendto(b"x", ("10.99.0.1", 53))
            with pytest.raises(NoRouteError):
                await net.ping("10.99.0.1")
            assert time.monotonic() - started < SOON
            assert tcp.value.errno == udp.value.errno == errno.ENOKEY
            assert str(tcp.value) == (
                "no peer's AllowedIPs contain 10.99.0.1 (Required key not available)"
            )

    asyncio.run(scenario())


# -- the front ends --------------------------------------------------------------------------


def test_socks5_answers_network_unreachable_at_once_and_logs_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            upstream = TableUpstream(a, {"far.test": ["10.99.0.1"]})
            proxy = await serve_socks5(upstream, "127.0.0.1", 0)
            port = proxy.sockets[0].getsockname()[1]
            started = time.monotonic()
            for address in (_v4("10.99.0.1"), _name("far.test")):
                _, writer, code = await _socks_connect(port, address, 80)
                assert code == 3  # network unreachable
                writer.close()
            assert time.monotonic() - started < SOON
            proxy.close()

    with caplog.at_level(logging.INFO):
        _run(scenario)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    failed = [line for line in lines if "10.99.0.1" in line or "far.test" in line]
    assert len(failed) == 2, lines
    assert all("127.0.0.1:" in line and "AllowedIPs" in line for line in failed), failed


def test_http_answers_502_with_the_cause_at_once_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            server = await serve_http(TableUpstream(a), "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            started = time.monotonic()
            for request in (
                b"CONNECT 10.99.0.1:443 HTTP/1.1\r\nHost: 10.99.0.1:443\r\n\r\n",
                b"GET http://10.99.0.1/ HTTP/1.1\r\nHost: 10.99.0.1\r\n\r\n",
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                answer = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                assert answer.startswith(b"HTTP/1.1 502 "), answer
                assert b"AllowedIPs contain 10.99.0.1" in answer, answer
            assert time.monotonic() - started < SOON
            server.close()

    with caplog.at_level(logging.INFO):
        _run(scenario)
    failed = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and "10.99.0.1" in r.getMessage()
    ]
    assert len(failed) == 2 and all("127.0.0.1:" in line for line in failed), failed


def test_a_client_tunnel_to_an_unroutable_target_resets_at_once_and_logs_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            spec = TCPClientTunnel(EndpointSpec("127.0.0.1", 0), EndpointSpec("10.99.0.1", 22))
            server = await serve_tcp_client_tunnel(TableUpstream(a), spec)
            port = server.sockets[0].getsockname()[1]
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                data = await asyncio.wait_for(reader.read(), 10)
            except ConnectionResetError:
                data = b""  # reset: what the forward does to an unreachable target
            assert data == b""
            assert time.monotonic() - started < SOON
            writer.close()
            server.close()

    with caplog.at_level(logging.INFO):
        _run(scenario)
    assert any(
        "10.99.0.1" in r.getMessage() and "AllowedIPs" in r.getMessage() for r in caplog.records
    )


def test_refused_timed_out_and_unresolvable_requests_are_logged_with_client_and_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            (peer,) = a.device.peers
            a.device.allow(peer, "10.60.0.99/32")  # routed, but nobody answers there
            upstream = Dialer(a, TableResolver(), connect_timeout=0.3)
            proxy = await serve_socks5(upstream, "127.0.0.1", 0)
            port = proxy.sockets[0].getsockname()[1]
            for address, dport, want in (
                (_v4("10.60.0.2"), 9, 5),  # refused
                (_v4("10.60.0.99"), 80, 6),  # timed out
                (_name("nowhere.test"), 80, 4),  # no such name
            ):
                _, writer, code = await _socks_connect(port, address, dport)
                assert code == want
                writer.close()
            proxy.close()

    with caplog.at_level(logging.INFO):
        _run(scenario)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    causes = {"refused": "10.60.0.2 port 9", "in 0.3 s": "10.60.0.99", "nowhere": "nowhere"}
    for cause, where in causes.items():
        assert any(cause in line and where in line and "127.0.0.1:" in line for line in lines), (
            cause,
            lines,
        )


def test_no_dns_server_configured_is_logged_by_the_app(caplog: pytest.LogCaptureFixture) -> None:
    text = f"""
[Interface]
Address = 10.61.0.2/32
PrivateKey = {_b64(generate_private_key())}
[Peer]
PublicKey = {_b64(public_key(generate_private_key()))}
Endpoint = 127.0.0.1:9
AllowedIPs = 10.61.0.0/24
[Socks5]
BindAddress = 127.0.0.1:0
"""

    async def scenario() -> None:
        app = ProxyApp(parse_proxy_config(text))
        await app.start()
        try:
            _, writer, code = await _socks_connect(app.port_of("SOCKS5"), _name("web.test"), 80)
            assert code == 4
            writer.close()
        finally:
            await app.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    assert any(
        "no DNS server configured" in r.getMessage() and "web.test" in r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO
    )


def test_a_udp_tunnel_to_an_unroutable_target_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from wiresnake.proxy.config import UDPProxyTunnel
    from wiresnake.proxy.forward import serve_udp_proxy_tunnel

    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            spec = UDPProxyTunnel(EndpointSpec("127.0.0.1", 0), EndpointSpec("10.99.0.1", 53))
            proxy = await serve_udp_proxy_tunnel(TableUpstream(a), spec)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"query", proxy.address)
                for _ in range(100):
                    if any("AllowedIPs" in r.getMessage() for r in caplog.records):
                        break
                    await asyncio.sleep(0.02)
            proxy.close()
            await proxy.wait_closed()

    with caplog.at_level(logging.INFO):
        _run(scenario)
    assert any(
        "10.99.0.1" in r.getMessage() and "AllowedIPs" in r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO
    )
