"""wiresnake against wireguard-go, each in its own namespace, configured with the real `wg`."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import NetLab, Pair, blast, require_go_build, require_root_and_tools

pytestmark = [pytest.mark.netns, pytest.mark.interop]


@pytest.fixture
def pair(go_build: str) -> Iterator[Pair]:
    require_root_and_tools("wg", "ping")
    with NetLab() as lab:
        yield Pair(lab, impl_b=go_build)


def test_wiresnake_initiates_and_pings_over_ipv4_and_ipv6(pair: Pair) -> None:
    pair.connect()
    assert pair.ha.ping("10.50.0.2")
    assert pair.ha.ping("fd50::2")
    assert pair.hb.ping("10.50.0.1")


def test_wireguard_go_initiates_and_wiresnake_answers(pair: Pair) -> None:
    pair.connect(endpoint_a=False)
    assert pair.hb.ping("10.50.0.1")
    assert pair.ha.ping("fd50::2")
    # wiresnake learned wireguard-go's endpoint from the handshake
    assert pair.a.peer_row(pair.b.public)[2] == "192.168.50.2:51820"


def test_wg_show_byte_counters_agree_exactly_with_wireguard_go(pair: Pair) -> None:
    pair.connect()
    assert pair.ha.ping("10.50.0.2", count=5)
    time.sleep(0.5)
    a_row, b_row = pair.a.peer_row(pair.b.public), pair.b.peer_row(pair.a.public)
    # dump: public-key psk endpoint allowed-ips latest-handshake rx tx keepalive
    assert int(a_row[5]) == int(b_row[6]) > 0
    assert int(a_row[6]) == int(b_row[5]) > 0
    assert abs(int(a_row[4]) - time.time()) < 30
    assert a_row[3] == "10.50.0.2/32,fd50::2/128"
    assert pair.a.dump()[0][2] == "51820"


def test_preshared_key_on_both_sides(pair: Pair) -> None:
    psk = subprocess.run(
        [sys.executable, "-m", "wiresnake", "genpsk"], capture_output=True, text=True, check=True
    ).stdout
    pair.connect()
    for iface, other in ((pair.a, pair.b), (pair.b, pair.a)):
        iface.host.wg(
            "set", iface.name, "peer", other.public, "preshared-key", "/dev/stdin", input=psk
        )
    assert pair.ha.ping("10.50.0.2")


def test_preshared_key_mismatch_passes_nothing(pair: Pair) -> None:
    pair.connect()
    pair.a.host.wg(
        "set",
        pair.a.name,
        "peer",
        pair.b.public,
        "preshared-key",
        "/dev/stdin",
        input="Aa" * 21 + "A=\n",
    )
    assert not pair.ha.ping("10.50.0.2", count=2, wait=2)


@pytest.mark.parametrize("direction", ["wiresnake->wireguard-go", "wireguard-go->wiresnake"])
def test_100_megabytes_cross_byte_exact(pair: Pair, direction: str) -> None:
    pair.connect()
    src, dst, addr = (
        (pair.ha, pair.hb, "10.50.0.2")
        if direction.startswith("wiresnake")
        else (pair.hb, pair.ha, "10.50.0.1")
    )
    blast(src, dst, addr, 100 << 20, seed=7)


def test_the_current_builds_gso_batches_arrive_glued_and_are_split_exactly(
    tmp_path: Path,
) -> None:
    """wireguard-go 0.0.20250522 sends runs of datagrams with UDP_SEGMENT; with UDP_GRO on,
    the kernel hands them to wiresnake as one buffer per run, which it must cut back into
    datagrams (the last one shorter) for the stream to arrive whole. Without offloads
    (WIRESNAKE_OFFLOAD=0) nothing is glued and the stream arrives all the same."""
    require_root_and_tools("wg", "ping")
    require_go_build("go-current")
    log = tmp_path / "wiresnake.err"
    with NetLab() as lab:
        pair = Pair(lab, impl_b="go-current", env_a={"LOG_LEVEL": "verbose"}, log_a=log)
        pair.connect()
        blast(pair.hb, pair.ha, "10.50.0.1", 30 << 20, seed=9)
        blast(pair.hb, pair.ha, "fd50::1", 10 << 20, seed=10)
        assert lab.stop(pair.a.proc) == 0
    counted = re.search(r"Counters: (.*);", log.read_text())
    assert counted, log.read_text()[-2000:]
    counters = dict(item.split("=") for item in counted.group(1).split(", "))
    if os.environ.get("WIRESNAKE_OFFLOAD") == "0":
        assert "udp_gro_reads" not in counters, "UDP_GRO is on without offloads"
    else:
        assert int(counters.get("udp_gro_reads", 0)) > 10, counters
    assert "decrypt_failed" not in counters and "inner_malformed" not in counters, counters


def test_link_set_down_does_not_stop_the_daemon(pair: Pair) -> None:
    pair.connect()
    assert pair.ha.ping("10.50.0.2")
    pair.ha.run("ip", "link", "set", pair.a.name, "down")
    # traffic for the downed link arrives: TUN writes fail with EIO, which is not "deleted"
    assert not pair.hb.ping("10.50.0.1", count=2, wait=1)
    assert pair.a.proc.poll() is None
    pair.ha.run("ip", "link", "set", pair.a.name, "up")
    pair.ha.run("ip", "addr", "replace", "10.50.0.1/24", "dev", pair.a.name)
    assert pair.hb.ping("10.50.0.1")


def test_tso_reads_split_in_userspace_carry_both_ways(tmp_path: Path, go_build: str) -> None:
    """WIRESNAKE_OFFLOAD=tso: the kernel hands the daemon TCP super-packets and packets
    with unfinished checksums; what leaves must be exact for wireguard-go's kernel side."""
    require_root_and_tools("wg", "ping")
    log = tmp_path / "wiresnake.err"
    env = {"WIRESNAKE_OFFLOAD": "tso", "LOG_LEVEL": "verbose"}
    with NetLab() as lab:
        pair = Pair(lab, impl_b=go_build, env_a=env, log_a=log)
        pair.connect()
        assert pair.ha.ping("10.50.0.2")
        assert pair.ha.ping("fd50::2")
        blast(pair.ha, pair.hb, "10.50.0.2", 30 << 20, seed=11)
        blast(pair.hb, pair.ha, "10.50.0.1", 30 << 20, seed=12)
        blast(pair.ha, pair.hb, "fd50::2", 10 << 20, seed=13)
        # UDP_SEGMENT sends: with USO the TUN hands these over as one super-packet each
        receiver = pair.hb.popen(
            sys.executable, "-c", UDP_RECEIVER, "10.50.0.2", stdout=subprocess.PIPE, text=True
        )
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        pair.ha.run(sys.executable, "-c", UDP_GSO_SENDER, "10.50.0.2")
        got = receiver.stdout.readline().split()
        receiver.wait(10)
        assert lab.stop(pair.a.proc) == 0
    # every datagram that came is whole and right; a few may be lost to socket buffers
    assert got[0] == "ok" and int(got[1]) == 0, got
    assert int(got[2]) >= 0.9 * UDP_SENDS * UDP_SEGMENTS, got
    text = log.read_text()
    started = re.search(r"Device started \(TUN offloads (0x[0-9a-f]+)\)", text)
    assert started, text[-2000:]
    offloads = int(started.group(1), 16)
    assert offloads & 0x07 == 0x07, "CSUM, TSO4 and TSO6 accepted"
    if kernel_at_least(6, 2):  # TUN has offered USO since Linux 6.2
        assert offloads & 0x60 == 0x60, "USO4 and USO6 accepted"
    done = re.search(r"offload reads (\d+) \(malformed (\d+)\)", text)
    assert done, text[-2000:]
    assert int(done.group(1)) > 100, "the kernel sent super-packets"
    assert int(done.group(2)) == 0


