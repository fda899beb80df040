"""The daemon contract (wireguard-go's main.go) with wiresnake alone, checked with `wg`,
`ss` and `ip`: start-up in the background, the ways it ends, the configuration socket, the
UDP port and fwmark, logging, and what happens to packets bigger than the tunnel MTU."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import (
    SOCKET_DIR,
    Host,
    NetLab,
    Pair,
    pid_running,
    socket_owners,
    wait_pid_gone,
    wiresnake_cmd,
)
from netlab import require_root_and_tools as _require

from wiresnake.crypto import generate_private_key, public_key

pytestmark = [pytest.mark.netns, pytest.mark.interop]


def require_root_and_tools(*tools: str) -> None:
    _require("wg", "ss", *tools)


class Solo:
    """One namespace for a daemon of our own."""

    def __init__(self, lab: NetLab) -> None:
        self.lab = lab
        self.h = lab.host("d")

    def start(self, name: str | None = None, env: dict[str, str] | None = None) -> tuple[str, int]:
        name = name or self.lab.iface("ws")
        res, pid = self.lab.start_wiresnake_background(self.h, name, env)
        assert res.returncode == 0, res.stderr
        assert pid is not None
        return name, pid


@pytest.fixture
def solo() -> Iterator[Solo]:
    require_root_and_tools()
    with NetLab() as lab:
        yield Solo(lab)


def sock_path(name: str) -> Path:
    return SOCKET_DIR / f"{name}.sock"


def link_exists(h: Host, name: str) -> bool:
    return h.run("ip", "link", "show", name, check=False).returncode == 0


def wait_until(cond: object, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(cond())  # type: ignore[operator]


def udp_ports(h: Host, pid: int) -> set[str]:
    """`addr:port` of the UDP sockets `pid` holds in the namespace."""
    out = h.run("ss", "-ulnpH").stdout
    return {line.split()[3] for line in out.splitlines() if f"pid={pid}," in line}


def wait_serving(h: Host, name: str) -> None:
    """Until the daemon behind the socket answers (the parent returns before it does)."""
    h.wg("show", name)


# ------------------------------------------------------------------ starting


def test_background_start_returns_once_socket_and_interface_exist(solo: Solo) -> None:
    name = solo.lab.iface("ws")
    solo.lab.sockets.append(sock_path(name))
    cmd = " ".join(wiresnake_cmd())
    # checked by the same shell the moment the command returns, as wg-quick would
    res = solo.h.run(
        "sh",
        "-c",
        f"{cmd} {name} && test -S /var/run/wireguard/{name}.sock && ip link show {name} "
        f"&& wg show {name} listen-port",
        check=False,
    )
    for pid in socket_owners(solo.h, name):
        solo.lab.adopt(pid)
    assert res.returncode == 0, res.stdout + res.stderr
    assert int(res.stdout.splitlines()[-1]) > 0
    pids = socket_owners(solo.h, name)
    assert len(pids) == 1
    pid = pids[0]
    # the one that returned was the parent: the daemon is its re-executed child
    assert pid_running(pid)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[-2:] == [name.encode(), b""]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"WG_PROCESS_FOREGROUND=1" in environ
    # the socket is the daemon's only (umask 077), as wireguard-go makes it
    mode = os.stat(sock_path(name)).st_mode
    assert stat.S_ISSOCK(mode) and mode & 0o077 == 0
    assert solo.lab.end_pid(pid)


def test_foreground_start_stays_in_the_foreground(solo: Solo) -> None:
    name = solo.lab.iface("ws")
    proc = solo.lab.start_wiresnake(solo.h, name)
    wait_serving(solo.h, name)
    # `ip netns exec` execs the command, so the PID we started is the daemon's
    assert proc.poll() is None
    assert socket_owners(solo.h, name) == [proc.pid]
    assert solo.lab.stop(proc) == 0
    assert not sock_path(name).exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_it_and_removes_socket_and_interface(solo: Solo, sig: int) -> None:
    name, pid = solo.start()
    wait_serving(solo.h, name)
    assert solo.lab.end_pid(pid, sig)
    assert not sock_path(name).exists()
    assert not link_exists(solo.h, name)


def test_sigterm_right_after_start_still_removes_the_socket(solo: Solo) -> None:
    name, pid = solo.start()
    os.kill(pid, signal.SIGTERM)
    assert wait_pid_gone(pid, timeout=10)
    assert not sock_path(name).exists()


def test_deleting_the_interface_ends_it(solo: Solo) -> None:
    name, pid = solo.start()
    wait_serving(solo.h, name)
    solo.h.run("ip", "link", "del", name)
    assert wait_pid_gone(pid, timeout=5), "daemon outlived its interface"
    assert not sock_path(name).exists()


def test_deleting_the_interface_before_it_is_serving_ends_it(solo: Solo) -> None:
    # what `wg-quick up` does when a later step fails: `ip link delete` at once
    name, pid = solo.start()
    solo.h.run("ip", "link", "del", name)
    assert wait_pid_gone(pid, timeout=8), "daemon outlived its interface"


def test_removing_the_socket_file_ends_it(solo: Solo) -> None:
    name, pid = solo.start()
    wait_serving(solo.h, name)
    sock_path(name).unlink()
    assert wait_pid_gone(pid, timeout=5), "daemon outlived its socket"
    assert not link_exists(solo.h, name)


def test_a_socket_replaced_by_another_file_ends_it_and_is_left_alone(solo: Solo) -> None:
    name, pid = solo.start()
    wait_serving(solo.h, name)
    path = sock_path(name)
    path.unlink()
    path.write_text("someone else's\n")
    assert wait_pid_gone(pid, timeout=5)
    assert path.read_text() == "someone else's\n"
    path.unlink()


def test_a_stale_socket_from_kill_9_does_not_prevent_the_next_start(solo: Solo) -> None:
    name, pid = solo.start()
    wait_serving(solo.h, name)
    assert solo.lab.end_pid(pid, signal.SIGKILL)
    assert sock_path(name).exists(), "kill -9 cannot clean up; the socket should be stale"
    assert wait_until(lambda: not link_exists(solo.h, name))
    _, pid2 = solo.start(name)
    assert pid2 != pid
    assert solo.h.wg("show", name, "listen-port").strip().isdigit()
    assert link_exists(solo.h, name)


def test_a_second_start_on_the_same_name_fails_cleanly(solo: Solo) -> None:
    name, pid = solo.start()
    wait_serving(solo.h, name)
    inode = os.stat(sock_path(name)).st_ino
    port = solo.h.wg("show", name, "listen-port").strip()
    res = solo.h.run(*wiresnake_cmd(), name, check=False)
    assert res.returncode != 0
    assert res.stderr.strip(), "a failed start should say why"
    # the first daemon is untouched and still the only one
    time.sleep(0.3)
    assert pid_running(pid)
    assert socket_owners(solo.h, name) == [pid]
    assert os.stat(sock_path(name)).st_ino == inode
    assert solo.h.wg("show", name, "listen-port").strip() == port


def test_the_same_name_in_another_namespace_fails_on_the_shared_socket(solo: Solo) -> None:
    name, pid = solo.start()
    wait_serving(solo.h, name)
    other = solo.lab.host("e")
    res = other.run(*wiresnake_cmd(), name, check=False)
    assert res.returncode != 0
    assert "in use" in res.stderr
    # it did not leave its own interface behind, and the first daemon is untouched
    assert not link_exists(other, name)
    assert pid_running(pid)
    assert solo.h.wg("show", name, "listen-port").strip().isdigit()


# ------------------------------------------------------------------ port and fwmark


def test_listen_port_0_is_a_real_bound_port_on_both_families(solo: Solo) -> None:
    name, pid = solo.start()
    solo.h.wg("set", name, "listen-port", "0")
    port = int(solo.h.wg("show", name, "listen-port"))
    assert 0 < port < 65536
    assert udp_ports(solo.h, pid) == {f"0.0.0.0:{port}", f"[::]:{port}"}


def test_changing_listen_port_at_runtime_rebinds(solo: Solo) -> None:
    name, pid = solo.start()
    old = int(solo.h.wg("show", name, "listen-port"))
    new = 51000 if old != 51000 else 51001
    solo.h.wg("set", name, "listen-port", str(new))
    assert int(solo.h.wg("show", name, "listen-port")) == new
    assert udp_ports(solo.h, pid) == {f"0.0.0.0:{new}", f"[::]:{new}"}
    # the old port is free again: something else can bind it
    solo.h.run(
        sys.executable,
        "-c",
        f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(('', {old}))",
    )


def test_a_port_in_use_is_refused_and_the_old_one_kept(solo: Solo) -> None:
    name, pid = solo.start()
    solo.h.wg("set", name, "listen-port", "51820")
    holder = solo.h.popen(
        sys.executable,
        "-c",
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 40123))\n"
        "print('bound', flush=True); time.sleep(60)",
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"bound\n"
        res = solo.h.run("wg", "set", name, "listen-port", "40123", check=False)
        assert res.returncode != 0
        assert "Address already in use" in res.stderr
        assert int(solo.h.wg("show", name, "listen-port")) == 51820
        assert udp_ports(solo.h, pid) == {"0.0.0.0:51820", "[::]:51820"}
    finally:
        solo.lab.stop(holder)


def socket_marks(h: Host, pid: int) -> set[str]:
    out = h.run("ss", "-ulnpeH").stdout
    marks = set()
    for line in out.splitlines():
        if f"pid={pid}," in line:
            m = re.search(r"fwmark:(\S+)", line)
            marks.add(m.group(1) if m else "none")
    return marks


def test_fwmark_set_shown_applied_to_the_sockets_and_cleared(solo: Solo) -> None:
    name, pid = solo.start()
    solo.h.wg("set", name, "fwmark", "0x1234")
    assert solo.h.wg("show", name, "fwmark").strip() == "0x1234"
    assert socket_marks(solo.h, pid) == {"0x1234"}
    # a rebind keeps the mark
    solo.h.wg("set", name, "listen-port", "0")
    assert socket_marks(solo.h, pid) == {"0x1234"}
    solo.h.wg("set", name, "fwmark", "off")
    assert solo.h.wg("show", name, "fwmark").strip() == "off"
    assert socket_marks(solo.h, pid) == {"none"}


# ------------------------------------------------------------------ logging


@pytest.mark.parametrize("level", ["verbose", "error", "silent"])
def test_log_level(solo: Solo, level: str, tmp_path: Path) -> None:
    name = solo.lab.iface("ws")
    log = tmp_path / "stderr"
    with log.open("wb") as f:
        proc = solo.h.popen(*wiresnake_cmd(), "-f", name, env={"LOG_LEVEL": level}, stderr=f)
        solo.lab.wait_socket(name, proc)
        solo.h.wg("set", name, "listen-port", "0")
        # a request that is refused: an error worth logging
        assert uapi(name, b"set=1\nbogus=1\n\n") == b"errno=-22\n\n"
        assert solo.lab.stop(proc) == 0
    text = log.read_text()
    if level == "verbose":
        assert "DEBUG" in text and "ERROR" in text and name in text
    elif level == "error":
        assert "ERROR" in text and "DEBUG" not in text
    else:
        assert text == ""


def test_background_daemon_logs_to_the_starters_stderr_only_with_log_level(
    solo: Solo, tmp_path: Path
) -> None:
    cmd = " ".join(wiresnake_cmd())
    for level, expect in (("verbose", True), (None, False)):
        name = solo.lab.iface("ws")
        solo.lab.sockets.append(sock_path(name))
        log = tmp_path / f"{name}.err"
        env = f"LOG_LEVEL={level} " if level else ""
        solo.h.run("sh", "-c", f"{env}{cmd} {name} >{log} 2>&1")
        for pid in socket_owners(solo.h, name):
            solo.lab.adopt(pid)
        wait_serving(solo.h, name)
        solo.h.wg("set", name, "listen-port", "0")
        uapi(name, b"set=1\nbogus=1\n\n")
        assert wait_until(lambda log=log: log.stat().st_size > 0, 2) == expect
        for pid in socket_owners(solo.h, name):
            assert solo.lab.end_pid(pid)


# ------------------------------------------------------------------ the socket, raw


def uapi(name: str, request: bytes, answers: int = 1, timeout: float = 5) -> bytes:
    """Send `request` on a new connection and read until `answers` answers came."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path(name)))
        s.sendall(request)
        data = b""
        while data.count(b"\n\n") < answers or not data.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_raw_get_ends_with_errno_0(solo: Solo) -> None:
    name, _ = solo.start()
    solo.h.wg("set", name, "listen-port", "51820")
    answer = uapi(name, b"get=1\n\n")
    assert answer.endswith(b"\nerrno=0\n\n")
    assert b"listen_port=51820\n" in answer


