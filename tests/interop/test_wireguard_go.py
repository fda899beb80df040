"""wiresnake against wireguard-go, each in its own namespace, configured with the real `wg`."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from netlab import NetLab, Pair, blast, require_root_and_tools

pytestmark = [pytest.mark.netns, pytest.mark.interop]


@pytest.fixture
def pair() -> Iterator[Pair]:
    require_root_and_tools("wg", "wireguard-go", "ping")
    with NetLab() as lab:
        yield Pair(lab)


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
