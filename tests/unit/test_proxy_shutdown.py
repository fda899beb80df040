"""Ending things: a closed tunnel cuts its connections, a failed side cuts the relay, a
connection we closed does not wait for the peer for ever, and the CLI's small options."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from proxy_lab import TableUpstream
from test_proxy_tunnel import _pair

from wiresnake import __version__, cli
from wiresnake.config import EndpointSpec
from wiresnake.crypto import generate_private_key, public_key
from wiresnake.protocol.settings import DeviceConfig, PeerConfig, parse_network
from wiresnake.proxy.config import STDIOTunnel
from wiresnake.proxy.dns import Resolver
from wiresnake.proxy.forward import run_stdio_tunnel
from wiresnake.proxy.relay import pipe
from wiresnake.proxy.socks5 import Socks5Server
from wiresnake.proxy.tunnel import Tunnel


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)  # never reads, never closes


def test_closing_the_tunnel_cuts_a_connection_with_unsent_data() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with b:
            await b.start_server(_sink, 9)
            reader, writer = await a.open_connection("10.60.0.2", 9)
            writer.write(bytes(2 << 20))  # more than any window: some stays buffered
            await asyncio.sleep(0.2)
            assert writer.transport.get_write_buffer_size() > 0
            a.close()
            with pytest.raises(ConnectionAbortedError):
                await asyncio.wait_for(writer.wait_closed(), 2)  # no hang
            with pytest.raises(ConnectionAbortedError):
                await reader.read()
            assert a._timer is None
            a.udp_endpoint().sendto(b"x", ("10.60.0.2", 9))  # a closed tunnel stays quiet
            assert a._timer is None

    asyncio.run(scenario())


def test_a_client_reset_mid_upload_cuts_the_tunnel_side_too() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

            async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    while await reader.read(16384):
                        await asyncio.sleep(0.02)
                    outcome.set_result("clean end of stream")
                except ConnectionResetError:
                    outcome.set_result("reset")

            await b.start_server(slow, 9)
            server = Socks5Server(TableUpstream(a))
            listener = await server.start("127.0.0.1", 0)
            port = listener.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x05\x01\x00")
            await reader.readexactly(2)
            writer.write(b"\x05\x01\x00\x01" + bytes([10, 60, 0, 2]) + struct.pack("!H", 9))
            assert (await reader.readexactly(10))[1] == 0
            writer.write(bytes(1 << 20))
            await asyncio.sleep(0.2)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # a reset, not a close
            # a truncated upload must not look complete to the server
            assert await asyncio.wait_for(outcome, 10) == "reset"
            for _ in range(50):
                if server.active_sessions == 0:
                    break
                await asyncio.sleep(0.1)
            assert server.active_sessions == 0
            server.close()

    asyncio.run(scenario())


class _NoHalfClose:
    """A writer like a TLS one: it cannot half-close."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def test_end_of_stream_closes_a_writer_that_cannot_half_close() -> None:
    async def scenario() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"bye")
        reader.feed_eof()
        writer = _NoHalfClose()
        await pipe(reader, writer)  # type: ignore[arg-type]
        assert writer.data == b"bye" and writer.closed

    asyncio.run(scenario())


def test_a_connection_we_closed_is_cut_if_the_peer_never_finishes() -> None:
    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            a.orphan_timeout = 0.3
            accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()

            async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await accepted.put(reader)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(3600)  # reads nothing and never sends its FIN

            await b.start_server(hold, 9)
            _, writer = await a.open_connection("10.60.0.2", 9)
            peer = await accepted.get()
            writer.close()  # our FIN: FIN-WAIT-2 until the peer closes, which it never does
            await asyncio.wait_for(writer.wait_closed(), 2)
            assert await asyncio.wait_for(peer.read(), 2) == b""  # it saw our FIN
            await asyncio.sleep(1.0)  # past the orphan timeout
            with pytest.raises(ConnectionResetError):
                await peer.read()  # and then our reset
            assert not a._streams

    asyncio.run(scenario())


def test_dns_cache_keeps_at_most_max_entries() -> None:
    resolver = Resolver(object(), ["10.0.0.53"], max_entries=2)  # type: ignore[arg-type]
    from wiresnake.proxy.dns import _Cached

    for i in range(5):
        resolver._remember(f"n{i}.test", _Cached(1e12, ("10.0.0.1",), ()))
    assert list(resolver._cache) == ["n3.test", "n4.test"]