def test_raw_bad_set_answers_einval_and_changes_nothing(solo: Solo) -> None:
    name, _ = solo.start()
    solo.h.wg("set", name, "listen-port", "51820")
    before = uapi(name, b"get=1\n\n")
    answer = uapi(name, b"set=1\nlisten_port=51999\nfwmark=5\nallowed_ip=10.0.0.0/8\n\n")
    assert answer == b"errno=-22\n\n"
    assert uapi(name, b"get=1\n\n") == before


def test_raw_several_requests_on_one_connection(solo: Solo) -> None:
    name, _ = solo.start()
    key = os.urandom(32).hex()
    req = (
        b"set=1\nlisten_port=51820\n\n"
        b"get=1\n\n"
        b"set=1\nbogus=1\n\n"
        + f"set=1\npublic_key={key}\nallowed_ip=10.1.0.0/16\n\n".encode()
        + b"get=1\n\n"
    )
    answers = uapi(name, req, answers=5).split(b"\n\n")
    assert answers[-1] == b""
    assert answers[0] == b"errno=0"
    assert answers[1].startswith(b"listen_port=51820\n") and answers[1].endswith(b"errno=0")
    assert answers[2] == b"errno=-22"
    assert answers[3] == b"errno=0"
    assert f"public_key={key}\n".encode() in answers[4]
    assert b"allowed_ip=10.1.0.0/16\n" in answers[4]


