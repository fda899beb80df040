"""Hosts made of network namespaces and veth pairs, torn down always.

Everything a `NetLab` creates (namespaces, the veths and TUNs inside them, the daemons it
started) is removed when the `with` block ends, even on failure. Processes are ended by
the PID we started; interface names are unique per lab because the configuration
sockets in /var/run/wireguard are shared by all namespaces.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SOCKET_DIR = Path("/var/run/wireguard")


def require_root_and_tools(*tools: str) -> None:
    """Skip (with the reason) where the machine truly lacks what the test needs."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    if not Path("/dev/net/tun").exists():
        pytest.skip("no /dev/net/tun on this machine")
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (CI installs it)")


# The wireguard-go builds the interop tests run against, by the name in their test ids:
# Debian's (the distribution's, on PATH) and the current upstream release, which has the
# 2023 offloads (UDP GSO/GRO, TUN TSO/USO). The current build is never copied into the
# repository: it is looked for where the shared tools lie.
GO_BUILDS = ("go-debian", "go-current")
GO_CURRENT_ENV = "WIRESNAKE_WIREGUARD_GO_CURRENT"


# GO_V4_THEN_V6: wireguard-go 0.0.20250522 sends from a pool of reused addresses whose IP
# an IPv4 send leaves 4 bytes long; the next IPv6 send from such an entry copies only the
# first 4 bytes of its destination and goes astray (to fd77:: for fd77::1; the bug is
# described in amnezia-vpn/amneziawg-go#144, a fork). Tests where wireguard-go sends over
# both families ping that many times and ask for one answer.
GO_V4_THEN_V6_TRIES = 10


def go_build_candidates(build: str) -> list[str]:
    """Where `build` is looked for, in order."""
    if build == "go-debian":
        return [shutil.which("wireguard-go") or "wireguard-go on PATH"]
    if build == "go-current":
        if os.environ.get(GO_CURRENT_ENV):
            return [os.environ[GO_CURRENT_ENV]]  # set: the only place
        return [
            str(ROOT.parent / "shared" / "tools" / "wireguard-go"),
            "/work/shared/tools/wireguard-go",
        ]
    raise ValueError(f"unknown wireguard-go build {build!r} (known: {', '.join(GO_BUILDS)})")


def go_build_path(build: str) -> str | None:
    """The executable of `build` ("wireguard-go" means Debian's), None if it is absent."""
    if build == "wireguard-go":
        build = "go-debian"
    if "/" in build:  # a build given by its path (the benchmarks' --go-new)
        return build if os.path.isfile(build) and os.access(build, os.X_OK) else None
    for path in go_build_candidates(build):
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def require_go_build(build: str) -> str:
    """The path of `build`, or skip naming the places looked at."""
    path = go_build_path(build)
    if path is None:
        where = ", ".join(go_build_candidates(build))
        hint = ""
        if build == "go-current" and not os.environ.get(GO_CURRENT_ENV):
            hint = f" (or set {GO_CURRENT_ENV} to its path)"
        pytest.skip(f"wireguard-go build {build} not found at: {where}{hint}")
    return path


def is_go(impl: str) -> bool:
    """An implementation name that means a wireguard-go build."""
    return impl == "wireguard-go" or impl in GO_BUILDS or Path(impl).name == "wireguard-go"


def wiresnake_cmd() -> list[str]:
    return [sys.executable, "-m", "wiresnake"]