def test_stdio_tunnel_refuses_a_regular_file(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> bool:
        with tempfile.TemporaryFile() as f:
            r, w = os.pipe()
            try:
                spec = STDIOTunnel(EndpointSpec("10.60.0.2", 9))
                return await run_stdio_tunnel(object(), spec, f.fileno(), w)  # type: ignore[arg-type]
            finally:
                os.close(r)
                os.close(w)

    with caplog.at_level(logging.ERROR, "wiresnake.proxy"):
        assert asyncio.run(scenario()) is False
    assert "stdin is a regular file" in caplog.text


def test_version_and_configtest_resolving_endpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["proxy", "-v"]) == 0
    assert capsys.readouterr().out == f"wiresnake proxy, version {__version__}\n"
    conf = tmp_path / "p.conf"
    b64 = base64.b64encode
    conf.write_text(
        f"[Interface]\nAddress = 10.0.0.2/32\nPrivateKey = {b64(generate_private_key()).decode()}\n"
        f"[Peer]\nPublicKey = {b64(public_key(generate_private_key())).decode()}\n"
        "Endpoint = no-such-host.invalid:51820\n"
    )
    assert cli.main(["proxy", "-n", str(conf)]) == 1
    err = capsys.readouterr().err
    assert f"{conf}:6" in err and "Traceback" not in err


def test_sigterm_ends_the_proxy_while_an_upload_is_stuck(tmp_path: Path) -> None:
    async def scenario() -> None:
        kb, ka = generate_private_key(), generate_private_key()
        b = await Tunnel.open(DeviceConfig(kb), ["10.62.0.1/24"], listen_host="127.0.0.1")
        b.device.apply_peer(
            PeerConfig(public_key(ka), allowed_ips=(parse_network("10.62.0.2/32"),)), 0.0
        )
        await b.start_server(_sink, 9)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        conf = tmp_path / "p.conf"
        b64 = base64.b64encode
        conf.write_text(
            f"[Interface]\nAddress = 10.62.0.2/32\nPrivateKey = {b64(ka).decode()}\n"
            f"[Peer]\nPublicKey = {b64(public_key(kb)).decode()}\n"
            f"Endpoint = 127.0.0.1:{b.listen_port}\nAllowedIPs = 10.62.0.0/24\n"
            f"[Socks5]\nBindAddress = 127.0.0.1:{port}\n"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wiresnake", "proxy", "-s", str(conf),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            for _ in range(100):
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            writer.write(b"\x05\x01\x00")
            await reader.readexactly(2)
            writer.write(b"\x05\x01\x00\x01" + bytes([10, 62, 0, 1]) + struct.pack("!H", 9))
            assert (await asyncio.wait_for(reader.readexactly(10), 10))[1] == 0
            writer.write(bytes(2 << 20))  # the sink never reads: the proxy holds the rest
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            assert proc.stderr is not None
            err = await proc.stderr.read()
            assert b"Traceback" not in err, err.decode()
            writer.close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            b.close()

    asyncio.run(scenario())


def _pids_running(conf: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(conf).encode() in argv and b"proxy" in argv:
            pids.append(int(entry.name))
    return pids


def test_daemon_mode_returns_at_once_and_serves_in_the_background(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "bg.conf"
    b64 = base64.b64encode
    key = b64(generate_private_key()).decode()
    conf.write_text(
        f"[Interface]\nAddress = 10.64.0.2/32\nPrivateKey = {key}\n"
        f"[Peer]\nPublicKey = {b64(public_key(generate_private_key())).decode()}\n"
        f"Endpoint = 127.0.0.1:9\nAllowedIPs = 10.64.0.0/24\n"
        f"[Socks5]\nBindAddress = 127.0.0.1:{port}\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "wiresnake", "proxy", "-d", str(conf)],
        capture_output=True,
        timeout=30,
    )
    try:
        assert res.returncode == 0 and res.stdout == res.stderr == b""
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the background proxy never listened")
        assert len(_pids_running(conf)) == 1
    finally:
        for pid in _pids_running(conf):  # the process this test started, by its PID
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not _pids_running(conf):
                break
            time.sleep(0.1)
    assert not _pids_running(conf)
