"""Scenarios of the kernel's WireGuard selftest (tools/testing/selftests/wireguard/netns.sh)
that a userspace daemon can pass, run with wiresnake on one side and each wireguard-go build
(`go_build`) on the other, in namespaces configured with the real `wg`.

Ported from netns.sh:
- "the stats counters and timestamper are working": exact `wg show transfer` bytes after
  10 flood pings, here both ways and over both inner families (and the padding they imply).
- the `tests` function with a big MTU (34816 - 1500 + the usual 1420) over an IPv4 and over
  an IPv6 outer transport: pings and TCP through a tunnel whose datagrams the kernel must
  fragment and reassemble (iperf3 runs become byte-exact TCP blasts, to stay fast).
- "roaming works", IPv4 then IPv6: the side that moves here is wiresnake (address, port,
  then family), the other follows (wireguard-go moving is in test_wireguard_go_more).
- "crypto-RP filter works": a more specific peer takes the inner source address, so the
  packets stop, while the endpoint still follows the authenticated datagrams.
- "we can route wg through wg": a second tunnel over the first one.
- "onion routing works, even when it loops": a peer reached through the same interface,
  then its endpoint pointed into the tunnel itself; the daemon must survive the loop.
- the NAT topology: persistent keepalive keeps a masquerading router's UDP mapping (2 s
  conntrack timeout) alive, for wiresnake behind the router and for wiresnake in front of it.
- the allowed-ips set / replace / remove sequence of the configuration part, here with a
  live session whose traffic follows each change.

Left out:
- `ip -stats link` counters: the kernel's device counts encrypted bytes, a TUN counts the
  plain packets; only `wg show transfer` is comparable.
- "route MTUs work with the padding": the kernel pads to the MTU of the packet's route, which
  a TUN reader never learns (wireguard-go pads to the device MTU too). Padding up to the
  device MTU is checked here and in test_daemon.
- the routing loop through a second interface moved to another namespace: a TUN stays with
  its daemon; the loop through one interface (onion) stands for it.
- the ICMP "Destination Host Unreachable" from a NATed packet with no peer: the kernel
  answers from the device, neither userspace daemon generates ICMP.
- wg-quick style policy routing with fwmark: in test_wireguard_go_more, test_wg_quick and
  test_up_down. Peer removal and re-adding, syncconf: in test_wireguard_go_more.
- changing private keys, key clamping, low-order points, sticky source addresses and
  handshake floods: other branches (keys, flood). Netlink split responses, kernel object
  leaks (kmsg), circular namespace references: kernel internals.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from netlab import (
    GO_V4_THEN_V6_TRIES,
    Host,
    NetLab,
    Pair,
    WgIface,
    blast,
    genkey,
    nat_router,
    require_root_and_tools,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.interop]

INITIATION, RESPONSE, KEEPALIVE = 148, 92, 32
OVERHEAD = 32  # transport header and tag around the padded packet


@pytest.fixture
def pair(go_build: str) -> Iterator[Pair]:
    require_root_and_tools("wg", "ping")
    with NetLab() as lab:
        yield Pair(lab, impl_b=go_build)


def padded(size: int, mtu: int = 1420) -> int:
    """A plain packet of `size` bytes as WireGuard pads it: to 16, but never past the MTU."""
    assert size <= mtu
    return min(-(-size // 16) * 16, mtu)


def transport(size: int, mtu: int = 1420) -> int:
    return OVERHEAD + padded(size, mtu)


def flood_ping(host: Host, address: str, count: int = 10, size: int = 56) -> int:
    """`ping -f` as netns.sh runs it; how many answers came."""
    res = host.run("ping", "-f", "-c", str(count), "-W", "1", "-s", str(size), address, check=False)
    found = re.search(r"(\d+) received", res.stdout)
    assert res.returncode == 0 and found, res.stdout + res.stderr
    return int(found.group(1))


def transfers(pair: Pair) -> tuple[tuple[int, int], tuple[int, int]]:
    return pair.a.transfer(pair.b.public), pair.b.transfer(pair.a.public)


# ------------------------------------------------------------------ counters


def test_transfer_counters_are_exact_after_flood_pings_both_ways(pair: Pair) -> None:
    pair.connect()
    flood_ping(pair.ha, "10.50.0.2")
    time.sleep(0.3)
    (a_rx, a_tx), (b_rx, b_tx) = transfers(pair)
    # 10 echo requests of 84 bytes (96 padded) each way, and the handshake wiresnake began;
    # the initiator may add one keepalive, as netns.sh allows (1428 or 1460)
    data = 10 * transport(84)
    assert data == 1280
    assert a_rx == b_tx == RESPONSE + data
    assert a_tx == b_rx and a_tx in (INITIATION + data, INITIATION + data + KEEPALIVE), a_tx
    for iface, other in ((pair.a, pair.b), (pair.b, pair.a)):
        assert int(iface.peer_row(other.public)[4]) > 0, "no handshake time"
    # then each side pings over IPv6 (104 bytes, 112 padded), and B over IPv4, all on the
    # same session
    for host, address, size in (
        (pair.hb, "fd50::1", 104),
        (pair.ha, "fd50::2", 104),
        (pair.hb, "10.50.0.1", 84),
    ):
        before = transfers(pair)
        flood_ping(host, address)
        time.sleep(0.3)
        after = transfers(pair)
        step = 10 * transport(size)
        for (rx0, tx0), (rx1, tx1) in zip(before, after, strict=True):
            assert (rx1 - rx0, tx1 - tx0) == (step, step), (address, before, after)


def test_padding_stops_at_the_mtu_on_both_sides(pair: Pair) -> None:
    pair.connect()
    assert pair.ha.ping("10.50.0.2", count=1)
    time.sleep(0.3)
    # 1000 + 28 pads to 1040; 1385 + 28 = 1413 would pad to 1424 but stops at the MTU,
    # 1420; 1392 + 28 is the MTU itself and is not padded at all
    for size, expected in ((1000, 1040), (1385, 1420), (1392, 1420)):
        assert padded(size + 28) == expected
        before = transfers(pair)
        flood_ping(pair.ha, "10.50.0.2", count=3, size=size)
        flood_ping(pair.hb, "10.50.0.1", count=3, size=size)
        time.sleep(0.3)
        after = transfers(pair)
        step = 6 * (OVERHEAD + expected)
        for (rx0, tx0), (rx1, tx1) in zip(before, after, strict=True):
            assert (rx1 - rx0, tx1 - tx0) == (step, step), (size, before, after)


# ------------------------------------------------------------------ big MTU, fragments

BIG_MTU = 34816 - 1500 + 1420


@pytest.mark.parametrize("outer", ["ipv4", "ipv6"])
def test_big_mtu_tunnel_over_fragmented_datagrams(pair: Pair, outer: str) -> None:
    if outer == "ipv6":
        pair.underlay_v6()
        pair.a.add_peer(pair.b, "[fd77::2]:51820")
        pair.b.add_peer(pair.a, "[fd77::1]:51820")
    else:
        pair.connect()
    for iface in (pair.a, pair.b):
        iface.host.run("ip", "link", "set", "dev", iface.name, "mtu", str(BIG_MTU))
    # each of these leaves as one datagram of about 30 kB, in 21 fragments on the veth; the
    # very first, sent at once, must already pass: the MTU is followed without delay
    for host, address in (
        (pair.ha, "10.50.0.2"),
        (pair.hb, "10.50.0.1"),
        (pair.ha, "fd50::2"),
        (pair.hb, "fd50::1"),
    ):
        res = host.run(
            "ping", "-c", "2", "-i", "0.2", "-W", "3", "-M", "do", "-s", "30000", address,
            check=False,
        )  # fmt: skip
        assert " 0% packet loss" in res.stdout, f"{address}: {res.stdout}{res.stderr}"
    # padded to 16 and no further, on both sides' counters (counted in whole packets: on a
    # busy machine a fragment, and so a whole datagram, may be lost on the way)
    before = transfers(pair)
    received = flood_ping(pair.ha, "10.50.0.2", size=20000)
    time.sleep(0.3)
    after = transfers(pair)
    sent, got = after[0][1] - before[0][1], after[1][0] - before[1][0]
    one = transport(20028, BIG_MTU)
    assert one == 20064 and sent % one == 0 and got % one == 0, (sent, got)
    assert sent >= got >= received * one > 0, (sent, got, received)
    # TCP segments of up to the big MTU, byte-exact both ways
    blast(pair.ha, pair.hb, "10.50.0.2", 8 << 20, seed=21, timeout=120)
    blast(pair.hb, pair.ha, "fd50::1", 8 << 20, seed=22, timeout=120)
    expected = "[fd77::2]:51820" if outer == "ipv6" else "192.168.50.2:51820"
    assert pair.a.peer_row(pair.b.public)[2] == expected


# ------------------------------------------------------------------ roaming


def test_wiresnake_roams_to_a_new_address_and_port_then_to_ipv6(pair: Pair) -> None:
    pair.connect()
    assert pair.ha.ping("10.50.0.2", count=1)
    # IPv4: another address and another port; wireguard-go follows the first packet
    pair.ha.readdress(pair.veth_a, "192.168.50.1", "192.168.50.9")
    pair.ha.wg("set", pair.a.name, "listen-port", "9999")
    pair.ha.wg("set", pair.a.name, "peer", pair.b.public, "endpoint", "192.168.50.2:51820")
    assert pair.ha.ping("fd50::2", count=1)
    assert pair.b.endpoints() == [pair.a.public, "192.168.50.9:9999"]
    # IPv6: another port again, and the peer now reached over IPv6
    pair.underlay_v6()
    pair.ha.wg("set", pair.a.name, "listen-port", "9998")
    pair.ha.wg("set", pair.a.name, "peer", pair.b.public, "endpoint", "[fd77::2]:51820")
    # one answer out of ten is what can be asked of wireguard-go here (GO_V4_THEN_V6)
    assert pair.ha.ping("10.50.0.2", count=GO_V4_THEN_V6_TRIES)
    assert pair.b.endpoints() == [pair.a.public, "[fd77::1]:9998"]
    # and wireguard-go's own pings reach the new place
    assert pair.hb.ping("10.50.0.1", count=GO_V4_THEN_V6_TRIES)


# ------------------------------------------------------------------ crypto-RP filter

UDP_LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 1111))
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    print(s.recv(100).decode(), flush=True)
except TimeoutError:
    print("nothing", flush=True)
"""
UDP_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(b"X", (sys.argv[1], 1111))
    time.sleep(0.1)
