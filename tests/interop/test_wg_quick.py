"""`wg-quick up` and `down` with wiresnake as the userspace implementation, inside a
namespace, against wireguard-go in another one; afterwards nothing may be left behind.

wg-quick falls back to `$WG_QUICK_USERSPACE_IMPLEMENTATION IFACE` when the kernel has no
WireGuard, as here; where the kernel has it, wg-quick would never run wiresnake.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import (
    SOCKET_DIR,
    NetLab,
    QuickHosts,
    quick_hosts,
    require_root_and_tools,
    socket_owners,
    wait_pid_gone,
    wiresnake_pids,
)

pytestmark = [pytest.mark.netns, pytest.mark.interop]

A_UNDERLAY, B_UNDERLAY = "192.168.80.1", "192.168.80.2"
# B's endpoint address in the /0 test: off-link for A, reached only by A's default route,
# which wg-quick's policy routing hides from everything but fwmarked packets
B_FAR = "172.31.80.2"


class Quick(QuickHosts):
    """Host `a` brought up by wg-quick (wiresnake), host `b` running wireguard-go."""

    root_prefixes = ("10.81.0.0/16", "fd81::")

    def __init__(self, lab: NetLab, tmp: Path, go: str) -> None:
        super().__init__(lab, tmp, "q", (A_UNDERLAY, B_UNDERLAY), go=go)

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
        assert len(pids) == 1 and wiresnake_pids(self.name) == pids, pids
        self.take_daemon(pids[0])

    def down_and_check_nothing_left(self) -> None:
        assert self.pid is not None
        self.wg_quick("down")
        self.check_nothing_left()
        # the socket directory is shared by all namespaces: other labs' interfaces show too
        assert self.name not in self.ha.wg("show", "interfaces").split()

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
def quick(tmp_path: Path, go_build: str) -> Iterator[Quick]:
    require_root_and_tools("wg", "wg-quick", "ping", "ss", "nft")
    yield from quick_hosts(Quick, tmp_path, go_build)


def test_wg_quick_up_and_down_leaves_nothing_behind(quick: Quick) -> None:
    quick.write("10.80.0.2/32, fd80::2/128, 10.81.0.0/16, fd81::/64", f"{B_UNDERLAY}:51820")
    quick.up()
    sock = SOCKET_DIR / f"{quick.name}.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)

    # what wg-quick set: addresses, MTU (route MTU 1500 - 80), link up
    quick.check_interface()
    allowed = quick.ha.wg("show", quick.name, "allowed-ips").split("\t")[1].split()
    assert sorted(allowed) == sorted(["10.80.0.2/32", "fd80::2/128", "10.81.0.0/16", "fd81::/64"])
    assert quick.name in quick.ha.wg("show", "interfaces").split()

    # routes for the AllowedIPs outside the interface's own subnets, here only
    quick.check_routes_and_traffic()

    quick.down_and_check_nothing_left()
    assert not quick.in_root_ns()


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
    quick.default_route_via_b(B_FAR)
    quick.write("0.0.0.0/0, ::/0", f"{B_FAR}:51820")
    quick.up()

    assert quick.ha.wg("show", quick.name, "fwmark").strip() == "0xca6c"
    ss = quick.ha.run("ss", "-uapne").stdout.splitlines()
    sockets = [s for s in ss if f"pid={quick.pid}," in s]
    # two a family: transport data has a socket of its own (io/steer.py)
    assert len(sockets) == 4 and all("fwmark:0xca6c" in s for s in sockets), sockets
    assert quick.routes("-4", "route", "show", "table", "51820") == [
        f"default dev {quick.name} scope link"
    ]
    assert any(
        "not from all fwmark 0xca6c lookup 51820" in r for r in quick.routes("-4", "rule", "show")
    )
    assert any("suppress_prefixlength 0" in r for r in quick.routes("-6", "rule", "show"))
    assert f"wg-quick-{quick.name}" in quick.ha.run("nft", "list", "tables").stdout
    assert " mtu 1420 " in quick.link()

    quick.check_default_route(B_FAR)
    assert quick.b.peer_row(quick.public)[5] != "0"

    quick.down_and_check_nothing_left()
    assert not quick.in_root_ns()


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
    pids = wiresnake_pids(quick.name)
    for pid in pids:
        quick.lab.adopt(pid)
    assert res.returncode != 0, res.stderr
    assert f"[#] wiresnake {quick.name}" in res.stderr, res.stderr
    assert "[#] ip link delete dev" in res.stderr, res.stderr
    assert quick.ha.run("ip", "link", "show", "dev", quick.name, check=False).returncode != 0
    assert all(wait_pid_gone(pid, None, 10) for pid in pids), "the daemon outlived its interface"
    assert wiresnake_pids(quick.name) == []
    assert not (SOCKET_DIR / f"{quick.name}.sock").exists()
    assert quick.snapshot() == before