def test_a_stalled_client_does_not_block_others(solo: Solo) -> None:
    name, _ = solo.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.settimeout(5)
        stalled.connect(str(sock_path(name)))
        stalled.sendall(b"set=1\nlisten_port=5")
        # others are served meanwhile
        solo.h.wg("set", name, "listen-port", "51000")
        assert solo.h.wg("show", name, "listen-port").strip() == "51000"
        stalled.sendall(b"1820\n\n")
        assert stalled.recv(100) == b"errno=0\n\n"
    assert solo.h.wg("show", name, "listen-port").strip() == "51820"


def test_an_invalid_operation_closes_only_that_connection(solo: Solo) -> None:
    name, pid = solo.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock_path(name)))
        s.sendall(b"hello=1\n")
        assert s.recv(100) == b""
    assert pid_running(pid)
    assert uapi(name, b"get=1\n\n").endswith(b"errno=0\n\n")


def test_a_line_with_a_non_ascii_digit_does_not_kill_the_daemon(solo: Solo) -> None:
    name, pid = solo.start()
    wait_serving(solo.h, name)
    try:
        answer = uapi(name, "set=1\nlisten_port=\u00b2\n\n".encode())
    except OSError:
        answer = b""
    time.sleep(0.3)
    assert pid_running(pid)
    assert answer == b"errno=-22\n\n"


