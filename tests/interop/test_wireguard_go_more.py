"""More of wiresnake against wireguard-go: keepalives on the wire, a restarted peer, roaming,
removed peers, `wg syncconf`, wiresnake on both ends, and a hub that forwards between
spokes of both implementations."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import (
    GO_V4_THEN_V6_TRIES,
    Host,
    NetLab,
    Pair,
    WgIface,
    blast,
    genkey,
    require_root_and_tools,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.interop]

KEEPALIVE = 32  # an empty transport message: 16 bytes of header, 16 of tag
INITIATION, RESPONSE = 148, 92


@pytest.fixture
def pair(go_build: str) -> Iterator[Pair]:
    require_root_and_tools("wg", "ping")
    with NetLab() as lab:
        yield Pair(lab, impl_b=go_build)


def latest_handshake(iface: WgIface, other: WgIface) -> int:
    return int(iface.peer_row(other.public)[4])


# ------------------------------------------------------------------ keepalive


def keepalive_on(pair: Pair) -> None:
    """wireguard-go first, so the very first initiation finds it ready."""
    pair.b.add_peer(pair.a, "192.168.50.1:51820")
    pair.a.add_peer(pair.b, "192.168.50.2:51820", "persistent-keepalive", "1")


def test_persistent_keepalive_is_32_bytes_per_interval_on_the_wire(pair: Pair) -> None:
    # no traffic at all: switching the keepalive on must bring up the session by itself
    keepalive_on(pair)
    assert wait_until(lambda: latest_handshake(pair.b, pair.a) > 0, 4), "no handshake"
    time.sleep(0.5)
    rx0 = pair.b.transfer(pair.a.public)[0]
    time.sleep(3.2)
    rx1 = pair.b.transfer(pair.a.public)[0]
    # wireguard-go received one initiation and then only keepalives, one a second
    assert (rx0 - INITIATION) % KEEPALIVE == 0 and rx0 > INITIATION
    assert (rx1 - rx0) % KEEPALIVE == 0
    assert 2 <= (rx1 - rx0) // KEEPALIVE <= 4, rx1 - rx0
    # keepalives are not answered: wiresnake received the handshake response only
    assert pair.a.transfer(pair.b.public)[0] == RESPONSE
    # and both sides count the same bytes
    time.sleep(0.3)
    a_rx, a_tx = pair.a.transfer(pair.b.public)
    b_rx, b_tx = pair.b.transfer(pair.a.public)
    assert abs(a_tx - b_rx) <= KEEPALIVE  # a keepalive may be in flight between the reads
    assert a_rx == b_tx == RESPONSE
    assert pair.a.peer_row(pair.b.public)[7] == "1"


def test_switching_persistent_keepalive_off_stops_the_keepalives(pair: Pair) -> None:
    keepalive_on(pair)
    assert wait_until(lambda: latest_handshake(pair.b, pair.a) > 0, 4)
    pair.ha.wg("set", pair.a.name, "peer", pair.b.public, "persistent-keepalive", "off")
    time.sleep(0.3)
    rx0 = pair.b.transfer(pair.a.public)[0]
    time.sleep(2.5)
    assert pair.b.transfer(pair.a.public)[0] == rx0
    assert pair.a.peer_row(pair.b.public)[7] == "off"


# ------------------------------------------------------------------ restart, roaming


@pytest.mark.parametrize("restarted", ["wireguard-go", "wiresnake"])
def test_a_restarted_side_initiates_and_the_other_answers(pair: Pair, restarted: str) -> None:
    pair.connect()
    assert pair.ha.ping("10.50.0.2", count=1)
    first = latest_handshake(pair.a, pair.b)
    time.sleep(1.1)  # handshake times have one-second resolution
    # a new daemon with the same key and config, knowing nothing of the old session; the
    # other side still holds that session, so the restarted side must speak first
    if restarted == "wireguard-go":
        new, new_host, old, old_host = pair.b, pair.hb, pair.a, pair.ha
        endpoint = "192.168.50.1:51820"
    else:
        new, new_host, old, old_host = pair.a, pair.ha, pair.b, pair.hb
        endpoint = "192.168.50.2:51820"
    new.restart()
    new.add_peer(old, endpoint)
    assert new_host.ping(old.tunnel_v4, count=2)
    assert old_host.ping(new.tunnel_v6, count=2)
    assert latest_handshake(pair.a, pair.b) > first
    assert latest_handshake(pair.b, pair.a) > first


def test_roaming_peer_is_followed_to_its_new_address_and_port(pair: Pair) -> None:
    pair.connect()
    assert pair.ha.ping("10.50.0.2", count=1)
    # wireguard-go's host moves to another address and wireguard-go to another port
    pair.hb.readdress(pair.veth_b, "192.168.50.2", "192.168.50.3")
    pair.hb.wg("set", pair.b.name, "listen-port", "51821")
    assert pair.hb.ping("10.50.0.1", count=2)
    endpoints = pair.ha.wg("show", pair.a.name, "endpoints").split()
    assert endpoints == [pair.b.public, "192.168.50.3:51821"]
    assert pair.ha.ping("10.50.0.2", count=2)
    assert pair.ha.ping("fd50::2", count=2)


def test_roaming_over_to_ipv6(pair: Pair) -> None:
    pair.underlay_v6()
    pair.connect()
    assert pair.ha.ping("10.50.0.2", count=1)
    # wireguard-go now reaches wiresnake over IPv6 only
    pair.hb.wg("set", pair.b.name, "peer", pair.a.public, "endpoint", "[fd77::1]:51820")
    pair.hb.run("ip", "addr", "del", "192.168.50.2/24", "dev", pair.veth_b)
    assert pair.hb.ping("10.50.0.1", count=GO_V4_THEN_V6_TRIES)  # see netlab
    endpoints = pair.ha.wg("show", pair.a.name, "endpoints").split()
    assert endpoints == [pair.b.public, "[fd77::2]:51820"]
    assert pair.ha.ping("10.50.0.2", count=GO_V4_THEN_V6_TRIES)


# ------------------------------------------------------------------ removal, syncconf


def test_sends_the_host_refuses_are_not_counted_as_sent_like_wireguard_go(pair: Pair) -> None:
    # an endpoint behind an "unreachable" route: every send fails at once and nothing
    # leaves the namespace; both implementations must then report 0 bytes sent
    for iface, other in ((pair.a, pair.b), (pair.b, pair.a)):
        iface.host.run("ip", "route", "add", "unreachable", "10.99.0.0/24")
        iface.add_peer(other, "10.99.0.1:51820")
    assert not pair.ha.ping("10.50.0.2", count=2, wait=1)
    assert not pair.hb.ping("10.50.0.1", count=2, wait=1)
    for iface, other in ((pair.a, pair.b), (pair.b, pair.a)):
        row = iface.peer_row(other.public)
        assert row[2] == "10.99.0.1:51820"
        assert row[6] == "0", f"{iface.impl} counted {row[6]} bytes it never sent"
    # once the endpoint is reachable, what is sent is counted again, on both sides alike
    pair.connect()
    assert pair.ha.ping("10.50.0.2", count=3)
    time.sleep(0.5)
    a_row, b_row = pair.a.peer_row(pair.b.public), pair.b.peer_row(pair.a.public)
    assert int(a_row[6]) == int(b_row[5]) > 0
    assert int(b_row[6]) == int(a_row[5]) > 0


def test_a_removed_peer_passes_no_traffic_either_way(pair: Pair) -> None:
    pair.connect()
    assert pair.ha.ping("10.50.0.2", count=1)
    pair.ha.wg("set", pair.a.name, "peer", pair.b.public, "remove")
    assert pair.a.dump()[1:] == []
    b_rx = pair.b.transfer(pair.a.public)[0]
    assert not pair.ha.ping("10.50.0.2", count=2, wait=1)
    # nothing went out for the removed peer
    assert pair.b.transfer(pair.a.public)[0] == b_rx
    # wireguard-go still has the old session; wiresnake must not take its packets
    assert not pair.hb.ping("10.50.0.1", count=2, wait=1)
    # and back: a fresh handshake brings it up again
    pair.a.add_peer(pair.b, "192.168.50.2:51820")
    assert pair.ha.ping("10.50.0.2", count=2)


def write_conf(path: Path, private: str, peers: list[tuple[str, str, str | None]]) -> str:
    text = f"[Interface]\nPrivateKey = {private}\nListenPort = 51820\n"
    for public, allowed, endpoint in peers:
        text += f"\n[Peer]\nPublicKey = {public}\nAllowedIPs = {allowed}\n"
        if endpoint:
            text += f"Endpoint = {endpoint}\n"
    path.write_text(text)
    return str(path)


def test_syncconf_leaves_unchanged_sessions_alone_and_updates_changed_peers(
    pair: Pair, tmp_path: Path
) -> None:
    pair.connect()
    assert pair.ha.ping("10.50.0.2", count=1)
    _, other = genkey()
    _, newcomer = genkey()
    pair.ha.wg("set", pair.a.name, "peer", other, "allowed-ips", "10.50.0.99/32")
    time.sleep(1.1)  # handshake times have one-second resolution
    hs_a, hs_b = latest_handshake(pair.a, pair.b), latest_handshake(pair.b, pair.a)
    counters = pair.b.transfer(pair.a.public)
    b_peer = (pair.b.public, "10.50.0.2/32, fd50::2/128", "192.168.50.2:51820")

    # 1. the configuration it already has: nothing happens at all
    same = write_conf(
        tmp_path / "same.conf", pair.a.private, [b_peer, (other, "10.50.0.99/32", None)]
    )
    pair.ha.wg("syncconf", pair.a.name, same)
    time.sleep(0.3)
    assert pair.b.transfer(pair.a.public) == counters, "syncconf caused traffic"
    assert pair.ha.ping("10.50.0.2", count=2)
    assert latest_handshake(pair.a, pair.b) == hs_a
    assert latest_handshake(pair.b, pair.a) == hs_b

    # 2. B's allowed IPs grow, `other` goes, `newcomer` comes: B's session stays
    changed = write_conf(
        tmp_path / "changed.conf",
        pair.a.private,
        [
            (pair.b.public, "10.50.0.2/32, fd50::2/128, 10.77.0.0/16", "192.168.50.2:51820"),
            (newcomer, "10.50.0.98/32", None),
        ],
    )
    pair.ha.wg("syncconf", pair.a.name, changed)
    allowed = dict(
        line.split("\t") for line in pair.ha.wg("show", pair.a.name, "allowed-ips").splitlines()
    )
    assert allowed == {
        pair.b.public: "10.50.0.2/32 fd50::2/128 10.77.0.0/16",
        newcomer: "10.50.0.98/32",
    }
    assert pair.ha.ping("10.50.0.2", count=2)
    assert latest_handshake(pair.a, pair.b) == hs_a
    assert latest_handshake(pair.b, pair.a) == hs_b


# ------------------------------------------------------------------ wiresnake on both ends


@pytest.fixture
def twin() -> Iterator[Pair]:
    require_root_and_tools("wg", "ping")
    with NetLab() as lab:
        yield Pair(lab, impl_b="wiresnake")


def test_wiresnake_to_wiresnake_pings_and_20_megabytes_byte_exact(twin: Pair) -> None:
    twin.connect()
    assert twin.ha.ping("10.50.0.2")
    assert twin.hb.ping("fd50::1")
    assert twin.ha.ping("fd50::2")
    assert twin.hb.ping("10.50.0.1")
    for src, dst, addr in ((twin.ha, twin.hb, "10.50.0.2"), (twin.hb, twin.ha, "fd50::1")):
        blast(src, dst, addr, 20 << 20, seed=11, timeout=120)
    time.sleep(0.5)
    a_rx, a_tx = twin.a.transfer(twin.b.public)
    b_rx, b_tx = twin.b.transfer(twin.a.public)
    # every byte one side sent, the other received
    assert (a_rx, a_tx) == (b_tx, b_rx)
    assert a_tx > 20 << 20 and b_tx > 20 << 20


# ------------------------------------------------------------------ a hub and three spokes


class Spoke:
    def __init__(self, lab: NetLab, hub: Host, index: int, impl: str) -> None:
        self.host = lab.host(f"s{index}")
        lab.link(hub, self.host, f"192.168.6{index}.1", f"192.168.6{index}.2")
        self.iface = WgIface(lab, self.host, impl, f"10.60.0.1{index}", f"fd60::1{index}")
        self.hub_endpoint = f"192.168.6{index}.1:51820"


def test_hub_forwards_between_spokes_of_both_implementations(go_build: str) -> None:
    require_root_and_tools("wg", "ping", "sysctl")
    with NetLab() as lab:
        hub_host = lab.host("hub")
        spokes = [
            Spoke(lab, hub_host, 1, go_build),
            Spoke(lab, hub_host, 2, go_build),
            Spoke(lab, hub_host, 3, "wiresnake"),
        ]
        hub = WgIface(lab, hub_host, "wiresnake", "10.60.0.1", "fd60::1")
        hub_host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        hub_host.run("sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0")
        hub_host.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for s in spokes:
            # the hub knows no spoke endpoint: it learns them from their keepalives
            hub.add_peer(s.iface)
            s.host.wg(
                "set",
                s.iface.name,
                "peer",
                hub.public,
                "allowed-ips",
                "10.60.0.0/24,fd60::/64",
                "endpoint",
                s.hub_endpoint,
                "persistent-keepalive",
                "25",
            )
        assert wait_until(lambda: all(row[2] != "(none)" for row in hub.dump()[1:]), 5), hub.dump()
        for src in spokes:
            for dst in spokes:
                if src is not dst:
                    assert src.host.ping(dst.iface.tunnel_v4, count=1), (
                        f"{src.iface.impl} -> {dst.iface.impl}"
                    )
        assert spokes[2].host.ping("fd60::11", count=1)
        assert spokes[0].host.ping("fd60::13", count=1)
        # a spoke reaches the hub itself, and no spoke talks to another directly
        assert spokes[0].host.ping("10.60.0.1", count=1)
        for s in spokes:
            assert [row[0] for row in s.iface.dump()[1:]] == [hub.public]


# ------------------------------------------------------------------ wiresnake moves, fwmark


def test_wiresnake_changing_its_port_mid_session_is_followed(pair: Pair) -> None:
    pair.connect()
    assert pair.ha.ping("10.50.0.2", count=1)
    pair.ha.wg("set", pair.a.name, "listen-port", "51830")
    # the session survives the rebind; wireguard-go learns the new port from the next packet
    assert pair.ha.ping("10.50.0.2", count=2)
    assert pair.hb.wg("show", pair.b.name, "endpoints").split() == [
        pair.a.public,
        "192.168.50.1:51830",
    ]
    assert pair.hb.ping("fd50::1", count=2)


def test_fwmark_keeps_a_full_tunnels_own_packets_out_of_it(pair: Pair) -> None:
    """wg-quick's default-route recipe: everything goes into the tunnel except packets that
    carry the interface's fwmark, which must be the tunnel's own UDP datagrams."""
    pair.b.add_peer(pair.a, "192.168.50.1:51820")
    pair.hb.run("ip", "addr", "add", "10.99.0.1/32", "dev", "lo")
    a, ha = pair.a.name, pair.ha
    # the endpoint is reachable only by main's default route, which the rules below hide
    ha.run("ip", "route", "del", "192.168.50.0/24", "dev", pair.veth_a)
    ha.run("ip", "route", "add", "default", "dev", pair.veth_a)
    ha.wg("set", a, "fwmark", "51820")
    ha.wg("set", a, "peer", pair.b.public, "allowed-ips", "0.0.0.0/0", "endpoint",
          "192.168.50.2:51820")  # fmt: skip
    ha.run("ip", "-4", "route", "add", "0.0.0.0/0", "dev", a, "table", "51820")
    ha.run("ip", "-4", "rule", "add", "not", "fwmark", "51820", "table", "51820")
    ha.run("ip", "-4", "rule", "add", "table", "main", "suppress_prefixlength", "0")
    ha.run("sysctl", "-qw", "net.ipv4.conf.all.src_valid_mark=1")
    # 10.99.0.1 is reachable only through the tunnel's default route
    assert ha.ping("10.99.0.1", count=2)
    assert ha.wg("show", a, "fwmark").strip() == "0xca6c"
    # without the mark the datagrams are routed into the tunnel itself (and circle there)
    ha.wg("set", a, "fwmark", "0")
    assert not ha.ping("10.99.0.1", count=1, wait=1)
    # with the mark back, what circled leaves and the tunnel works again
    ha.wg("set", a, "fwmark", "51820")
    assert wait_until(lambda: ha.ping("10.99.0.1", count=1, wait=1), 6)
    time.sleep(0.3)
    tx = pair.a.transfer(pair.b.public)[1]
    time.sleep(0.5)
    assert pair.a.transfer(pair.b.public)[1] == tx, "packets still circling"
