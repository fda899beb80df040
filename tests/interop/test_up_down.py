"""`wiresnake up` and `wiresnake down` (our wg-quick) inside a network namespace, against
wireguard-go in another one; afterwards nothing may be left behind.

Every `wiresnake up/down` runs under `ip netns exec` in a namespace the test created;
configuration files live in the test's temporary directory; interface names come from
the lab (unique, since /var/run/wireguard is shared by all namespaces). NetLab removes
namespaces, daemons (by PID) and socket files even when a test fails. The root namespace
is only ever read, to check it was not touched.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import (
    SOCKET_DIR,
    VENV_BIN,
    Host,
    NetLab,
    QuickHosts,
    genkey,
    proc_start_time,
    quick_hosts,
    require_root_and_tools,
    root_ns_has,
    socket_owners,
    wait_pid_gone,
    wiresnake_cmd,
    write_private,
)

from wiresnake import config
from wiresnake.crypto import key_to_base64

pytestmark = [pytest.mark.netns, pytest.mark.interop]

A_UNDERLAY, B_UNDERLAY = "192.168.81.1", "192.168.81.2"
B_FAR = "172.31.81.2"  # behind B, reached by A only through its default route
BASE_PATH = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")


def fake_resolvconf(directory: Path) -> Path:
    """A `resolvconf` that only records its arguments and input, in `directory`."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "resolvconf"
    log = directory / "resolvconf.log"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncat >> {log}\n')
    script.chmod(0o755)
    return bin_dir


def path_without(tool: str) -> str:
    """PATH without the directories that hold `tool`."""
    return ":".join(
        d for d in f"{VENV_BIN}:{BASE_PATH}".split(":") if d and not os.path.exists(f"{d}/{tool}")
    )


def snapshot(host: Host) -> dict[str, list[str]]:
    """A host's network state: links, addresses, every route and rule, nftables."""
    state: dict[str, list[str]] = {}
    state["links"] = sorted(
        line.split(":")[1].strip().split("@")[0]
        for line in host.run("ip", "-o", "link", "show").stdout.splitlines()
    )
    for family in ("-4", "-6"):
        routes = host.run("ip", family, "route", "show", "table", "all").stdout.splitlines()
        # link-local routes of the veths come and go with DAD, not with up/down
        state[f"{family} routes"] = sorted(r.strip() for r in routes if "fe80::" not in r)
        state[f"{family} rules"] = host.run("ip", family, "rule", "show").stdout.splitlines()
        addrs = host.run("ip", "-o", family, "addr", "show", "scope", "global").stdout
        state[f"{family} addresses"] = sorted(re.findall(r"inet6? (\S+)", addrs))
    state["nft"] = host.run("nft", "list", "ruleset").stdout.splitlines()
    return state