def test_a_thousand_peers_go_in_and_come_back_out_whole(solo: Solo, tmp_path: Path) -> None:
    """Requests and answers far bigger than one read or one socket buffer."""
    name, _ = solo.start()
    private = base64.b64encode(generate_private_key()).decode()
    expected = {}
    text = f"[Interface]\nPrivateKey = {private}\nListenPort = 51820\n"
    for i in range(1000):
        pub = base64.b64encode(public_key(generate_private_key())).decode()
        allowed = f"10.{i >> 8}.{i & 255}.0/24,fd00:{i + 1:x}::/48"
        endpoint = f"192.0.2.{i % 250 + 1}:{10000 + i}"
        expected[pub] = (endpoint, allowed)
        text += f"\n[Peer]\nPublicKey = {pub}\nAllowedIPs = {allowed}\nEndpoint = {endpoint}\n"
    conf = tmp_path / "big.conf"
    conf.write_text(text)
    solo.h.wg("setconf", name, str(conf))
    rows = [line.split("\t") for line in solo.h.wg("show", name, "dump").splitlines()]
    assert rows[0][0] == private and rows[0][2] == "51820"
    got = {row[0]: (row[2], row[3]) for row in rows[1:]}
    assert got == expected
    # and a replace of them all with nothing
    conf.write_text(f"[Interface]\nPrivateKey = {private}\n")
    solo.h.wg("setconf", name, str(conf))
    assert solo.h.wg("show", name, "peers") == ""


