"""`wiresnake proxy`: the command line, the health endpoint and the whole app in-process."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from test_proxy_streams import _echo
from test_proxy_tunnel import _pair

from wiresnake import cli
from wiresnake.config import EndpointSpec
from wiresnake.crypto import generate_private_key, public_key
from wiresnake.protocol.settings import DeviceConfig, PeerConfig, parse_network
from wiresnake.proxy.app import ProxyApp, StartError
from wiresnake.proxy.config import parse_proxy_config
from wiresnake.proxy.health import AliveChecker, InfoServer, metrics_text
from wiresnake.proxy.tunnel import Tunnel


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_configtest_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text(
        f"[Interface]\nAddress = 10.0.0.2/32\nPrivateKey = {_b64(generate_private_key())}\n"
        f"[Peer]\nPublicKey = {_b64(public_key(generate_private_key()))}\n"
        "Endpoint = 127.0.0.1:51820\n[Socks5]\nBindAddress = 127.0.0.1:1080\n"
    )
    assert cli.main(["proxy", "-n", str(conf)]) == 0
    assert capsys.readouterr().out == "Config OK\n"
    assert cli.main(["proxy", "-n", "-c", str(conf)]) == 0


def test_bad_file_names_file_and_line_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text("[Interface]\nAddress = 10.0.0.2/32\nPrivateKey = nope\n")
    assert cli.main(["proxy", str(conf)]) == 1
    err = capsys.readouterr().err
    assert f"{conf}:3" in err and "Traceback" not in err
    assert cli.main(["proxy", str(tmp_path / "missing.conf")]) == 1
    assert "missing.conf" in capsys.readouterr().err


def test_metrics_redact_keys_and_show_the_handshake() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await a.ping("10.60.0.2")
            text = metrics_text(a)
            assert "private_key=REDACTED" in text and "preshared_key=REDACTED" in text
            assert a.device.private_key is not None
            assert a.device.private_key.hex() not in text
            assert "last_handshake_time_sec=0" not in text and "rx_bytes=" in text

    asyncio.run(scenario())


def test_alive_checker_and_readyz_follow_the_targets() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            clock = [1000.0]
            checker = AliveChecker(a, ["10.60.0.2"], 1, clock=lambda: clock[0])
            assert not checker.healthy() or checker.record["10.60.0.2"] == 0
            await checker.round()
            assert checker.record == {"10.60.0.2": 1000}
            assert checker.healthy()
            clock[0] += 3.5  # past the interval and the 2 s grace
            assert not checker.healthy()

            info = InfoServer(a, checker)
            server = await info.serve("127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]

            async def get(path: str) -> tuple[int, str]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                data = await reader.read()
                writer.close()
                head, _, body = data.decode().partition("\r\n\r\n")
                return int(head.split()[1]), body

            status, body = await get("/readyz")
            assert status == 503 and json.loads(body) == {"10.60.0.2": 1000}
            clock[0] += 1
            b.close()  # the target goes away
            checker.interval = 0.3
            await checker.round()
            assert checker.record == {"10.60.0.2": 1000}
            assert (await get("/metrics"))[0] == 200
            assert (await get("/nope"))[0] == 404
            server.close()

    asyncio.run(scenario())


def test_the_app_serves_socks5_http_and_forwards_through_one_tunnel() -> None:
    async def scenario() -> None:
        kb = generate_private_key()
        b = await Tunnel.open(DeviceConfig(kb), ["10.61.0.1/24"], listen_host="127.0.0.1")
        ka = generate_private_key()
        text = f"""