"""


def udp_arrives(src: Host, dst: Host, address: str, wait: float = 1.5) -> bool:
    """One datagram (sent three times) from `src` to `address`:1111 in `dst`: did it come?"""
    listener = dst.popen(
        sys.executable, "-c", UDP_LISTEN, address, str(wait), stdout=subprocess.PIPE, text=True
    )
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "ready"
    src.run(sys.executable, "-c", UDP_SEND, address)
    got = listener.stdout.readline().strip()
    listener.wait(10)
    return got == "X"


def test_crypto_rp_filter_follows_the_most_specific_peer(pair: Pair) -> None:
    pair.connect()
    pair.ha.wg("set", pair.a.name, "peer", pair.b.public, "allowed-ips", "10.50.0.0/24")
    assert udp_arrives(pair.hb, pair.ha, "10.50.0.1")
    # another peer now owns 10.50.0.2: wireguard-go's packets from it are refused inside
    _, more_specific = genkey()
    pair.ha.wg("set", pair.a.name, "peer", more_specific, "allowed-ips", "10.50.0.2/32")
    pair.hb.wg("set", pair.b.name, "listen-port", "9997")
    assert not udp_arrives(pair.hb, pair.ha, "10.50.0.1")
    pair.ha.wg("set", pair.a.name, "peer", more_specific, "remove")
    # they were authentic all the same: the endpoint followed them to the new port
    assert pair.a.endpoints() == [pair.b.public, "192.168.50.2:9997"]
    assert udp_arrives(pair.hb, pair.ha, "10.50.0.1")


# ------------------------------------------------------------------ allowed ips


def allowed_ips(iface: WgIface, public: str) -> str:
    for line in iface.host.wg("show", iface.name, "allowed-ips").splitlines():
        key, _, ips = line.partition("\t")
        if key == public:
            return ips
    raise AssertionError(f"no peer {public} on {iface.name}")


def test_allowed_ips_replaced_and_removed_under_a_live_session(pair: Pair) -> None:
    pair.connect()
    assert pair.ha.ping("10.50.0.2", count=1)
    hs = pair.a.peer_row(pair.b.public)[4]
    a, b_key = pair.a, pair.b.public

    def set_ips(ips: str) -> None:
        pair.ha.wg("set", a.name, "peer", b_key, "allowed-ips", ips)

    # the selftest's overlapping sets: each replaces the one before, and traffic follows
    set_ips("0.0.0.0/0,10.0.0.0/8,100.0.0.0/10,172.16.0.0/12,192.168.0.0/16")
    assert allowed_ips(a, b_key) == (
        "0.0.0.0/0 10.0.0.0/8 100.0.0.0/10 172.16.0.0/12 192.168.0.0/16"
    )
    assert pair.ha.ping("10.50.0.2", count=1) and pair.hb.ping("10.50.0.1", count=1)
    assert not pair.ha.ping("fd50::2", count=1, wait=1), "IPv6 went to a peer without it"
    set_ips("0.0.0.0/0")
    set_ips("::/0,1700::/111,5000::/4,e000::/37,9000::/75")
    assert allowed_ips(a, b_key) == "::/0 1700::/111 5000::/4 e000::/37 9000::/75"
    assert pair.ha.ping("fd50::2", count=1) and pair.hb.ping("fd50::1", count=1)
    assert not pair.ha.ping("10.50.0.2", count=1, wait=1)
    set_ips("::/0")
    assert allowed_ips(a, b_key) == "::/0"
    # none at all: nothing goes to the peer and nothing from it is let in
    set_ips("")
    assert allowed_ips(a, b_key) == "(none)"
    tx = pair.a.transfer(b_key)[1]
    assert not pair.ha.ping("10.50.0.2", count=1, wait=1)
    assert pair.a.transfer(b_key)[1] == tx
    assert not pair.hb.ping("10.50.0.1", count=1, wait=1)
    # back again, on the same session
    set_ips("10.50.0.2/32,fd50::2/128")
    assert pair.ha.ping("10.50.0.2", count=1) and pair.hb.ping("fd50::1", count=1)
    assert pair.a.peer_row(pair.b.public)[4] == hs, "a new handshake was needed"


# ------------------------------------------------------------------ wg through wg, onion


def test_a_tunnel_through_the_tunnel(pair: Pair) -> None:
    pair.connect()
    inner_a = WgIface(pair.lab, pair.ha, "wiresnake", "10.54.0.1", "fd54::1", port=5)
    inner_b = WgIface(pair.lab, pair.hb, pair.b.impl, "10.54.0.2", "fd54::2", port=5)
    inner_a.add_peer(inner_b, "[fd50::2]:5")
    inner_b.add_peer(inner_a, "[fd50::1]:5")
    for iface in (inner_a, inner_b):
        iface.host.run("ip", "link", "set", "dev", iface.name, "mtu", "1340")
    for host, address in ((pair.ha, "10.54.0.2"), (pair.hb, "fd54::1")):
        assert host.ping(address, count=2), address
    blast(pair.ha, pair.hb, "10.54.0.2", 4 << 20, seed=31, timeout=120)
    blast(pair.hb, pair.ha, "fd54::1", 4 << 20, seed=32, timeout=120)
    # every inner datagram went through the outer tunnel
    inner_tx = inner_a.transfer(inner_b.public)[1]
    assert pair.a.transfer(pair.b.public)[1] > inner_tx > 4 << 20


def test_onion_through_one_interface_and_the_loop_it_can_make(pair: Pair) -> None:
    pair.connect()
    # a second wireguard-go interface behind B, reached through A's own tunnel to B
    onion = WgIface(pair.lab, pair.hb, pair.b.impl, "10.52.0.2", "fd52::2", port=5)
    pair.ha.run("ip", "addr", "add", "10.52.0.1/24", "dev", pair.a.name)
    pair.ha.wg(
        "set", pair.a.name, "peer", onion.public, "allowed-ips", "10.52.0.2/32",
        "endpoint", "10.50.0.2:5",
    )  # fmt: skip
    pair.hb.wg("set", onion.name, "peer", pair.a.public, "allowed-ips", "10.52.0.1/32")
    assert pair.ha.ping("10.52.0.2", count=2)
    assert onion.peer_row(pair.a.public)[2] == "10.50.0.1:51820"
    # the onion goes away and its endpoint points into the tunnel it carries: every
    # datagram for it comes back to the daemon to be sent for it again
    pair.lab.stop(onion.proc)
    pair.ha.wg("set", pair.a.name, "peer", onion.public, "endpoint", "10.52.0.2:5")
    assert not pair.ha.ping("10.52.0.2", count=1, wait=1)
    pair.ha.wg("set", pair.a.name, "peer", onion.public, "remove")
    assert pair.a.proc.poll() is None, "the loop ended the daemon"
    # nothing circles any more, and the tunnel to B still works
    assert wait_until(lambda: tun_quiet(pair.ha, pair.a.name), 5), "still circling"
    assert pair.ha.ping("10.50.0.2", count=2)
    assert pair.hb.ping("fd50::1", count=1)


def tun_quiet(host: Host, name: str) -> bool:
    """No packet entered the interface `name` for a quarter second."""

    def tx_packets() -> int:
        stats = host.run("cat", f"/sys/class/net/{name}/statistics/tx_packets").stdout
        return int(stats)

    first = tx_packets()
    time.sleep(0.25)
    return tx_packets() == first


# ------------------------------------------------------------------ NAT, keepalive

ROUTER_INSIDE, ROUTER_OUTSIDE = "192.168.1.1", "10.0.0.1"
CLIENT, SERVER = "192.168.1.100", "10.0.0.100"


@pytest.mark.parametrize(
    "behind", ["wiresnake", "go"], ids=["wiresnake-behind-nat", "go-behind-nat"]
)
def test_keepalive_holds_a_masquerading_routers_mapping(go_build: str, behind: str) -> None:
    """C sits behind router R, which masquerades C's datagrams to server S and forgets a
    mapping 2 s after its last packet; C's persistent keepalive is what keeps S able to
    reach C. `behind` is the implementation on C."""
    require_root_and_tools("wg", "ping", "nft", "sysctl")
    with NetLab() as lab:
        hc, hr, hs = lab.host("c"), lab.host("r"), lab.host("s")
        lab.link(hc, hr, CLIENT, ROUTER_INSIDE)
        r_out, _ = lab.link(hr, hs, ROUTER_OUTSIDE, SERVER)  # the end in R
        hc.run("ip", "route", "add", "default", "via", ROUTER_INSIDE)
        nat_router(hr, "192.168.1.0/24", r_out, udp_timeout=2)
        impls = ("wiresnake", go_build) if behind == "wiresnake" else (go_build, "wiresnake")
        c = WgIface(lab, hc, impls[0], "10.53.0.1", "fd53::1")
        s = WgIface(lab, hs, impls[1], "10.53.0.2", "fd53::2")
        s.add_peer(c)  # S knows no endpoint for C: it learns the router's
        c.add_peer(s, f"{SERVER}:51820", "persistent-keepalive", "1")
        assert hc.ping("10.53.0.2", count=1)
        assert hs.ping("10.53.0.1", count=1)
        endpoint = s.peer_row(c.public)[2]
        assert endpoint.startswith(f"{ROUTER_OUTSIDE}:"), endpoint
        time.sleep(3)  # past the mapping's timeout: only the keepalives kept it
        assert hs.ping("10.53.0.1", count=1, wait=1)
        assert s.peer_row(c.public)[2] == endpoint
        # without them the mapping goes, and S's packets with it
        hc.wg("set", c.name, "peer", s.public, "persistent-keepalive", "0")
        time.sleep(3)
        assert not hs.ping("10.53.0.1", count=1, wait=1), "the mapping outlived its timeout"