# ------------------------------------------------------------------ packets bigger than the MTU


@pytest.fixture
def twin() -> Iterator[Pair]:
    require_root_and_tools("ping")
    with NetLab() as lab:
        yield Pair(lab, impl_b="wiresnake")


def test_big_packets_are_fragmented_by_the_kernel_and_df_ones_refused_locally(twin: Pair) -> None:
    twin.connect()
    assert twin.ha.ping("10.50.0.2", count=1)
    # without DF the kernel fragments to the tunnel MTU before the TUN: it just works
    res = twin.ha.run(
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "3",
        "-M",
        "dont",
        "-s",
        "4000",
        "10.50.0.2",
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # with DF the kernel refuses it locally; nothing reaches the daemon or the wire
    before = twin.a.transfer(twin.b.public)
    res = twin.ha.run("ping", "-c", "1", "-M", "do", "-s", "1500", "10.50.0.2", check=False)
    assert res.returncode != 0
    assert "mtu=1420" in res.stdout + res.stderr
    assert twin.a.transfer(twin.b.public)[1] == before[1]


def test_a_raised_link_mtu_is_followed_and_padding_stops_at_the_mtu(twin: Pair) -> None:
    twin.connect()
    assert twin.ha.ping("10.50.0.2", count=1)
    # an MTU that is not a multiple of 16; a packet of exactly that size cannot be padded
    for iface in (twin.a, twin.b):
        iface.host.run("ip", "link", "set", "dev", iface.name, "mtu", "8030")
    size = 8030 - 28

    def big_ping() -> bool:
        return (
            twin.ha.run(
                "ping", "-c", "1", "-W", "1", "-M", "do", "-s", str(size), "10.50.0.2", check=False
            ).returncode
            == 0
        )

    assert wait_until(big_ping, 6), "the daemon did not follow the new MTU"
    time.sleep(0.2)
    a_before, b_before = twin.a.transfer(twin.b.public), twin.b.transfer(twin.a.public)
    assert big_ping()
    time.sleep(0.2)
    a_after, b_after = twin.a.transfer(twin.b.public), twin.b.transfer(twin.a.public)
    # 32 bytes of header and tag around the 8030-byte packet, no padding past the MTU
    assert a_after[1] - a_before[1] == 8030 + 32
    assert b_after[0] - b_before[0] == 8030 + 32
    assert b_after[1] - b_before[1] == 8030 + 32


_MTU_WITHOUT_DESCRIPTORS = """
import os, resource, socket, sys
from wiresnake.io.tun import Tun
tun = Tun.create(sys.argv[1], mtu=1333)
held = []
try:
    while True:
        held.append(socket.socket())
except OSError:
    pass  # every descriptor taken: what the housekeeping tick then meets
print(tun.mtu(), tun.mtu(), len(held) > 0)
"""


def test_the_mtu_is_read_with_no_descriptor_free(solo: Solo) -> None:
    # the daemon reads its interface's MTU every second; with every descriptor in use (idle
    # configuration clients, a system at its file limit) that read must still work
    name = solo.lab.iface("fd")
    res = solo.h.run("prlimit", "--nofile=64", sys.executable, "-c", _MTU_WITHOUT_DESCRIPTORS, name)
    assert res.stdout.split() == ["1333", "1333", "True"], res.stderr
