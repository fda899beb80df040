"""Endpoint names looked up again when a peer's handshakes go stale, against a real DNS
server (dnsmasq in the client's namespace); Ctrl-C while a name is retried; the listen
port in use, named with its file line.

The peer `b` (wireguard-go) first answers at 192.168.50.2, then moves to 192.168.51.2 (the
old address is removed, so nothing reaches it there) while the name `peer.test` is changed
to match. The stale threshold is cut to 2 s with WIRESNAKE_RERESOLVE_STALE (for tests).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslab import NameServer, resolv_conf
from netlab import Host, NetLab, WgIface, genkey, require_root_and_tools, wiresnake_cmd

pytestmark = [pytest.mark.netns, pytest.mark.interop]

AUX = str(Path(__file__).with_name("proxyaux.py"))
OLD, NEW = "192.168.50.2", "192.168.51.2"
NAME = "peer.test"
FAST = {"WIRESNAKE_RERESOLVE_STALE": "2"}
FORWARD = 2081


class MovingPeer:
    """Host `a` (ours, with dnsmasq answering `peer.test`) and host `b` (wireguard-go,
    tunnel 10.50.0.2, HTTP on 10.50.0.2:8080) reachable at OLD and, later, at NEW."""

    def __init__(self, lab: NetLab, workdir: Path) -> None:
        self.lab, self.workdir = lab, workdir
        self.a, self.hb = lab.host("a"), lab.host("b")
        self.veth_a, self.veth_b = lab.link(self.a, self.hb, "192.168.50.1", OLD)
        lab.link(self.a, self.hb, "192.168.51.1", NEW)
        self.dns = NameServer(self.a, workdir, {NAME: OLD})
        self.b = WgIface(lab, self.hb, "wireguard-go", "10.50.0.2", "fd50::2")
        self.private, self.public = genkey()
        self.hb.wg("set", self.b.name, "peer", self.public, "allowed-ips", "10.50.0.1/32")
        web = self.hb.popen(sys.executable, AUX, "http", "10.50.0.2", "8080",
                            stdout=subprocess.PIPE)  # fmt: skip
        assert web.stdout is not None and web.stdout.readline().strip() == b"ready"

    def move(self) -> None:
        """b leaves OLD for NEW; the name follows."""
        self.hb.run("ip", "addr", "del", f"{OLD}/24", "dev", self.veth_b)
        self.dns.move(NAME, NEW)


@pytest.fixture
def moving(tmp_path: Path) -> Iterator[MovingPeer]:
    require_root_and_tools("wg", "wireguard-go", "dnsmasq", "getent", "curl")
    with NetLab() as lab:
        nameserver = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
        with resolv_conf(f"{lab.prefix}a", nameserver):
            yield MovingPeer(lab, tmp_path)


def wait_for_line(log: Path, needle: str, timeout: float = 30) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in log.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no {needle!r} in the log:\n{log.read_text(errors='replace')}")


def test_daemon_follows_a_peer_whose_name_moves(moving: MovingPeer, tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    conf = tmp_path / "wr.conf"
    env = {"WIRESNAKE_RERESOLVE": str(conf), "LOG_LEVEL": "verbose", **FAST}
    a = WgIface(moving.lab, moving.a, "wiresnake", "10.50.0.1", "fd50::1", env=env, log=log)
    moving.hb.wg("set", moving.b.name, "peer", a.public, "allowed-ips", "10.50.0.1/32")
    # the file the daemon takes names from, written after it started (so it is re-read)
    conf.write_text(
        f"[Interface]\nPrivateKey = {a.private}\nListenPort = 51820\nAddress = 10.50.0.1/24\n"
        f"\n[Peer]\nPublicKey = {moving.b.public}\nEndpoint = {NAME}:51820\n"
        "AllowedIPs = 10.50.0.2/32\n"
    )
    a.add_peer(moving.b, f"{NAME}:51820")  # the real wg resolves it through dnsmasq
    assert a.peer_row(moving.b.public)[2] == f"{OLD}:51820"
    assert moving.a.ping("10.50.0.2")
    time.sleep(3)  # stale by now, looked up again: the same address is no change
    assert "endpoint peer.test" not in log.read_text()

    moving.move()
    line = wait_for_line(log, f"endpoint {NAME}:51820 now")
    assert line.endswith(f"now {NEW}:51820 (was {OLD}:51820)"), line
    assert f"peer({moving.b.public[:4]}…" in line
    assert a.peer_row(moving.b.public)[2] == f"{NEW}:51820"
    assert moving.a.ping("10.50.0.2", count=3, wait=15)
    assert moving.b.peer_row(a.public)[2] == "192.168.51.1:51820"


def test_proxy_follows_a_peer_whose_name_moves(moving: MovingPeer, tmp_path: Path) -> None:
    conf = tmp_path / "proxy.conf"
    conf.write_text(
        f"[Interface]\nAddress = 10.50.0.1/32\nPrivateKey = {moving.private}\n"
        f"\n[Peer]\nPublicKey = {moving.b.public}\nEndpoint = {NAME}:51820\n"
        "AllowedIPs = 10.50.0.0/24\n"
        f"\n[TCPClientTunnel]\nBindAddress = 127.0.0.1:{FORWARD}\nTarget = 10.50.0.2:8080\n"
    )
    log = tmp_path / "proxy.log"
    with log.open("wb") as err:
        moving.a.popen(*wiresnake_cmd(), "proxy", str(conf), env=FAST, stderr=err)

    def fetch(timeout: float) -> str:
        res = moving.a.run("curl", "-sS", "--max-time", str(timeout), "--retry", "3",
                           "--retry-all-errors", f"http://127.0.0.1:{FORWARD}/moved",
                           check=False, timeout=timeout * 4 + 10)  # fmt: skip
        return res.stdout

    wait_for_line(log, "TCPClientTunnel")
    assert "path=/moved" in fetch(10)
    moving.move()
    line = wait_for_line(log, f"endpoint {NAME}:51820 now")
    assert line.endswith(f"now {NEW}:51820 (was {OLD}:51820)"), line
    assert "path=/moved" in fetch(20)
    assert moving.b.peer_row(moving.public)[2].startswith("192.168.51.1:")  # a random port


# ---------------------------------------------------------------------------------------
# Ctrl-C while a name is retried: one line, status 130, at once


@pytest.fixture
def dead_dns(tmp_path: Path) -> Iterator[Host]:
    """A host whose only DNS server cannot be reached (it has no route at all)."""
    require_root_and_tools()
    with NetLab() as lab, resolv_conf(f"{lab.prefix}d", "nameserver 192.0.2.53\n"):
        yield lab.host("d")


def interrupt_while_retrying(host: Host, args: list[str], log: Path) -> tuple[int, str, float]:
    with log.open("wb") as err:
        proc = host.popen(*args, stderr=err, stdin=subprocess.DEVNULL)
    wait_for_line(log, "Trying again in", timeout=20)
    sent = time.monotonic()
    # the process itself, not `ip netns exec` (which execs it: the same PID)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=20)
    return rc, log.read_text(), time.monotonic() - sent


@pytest.mark.parametrize("verb", ["set", "setconf", "up"])
def test_ctrl_c_while_the_command_line_retries_a_name(
    dead_dns: Host, tmp_path: Path, verb: str
) -> None:
    _, public = genkey()
    conf = tmp_path / "nowg0.conf"
    conf.write_text(f"[Peer]\nPublicKey = {public}\nEndpoint = {NAME}:51820\n")
    conf.chmod(0o600)
    args = {
        "set": ["set", "nowg0", "peer", public, "endpoint", f"{NAME}:51820"],
        "setconf": ["setconf", "nowg0", str(conf)],
        "up": ["up", str(conf)],
    }[verb]
    rc, err, took = interrupt_while_retrying(dead_dns, [*wiresnake_cmd(), *args], tmp_path / "log")
    assert rc == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.splitlines()[-1] == "wiresnake: interrupted", err
    assert took < 5, took


def test_ctrl_c_while_the_proxy_retries_a_name(dead_dns: Host, tmp_path: Path) -> None:
    private, _ = genkey()
    _, public = genkey()
    conf = tmp_path / "proxy.conf"
    conf.write_text(
        f"[Interface]\nAddress = 10.50.0.1/32\nPrivateKey = {private}\n"
        f"\n[Peer]\nPublicKey = {public}\nEndpoint = {NAME}:51820\nAllowedIPs = 10.50.0.0/24\n"
        f"\n[Socks5]\nBindAddress = 127.0.0.1:1080\n"
    )
    rc, err, took = interrupt_while_retrying(
        dead_dns, [*wiresnake_cmd(), "proxy", str(conf)], tmp_path / "proxy.log"
    )
    assert rc == 130, err
    assert "Traceback" not in err, err
    assert err.splitlines()[-1] == "interrupted while starting", err
    assert took < 5, took


# ---------------------------------------------------------------------------------------
# The listen port in use, named with the line that asked for it


def test_setconf_names_the_listen_port_line_in_use(tmp_path: Path) -> None:
    require_root_and_tools("wg")
    with NetLab() as lab:
        h = lab.host("p")
        first = lab.iface("ws")
        lab.start_wiresnake(h, first)
        h.wg("set", first, "listen-port", "51820")
        second = lab.iface("ws")
        lab.start_wiresnake(h, second)
        private, _ = genkey()
        conf = tmp_path / "second.conf"
        conf.write_text(f"[Interface]\nPrivateKey = {private}\nListenPort = 51820\n")
        res = h.run(*wiresnake_cmd(), "setconf", second, str(conf), check=False)
        assert res.returncode == 1
        assert res.stderr.splitlines() == [
            "Unable to modify interface: Address already in use",
            f"{conf}:3: ListenPort: UDP port 51820 is already in use",
        ]
