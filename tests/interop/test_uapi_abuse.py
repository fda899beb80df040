"""The configuration socket under abuse, against a running wiresnake daemon whose tunnel to
a wireguard-go peer is pinged all along.

Each abuse once ended the daemon, or stalled its one loop and with it the tunnel (five
clients that did not read their answers pushed the ping RTT to 7.9 s): the daemon must be
alive afterwards, still serving, and the tunnel's RTT during the abuse not far above the
RTT before it. The abusers are this process, on the socket's path (Unix socket paths are
not per network namespace); the pings go from B, through the tunnel, to A's daemon.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netlab import (
    SOCKET_DIR,
    NetLab,
    Pair,
    pid_running,
    require_root_and_tools,
    socket_owners,
    wiresnake_cmd,
)

pytestmark = [pytest.mark.netns, pytest.mark.interop]

A_TUNNEL = "10.50.0.1"
GET = b"get=1\n\n"
# the RTT during an abuse may be this many times the median RTT before it, plus a margin
# for a machine shared with other work (about 0.3 ms before, 70 ms at worst during, here);
# the stalls this guards against were seconds long
RTT_FACTOR = 20
RTT_MARGIN = 0.5


def ping_stats(out: str) -> tuple[list[float], int]:
    """(RTTs in seconds, packets transmitted) from ping's output."""
    rtts = [float(t) / 1000 for t in re.findall(r"time=([\d.]+) ms", out)]
    sent = re.search(r"(\d+) packets transmitted", out)
    return rtts, int(sent.group(1)) if sent else 0


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_files_limit(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open files limit")


def connect(path: str, timeout: float = 10) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def ask(path: str, request: bytes, answers: int = 1, timeout: float = 10) -> bytes:
    """Send `request` on a new connection and read until `answers` answers came."""
    with connect(path, timeout) as s:
        s.sendall(request)
        chunks: list[bytes] = []
        seen = 0
        while seen < answers:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            seen += chunk.count(b"errno=")
        return b"".join(chunks)


class Tunnel:
    """A (wiresnake) and B (wireguard-go) with a session up between them."""

    def __init__(self, lab: NetLab) -> None:
        self.pair = Pair(lab)
        self.pair.connect()
        self.a = self.pair.a
        self.pid = self.a.proc.pid  # `ip netns exec` execs: this is the daemon itself
        assert b"wiresnake" in Path(f"/proc/{self.pid}/cmdline").read_bytes()
        self.path = str(SOCKET_DIR / f"{self.a.name}.sock")
        assert self.pair.hb.ping(A_TUNNEL)
        self.baseline, _ = self.pings(lambda: time.sleep(2.0))
        assert self.baseline, "no RTT before the abuse"

    def alive(self) -> bool:
        return self.a.proc.poll() is None

    def pings(self, during: Callable[[], object], settle: float = 0.5) -> tuple[list[float], int]:
        """Ping A through the tunnel from B while `during()` runs: (RTTs, sent)."""
        ping = self.pair.hb.popen(
            "ping", "-n", "-i", "0.05", "-W", "20", A_TUNNEL, stdout=subprocess.PIPE, text=True
        )
        try:
            time.sleep(0.3)
            during()
            time.sleep(settle)  # replies held back by a stall arrive meanwhile
        finally:
            ping.send_signal(signal.SIGINT)
            out, _ = ping.communicate(timeout=30)
        return ping_stats(out)

    def check_unhurt(self, rtts: list[float], sent: int) -> None:
        """The daemon lives, serves, and the tunnel carried the pings without a stall."""
        assert self.alive(), "the daemon died"
        assert ask(self.path, GET).endswith(b"errno=0\n\n")
        assert len(rtts) >= 0.8 * sent, f"{sent - len(rtts)} of {sent} pings lost"
        before = statistics.median(self.baseline)
        limit = RTT_FACTOR * before + RTT_MARGIN
        assert max(rtts) < limit, (
            f"RTT up to {max(rtts):.3f} s during the abuse (median {statistics.median(rtts):.4f}"
            f" s), {before:.4f} s before"
        )
        assert self.pair.hb.ping(A_TUNNEL, count=1)


@pytest.fixture
def tunnel() -> Iterator[Tunnel]:
    require_root_and_tools("wg", "wireguard-go", "ping", "prlimit")
    with NetLab() as lab:
        yield Tunnel(lab)


INT_FIELDS = [
    "listen_port={}",
    "fwmark={}",
    "public_key={key}\npersistent_keepalive_interval={}",
    "public_key={key}\nprotocol_version={}",
    "public_key={key}\nendpoint=192.0.2.1:{}",
    "public_key={key}\nallowed_ip=10.9.0.0/{}",
]


def test_a_huge_integer_in_any_field_is_refused_and_the_daemon_lives(tunnel: Tunnel) -> None:
    key = os.urandom(32).hex()
    before = tunnel.a.dump()

    def abuse() -> None:
        for template in INT_FIELDS:
            for digits in (4301, 5000, 200_000):
                line = template.format("9" * digits, key=key)
                answer = ask(tunnel.path, f"set=1\n{line}\n\n".encode())
                assert answer == b"errno=-22\n\n", (template, digits, answer)

    rtts, sent = tunnel.pings(abuse)
    tunnel.check_unhurt(rtts, sent)
    after = tunnel.a.dump()
    # nothing was applied: the same interface and peer (counters and handshake aside)
    assert after[0] == before[0]
    assert [row[:4] for row in after[1:]] == [row[:4] for row in before[1:]]


def test_9000_pipelined_gets_are_answered_without_stalling_the_tunnel(tunnel: Tunnel) -> None:
    """Today 5.4 s of one loop (quadratic); wireguard-go 0.12 s."""
    one = ask(tunnel.path, GET)
    got: list[bytes] = []

    def abuse() -> None:
        got.append(ask(tunnel.path, GET * 9000, answers=9000, timeout=60))

    rtts, sent = tunnel.pings(abuse)
    tunnel.check_unhurt(rtts, sent)
    answers = got[0].split(b"\n\n")
    assert len(answers) == 9001 and answers[-1] == b""
    assert all(a.endswith(b"errno=0") for a in answers[:-1])
    # a get is the same as one alone (the byte counters and handshake time may move)
    shape = [line.split(b"=")[0] for line in one.splitlines()]
    assert [line.split(b"=")[0] for line in answers[-2].splitlines()] == shape[:-1]


def test_five_clients_that_never_read_stall_nothing_and_are_dropped(tunnel: Tunnel) -> None:
    """Each asks for 9,000 answers and reads none: once the loop waited up to 2 s on each."""
    fds = fd_count(tunnel.pid)
    clients: list[socket.socket] = []

    def abuse() -> None:
        for _ in range(5):
            c = connect(tunnel.path)
            c.sendall(GET * 9000)
            clients.append(c)
        time.sleep(3.0)

    try:
        rtts, sent = tunnel.pings(abuse)
        tunnel.check_unhurt(rtts, sent)
        # once they took nothing for a while, the daemon let them go
        end = time.monotonic() + 15
        while fd_count(tunnel.pid) > fds and time.monotonic() < end:
            time.sleep(0.2)
        assert fd_count(tunnel.pid) <= fds, "the clients that never read were kept"
    finally:
        for c in clients:
            c.close()
    assert tunnel.alive()


def test_an_oversized_request_is_refused_without_the_daemon_growing(tunnel: Tunnel) -> None:
    """3 million allowed_ip lines in one set (66 MB) once grew the daemon by 253 MB."""
    line = b"allowed_ip=10.0.0.0/8\n"
    chunk = line * ((1 << 20) // len(line))
    total = 3_000_000 * len(line)
    rss = kib(tunnel.pid, "VmRSS")
    Path(f"/proc/{tunnel.pid}/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
    answer = b""

    def abuse() -> None:
        nonlocal answer
        with connect(tunnel.path, timeout=30) as s:
            sent = 0
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(f"set=1\npublic_key={os.urandom(32).hex()}\n".encode())
                while sent < total:
                    s.sendall(chunk)
                    sent += len(chunk)
            assert sent < total, "the daemon read the whole request"
            with contextlib.suppress(ConnectionResetError):
                answer = s.recv(100)

    rtts, sent = tunnel.pings(abuse)
    tunnel.check_unhurt(rtts, sent)
    assert answer in (b"errno=-90\n\n", b""), answer  # EMSGSIZE, unless reset before it
    growth = kib(tunnel.pid, "VmHWM") - rss
    assert growth < 64 << 10, f"the daemon grew by {growth} KiB"
    assert "allowed ips: 10.0.0.0/8" not in tunnel.a.host.wg("show", tunnel.a.name)


def test_idle_connections_up_to_the_fd_limit_do_not_end_the_daemon(tunnel: Tunnel) -> None:
    """Once `accept` failing with EMFILE ended the daemon and the tunnel with it."""
    subprocess.run(["prlimit", f"--pid={tunnel.pid}", "--nofile=64:64"], check=True)
    idle: list[socket.socket] = []
    waiting: socket.socket | None = None

    def abuse() -> None:
        nonlocal waiting
        for _ in range(100):  # the daemon runs out of descriptors on the way
            try:
                idle.append(connect(tunnel.path))
            except OSError:
                assert tunnel.alive(), "the daemon died when out of descriptors"
                raise
        time.sleep(1.0)
        waiting = connect(tunnel.path)
        waiting.sendall(GET)
        cpu = cpu_seconds(tunnel.pid)
        time.sleep(2.0)
        # a failing accept is not retried in a loop: the daemon only carries the pings
        assert cpu_seconds(tunnel.pid) - cpu < 1.0

    try:
        rtts, sent = tunnel.pings(abuse)
        assert tunnel.alive(), "the daemon died when out of descriptors"
        for c in idle:
            c.close()
        # the client that queued meanwhile is served, and so is everyone after it
        assert waiting is not None
        answer = waiting.recv(1 << 16)
        assert answer.endswith(b"errno=0\n\n"), answer
        tunnel.check_unhurt(rtts, sent)
    finally:
        for c in idle:
            c.close()
        if waiting is not None:
            waiting.close()


# ------------------------------------------------------------------ limits, without a tunnel


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_root_and_tools("wg", "prlimit")
    with NetLab() as lab:
        yield lab


def start(lab: NetLab, mode: str, *prefix: str) -> tuple[str, int]:
    """A daemon run as `mode` (foreground, or background as wg-quick starts it) behind
    `prefix` (a command that execs the rest): its interface and PID."""
    h = lab.host("d")
    name = lab.iface("ws")
    if mode == "foreground":
        proc = h.popen(*prefix, *wiresnake_cmd(), "-f", name)
        lab.wait_socket(name, proc)
        return name, proc.pid
    lab.sockets.append(SOCKET_DIR / f"{name}.sock")
    res = h.run(*prefix, *wiresnake_cmd(), name, check=False)
    assert res.returncode == 0, res.stderr
    (pid,) = socket_owners(h, name)
    lab.adopt(pid)
    return name, pid


@pytest.mark.parametrize("mode", ["foreground", "background"])
def test_200_clients_connecting_at_once_are_all_served(lab: NetLab, mode: str) -> None:
    """The daemon is stopped while they connect, so the listen backlog holds them all
    (it held 16: 83% of 200 failed with EAGAIN; wireguard-go listens with somaxconn)."""
    name, pid = start(lab, mode)
    path = str(SOCKET_DIR / f"{name}.sock")
    assert ask(path, GET).endswith(b"errno=0\n\n")
    clients: list[socket.socket] = []
    refused = 0
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(200):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(path)
            except BlockingIOError:
                refused += 1
                c.close()
                continue
            c.send(GET)
            clients.append(c)
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        assert refused == 0, f"{refused} of 200 connects refused"
        sel = selectors.DefaultSelector()
        for c in clients:
            sel.register(c, selectors.EVENT_READ)
        answers: dict[socket.socket, bytes] = dict.fromkeys(clients, b"")
        end = time.monotonic() + 30
        while sel.get_map() and time.monotonic() < end:
            for key, _ in sel.select(1.0):
                c = key.fileobj
                assert isinstance(c, socket.socket)
                chunk = c.recv(1 << 16)
                answers[c] += chunk
                if not chunk or answers[c].endswith(b"errno=0\n\n"):
                    sel.unregister(c)
        sel.close()
        served = sum(a.endswith(b"errno=0\n\n") for a in answers.values())
        assert served == 200
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("mode", ["foreground", "background"])
def test_the_soft_fd_limit_is_raised_to_the_hard_one(lab: NetLab, mode: str) -> None:
    """As Go programs start (wireguard-go among them): each client holds a descriptor."""
    _, pid = start(lab, mode, "prlimit", "--nofile=64:4096", "--")
    assert open_files_limit(pid) == ("4096", "4096")


@pytest.mark.parametrize("mark", ["0x80000000", "0xffffffff"])
def test_a_fwmark_with_the_top_bit_set_is_applied(lab: NetLab, mark: str) -> None:
    """Once the end of the daemon: setsockopt() takes a plain int only below 2**31, and
    raised TypeError for a mark Go's ParseUint(value, 10, 32) takes."""
    name, pid = start(lab, "foreground")
    h = lab.hosts[-1]
    h.wg("set", name, "fwmark", mark)
    assert h.wg("show", name, "fwmark").strip() == mark
    h.wg("set", name, "listen-port", "0")  # new sockets get it too
    out = h.run("ss", "-ulnpeH").stdout
    marks = {
        m
        for line in out.splitlines()
        if f"pid={pid}," in line
        for m in re.findall(r"fwmark:(\S+)", line)
    }
    assert marks == {mark}
    assert pid_running(pid)
