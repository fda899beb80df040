"""Proxy mode under a local flood: connection caps, handshake timeouts, the descriptor
limit, and repeated log lines."""

from __future__ import annotations

import asyncio
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from proxy_lab import TableUpstream
from test_proxy_socks5 import _run, _socks_connect, _v4
from test_proxy_streams import _echo
from test_proxy_tunnel import _pair

from wiresnake.proxy import limits
from wiresnake.proxy.http import serve_http
from wiresnake.proxy.limits import Limits
from wiresnake.proxy.logrepeat import RepeatFilter
from wiresnake.proxy.socks5 import Socks5Server


async def _idle(port: int, count: int, source: str = "127.0.0.1") -> list[Any]:
    """`count` connections that say nothing."""
    conns = []
    for _ in range(count):
        conns.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)))
    return conns


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionError:
        return True


def test_idle_connections_make_room_for_a_client_that_finishes_its_request() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)
            caps = Limits(max_connections=10, max_per_client=10, handshake_timeout=30)
            server = Socks5Server(TableUpstream(a), caps=caps)
            port = (await server.start("127.0.0.1", 0)).sockets[0].getsockname()[1]
            flood = await _idle(port, 40)
            # a flood of silent clients: the listener holds at most 10, the oldest go first
            assert await _closed(flood[0][0])
            reader, writer, code = await _socks_connect(port, _v4("10.60.0.2"), 7)
            assert code == 0
            # more silent clients push out silent ones, never the one relaying
            flood += await _idle(port, 20)
            writer.write(b"still here")
            assert await asyncio.wait_for(reader.readexactly(10), 10) == b"still here"
            assert server.gate.connections <= 10 and server.gate.evicted >= 50
            for _, w in flood:
                w.close()
            writer.close()
            server.close()
            await server.wait_closed()

    _run(scenario)


def test_a_client_at_its_cap_is_refused_and_others_still_get_in() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            await b.start_server(_echo, 7)
            caps = Limits(max_connections=50, max_per_client=3, handshake_timeout=30)
            server = Socks5Server(TableUpstream(a), caps=caps)
            port = (await server.start("127.0.0.1", 0)).sockets[0].getsockname()[1]
            busy = [await _socks_connect(port, _v4("10.60.0.2"), 7) for _ in range(3)]
            assert [code for _, _, code in busy] == [0, 0, 0]
            # 127.0.0.1 has 3 connections relaying: a fourth is closed at once
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await _closed(reader)
            writer.close()
            assert server.gate.refused == 1
            # another client address is not held back by it
            other = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            other[1].write(b"\x05\x01\x00")
            assert await asyncio.wait_for(other[0].readexactly(2), 5) == b"\x05\x00"
            other[1].close()
            for r, w, _ in busy:
                w.write(b"ok")
                assert await asyncio.wait_for(r.readexactly(2), 10) == b"ok"
                w.close()
            server.close()
            await server.wait_closed()

    _run(scenario)


