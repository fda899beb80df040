"""`wg-quick up` and `down` with wiresnake as the userspace implementation, inside a
namespace, against wireguard-go in another one; afterwards nothing may be left behind.

wg-quick falls back to `$WG_QUICK_USERSPACE_IMPLEMENTATION IFACE` when the kernel has no
WireGuard, as here; where the kernel has it, wg-quick would never run wiresnake.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import (
    SOCKET_DIR,
    NetLab,
    WgIface,
    genkey,
    pid_running,
    proc_start_time,
    require_root_and_tools,
    socket_owners,
    wait_pid_gone,
)

pytestmark = [pytest.mark.netns, pytest.mark.interop]

A_UNDERLAY, B_UNDERLAY = "192.168.80.1", "192.168.80.2"
# B's endpoint address in the /0 test: off-link for A, reached only by A's default route,
# which wg-quick's policy routing hides from everything but fwmarked packets
B_FAR = "172.31.80.2"


class Quick:
    """Host `a` brought up by wg-quick (wiresnake), host `b` running wireguard-go."""

    def __init__(self, lab: NetLab, tmp: Path) -> None:
        self.lab = lab
        self.ha, self.hb = lab.host("a"), lab.host("b")
        lab.link(self.ha, self.hb, A_UNDERLAY, B_UNDERLAY)
        self.b = WgIface(lab, self.hb, "wireguard-go", "10.80.0.2", "fd80::2")
        # addresses behind B, reachable from A only through the tunnel
        for extra in ("10.81.0.1/32", "fd81::1/128", "10.82.0.1/32"):
            self.hb.run("ip", "addr", "add", extra, "dev", self.b.name, "nodad")
        self.private, self.public = genkey()
        self.hb.wg(
            "set", self.b.name, "peer", self.public, "allowed-ips", "10.80.0.1/32,fd80::1/128"
        )
        self.name = lab.iface("q")
        lab.sockets.append(SOCKET_DIR / f"{self.name}.sock")
        self.conf = tmp / self.name / f"{self.name}.conf"
        self.conf.parent.mkdir()
        self.pid: int | None = None
        self.start: str | None = None
        self.before: dict[str, list[str]] = {}

    def write(self, allowed_ips: str, endpoint: str, extra: str = "") -> None:
        self.conf.write_text("")
        self.conf.chmod(0o600)
        self.conf.write_text(
            "[Interface]\n"
            f"PrivateKey = {self.private}\n"
            "Address = 10.80.0.1/24, fd80::1/64\n"
            "ListenPort = 51820\n"
            f"{extra}"
            "\n[Peer]\n"
            f"PublicKey = {self.b.public}\n"
            f"Endpoint = {endpoint}\n"
            f"AllowedIPs = {allowed_ips}\n"
        )

    def wg_quick(self, verb: str) -> str:
        res = self.ha.run(
            "env",
            "WG_QUICK_USERSPACE_IMPLEMENTATION=wiresnake",
            "wg-quick",
            verb,
            str(self.conf),
            check=False,
        )
        assert res.returncode == 0, f"wg-quick {verb}: {res.returncode}\n{res.stderr}"
        return res.stderr

    def up(self) -> None:
        self.before = self.snapshot()
        log = self.wg_quick("up")
        assert f"[#] wiresnake {self.name}" in log and "accessible" not in log, log
        pids = socket_owners(self.ha, self.name)
        assert len(pids) == 1 and daemon_pids(self.name) == pids, pids
        self.pid = pids[0]
        self.lab.adopt(self.pid)
        self.start = proc_start_time(self.pid)
        assert b"wiresnake" in Path(f"/proc/{self.pid}/cmdline").read_bytes()

    def link(self) -> str:
        return self.ha.run("ip", "-o", "link", "show", "dev", self.name).stdout

    def addresses(self) -> set[str]:
        out = self.ha.run("ip", "-o", "addr", "show", "dev", self.name, "scope", "global").stdout
        return set(re.findall(r"inet6? (\S+)", out))

    def routes(self, *args: str) -> list[str]:
        return [line.strip() for line in self.ha.run("ip", *args).stdout.splitlines()]

    def down_and_check_nothing_left(self) -> None:
        assert self.pid is not None
        self.wg_quick("down")
        assert self.ha.run("ip", "link", "show", "dev", self.name, check=False).returncode != 0
        assert wait_pid_gone(self.pid, self.start, 10), "the daemon outlived its interface"
        sock = SOCKET_DIR / f"{self.name}.sock"
        assert not sock.exists(), "the daemon left its socket file behind"
        # the socket directory is shared by all namespaces: other labs' interfaces show too
        assert self.name not in self.ha.wg("show", "interfaces").split()
        assert self.snapshot() == self.before, "wg-quick down left state behind"

    def snapshot(self) -> dict[str, list[str]]:
        """A's routing state: every route, every rule, the nftables tables."""
        state = {}
        for family in ("-4", "-6"):
            # link-local routes of the veth come and go with DAD, not with wg-quick
            routes = self.routes(family, "route", "show", "table", "all")
            state[f"{family} routes"] = sorted(r for r in routes if "fe80::" not in r)
            state[f"{family} rules"] = self.routes(family, "rule", "show")
        state["nft"] = self.ha.run("nft", "list", "tables").stdout.split()
        return state


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Quick]:
    require_root_and_tools("wg", "wg-quick", "wireguard-go", "ping", "ss", "nft")
    with NetLab() as lab:
        q = Quick(lab, tmp_path)
        yield q
        if q.pid is not None and pid_running(q.pid, q.start):
            # a failed test: do not wait for the namespace's removal to end it
            lab.end_pid(q.pid)