class Host:
    def __init__(self, lab: NetLab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = f"{lab.prefix}{name}"

    def cmd(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
        res = subprocess.run(
            self.cmd(args), capture_output=True, text=True, input=input, timeout=timeout, env=env
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"{self.name}: {' '.join(args)} -> {res.returncode}\n{res.stdout}{res.stderr}"
            )
        return res

    def popen(self, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
        env.update(kw.pop("env", {}))  # type: ignore[arg-type]
        proc = subprocess.Popen(self.cmd(args), env=env, **kw)  # type: ignore[call-overload]
        self.lab.processes.append(proc)
        return proc  # type: ignore[no-any-return]

    def wg(self, *args: str, input: str | None = None) -> str:
        return self.run("wg", *args, input=input).stdout

    def readdress(self, dev: str, old: str, new: str) -> None:
        """Move `dev` from the /24 address `old` to `new` (a host that roams)."""
        self.run("ip", "addr", "del", f"{old}/24", "dev", dev)
        self.run("ip", "addr", "add", f"{new}/24", "dev", dev)

    def ping(self, address: str, count: int = 3, wait: float = 5) -> bool:
        res = self.run(
            "ping",
            "-c",
            str(count),
            "-i",
            "0.2",
            "-W",
            str(wait),
            address,
            check=False,
            timeout=count * 0.2 + wait + 10,
        )
        return res.returncode == 0


class NetLab:
    """`with NetLab() as lab:` then `lab.host("a")`, `lab.link(a, b, ...)`, daemons."""

    _serial = itertools.count()

    def __init__(self) -> None:
        # short: interface names are at most 15 bytes
        self.prefix = f"w{secrets.token_hex(2)}{next(self._serial)}"
        self.hosts: list[Host] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.sockets: list[Path] = []
        # daemons that detached themselves (`wiresnake IFACE` without -f): (pid, start time)
        self.adopted: list[tuple[int, str]] = []
        self._ifaces = itertools.count()

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def iface(self, stem: str = "wg") -> str:
        name = f"{self.prefix}{stem}{next(self._ifaces)}"
        assert len(name) < 16, name
        return name

    def host(self, name: str) -> Host:
        h = Host(self, name)
        subprocess.run(["ip", "netns", "add", h.ns], check=True)
        self.hosts.append(h)
        h.run("ip", "link", "set", "lo", "up")
        return h

    def link(
        self, a: Host, b: Host, addr_a: str, addr_b: str, *, v6: tuple[str, str] | None = None
    ) -> tuple[str, str]:
        """A veth pair between two hosts with /24 addresses (and optional /64 v6 ones)."""
        ea, eb = self.iface("v"), self.iface("v")
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                ea,
                "netns",
                a.ns,
                "type",
                "veth",
                "peer",
                "name",
                eb,
                "netns",
                b.ns,
            ],
            check=True,
        )
        for h, dev, addr in ((a, ea, addr_a), (b, eb, addr_b)):
            h.run("ip", "addr", "add", f"{addr}/24", "dev", dev)
            h.run("ip", "link", "set", dev, "up")
        if v6:
            for h, dev, addr in ((a, ea, v6[0]), (b, eb, v6[1])):
                h.run("ip", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
        return ea, eb

    def _wait_socket(self, name: str, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
        path = SOCKET_DIR / f"{name}.sock"
        self.sockets.append(path)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if path.exists():
                return
            if proc.poll() is not None:
                raise AssertionError(f"daemon for {name} exited with {proc.returncode}")
            time.sleep(0.02)
        raise AssertionError(f"no configuration socket for {name}")

    def wait_socket(self, name: str, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
        """Until `proc` (started by us) has created the socket of `name`."""
        self._wait_socket(name, proc, timeout)

    def start_wiresnake(
        self, host: Host, name: str, env: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """`wiresnake -f NAME` in `host`; its stderr goes to `log` (appended) when given."""
        with contextlib.ExitStack() as stack:
            kw: dict[str, object] = {"env": env or {}}
            if log is not None:
                kw["stderr"] = stack.enter_context(log.open("ab"))
            proc = host.popen(*wiresnake_cmd(), "-f", name, **kw)
        self._wait_socket(name, proc)
        return proc

    def start_wireguard_go(
        self, host: Host, name: str, build: str = "go-debian"
    ) -> subprocess.Popen[bytes]:
        """`wireguard-go -f NAME` in `host`, of the build `build` (see GO_BUILDS), or of
        the executable at that path."""
        path = go_build_path(build)
        assert path is not None, f"no wireguard-go build {build} (use require_go_build)"
        proc = host.popen(path, "-f", name, env={"LOG_LEVEL": "error"})
        self._wait_socket(name, proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def adopt(self, pid: int) -> None:
        """Take charge of a process we caused but did not spawn directly (a daemonized
        child): `close` ends it by PID, checking its start time so a reused PID is safe."""
        start = proc_start_time(pid)
        if start is not None:
            self.adopted.append((pid, start))

    def end_pid(self, pid: int, sig: int = signal.SIGTERM, timeout: float = 10) -> bool:
        """Signal an adopted PID and wait until it is gone; True if it went in time."""
        start = next((st for p, st in self.adopted if p == pid), None)
        if start is None or not pid_running(pid, start):
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return wait_pid_gone(pid, start, timeout)

    def start_wiresnake_background(
        self, host: Host, name: str, env: dict[str, str] | None = None
    ) -> tuple[subprocess.CompletedProcess[str], int | None]:
        """`wiresnake NAME` without -f, as wg-quick runs it: (its result, the daemon's PID)."""
        env_args = [f"{k}={v}" for k, v in (env or {}).items()]
        self.sockets.append(SOCKET_DIR / f"{name}.sock")
        res = host.run("env", *env_args, *wiresnake_cmd(), name, check=False)
        pids = socket_owners(host, name) if res.returncode == 0 else []
        for pid in pids:
            self.adopt(pid)
        return res, (pids[0] if pids else None)

    def close(self) -> None:
        for proc in self.processes:
            with contextlib.suppress(Exception):
                self.stop(proc)
        for pid, start in self.adopted:
            with contextlib.suppress(Exception):
                if pid_running(pid, start):
                    os.kill(pid, signal.SIGTERM)
                    if not wait_pid_gone(pid, start, 5):
                        os.kill(pid, signal.SIGKILL)
                        wait_pid_gone(pid, start, 5)
        for h in self.hosts:
            subprocess.run(["ip", "netns", "del", h.ns], capture_output=True)
        for path in self.sockets:
            with contextlib.suppress(OSError):
                path.unlink()


def proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in ticks), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_running(pid: int, start: str | None = None) -> bool:
    """Alive and not a zombie (and, given `start`, still the same process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start


def wait_pid_gone(pid: int, start: str | None = None, timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not pid_running(pid, start):
            return True
        time.sleep(0.02)
    return not pid_running(pid, start)


def wiresnake_pids(name: str) -> list[int]:
    """PIDs of processes whose arguments are `... wiresnake ... NAME` (NAME unique to a lab)."""
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


def socket_owners(host: Host, name: str) -> list[int]:
    """PIDs holding the listening configuration socket of `name` (from `ss -xlp`)."""
    path = SOCKET_DIR / f"{name}.sock"
    out = host.run("ss", "-xlpnH", "src", str(path), check=False).stdout
    return sorted({int(m) for m in re.findall(r"pid=(\d+)", out)})


@contextlib.contextmanager
def netlab() -> Iterator[NetLab]:
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()


def genkey() -> tuple[str, str]:
    priv = subprocess.run(
        [*wiresnake_cmd(), "genkey"], capture_output=True, text=True, check=True
    ).stdout.strip()
    pub = subprocess.run(
        [*wiresnake_cmd(), "pubkey"], input=priv, capture_output=True, text=True, check=True
    ).stdout.strip()
    return priv, pub


class WgIface:
    """One WireGuard interface inside a host, configured with the real `wg`."""

    def __init__(
        self,
        lab: NetLab,
        host: Host,
        impl: str,
        tunnel_v4: str,
        tunnel_v6: str,
        port: int = 51820,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.lab, self.host, self.impl = lab, host, impl
        self.env, self.log = env, log  # for a wiresnake daemon: its environment, its stderr
        # `impl` is wiresnake, or wireguard-go or the path of another build of it
        self.name = lab.iface(Path(impl).name[:2])
        self.private, self.public = genkey()
        self.tunnel_v4, self.tunnel_v6 = tunnel_v4, tunnel_v6
        self.port = port
        self.proc = self.start()
        host.wg(
            "set",
            self.name,
            "private-key",
            "/dev/stdin",
            "listen-port",
            str(port),
            input=self.private,
        )
        host.run("ip", "addr", "add", f"{tunnel_v4}/24", "dev", self.name)
        host.run("ip", "addr", "add", f"{tunnel_v6}/64", "dev", self.name, "nodad")
        host.run("ip", "link", "set", self.name, "up")

    def start(self) -> subprocess.Popen[bytes]:
        if self.impl == "wiresnake":
            return self.lab.start_wiresnake(self.host, self.name, self.env, self.log)
        assert is_go(self.impl), f"unknown implementation {self.impl!r}"
        return self.lab.start_wireguard_go(self.host, self.name, self.impl)

    def add_peer(self, other: WgIface, endpoint: str | None = None, *extra: str) -> None:
        args = [
            "set",
            self.name,
            "peer",
            other.public,
            "allowed-ips",
            f"{other.tunnel_v4}/32,{other.tunnel_v6}/128",
        ]
        if endpoint:
            args += ["endpoint", endpoint]
        self.host.wg(*args, *extra)

    def dump(self) -> list[list[str]]:
        """`wg show IFACE dump` rows: the interface, then one per peer."""
        return [line.split("\t") for line in self.host.wg("show", self.name, "dump").splitlines()]

    def restart(self) -> None:
        """Stop the daemon and start a new one with the same key, port and addresses
        (peers are not restored)."""
        self.lab.stop(self.proc)
        self.proc = self.start()
        self.host.wg(
            "set",
            self.name,
            "private-key",
            "/dev/stdin",
            "listen-port",
            str(self.port),
            input=self.private,
        )
        self.host.run("ip", "addr", "add", f"{self.tunnel_v4}/24", "dev", self.name)
        self.host.run("ip", "addr", "add", f"{self.tunnel_v6}/64", "dev", self.name, "nodad")
        self.host.run("ip", "link", "set", self.name, "up")

    def transfer(self, public: str) -> tuple[int, int]:
        """(rx, tx) bytes for one peer."""
        row = self.peer_row(public)
        return int(row[5]), int(row[6])

    def endpoints(self) -> list[str]:
        """`wg show IFACE endpoints`, split: key, endpoint, key, endpoint..."""
        return self.host.wg("show", self.name, "endpoints").split()

    def peer_row(self, public: str) -> list[str]:
        for row in self.dump()[1:]:
            if row[0] == public:
                return row
        raise AssertionError(f"no peer {public} on {self.name}")


class Pair:
    """Two hosts on one veth link, each with one interface: `a` (impl_a) and `b` (impl_b)."""

    def __init__(
        self,
        lab: NetLab,
        impl_b: str = "wireguard-go",
        impl_a: str = "wiresnake",
        env_a: dict[str, str] | None = None,
        log_a: Path | None = None,
    ) -> None:
        self.lab = lab
        self.ha, self.hb = lab.host("a"), lab.host("b")
        # the veth ends in ha and hb
        self.veth_a, self.veth_b = lab.link(self.ha, self.hb, "192.168.50.1", "192.168.50.2")
        self.a = WgIface(lab, self.ha, impl_a, "10.50.0.1", "fd50::1", env=env_a, log=log_a)
        self.b = WgIface(lab, self.hb, impl_b, "10.50.0.2", "fd50::2")

    def underlay_v6(self) -> None:
        """IPv6 on the veth too: fd77::1 in A, fd77::2 in B."""
        for h, dev, addr in ((self.ha, self.veth_a, "fd77::1"), (self.hb, self.veth_b, "fd77::2")):
            h.run("ip", "addr", "add", f"{addr}/64", "dev", dev, "nodad")

    def connect(self, *extra_a: str, endpoint_a: bool = True, endpoint_b: bool = True) -> None:
        self.a.add_peer(self.b, "192.168.50.2:51820" if endpoint_a else None, *extra_a)
        self.b.add_peer(self.a, "192.168.50.1:51820" if endpoint_b else None)


def wait_until(cond: Callable[[], object], timeout: float = 5.0, step: float = 0.05) -> bool:
    """Poll `cond` until it is true or `timeout` seconds have passed; its last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def nat_router(router: Host, inside: str, out_dev: str, udp_timeout: int | None = None) -> None:
    """Make `router` forward IPv4 and masquerade (nftables) what comes from the prefix
    `inside` as it leaves by `out_dev`, as a home router does. With `udp_timeout`,
    conntrack forgets a UDP mapping that many seconds after its last packet."""
    router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    rules = (
        "table ip nat {\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr {inside} oifname "{out_dev}" masquerade\n'
        "  }\n"
        "}\n"
    )
    router.run("nft", "-f", "-", input=rules)
    if udp_timeout is not None:
        # per namespace, and present once the NAT rule has brought conntrack in
        for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
            router.run("sysctl", "-qw", f"net.netfilter.{key}={udp_timeout}")


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, a file only its owner may read (mode 0600 from its creation)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def root_ns_has(name: str, *prefixes: str) -> bool:
    """Read-only look at the root namespace: does it know the interface `name`, or a route
    naming it or containing one of `prefixes`?"""
    link = subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, text=True)
    routes = ""
    for family in ("-4", "-6"):
        routes += subprocess.run(
            ["ip", "-o", family, "route", "show", "table", "all"], capture_output=True, text=True
        ).stdout
    return link.returncode == 0 or name in routes or any(p in routes for p in prefixes)


class QuickHosts:
    """Host `a`, where a wg-quick-like tool brings up the interface `name` from the file
    `conf` (tunnel 10.80.0.1/24, fd80::1/64, port 51820), and host `b`, running
    wireguard-go (the build `go`) as its peer (10.80.0.2, fd80::2), on one veth link.

    Behind B, and reachable from A only through the tunnel: 10.81.0.1, fd81::1, 10.82.0.1.
    Subclasses add how the interface goes up and down; `pid` is the daemon that `up`
    started (see `take_daemon`), ended by `end_daemon` if it outlives the test.
    """

    # routes the root namespace must never learn (see `in_root_ns`)
    root_prefixes: tuple[str, ...] = ("10.81.0.0/16",)

    def __init__(
        self,
        lab: NetLab,
        tmp: Path,
        stem: str,
        underlay: tuple[str, str],
        dir_mode: int = 0o777,
        go: str = "go-debian",
    ) -> None:
        self.lab = lab
        self.a_underlay, self.b_underlay = underlay
        self.ha, self.hb = lab.host("a"), lab.host("b")
        lab.link(self.ha, self.hb, *underlay)
        self.b = WgIface(lab, self.hb, go, "10.80.0.2", "fd80::2")
        # addresses behind B, reachable from A only through the tunnel
        for extra in ("10.81.0.1/32", "fd81::1/128", "10.82.0.1/32"):
            self.hb.run("ip", "addr", "add", extra, "dev", self.b.name, "nodad")
        self.private, self.public = genkey()
        self.hb.wg(
            "set", self.b.name, "peer", self.public, "allowed-ips", "10.80.0.1/32,fd80::1/128"
        )
        self.name = lab.iface(stem)
        lab.sockets.append(SOCKET_DIR / f"{self.name}.sock")
        self.dir = tmp / self.name
        self.dir.mkdir(mode=dir_mode)
        self.conf = self.dir / f"{self.name}.conf"
        self.pid: int | None = None
        self.start: str | None = None
        self.before: dict[str, list[str]] = {}

    def write(self, allowed_ips: str, endpoint: str | None = None, extra: str = "") -> str:
        """The configuration file of A (mode 0600), its one peer B; returns its text."""
        text = (
            "[Interface]\n"
            f"PrivateKey = {self.private}\n"
            "Address = 10.80.0.1/24, fd80::1/64\n"
            "ListenPort = 51820\n"
            f"{extra}"
            "\n[Peer]\n"
            f"PublicKey = {self.b.public}\n"
            f"Endpoint = {endpoint or f'{self.b_underlay}:51820'}\n"
            f"AllowedIPs = {allowed_ips}\n"
        )
        write_private(self.conf, text)
        return text

    def snapshot(self) -> dict[str, list[str]]:
        """A's network state, compared before `up` and after `down`."""
        raise NotImplementedError

    def take_daemon(self, pid: int) -> None:
        """The daemon `up` left running: ours to end (by PID) even if the test fails."""
        self.pid = pid
        self.lab.adopt(pid)
        self.start = proc_start_time(pid)
        assert b"wiresnake" in Path(f"/proc/{pid}/cmdline").read_bytes()

    def end_daemon(self) -> None:
        """After a failed test: do not wait for the namespace's removal to end the daemon."""
        if self.pid is not None and pid_running(self.pid, self.start):
            self.lab.end_pid(self.pid)

    def link(self) -> str:
        return self.ha.run("ip", "-o", "link", "show", "dev", self.name).stdout

    def addresses(self) -> set[str]:
        out = self.ha.run("ip", "-o", "addr", "show", "dev", self.name, "scope", "global").stdout
        return set(re.findall(r"inet6? (\S+)", out))

    def routes(self, *args: str) -> list[str]:
        return [line.strip() for line in self.ha.run("ip", *args).stdout.splitlines()]

    def in_root_ns(self) -> bool:
        return root_ns_has(self.name, *self.root_prefixes)

    def check_interface(self) -> None:
        """Up as the file says: addresses, MTU (route MTU 1500 - 80), link up, key, peer."""
        assert self.addresses() == {"10.80.0.1/24", "fd80::1/64"}
        link = self.link()
        assert " mtu 1420 " in link and re.search(r"<[^>]*\bUP\b", link), link
        show = self.ha.wg("show", self.name)
        assert f"interface: {self.name}" in show and "listening port: 51820" in show, show
        assert f"peer: {self.b.public}" in show and f"endpoint: {self.b_underlay}:51820" in show

    def check_routes_and_traffic(self) -> None:
        """With AllowedIPs 10.80.0.2/32, fd80::2/128, 10.81.0.0/16, fd81::/64: routes for
        those outside the interface's own subnets (in A only), and B reached over all."""
        assert any(
            r.startswith("10.81.0.0/16 ")
            for r in self.routes("-4", "route", "show", "dev", self.name)
        )
        assert any(
            r.startswith("fd81::/64 ") for r in self.routes("-6", "route", "show", "dev", self.name)
        )
        assert not self.in_root_ns()
        for address in ("10.80.0.2", "fd80::2", "10.81.0.1", "fd81::1"):
            assert self.ha.ping(address), address
        assert self.b.peer_row(self.public)[2] == f"{self.a_underlay}:51820"

    def default_route_via_b(self, far: str) -> None:
        """B's endpoint `far` off-link: A reaches it only by its default route (via B)."""
        self.hb.run("ip", "addr", "add", f"{far}/32", "dev", "lo")
        self.ha.run("ip", "route", "add", "default", "via", self.b_underlay)

    def check_default_route(self, far: str) -> None:
        """With AllowedIPs 0.0.0.0/0, ::/0 and `far` the endpoint: 10.82.0.1 (behind B, no
        route but the tunnel's default) and `far` itself are reached through the tunnel,
        while the encrypted packets to `far` (fwmarked) go around it."""
        for address in ("10.82.0.1", "10.80.0.2", far, "fd80::2"):
            assert self.ha.ping(address), address
        get = self.ha.run("ip", "-4", "route", "get", far).stdout
        assert f"dev {self.name}" in get, get
        get = self.ha.run("ip", "-4", "route", "get", far, "mark", "0xca6c").stdout
        assert f"via {self.b_underlay}" in get, get

    def check_nothing_left(self) -> None:
        """After `down`: no interface, no daemon, no socket file, A's state as before."""
        assert self.ha.run("ip", "link", "show", "dev", self.name, check=False).returncode != 0
        if self.pid is not None:
            assert wait_pid_gone(self.pid, self.start, 10), "the daemon outlived its interface"
        sock = SOCKET_DIR / f"{self.name}.sock"
        assert not sock.exists(), "the daemon left its socket file behind"
        assert self.snapshot() == self.before, "state left behind"


Q = TypeVar("Q", bound=QuickHosts)


def quick_hosts(cls: Callable[[NetLab, Path, str], Q], tmp: Path, go: str) -> Iterator[Q]:
    """For a fixture, `yield from quick_hosts(Cls, tmp_path, go_build)`: a `Cls` in a new
    NetLab, its peer running the wireguard-go build `go`."""
    with NetLab() as lab:
        env = cls(lab, tmp, go)
        yield env
        env.end_daemon()


BLAST = str(Path(__file__).with_name("tcpblast.py"))


def blast(src: Host, dst: Host, addr: str, nbytes: int, seed: int, timeout: float = 240) -> None:
    """Send `nbytes` over TCP from `src` to `addr` (in `dst`) and check they arrived exact."""
    server = dst.popen(
        sys.executable, BLAST, "serve", addr, "5001", stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    sent = src.run(
        sys.executable, BLAST, "send", addr, "5001", str(nbytes), str(seed), timeout=timeout
    ).stdout.split()
    got = server.stdout.readline().split()
    server.wait(30)
    assert sent == got and int(got[0]) == nbytes