def test_the_app_closes_silent_and_incomplete_requests_after_the_handshake_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_proxy_app import _b64

    from wiresnake.crypto import generate_private_key, public_key
    from wiresnake.proxy.app import ProxyApp
    from wiresnake.proxy.config import parse_proxy_config

    monkeypatch.setenv(limits.ENV_HANDSHAKE_TIMEOUT, "0.5")
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
BindAddress = 127.0.0.1:0
"""

    async def scenario() -> None:
        app = ProxyApp(parse_proxy_config(text))
        await app.start()
        try:
            started = time.monotonic()
            for what, sent in (
                ("SOCKS5", b""),
                ("SOCKS5", b"\x05\x01\x00\x05\x01"),  # greeting, then half a request
                ("HTTP", b""),
                ("HTTP", b"GET http://10.61.0.1/ HTTP/1.1\r\nHost: x\r\n"),  # no blank line
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", app.port_of(what))
                writer.write(sent)
                async with asyncio.timeout(4):
                    while await reader.read(4096):
                        pass  # SOCKS5's method choice or HTTP's 408, then the end
                writer.close()
            assert time.monotonic() - started < 8
        finally:
            await app.close()

    asyncio.run(scenario())


def test_default_caps_fit_the_descriptor_limit_and_the_environment_sets_them() -> None:
    default = Limits.for_listeners(1, env={}, nofile=1 << 20)
    assert default == Limits(4096, 1024, 5.0)
    assert Limits.for_listeners(3, env={}, nofile=256) == Limits(64, 64, 5.0)
    env = {
        limits.ENV_MAX_CONNECTIONS: "100",
        limits.ENV_MAX_PER_CLIENT: "10",
        limits.ENV_HANDSHAKE_TIMEOUT: "2.5",
    }
    assert Limits.for_listeners(2, env=env, nofile=1 << 20) == Limits(100, 10, 2.5)
    with pytest.raises(ValueError, match=limits.ENV_MAX_PER_CLIENT):
        Limits.for_listeners(1, env={limits.ENV_MAX_PER_CLIENT: "many"})
    with pytest.raises(ValueError, match=limits.ENV_HANDSHAKE_TIMEOUT):
        Limits.for_listeners(1, env={limits.ENV_HANDSHAKE_TIMEOUT: "0"})


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit is {hard}: nothing to raise")

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    code = (
        "import resource; from wiresnake.proxy.limits import raise_nofile_limit; "
        "print(raise_nofile_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=lower, capture_output=True, text=True, check=True
    )
    now, new_soft, new_hard = (int(x) for x in res.stdout.split())
    assert new_soft == now == new_hard != 256


def _record(msg: str, *args: object, name: str = "wiresnake.proxy") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_a_repeated_error_passes_once_per_interval_with_a_count() -> None:
    clock = [0.0]
    repeat = RepeatFilter(interval=10, per_format=5, clock=lambda: clock[0])
    # asyncio's own line, one per failed accept(); its text carries the socket and more
    accept = "socket.accept() out of system resource\nsocket: <TransportSocket fd=6>"
    passed = [repeat.filter(_record(accept, name="asyncio")) for _ in range(100_000)]
    assert passed.count(True) == 1
    clock[0] = 10.5
    again = _record(accept, name="asyncio")
    assert repeat.filter(again)
    assert again.getMessage().startswith(
        "socket.accept() out of system resource (99999 like it left out in 10 s)\nsocket:"
    )
    # different failures of one kind: a few per interval, then held back too
    lines = [_record("SOCKS5 from %s failed", f"127.0.0.1:{p}") for p in range(1000)]
    assert [repeat.filter(r) for r in lines].count(True) == 5
    # another message is not held back by those
    assert repeat.filter(_record("tunnel up"))


def test_the_proxy_command_log_handler_holds_back_repeats(tmp_path: Path) -> None:
    """`wiresnake proxy` puts the filter on the handler it makes (not on foreign ones)."""
    code = (
        "import logging, sys\n"
        "from wiresnake.proxy import command\n"
        "command.main([sys.argv[1]])\n"  # sets logging up, then finds no such file
        "log = logging.getLogger('asyncio')\n"
        "for _ in range(5000): log.error('socket.accept() out of system resource')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "missing.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "missing.conf" in res.stderr
    assert res.stderr.count("socket.accept() out of system resource") == 1, res.stderr[-500:]


def test_an_http_listener_caps_its_connections() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            caps = Limits(max_connections=5, max_per_client=5, handshake_timeout=30)
            server = await serve_http(TableUpstream(a), "127.0.0.1", 0, caps=caps)
            port = server.sockets[0].getsockname()[1]
            flood = await _idle(port, 20)
            assert await _closed(flood[0][0])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not a proxy request: 400
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 400")
            for _, w in flood:
                w.close()
            writer.close()
            server.close()

    _run(scenario)


_EMFILE_SERVER = """
import asyncio, logging, resource, sys
from wiresnake.proxy import limits

logging.basicConfig(level=logging.INFO, format="%(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


async def handler(reader, writer):
    if await reader.read(1):  # silent clients wait here
        limits.handshake_done()
        writer.write(b"ok")
        await writer.drain()
    writer.close()


async def main():
    gate = limits.Gate("test", limits.Limits(1000, 1000, 60))  # caps above the descriptors
    server = await gate.start_server(handler, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(float(sys.argv[1]))
    print("evicted", gate.evicted, "paused", gate.paused, flush=True)


asyncio.run(main())
"""


def test_out_of_descriptors_in_accept_closes_idle_ones_and_serves_the_next() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _EMFILE_SERVER, "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())

        async def clients() -> None:
            silent = await _idle(port, 120)  # more than the server has descriptors
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x")
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
            writer.close()
            for _, w in silent:
                w.close()

        asyncio.run(clients())
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    words = out.split()
    assert words[0] == "evicted" and int(words[1]) > 50, (out, err)
    assert err.count("\n") < 5, err  # not a line per failed accept()
