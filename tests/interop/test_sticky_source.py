"""Sticky source addresses: replies leave from the address the peer wrote to, over IPv4
and IPv6, in single sends and in GSO runs; when that address goes away, the kernel picks
the source again (netns.sh's "saddr routing is sticky but not too sticky").

Host `a` runs wiresnake with two IPv4 and two IPv6 addresses on its one link; host `b`
runs wireguard-go, which roams to the source of every authenticated packet, so its
`wg show endpoints` names the address a's replies came from. nftables counters in `b`
count the datagrams from each of a's addresses as a second witness.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from netlab import Host, NetLab, WgIface, blast, require_root_and_tools

pytestmark = [pytest.mark.netns, pytest.mark.interop]

A_ADDRESSES = ("192.168.50.1", "192.168.50.3", "fd00:aa::1", "fd00:aa::3")
PORT = 51820


def endpoint(address: str) -> str:
    return f"[{address}]:{PORT}" if ":" in address else f"{address}:{PORT}"


@dataclass
class Sticky:
    lab: NetLab
    ha: Host
    hb: Host
    veth_a: str
    a: WgIface
    b: WgIface

    def point_b_at(self, address: str) -> None:
        self.hb.wg("set", self.b.name, "peer", self.a.public, "endpoint", endpoint(address))

    def b_sees(self) -> str:
        """The endpoint b holds for a: the source of a's latest authenticated packet."""
        line = self.hb.wg("show", self.b.name, "endpoints").strip()
        public, _, ep = line.partition("\t")
        assert public == self.a.public
        return ep

    def counts(self) -> dict[str, int]:
        """Datagrams b received on its port, by source address (one of a's)."""
        out = self.hb.run("nft", "list", "chain", "inet", "sticky", "input").stdout
        found = {m[0]: int(m[1]) for m in re.findall(r"saddr (\S+) .*?packets (\d+)", out)}
        assert set(found) == set(A_ADDRESSES), out
        return found

    def only_from(self, address: str, before: dict[str, int]) -> None:
        after = self.counts()
        grew = {a for a in A_ADDRESSES if after[a] > before[a]}
        assert grew == {address}, (before, after)


@pytest.fixture
def sticky() -> Iterator[Sticky]:
    require_root_and_tools("wg", "wireguard-go", "ping", "nft")
    with NetLab() as lab:
        ha, hb = lab.host("a"), lab.host("b")
        veth_a, _ = lab.link(
            ha, hb, "192.168.50.1", "192.168.50.2", v6=("fd00:aa::1", "fd00:aa::2")
        )
        # .3 is the secondary address, so deleting it leaves .1 in place
        ha.run("ip", "addr", "add", "192.168.50.3/24", "dev", veth_a)
        ha.run("ip", "addr", "add", "fd00:aa::3/64", "dev", veth_a, "nodad")
        a = WgIface(lab, ha, "wiresnake", "10.50.0.1", "fd50::1")
        b = WgIface(lab, hb, "wireguard-go", "10.50.0.2", "fd50::2")
        a.add_peer(b)  # no endpoint: a answers wherever b writes from
        b.add_peer(a, endpoint(A_ADDRESSES[0]))
        rules = "table inet sticky {\n chain input {\n  type filter hook input priority 0;\n"
        for address in A_ADDRESSES:
            family = "ip6" if ":" in address else "ip"
            rules += f"  {family} saddr {address} udp dport {PORT} counter\n"
        rules += " }\n}\n"
        hb.run("nft", "-f", "-", input=rules)
        yield Sticky(lab, ha, hb, veth_a, a, b)


def test_replies_leave_from_the_address_the_peer_wrote_to(sticky: Sticky) -> None:
    for address in (*A_ADDRESSES, A_ADDRESSES[0]):
        sticky.point_b_at(address)
        before = sticky.counts()
        assert sticky.hb.ping(sticky.a.tunnel_v4, count=2, wait=3), address
        assert sticky.hb.ping(sticky.a.tunnel_v6, count=1, wait=3), address
        assert sticky.b_sees() == endpoint(address)
        sticky.only_from(address, before)


@pytest.mark.parametrize("address", ["192.168.50.3", "fd00:aa::1"])
def test_a_bulk_transfer_in_gso_runs_keeps_the_source(sticky: Sticky, address: str) -> None:
    sticky.point_b_at(address)
    assert sticky.hb.ping(sticky.a.tunnel_v4, count=1, wait=3)
    before = sticky.counts()
    # a sends: runs of full-sized datagrams to b, which leave in UDP_SEGMENT sends
    blast(sticky.ha, sticky.hb, sticky.b.tunnel_v4, 4 << 20, seed=7)
    assert sticky.b_sees() == endpoint(address)
    sticky.only_from(address, before)


@pytest.mark.parametrize(
    ("gone", "stays"), [("192.168.50.3", "192.168.50.1"), ("fd00:aa::1", "fd00:aa::3")]
)
def test_when_the_sticky_address_goes_the_kernel_picks_another(
    sticky: Sticky, gone: str, stays: str
) -> None:
    sticky.point_b_at(gone)
    assert sticky.hb.ping(sticky.a.tunnel_v4, count=1, wait=3)
    assert sticky.b_sees() == endpoint(gone)
    prefix = 64 if ":" in gone else 24
    sticky.ha.run("ip", "addr", "del", f"{gone}/{prefix}", "dev", sticky.veth_a)
    # a now writes first, from an address that is no longer its own: sendmsg refuses it,
    # and a falls back to the kernel's choice, the one address of that family left
    before = sticky.counts()
    assert sticky.ha.ping(sticky.b.tunnel_v4, count=2, wait=3)
    assert sticky.b_sees() == endpoint(stays)
    sticky.only_from(stays, before)
    # and b, having roamed, is answered from there too
    assert sticky.hb.ping(sticky.a.tunnel_v6, count=1, wait=3)
    assert sticky.b_sees() == endpoint(stays)


def test_an_address_of_another_interface_answers_too(sticky: Sticky) -> None:
    # netns.sh: the address written to is not on the interface the replies leave by
    sticky.ha.run("ip", "addr", "add", "10.60.0.1/32", "dev", "lo")
    sticky.hb.run("ip", "route", "add", "10.60.0.0/24", "via", "192.168.50.1")
    sticky.point_b_at("10.60.0.1")
    before = sticky.counts()
    assert sticky.hb.ping(sticky.a.tunnel_v4, count=2, wait=3)
    assert sticky.b_sees() == endpoint("10.60.0.1")
    assert sticky.counts() == before  # none came from a's addresses on the link


def test_a_new_fwmark_forgets_the_learned_source(sticky: Sticky) -> None:
    # as the kernel: marked packets may be routed elsewhere, so the kernel picks again
    sticky.point_b_at("192.168.50.3")
    assert sticky.hb.ping(sticky.a.tunnel_v4, count=1, wait=3)
    assert sticky.b_sees() == endpoint("192.168.50.3")
    sticky.ha.wg("set", sticky.a.name, "fwmark", "0x1234")
    before = sticky.counts()
    assert sticky.ha.ping(sticky.b.tunnel_v4, count=1, wait=3)
    assert sticky.b_sees() == endpoint("192.168.50.1")
    sticky.only_from("192.168.50.1", before)