class Up(QuickHosts):
    """Host `a` brought up by `wiresnake up`, host `b` running wireguard-go."""

    def __init__(self, lab: NetLab, tmp: Path, go: str) -> None:
        super().__init__(lab, tmp, "u", (A_UNDERLAY, B_UNDERLAY), dir_mode=0o700, go=go)

    def snapshot(self) -> dict[str, list[str]]:
        return snapshot(self.ha)

    def ws(self, verb: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
        """`wiresnake VERB CONF` inside host a; `path`: its PATH."""
        env = f"PATH={path or f'{VENV_BIN}:{BASE_PATH}'}"
        return self.ha.run(
            "env", env, *wiresnake_cmd(), verb, str(self.conf), check=False, timeout=120
        )

    def up(self, path: str | None = None) -> str:
        self.before = self.snapshot()
        res = self.ws("up", path)
        assert res.returncode == 0, f"wiresnake up: {res.returncode}\n{res.stderr}"
        pids = socket_owners(self.ha, self.name)
        assert len(pids) == 1, pids
        self.take_daemon(pids[0])
        return res.stderr

    def down(self, path: str | None = None) -> str:
        res = self.ws("down", path)
        assert res.returncode == 0, f"wiresnake down: {res.returncode}\n{res.stderr}"
        return res.stderr

    def check_nothing_left(self) -> None:
        super().check_nothing_left()
        assert not self.in_root_ns()

    def log(self, stderr: str) -> list[str]:
        return [line.replace(self.name, "IFACE") for line in stderr.splitlines()]


@pytest.fixture
def env(tmp_path: Path, go_build: str) -> Iterator[Up]:
    require_root_and_tools("wg", "ping", "ss", "nft", "bash")
    yield from quick_hosts(Up, tmp_path, go_build)


def test_up_and_down_leave_nothing_behind(env: Up) -> None:
    env.write("10.80.0.2/32, fd80::2/128, 10.81.0.0/16, fd81::/64")
    log = env.up()
    assert env.log(log) == [
        "[#] wiresnake IFACE",
        f"[#] wiresnake setconf IFACE {env.conf} (without its wg-quick keys)".replace(
            env.name, "IFACE"
        ),
        "[#] ip -4 address add 10.80.0.1/24 dev IFACE",
        "[#] ip -6 address add fd80::1/64 dev IFACE",
        "[#] ip link set mtu 1420 up dev IFACE",
        # 10.80.0.2/32 and fd80::2/128 lie in the addresses' own subnets: no route
        "[#] ip -6 route add fd81::/64 dev IFACE",
        "[#] ip -4 route add 10.81.0.0/16 dev IFACE",
    ]
    assert stat.S_ISSOCK((SOCKET_DIR / f"{env.name}.sock").stat().st_mode)
    env.check_interface()
    env.check_routes_and_traffic()

    assert env.log(env.down()) == ["[#] ip link delete dev IFACE"]
    env.check_nothing_left()


def test_default_route_through_the_tunnel(env: Up) -> None:
    # B's endpoint is off-link: A reaches it only by its default route, which is then hidden
    # behind the tunnel for every packet not carrying the daemon's fwmark
    env.default_route_via_b(B_FAR)
    env.write("0.0.0.0/0, ::/0", f"{B_FAR}:51820")
    log = env.log(env.up())
    assert "[#] wiresnake set IFACE fwmark 51820" in log
    assert "[#] ip -4 rule add not fwmark 51820 table 51820" in log
    assert "[#] ip -6 rule add table main suppress_prefixlength 0" in log

    assert env.ha.wg("show", env.name, "fwmark").strip() == "0xca6c"
    assert env.routes("-4", "route", "show", "table", "51820") == [
        f"default dev {env.name} scope link"
    ]
    for family in ("-4", "-6"):
        rules = env.routes(family, "rule", "show")
        assert any("not from all fwmark 0xca6c lookup 51820" in r for r in rules), rules
        assert any("from all lookup main suppress_prefixlength 0" in r for r in rules), rules
    tables = env.ha.run("nft", "list", "tables").stdout.splitlines()
    assert f"table ip wg-quick-{env.name}" in tables and f"table ip6 wg-quick-{env.name}" in tables
    ruleset = env.ha.run("nft", "list", "table", "ip", f"wg-quick-{env.name}").stdout
    assert f'iifname != "{env.name}" ip daddr 10.80.0.1 fib saddr type != local drop' in ruleset
    assert " mtu 1420 " in env.link()

    env.check_default_route(B_FAR)

    assert env.log(env.down()) == [
        "[#] ip -4 rule delete table 51820",
        "[#] ip -4 rule delete table main suppress_prefixlength 0",
        "[#] ip -6 rule delete table 51820",
        "[#] ip -6 rule delete table main suppress_prefixlength 0",
        "[#] ip link delete dev IFACE",
        "[#] nft -f /dev/stdin",
    ]
    env.check_nothing_left()


def test_save_config_round_trip(env: Up) -> None:
    hooks = "PostUp = true %i\nPreDown = true\n"
    original = env.write(
        "10.80.0.2/32, fd80::2/128", extra=f"MTU = 1380\nSaveConfig = true\nTable = main\n{hooks}"
    )
    env.up()
    assert " mtu 1380 " in env.link()
    assert env.ha.ping("10.80.0.2")
    # a peer added at runtime, as `wg set` adds one
    _, new_peer = genkey()
    res = env.ha.run(
        *wiresnake_cmd(),
        "set",
        env.name,
        "peer",
        new_peer,
        "allowed-ips",
        "10.99.0.0/24",
        "persistent-keepalive",
        "21",
    )
    assert res.returncode == 0
    env.down()
    env.check_nothing_left()

    saved = env.conf.read_text()
    assert stat.S_IMODE(env.conf.stat().st_mode) == 0o600
    assert sorted(os.listdir(env.dir)) == [env.conf.name], "a temporary file was left"
    before = config.parse_config(original, wg_quick=True)
    after = config.parse_config(saved, wg_quick=True)
    assert after.quick == before.quick
    assert after.interface == before.interface
    peers = {p.public_key: p for p in after.peers}
    assert len(peers) == 2
    (b,) = before.peers
    assert peers.pop(b.public_key) == b
    (added,) = peers.values()
    assert key_to_base64(added.public_key) == new_peer
    assert added.allowed_ips == tuple(config.parse_allowed_ips("10.99.0.0/24").add)
    assert added.persistent_keepalive == 21
    for line in (
        "Address = 10.80.0.1/24",
        "Address = fd80::1/64",
        "MTU = 1380",
        "Table = main",
        "SaveConfig = true",
        "PostUp = true %i",
        "PreDown = true",
    ):
        assert line in saved.splitlines(), (line, saved)

    # the saved file brings the same interface up again
    env.up()
    assert new_peer in env.ha.wg("show", env.name, "peers")
    env.down()
    env.check_nothing_left()


def test_hooks_run_in_order_with_the_interface_name(env: Up) -> None:
    log = env.dir / "hooks.log"
    env.write(
        "10.80.0.2/32",
        extra=(
            f'PreUp = ! ip link show %i 2>/dev/null && echo "preup %i" >> {log}\n'
            f'PostUp = ip link show %i >/dev/null && echo "postup %i" >> {log}\n'
            f'PreDown = ip link show %i >/dev/null && echo "predown %i" >> {log}\n'
            f'PostDown = ! ip link show %i 2>/dev/null && echo "postdown %i" >> {log}\n'
        ),
    )
    up_log = env.up()
    assert (
        f'[#] ! ip link show {env.name} 2>/dev/null && echo "preup {env.name}" >> {log}' in up_log
    )
    assert log.read_text() == f"preup {env.name}\npostup {env.name}\n"
    env.down()
    assert log.read_text() == (
        f"preup {env.name}\npostup {env.name}\npredown {env.name}\npostdown {env.name}\n"
    )
    env.check_nothing_left()


def test_dns_goes_through_resolvconf(env: Up) -> None:
    bin_dir = fake_resolvconf(env.dir)
    env.write("10.80.0.2/32", extra="DNS = 10.80.0.2, fd80::2, vpn.example\n")
    path = f"{bin_dir}:{VENV_BIN}:{BASE_PATH}"
    prefix = ""
    order = Path("/etc/resolvconf/interface-order")
    if order.exists():  # Debian's resolvconf wants tunnels as `tun.NAME`
        m = re.search(r"^([A-Za-z0-9-]+)\*$", order.read_text(), re.M)
        prefix = f"{m[1]}." if m else ""
    assert f"[#] resolvconf -a {prefix}{env.name} -m 0 -x" in env.up(path)
    env.down(path)
    assert (env.dir / "resolvconf.log").read_text() == (
        f"-a {prefix}{env.name} -m 0 -x\n"
        "nameserver 10.80.0.2\nnameserver fd80::2\nsearch vpn.example\n"
        f"-d {prefix}{env.name} -f\n"
    )
    env.check_nothing_left()


def test_a_bad_file_or_system_changes_nothing(env: Up) -> None:
    marker = env.dir / "preup-ran"
    hook = f"PreUp = touch {marker}\n"
    before = snapshot(env.ha)
    cases = [
        ("10.80.0.300/32", hook, None, f"{env.conf}:10: AllowedIPs: Unable to parse IP address"),
        ("10.80.0.2/32", f"{hook}MTU = 10\n", None, f"{env.conf}:6: MTU: `10' is not in 68-65535"),
        ("10.80.0.2/32", f"{hook}Tabel = 7\n", None, f"{env.conf}:6: Tabel: unknown key"),
        (
            "10.80.0.2/32",
            f"{hook}DNS = 10.80.0.2\n",
            path_without("resolvconf"),
            f"{env.conf}:6: DNS: resolvconf is not installed",
        ),
    ]
    for allowed, extra, path, message in cases:
        env.write(allowed, extra=extra)
        res = env.ws("up", path)
        assert res.returncode == 1 and res.stderr.startswith(message), res.stderr
        assert "[#]" not in res.stderr
    # an interface of that name already there (here: a veth) is left alone
    env.write("10.80.0.2/32", extra=hook)
    env.ha.run("ip", "link", "add", env.name, "type", "veth", "peer", "name", env.lab.iface("v"))
    res = env.ws("up")
    assert (res.returncode, res.stderr) == (1, f"wiresnake: `{env.name}' already exists\n")
    assert env.ha.run("ip", "-o", "link", "show", "dev", env.name).stdout
    env.ha.run("ip", "link", "delete", "dev", env.name)
    # down of an interface that is not up
    res = env.ws("down")
    assert (res.returncode, res.stderr) == (
        1,
        f"wiresnake: `{env.name}' is not a WireGuard interface\n",
    )
    assert not marker.exists(), "a hook ran"
    assert not (SOCKET_DIR / f"{env.name}.sock").exists()
    assert snapshot(env.ha) == before


def test_a_failure_during_up_undoes_everything(env: Up) -> None:
    bin_dir = fake_resolvconf(env.dir)
    env.ha.run("ip", "route", "add", "default", "via", B_UNDERLAY)
    env.write(
        "0.0.0.0/0, ::/0", extra="DNS = 10.80.0.2\nPostUp = ip link show %i >/dev/null && false\n"
    )
    before = snapshot(env.ha)
    res = env.ws("up", f"{bin_dir}:{VENV_BIN}:{BASE_PATH}")
    assert res.returncode == 1, res.stderr
    log = env.log(res.stderr)
    done = log.index("[#] ip link show IFACE >/dev/null && false")
    assert log[done + 1 :] == [
        "[#] nft delete table ip wg-quick-IFACE",
        "[#] ip -4 rule delete table main suppress_prefixlength 0",
        "[#] ip -4 rule delete not fwmark 51820 table 51820",
        "[#] nft delete table ip6 wg-quick-IFACE",
        "[#] ip -6 rule delete table main suppress_prefixlength 0",
        "[#] ip -6 rule delete not fwmark 51820 table 51820",
        "[#] resolvconf -d IFACE -f",
        "[#] ip link delete dev IFACE",
    ]
    deadline = time.monotonic() + 10
    while (SOCKET_DIR / f"{env.name}.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (SOCKET_DIR / f"{env.name}.sock").exists(), "the daemon outlived the rollback"
    assert snapshot(env.ha) == before
    assert not env.in_root_ns()


# ---------------------------------------------------------------------------------------
# The same file through wg-quick and through wiresnake: the same commands, the same state


def normalized_log(stderr: str, names: dict[str, str]) -> list[str]:
    out = []
    for line in stderr.splitlines():
        if not line.startswith("[#] "):
            continue  # wg-quick's "[!] Missing WireGuard kernel module" and ip's complaint
        if re.fullmatch(r"\[#\] ip link add \S+ type wireguard", line):
            continue  # wg-quick tries the kernel module first
        for name, stand_in in names.items():
            line = line.replace(name, stand_in)
        line = re.sub(r"^\[#\] (?:wg|wiresnake) (setconf \S+) .*", r"[#] \1", line)
        line = re.sub(r"^\[#\] wg ", "[#] wiresnake ", line)
        line = re.sub(r"/dev/fd/\d+", "/dev/stdin", line)
        out.append(line)
    return out


def test_same_commands_and_state_as_wg_quick(tmp_path: Path) -> None:
    require_root_and_tools("wg", "wg-quick", "nft", "ss", "bash", "sysctl")
    with NetLab() as lab:
        hq, hw = lab.host("q"), lab.host("w")
        veth_q, veth_w = lab.link(hq, hw, "192.168.91.1", "192.168.91.2")
        # the endpoint is reached by a default route over a link of MTU 1380: MTU 1300
        for h, dev, gw in ((hq, veth_q, "192.168.91.2"), (hw, veth_w, "192.168.91.1")):
            h.run("ip", "link", "set", dev, "mtu", "1380")
            h.run("ip", "route", "add", "default", "via", gw)
            # no IPv6 link-local address on new links (a kernel WireGuard link has none;
            # wg-quick would add a firewall rule for the TUN's)
            h.run("sysctl", "-qw", "net.ipv6.conf.default.addr_gen_mode=1")
        private, _ = genkey()
        _, peer = genkey()
        _, peer2 = genkey()
        bin_dir = fake_resolvconf(tmp_path)
        hooks_log = tmp_path / "hooks.log"
        names = {}
        confs = {}
        for h, tool in ((hq, "q"), (hw, "w")):
            name = lab.iface(tool)
            lab.sockets.append(SOCKET_DIR / f"{name}.sock")
            names[name] = "IFACE"
            d = tmp_path / name
            d.mkdir(mode=0o700)
            conf = d / f"{name}.conf"
            write_private(
                conf,
                (
                    "[Interface]\n"
                    f"PrivateKey = {private}\n"
                    "Address = 10.70.0.1/24, 10.71.0.1/32\n"
                    "Address = fd70::1/64\n"
                    "ListenPort = 51820\n"
                    "DNS = 10.70.0.53, fd70::53, corp.example\n"
                    f"PreUp = echo preup %i >> {hooks_log}\n"
                    f"PostUp = echo postup %i >> {hooks_log}\n"
                    f"PreDown = echo predown %i >> {hooks_log}\n"
                    f"PostDown = echo postdown %i >> {hooks_log}\n"
                    "\n[Peer]\n"
                    f"PublicKey = {peer}\n"
                    "Endpoint = 198.51.100.7:51820\n"
                    "AllowedIPs = 0.0.0.0/0, ::/0, 10.70.0.2/32, 10.72.0.0/16\n"
                    "\n[Peer]\n"
                    f"PublicKey = {peer2}\n"
                    "AllowedIPs = 10.73.0.0/16, 10.9.0.0/16, fd73::/48\n"
                ),
            )
            confs[tool] = (h, name, conf)
        names[veth_q] = names[veth_w] = "VETH"
        # each side's own underlay address and its gateway (the other's) look the same
        names["192.168.91.1"] = names["192.168.91.2"] = "UNDERLAY"
        path = f"PATH={bin_dir}:{VENV_BIN}:{BASE_PATH}"
        impl = "WG_QUICK_USERSPACE_IMPLEMENTATION=wiresnake"

        def run(tool: str, verb: str) -> list[str]:
            h, name, conf = confs[tool]
            cmd = ["wg-quick"] if tool == "q" else wiresnake_cmd()
            res = h.run("env", path, impl, *cmd, verb, str(conf), check=False, timeout=120)
            assert res.returncode == 0, f"{cmd} {verb}: {res.stderr}"
            if verb == "up":
                for pid in socket_owners(h, name):
                    lab.adopt(pid)
            return normalized_log(res.stderr, names)

        def state(tool: str) -> dict[str, list[str]]:
            h, name, _ = confs[tool]
            s = snapshot(h)
            s["wg"] = (
                h.wg("showconf", name).splitlines() if name in h.wg("show", "interfaces") else []
            )
            s["mtu"] = re.findall(r" mtu (\d+) ", h.run("ip", "-o", "link").stdout)
            text = "\n".join(f"{k}: {v}" for k, vs in sorted(s.items()) for v in vs)
            for name_, stand_in in names.items():
                text = text.replace(name_, stand_in)
            out: dict[str, list[str]] = {}
            for line in text.splitlines():
                key, _, value = line.partition(": ")
                out.setdefault(key, []).append(value)
            # the names sorted the lists; the stand-ins must not make the order differ
            return {k: sorted(v) if k != "wg" else v for k, v in out.items()}

        start_q, start_w = state("q"), state("w")
        up_q, up_w = run("q", "up"), run("w", "up")
        assert up_w == up_q
        assert "[#] ip link set mtu 1300 up dev IFACE" in up_w
        state_q, state_w = state("q"), state("w")
        assert state_w == state_q
        assert state_w != start_w
        down_q, down_w = run("q", "down"), run("w", "down")
        assert down_w == down_q
        assert state("q") == start_q and state("w") == start_w
        resolvconf = (tmp_path / "resolvconf.log").read_text()
        for name, stand_in in names.items():
            resolvconf = resolvconf.replace(name, stand_in)
        block = (
            "-a IFACE -m 0 -x\nnameserver 10.70.0.53\nnameserver fd70::53\nsearch corp.example\n"
        )
        assert resolvconf == block * 2 + "-d IFACE -f\n" * 2
        hooks = hooks_log.read_text().splitlines()
        for tool in ("q", "w"):
            name = confs[tool][1]
            assert [h.split()[0] for h in hooks if h.endswith(name)] == [
                "preup",
                "postup",
                "predown",
                "postdown",
            ]
        assert not any(root_ns_has(confs[t][1], *Up.root_prefixes) for t in ("q", "w"))


def test_sigterm_during_up_undoes_everything(env: Up) -> None:
    started = env.dir / "postup-started"
    env.ha.run("ip", "route", "add", "default", "via", B_UNDERLAY)
    env.write("0.0.0.0/0, 10.81.0.0/16", extra=f"PostUp = touch {started} && exec sleep 60\n")
    before = snapshot(env.ha)
    with open(env.dir / "up.log", "w+b") as log:
        # `ip netns exec` execs the interpreter: this PID is `wiresnake up` itself
        proc = env.ha.popen(
            *wiresnake_cmd(), "up", str(env.conf), stdout=subprocess.DEVNULL, stderr=log
        )
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "PostUp never ran"
            time.sleep(0.05)
        daemons = [(pid, proc_start_time(pid)) for pid in socket_owners(env.ha, env.name)]
        for pid, _ in daemons:
            env.lab.adopt(pid)
        proc.terminate()
        assert proc.wait(30) == 1
        log.seek(0)
        text = log.read().decode()
    assert text.rstrip().endswith(f"[#] ip link delete dev {env.name}"), text
    assert "nft delete table ip wg-quick-" in text
    assert daemons
    for pid, start in daemons:
        assert wait_pid_gone(pid, start, 10), "the daemon outlived the rollback"
    assert not (SOCKET_DIR / f"{env.name}.sock").exists()
    assert snapshot(env.ha) == before


def test_a_listen_port_in_use_is_named_with_its_line(env: Up) -> None:
    holder = env.ha.popen(
        sys.executable, "-c",
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('0.0.0.0', 51820))\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"ready"
    env.write("10.80.0.2/32")  # ListenPort = 51820 is its line 4
    before = snapshot(env.ha)
    res = env.ws("up")
    assert res.returncode == 1, res.stderr
    log = env.log(res.stderr)
    failed = log.index("Unable to modify interface: Address already in use")
    conf = str(env.conf).replace(env.name, "IFACE")
    assert log[failed + 1] == f"{conf}:4: ListenPort: UDP port 51820 is already in use"
    deadline = time.monotonic() + 10
    while (SOCKET_DIR / f"{env.name}.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert snapshot(env.ha) == before