def daemon_pids(name: str) -> list[int]:
    """Processes running `wiresnake ... NAME` (NAME is unique to this lab)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if name.encode() in args and any(b"wiresnake" in a for a in args):
            pids.append(int(proc.name))
    return pids


def root_ns_has(name: str) -> bool:
    """Read-only look at the root namespace: does it know this interface or its routes?"""
    link = subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, text=True)
    routes = subprocess.run(
        ["ip", "-o", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    routes += subprocess.run(
        ["ip", "-o", "-6", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    return link.returncode == 0 or name in routes or "10.81.0.0/16" in routes or "fd81::" in routes


def test_wg_quick_up_and_down_leaves_nothing_behind(quick: Quick) -> None:
    quick.write("10.80.0.2/32, fd80::2/128, 10.81.0.0/16, fd81::/64", f"{B_UNDERLAY}:51820")
    quick.up()
    sock = SOCKET_DIR / f"{quick.name}.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)

    # what wg-quick set: addresses, MTU (route MTU 1500 - 80), link up
    assert quick.addresses() == {"10.80.0.1/24", "fd80::1/64"}
    link = quick.link()
    assert " mtu 1420 " in link and re.search(r"<[^>]*\bUP\b", link), link
    show = quick.ha.wg("show", quick.name)
    assert f"interface: {quick.name}" in show and "listening port: 51820" in show, show
    assert f"peer: {quick.b.public}" in show and f"endpoint: {B_UNDERLAY}:51820" in show
    allowed = quick.ha.wg("show", quick.name, "allowed-ips").split("\t")[1].split()
    assert sorted(allowed) == sorted(["10.80.0.2/32", "fd80::2/128", "10.81.0.0/16", "fd81::/64"])
    assert quick.name in quick.ha.wg("show", "interfaces").split()

    # routes for the AllowedIPs outside the interface's own subnets, here only
    assert any(
        r.startswith("10.81.0.0/16 ")
        for r in quick.routes("-4", "route", "show", "dev", quick.name)
    )
    assert any(
        r.startswith("fd81::/64 ") for r in quick.routes("-6", "route", "show", "dev", quick.name)
    )
    assert not root_ns_has(quick.name)

    for address in ("10.80.0.2", "fd80::2", "10.81.0.1", "fd81::1"):
        assert quick.ha.ping(address), address
    assert quick.b.peer_row(quick.public)[2] == f"{A_UNDERLAY}:51820"

    quick.down_and_check_nothing_left()
    assert not root_ns_has(quick.name)


def test_wg_quick_save_writes_back_the_running_configuration(quick: Quick) -> None:
    quick.write("10.80.0.2/32, fd80::2/128", f"{B_UNDERLAY}:51820", "MTU = 1380\n")
    quick.up()
    assert " mtu 1380 " in quick.link()
    assert quick.ha.ping("10.80.0.2")
    quick.wg_quick("save")
    saved = quick.conf.read_text()
    assert stat.S_IMODE(os.stat(quick.conf).st_mode) & 0o077 == 0
    for line in (
        "Address = 10.80.0.1/24",
        "Address = fd80::1/64",
        "MTU = 1380",
        "ListenPort = 51820",
        f"PrivateKey = {quick.private}",
        f"PublicKey = {quick.b.public}",
        "AllowedIPs = 10.80.0.2/32, fd80::2/128",
        f"Endpoint = {B_UNDERLAY}:51820",
    ):
        assert line in saved.splitlines(), (line, saved)
    quick.down_and_check_nothing_left()


def test_wg_quick_default_route_through_the_tunnel_uses_fwmark(quick: Quick) -> None:
    # B's endpoint is off-link: A reaches it only by its default route, which wg-quick then
    # hides behind the tunnel for every packet not carrying the daemon's fwmark
    quick.hb.run("ip", "addr", "add", f"{B_FAR}/32", "dev", "lo")
    quick.ha.run("ip", "route", "add", "default", "via", B_UNDERLAY)
    quick.write("0.0.0.0/0, ::/0", f"{B_FAR}:51820")
    quick.up()

    assert quick.ha.wg("show", quick.name, "fwmark").strip() == "0xca6c"
    ss = quick.ha.run("ss", "-uapne").stdout.splitlines()
    sockets = [s for s in ss if f"pid={quick.pid}," in s]
    assert len(sockets) == 2 and all("fwmark:0xca6c" in s for s in sockets), sockets
    assert quick.routes("-4", "route", "show", "table", "51820") == [
        f"default dev {quick.name} scope link"
    ]
    assert any(
        "not from all fwmark 0xca6c lookup 51820" in r for r in quick.routes("-4", "rule", "show")
    )
    assert any("suppress_prefixlength 0" in r for r in quick.routes("-6", "rule", "show"))
    assert f"wg-quick-{quick.name}" in quick.ha.run("nft", "list", "tables").stdout
    assert " mtu 1420 " in quick.link()

    # 10.82.0.1 is behind B and has no route but the tunnel's default; B_FAR itself is now
    # reached through the tunnel too, while the encrypted packets to it go around it
    for address in ("10.82.0.1", "10.80.0.2", B_FAR, "fd80::2"):
        assert quick.ha.ping(address), address
    get = quick.ha.run("ip", "-4", "route", "get", B_FAR).stdout
    assert f"dev {quick.name}" in get, get
    get = quick.ha.run("ip", "-4", "route", "get", B_FAR, "mark", "0xca6c").stdout
    assert "via 192.168.80.2" in get, get
    assert quick.b.peer_row(quick.public)[5] != "0"

    quick.down_and_check_nothing_left()
    assert not root_ns_has(quick.name)


def test_wg_quick_up_that_fails_takes_the_daemon_down_again(quick: Quick) -> None:
    # the listen port is taken in A: `wg setconf` fails on the daemon's answer, and
    # wg-quick's trap deletes the interface, which must end the daemon
    blocker = quick.ha.popen(
        sys.executable,
        "-c",
        "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.bind(('0.0.0.0', 51820)); print('bound', flush=True); sys.stdin.read()",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert blocker.stdout.readline().strip() == "bound"  # type: ignore[union-attr]
    quick.write("10.80.0.2/32, fd80::2/128", f"{B_UNDERLAY}:51820")
    before = quick.snapshot()
    res = quick.ha.run(
        "env",
        "WG_QUICK_USERSPACE_IMPLEMENTATION=wiresnake",
        "wg-quick",
        "up",
        str(quick.conf),
        check=False,
    )
    pids = daemon_pids(quick.name)
    for pid in pids:
        quick.lab.adopt(pid)
    assert res.returncode != 0, res.stderr
    assert f"[#] wiresnake {quick.name}" in res.stderr, res.stderr
    assert "[#] ip link delete dev" in res.stderr, res.stderr
    assert quick.ha.run("ip", "link", "show", "dev", quick.name, check=False).returncode != 0
    assert all(wait_pid_gone(pid, None, 10) for pid in pids), "the daemon outlived its interface"
    assert daemon_pids(quick.name) == []
    assert not (SOCKET_DIR / f"{quick.name}.sock").exists()
    assert quick.snapshot() == before