UDP_SENDS, UDP_SEGMENTS, UDP_SEGMENT_SIZE = 20, 40, 1200
UDP_GSO_SENDER = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in range({UDP_SENDS}):
    time.sleep(0.02)  # paced: this checks the splitting, not the buffers along the way
    run = b"".join(bytes([(n * {UDP_SEGMENTS} + i) % 251]) * {UDP_SEGMENT_SIZE}
                   for i in range({UDP_SEGMENTS}))
    size = ({UDP_SEGMENT_SIZE}).to_bytes(2, sys.byteorder)
    s.sendmsg([run], [(socket.SOL_UDP, 103, size)], 0, (sys.argv[1], 5300))  # UDP_SEGMENT
"""
UDP_RECEIVER = f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], 5300))
s.settimeout(3)
print("ready", flush=True)
bad = good = 0
try:
    while good + bad < {UDP_SENDS * UDP_SEGMENTS}:
        d = s.recv(65536)
        ok = len(d) == {UDP_SEGMENT_SIZE} and d == d[:1] * len(d)
        good, bad = good + ok, bad + (not ok)
except TimeoutError:
    pass
print("ok", bad, good, flush=True)
"""


def kernel_at_least(major: int, minor: int) -> bool:
    found = re.match(r"(\d+)\.(\d+)", platform.release())
    return bool(found) and (int(found.group(1)), int(found.group(2))) >= (major, minor)
