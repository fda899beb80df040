"""Endpoint names looked up again: which peers are due, what an answer changes, the file
the daemon takes names from, and look-ups that never block (or outlive) an asyncio loop."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from wiresnake.config import EndpointSpec, resolve_endpoint_async
from wiresnake.crypto import generate_private_key, key_to_base64, public_key
from wiresnake.protocol.device import Device
from wiresnake.proxy.config import ProxyConfigError, parse_proxy_config
from wiresnake.reresolve import (
    DaemonReresolve,
    FileNames,
    Reresolver,
    daemon_file,
    endpoint_names,
    peer_label,
    proxy_enabled,
    stale_after_from_env,
)

NAME = EndpointSpec("peer.test", 51820)
KEY = public_key(generate_private_key())


def device_with_peer(endpoint: tuple[str, int] | None = ("192.0.2.1", 51820)) -> Device:
    dev = Device(generate_private_key(), wall_offset=5000.0)
    peer = dev.add_peer(KEY)
    dev.set_endpoint(peer, endpoint)
    return dev


def test_a_peer_is_due_only_once_stale_and_once_per_recheck() -> None:
    dev = device_with_peer()
    r = Reresolver(stale_after=135, recheck=30)
    r.set_names({KEY: NAME})
    assert r.due(dev, 100.0) == []  # first seen now: not stale yet
    assert r.due(dev, 235.0) == []
    assert r.due(dev, 235.1) == [(KEY, NAME)]
    assert r.due(dev, 240.0) == []  # in flight
    assert r.answered(dev, KEY, NAME, ("192.0.2.1", 51820), 240.0) is None  # no change
    assert r.due(dev, 269.0) == []
    assert r.due(dev, 270.0) == [(KEY, NAME)]


def test_a_recent_handshake_keeps_the_address() -> None:
    dev = device_with_peer()
    peer = dev.peer(KEY)
    assert peer is not None
    r = Reresolver(stale_after=135)
    r.set_names({KEY: NAME})
    r.due(dev, 0.0)
    peer.last_handshake = 900.0 + dev.wall_offset  # wall clock, as the engine keeps it
    assert r.due(dev, 1000.0) == []
    assert r.due(dev, 1035.5) == [(KEY, NAME)]


def test_a_new_address_becomes_the_endpoint_and_is_logged() -> None:
    dev = device_with_peer()
    r = Reresolver(stale_after=1)
    r.set_names({KEY: NAME})
    r.due(dev, 0.0)
    assert r.due(dev, 2.0) == [(KEY, NAME)]
    line = r.answered(dev, KEY, NAME, ("198.51.100.9", 51820), 2.0)
    peer = dev.peer(KEY)
    assert peer is not None and peer.endpoint == ("198.51.100.9", 51820)
    assert line == (
        f"{peer_label(KEY)}: endpoint peer.test:51820 now 198.51.100.9:51820 (was 192.0.2.1:51820)"
    )
    text = key_to_base64(KEY)
    assert peer_label(KEY) == f"peer({text[:4]}…{text[39:43]})"


def test_a_failed_look_up_changes_nothing_and_an_answer_for_a_renamed_peer_is_dropped() -> None:
    dev = device_with_peer()
    r = Reresolver(stale_after=1)
    r.set_names({KEY: NAME})
    r.due(dev, 0.0)
    r.due(dev, 2.0)
    line = r.answered(dev, KEY, NAME, ValueError("Temporary failure"), 2.0)
    assert line == f"{peer_label(KEY)}: cannot resolve endpoint peer.test:51820: Temporary failure"
    r.set_names({KEY: EndpointSpec("other.test", 1)})
    assert r.answered(dev, KEY, NAME, ("198.51.100.9", 1), 3.0) is None
    peer = dev.peer(KEY)
    assert peer is not None and peer.endpoint == ("192.0.2.1", 51820)


def test_only_names_are_watched_and_a_later_section_wins() -> None:
    other = public_key(generate_private_key())
    names = endpoint_names(
        [(KEY, NAME), (other, EndpointSpec("192.0.2.5", 1)), (KEY, None), (other, None)]
    )
    assert names == {KEY: NAME}
    assert endpoint_names([(KEY, NAME), (KEY, EndpointSpec("192.0.2.5", 1))]) == {}


def test_the_environment() -> None:
    assert daemon_file({}, "wg0") is None
    assert daemon_file({"WIRESNAKE_RERESOLVE": "0"}, "wg0") is None
    assert daemon_file({"WIRESNAKE_RERESOLVE": "1"}, "wg0") == "/etc/wireguard/wg0.conf"
    assert daemon_file({"WIRESNAKE_RERESOLVE": "/srv/x.conf"}, "wg0") == "/srv/x.conf"
    assert proxy_enabled({}) and proxy_enabled({"WIRESNAKE_RERESOLVE": "1"})
    assert not proxy_enabled({"WIRESNAKE_RERESOLVE": "0"})
    assert stale_after_from_env({}) == 135.0
    assert stale_after_from_env({"WIRESNAKE_RERESOLVE_STALE": "2.5"}) == 2.5
    for bad in ("soon", "0", "-3", "nan"):
        with pytest.raises(ValueError, match="WIRESNAKE_RERESOLVE_STALE"):
            stale_after_from_env({"WIRESNAKE_RERESOLVE_STALE": bad})


# ---------------------------------------------------------------------------------------
# The daemon's side: names from a file, look-ups in threads


def wait_until(check: object, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_the_daemon_reads_names_from_the_file_again_when_it_changes(tmp_path: Path) -> None:
    conf = tmp_path / "wg0.conf"
    errors: list[str] = []
    names = FileNames(str(conf), errors.append)
    assert not names.refresh() and "No such file" in errors[0]
    peer = f"[Peer]\nPublicKey = {key_to_base64(KEY)}\n"
    conf.write_text(f"[Interface]\nAddress = 10.0.0.1/24\n{peer}Endpoint = peer.test:51820\n")
    assert names.refresh() and names.names == {KEY: NAME}
    assert not names.refresh()  # unchanged: not read again
    conf.write_text(f"{peer}Endpoint = moved.test:7\n")
    os.utime(conf, ns=(0, time.time_ns() + 10**9))
    assert names.refresh() and names.names == {KEY: EndpointSpec("moved.test", 7)}
    conf.write_text("[Peer]\nPublicKey = nonsense\n")
    os.utime(conf, ns=(0, time.time_ns() + 2 * 10**9))
    assert not names.refresh()
    assert names.names == {KEY: EndpointSpec("moved.test", 7)}  # kept: the file is broken
    assert "PublicKey" in errors[-1]
    # a key one character short of a real one is nearly the secret: never in the log
    almost = key_to_base64(KEY)[:-2] + "="
    conf.write_text(f"[Interface]\nPrivateKey = {almost}\n{peer}")
    os.utime(conf, ns=(0, time.time_ns() + 3 * 10**9))
    assert not names.refresh()
    assert "PrivateKey" in errors[-1] and almost not in errors[-1] and ":2:" in errors[-1]


def test_the_daemon_looks_up_off_its_loop_and_applies_the_answer_later(tmp_path: Path) -> None:
    conf = tmp_path / "wg0.conf"
    conf.write_text(f"[Peer]\nPublicKey = {key_to_base64(KEY)}\nEndpoint = peer.test:51820\n")
    dev = device_with_peer()
    looked_up: list[EndpointSpec] = []

    def lookup(spec: EndpointSpec) -> tuple[str, int]:
        looked_up.append(spec)
        return ("198.51.100.9", spec.port)

    logged: list[str] = []
    rr = DaemonReresolve(FileNames(str(conf), logged.append), Reresolver(1), logged.append, lookup)
    rr.tick(dev, 0.0)
    assert looked_up == []
    rr.tick(dev, 1.5)
    wait_until(lambda: looked_up)
    peer = dev.peer(KEY)
    assert peer is not None and peer.endpoint == ("192.0.2.1", 51820)  # not yet: next tick
    wait_until(lambda: not rr._answers.empty())
    rr.tick(dev, 2.5)
    assert peer.endpoint == ("198.51.100.9", 51820)
    assert logged == [f"{peer_label(KEY)}: endpoint peer.test:51820 now 198.51.100.9:51820 "
                      "(was 192.0.2.1:51820)"]  # fmt: skip


def test_the_daemon_is_off_unless_asked() -> None:
    said: list[str] = []
    assert DaemonReresolve.from_env({}, "wg0", said.append, said.append) is None
    env = {"WIRESNAKE_RERESOLVE": "1", "WIRESNAKE_RERESOLVE_STALE": "4"}
    rr = DaemonReresolve.from_env(env, "wg0", said.append, said.append)
    assert rr is not None and rr.file.path == "/etc/wireguard/wg0.conf"
    assert rr.reresolver.stale_after == 4 and rr.reresolver.recheck == 4
    assert said == [
        "Endpoint names from /etc/wireguard/wg0.conf are looked up again after 4 s without "
        "a handshake"
    ]


# ---------------------------------------------------------------------------------------
# Look-ups on an asyncio loop


def always_again(spec: EndpointSpec) -> tuple[str, int]:
    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


def test_async_retries_leave_the_loop_running_and_cancel_at_once() -> None:
    said: list[str] = []

    async def main() -> tuple[int, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        task = asyncio.create_task(
            resolve_endpoint_async(NAME, retries=-1, log=said.append, lookup=always_again)
        )
        await asyncio.sleep(0.3)  # inside the first 1 s pause
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        t.cancel()
        return ticks, time.monotonic() - started

    ticks, took = asyncio.run(main())
    assert ticks >= 10  # the loop kept running while the name was retried
    assert took < 0.5
    assert said == [
        "Temporary failure in name resolution: `peer.test:51820'. Trying again in 1.00 seconds..."
    ]


def test_a_look_up_stuck_in_its_thread_does_not_hold_up_the_exit() -> None:
    def stuck(spec: EndpointSpec) -> tuple[str, int]:
        time.sleep(30)
        return ("192.0.2.1", 1)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resolve_endpoint_async(NAME, lookup=stuck), 0.1)

    started = time.monotonic()
    asyncio.run(main())  # joins the default executor's threads: ours is not one of them
    assert time.monotonic() - started < 5


def test_proxy_endpoint_names_resolve_on_the_loop_and_failures_name_the_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def getaddrinfo(host: str, port: int, *args: object) -> object:
        if host == "gone.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.7", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    key = key_to_base64(generate_private_key())

    def config(host: str) -> str:
        return (
            f"[Interface]\nAddress = 10.0.0.2/32\nPrivateKey = {key}\n\n"
            f"[Peer]\nPublicKey = {key_to_base64(KEY)}\nEndpoint = {host}:51820\n"
        )

    found = asyncio.run(parse_proxy_config(config("peer.test"), "p.conf").lookup_endpoints())
    assert found == {NAME: ("192.0.2.7", 51820)}
    with pytest.raises(ProxyConfigError, match=r"^p\.conf:7: Endpoint: Name or service not known"):
        asyncio.run(parse_proxy_config(config("gone.test"), "p.conf").lookup_endpoints())


def test_a_proxy_tunnel_follows_a_name_to_its_new_address() -> None:
    from test_proxy_tunnel import _pair

    async def scenario() -> None:
        a, b = await _pair()
        async with a, b:
            (peer,) = a.device.peers
            right = ("127.0.0.1", b.listen_port)
            a.device.set_endpoint(peer, ("127.0.0.1", 9))  # where the name used to point
            asked: list[EndpointSpec] = []

            def lookup(spec: EndpointSpec) -> tuple[str, int]:
                asked.append(spec)
                return right

            a.reresolve({peer.public_key: NAME}, stale_after=0.2, lookup=lookup)
            end = time.monotonic() + 5
            while peer.endpoint != right:
                assert time.monotonic() < end, "not re-resolved"
                await asyncio.sleep(0.05)
            assert asked and asked[0] == NAME
            assert await a.ping("10.60.0.2", timeout=10) > 0

    asyncio.run(scenario())