[Interface]
Address = 10.61.0.2/32
PrivateKey = {_b64(ka)}
CheckAlive = 10.61.0.1
CheckAliveInterval = 1
[Peer]
PublicKey = {_b64(public_key(kb))}
Endpoint = 127.0.0.1:{b.listen_port}
AllowedIPs = 10.61.0.0/24
[Socks5]
BindAddress = 127.0.0.1:0
[http]
BindAddress = 127.0.0.1:0
[TCPClientTunnel]
BindAddress = 127.0.0.1:0
Target = 10.61.0.1:7
"""
        config = parse_proxy_config(text)
        b.device.apply_peer(
            PeerConfig(public_key(ka), allowed_ips=(parse_network("10.61.0.2/32"),)), 0.0
        )
        await b.start_server(_echo, 7)
        app = ProxyApp(config, info=EndpointSpec("127.0.0.1", 0))
        await app.start()
        try:
            # SOCKS5 CONNECT to the echo server behind the tunnel
            r, w = await asyncio.open_connection("127.0.0.1", app.port_of("SOCKS5"))
            w.write(b"\x05\x01\x00")
            assert await r.readexactly(2) == b"\x05\x00"
            w.write(b"\x05\x01\x00\x01" + bytes([10, 61, 0, 1]) + b"\x00\x07")
            reply = await asyncio.wait_for(r.readexactly(10), 10)
            assert reply[1] == 0
            w.write(b"via socks")
            assert await asyncio.wait_for(r.readexactly(9), 10) == b"via socks"
            w.close()
            # the client port forward
            r, w = await asyncio.open_connection("127.0.0.1", app.port_of("TCPClientTunnel"))
            w.write(b"forwarded")
            assert await asyncio.wait_for(r.readexactly(9), 10) == b"forwarded"
            w.close()
            # HTTP CONNECT
            r, w = await asyncio.open_connection("127.0.0.1", app.port_of("HTTP"))
            w.write(b"CONNECT 10.61.0.1:7 HTTP/1.1\r\nHost: 10.61.0.1:7\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            assert head.split()[1] == b"200"
            w.write(b"via http")
            assert await asyncio.wait_for(r.readexactly(8), 10) == b"via http"
            w.close()
            assert app.checker is not None
            for _ in range(50):
                if app.checker.record["10.61.0.1"]:
                    break
                await asyncio.sleep(0.1)
            assert app.checker.healthy()
        finally:
            await app.close()
            b.close()
        # closed means closed: the SOCKS5 port no longer accepts
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", app.port_of("SOCKS5"))

    asyncio.run(scenario())


def test_a_port_in_use_fails_the_start_naming_the_section_and_closes_the_rest() -> None:
    async def scenario() -> None:
        blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = blocker.sockets[0].getsockname()[1]
        text = f"""
[Interface]
Address = 10.61.0.2/32
PrivateKey = {_b64(generate_private_key())}
[Peer]
PublicKey = {_b64(public_key(generate_private_key()))}
Endpoint = 127.0.0.1:9
[Socks5]
BindAddress = 127.0.0.1:0
[http]
BindAddress = 127.0.0.1:{port}
"""
        app = ProxyApp(parse_proxy_config(text, "p.conf"))
        with pytest.raises(StartError, match=r"p\.conf:11: cannot listen for HTTP"):
            await app.start()
        assert app.tunnel is not None and app.tunnel._udp is None  # closed again
        blocker.close()

    asyncio.run(scenario())


def test_a_listen_port_in_use_names_the_port_and_its_line() -> None:
    import socket

    async def scenario() -> None:
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("0.0.0.0", 0))
        port = blocker.getsockname()[1]
        text = (
            f"[Interface]\nAddress = 10.61.0.2/32\nPrivateKey = {_b64(generate_private_key())}\n"
            f"# the port\nListenPort = {port}\n"
            f"[Peer]\nPublicKey = {_b64(public_key(generate_private_key()))}\n"
            "Endpoint = 127.0.0.1:9\n"
        )
        app = ProxyApp(parse_proxy_config(text, "p.conf"))
        try:
            with pytest.raises(
                StartError, match=rf"^p\.conf:5: cannot open UDP port {port}: Address already"
            ):
                await app.start()
        finally:
            blocker.close()

    asyncio.run(scenario())
