"""The allowed-IPs table: scenarios, the kernel selftest's answers, and a naive model."""

from __future__ import annotations

import ipaddress
import struct
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiresnake.protocol.allowedips import AllowedIPs, Network, parse_network


class Peer:
    """Identity-compared stand-in for a peer."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Peer({self.name})"


def a(text: str) -> bytes:
    return ip_address(text).packed


def ip4(w: int, x: int, y: int, z: int) -> bytes:
    return bytes((w, x, y, z))


def ip6(w: int, x: int, y: int, z: int) -> bytes:
    return struct.pack("!4I", w, x, y, z)


def net4(w: int, x: int, y: int, z: int, cidr: int) -> IPv4Network:
    return IPv4Network((ip4(w, x, y, z), cidr), strict=False)


def net6(w: int, x: int, y: int, z: int, cidr: int) -> IPv6Network:
    return IPv6Network((ip6(w, x, y, z), cidr), strict=False)


# -- scenarios ---------------------------------------------------------------------------


def test_ipv4_longest_prefix() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p8, p16, p24, p32 = Peer("8"), Peer("16"), Peer("24"), Peer("32")
    t.insert("10.0.0.0/8", p8)
    t.insert("10.1.0.0/16", p16)
    t.insert("10.1.1.0/24", p24)
    t.insert("10.1.1.1/32", p32)
    assert t.lookup(a("10.1.1.1")) is p32
    assert t.lookup(a("10.1.1.2")) is p24
    assert t.lookup(a("10.1.2.1")) is p16
    assert t.lookup(a("10.2.0.0")) is p8
    assert t.lookup(a("10.255.255.255")) is p8
    assert t.lookup(a("11.0.0.0")) is None
    assert t.lookup(a("9.255.255.255")) is None
    assert len(t) == 4


def test_ipv6_longest_prefix() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p32, p48, p64, p128 = Peer("32"), Peer("48"), Peer("64"), Peer("128")
    t.insert("2001:db8::/32", p32)
    t.insert("2001:db8:1::/48", p48)
    t.insert("2001:db8:1:2::/64", p64)
    t.insert("2001:db8:1:2::7/128", p128)
    assert t.lookup(a("2001:db8:1:2::7")) is p128
    assert t.lookup(a("2001:db8:1:2::8")) is p64
    assert t.lookup(a("2001:db8:1:3::7")) is p48
    assert t.lookup(a("2001:db8:2::")) is p32
    assert t.lookup(a("2001:db9::")) is None
    assert len(t) == 4


def test_default_routes_are_per_family() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    v4, v6 = Peer("v4"), Peer("v6")
    t.insert("0.0.0.0/0", v4)
    assert t.lookup(a("1.2.3.4")) is v4
    assert t.lookup(a("255.255.255.255")) is v4
    assert t.lookup(a("::1")) is None
    t.insert("::/0", v6)
    assert t.lookup(a("::")) is v6
    assert t.lookup(a("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")) is v6
    assert t.lookup(a("0.0.0.0")) is v4
    # An IPv4-mapped IPv6 address is IPv6 here, as in the kernel.
    assert t.lookup(a("::ffff:1.2.3.4")) is v6


def test_host_prefixes_are_exact() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p, q = Peer("p"), Peer("q")
    t.insert("192.0.2.1/32", p)
    t.insert("2001:db8::1/128", q)
    assert t.lookup(a("192.0.2.1")) is p
    assert t.lookup(a("192.0.2.0")) is None
    assert t.lookup(a("192.0.2.2")) is None
    assert t.lookup(a("2001:db8::1")) is q
    assert t.lookup(a("2001:db8::")) is None
    assert t.lookup(a("2001:db8::2")) is None


def test_bare_address_is_a_host_prefix() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p = Peer("p")
    t.insert("192.0.2.1", p)
    t.insert("2001:db8::1", p)
    assert t.networks_for(p) == [ip_network("192.0.2.1/32"), ip_network("2001:db8::1/128")]


def test_host_bits_are_masked_off() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p, q = Peer("p"), Peer("q")
    t.insert("10.1.2.3/8", p)
    t.insert(" 2001:db8::1:2:3/64 ", p)
    assert t.networks_for(p) == [ip_network("10.0.0.0/8"), ip_network("2001:db8::/64")]
    # The same prefix written with other host bits is the same prefix.
    t.insert("10.200.0.0/8", q)
    assert len(t) == 2
    assert t.networks_for(q) == [ip_network("10.0.0.0/8")]


def test_accepts_network_objects() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p = Peer("p")
    t.insert(IPv4Network("10.0.0.0/24"), p)
    t.insert(IPv6Network("fd00::/8"), p)
    assert t.lookup(a("10.0.0.9")) is p
    assert t.lookup(a("fd12::1")) is p
    assert t.remove(IPv4Network("10.0.0.0/24"), p)
    assert t.lookup(a("10.0.0.9")) is None


def test_overwrite_moves_ownership() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p, q = Peer("p"), Peer("q")
    t.insert("10.0.0.0/24", p)
    t.insert("10.0.1.0/24", p)
    t.insert("10.0.0.0/24", q)
    assert t.lookup(a("10.0.0.1")) is q
    assert t.lookup(a("10.0.1.1")) is p
    assert t.networks_for(p) == [ip_network("10.0.1.0/24")]
    assert t.networks_for(q) == [ip_network("10.0.0.0/24")]
    assert len(t) == 2
    # Re-inserting a prefix its owner already has changes nothing, order included.
    t.insert("10.0.2.0/24", q)
    t.insert("10.0.0.0/24", q)
    assert t.networks_for(q) == [ip_network("10.0.0.0/24"), ip_network("10.0.2.0/24")]
    assert len(t) == 3


def test_remove_only_by_owner() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p, q = Peer("p"), Peer("q")
    t.insert("10.0.0.0/8", p)
    t.insert("10.0.0.0/16", q)
    assert not t.remove("10.0.0.0/16", p)
    assert t.lookup(a("10.0.0.1")) is q
    assert not t.remove("10.0.0.0/24", q)  # not a prefix in the table
    assert not t.remove("2001:db8::/32", q)
    assert t.remove("10.0.0.0/16", q)
    assert not t.remove("10.0.0.0/16", q)
    assert t.lookup(a("10.0.0.1")) is p
    assert t.networks_for(q) == []
    assert len(t) == 1
    assert t.remove("10.9.9.9/8", p)  # host bits masked here too
    assert len(t) == 0
    assert t.lookup(a("10.0.0.1")) is None
    # Emptied prefix lengths are no longer probed.
    assert not t._levels4 and not t._levels6 and not t._tables


def test_remove_by_value() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p, q = Peer("p"), Peer("q")
    for cidr in ("10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32", "0.0.0.0/0"):
        t.insert(cidr, p)
    t.insert("10.1.1.0/24", q)
    t.remove_by_value(p)
    assert len(t) == 1
    assert t.networks_for(p) == []
    assert t.lookup(a("10.1.1.1")) is q
    assert t.lookup(a("10.1.2.1")) is None
    assert t.lookup(a("2001:db8::1")) is None
    t.remove_by_value(p)  # nothing left: a no-op
    t.remove_by_value(Peer("stranger"))
    assert len(t) == 1


def test_cache_invalidated_by_every_change() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p, q = Peer("p"), Peer("q")
    addr = a("10.1.2.3")
    assert t.lookup(addr) is None  # a cached miss
    t.insert("10.0.0.0/8", p)
    assert t.lookup(addr) is p
    assert t.lookup(addr) is p  # now a cached hit
    t.insert("10.1.2.0/24", q)
    assert t.lookup(addr) is q
    t.insert("10.1.2.0/24", p)  # ownership moves
    assert t.lookup(addr) is p
    assert t.remove("10.1.2.0/24", p)
    assert t.lookup(addr) is p  # falls back to the /8
    t.insert("10.1.2.3/32", q)
    assert t.lookup(addr) is q
    t.remove_by_value(q)
    assert t.lookup(addr) is p
    t.clear()
    assert t.lookup(addr) is None
    assert len(t) == 0


def test_cache_is_bounded() -> None:
    t: AllowedIPs[Peer] = AllowedIPs(cache_size=8)
    p = Peer("p")
    t.insert("10.0.0.0/8", p)
    for i in range(100):
        assert t.lookup(bytes((10, 0, 0, i))) is p
        assert t.lookup(bytes((11, 0, 0, i))) is None
    assert len(t._cache) <= 8


def test_lookup_with_read_only_memoryview() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p = Peer("p")
    t.insert("192.0.2.0/24", p)
    packet = bytes(12) + a("198.51.100.1") + a("192.0.2.77")
    view = memoryview(packet)
    assert t.lookup(view[16:20]) is p  # type: ignore[arg-type]
    assert t.lookup(view[16:20]) is p  # type: ignore[arg-type]
    assert t.lookup(view[12:16]) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 3, 5, 15, 17, 32])
def test_lookup_bad_length(size: int) -> None:
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        AllowedIPs[Peer]().lookup(bytes(size))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "foo",
        "10.0.0.0/33",
        "10.0.0.256/8",
        "010.0.0.0/8",
        "10.0.0.0/-1",
        "10.0.0.0/",
        "10.0.0.0/255.0.0.0",
        "::/129",
        "10.0.0.0/8/8",
        "1::2::3",
        "fe80::1%eth0/64",
    ],
)
def test_bad_cidr(bad: str) -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    with pytest.raises(ValueError, match="invalid allowed IP") as info:
        t.insert(bad, Peer("p"))
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="invalid allowed IP"):
        t.remove(bad, Peer("p"))
    assert len(t) == 0


def test_zone_index_is_refused() -> None:
    with pytest.raises(ValueError, match="zone index"):
        AllowedIPs[Peer]().insert("fe80::1%eth0/64", Peer("p"))


_cidr_pieces = st.one_of(
    st.sampled_from(["0", "1", "9", "10", "010", "255", "256", "1000", "00", "ff", "FFFF", "g"]),
    st.sampled_from([".", ":", "::", "/", " ", "%", "-", "+", "_", "\x00", "\u0663", "²"]),
    st.integers(0, 2**32 - 1).map(lambda x: str(ipaddress.IPv4Address(x))),
    st.integers(0, 2**128 - 1).map(lambda x: str(ipaddress.IPv6Address(x))),
    st.integers(0, 2**128 - 1).map(lambda x: ipaddress.IPv6Address(x).exploded),
    st.integers(0, 2**32 - 1).map(lambda x: f"::ffff:{ipaddress.IPv4Address(x)}"),
    st.integers(-1, 200).map(lambda n: f"/{n}"),
    st.integers(0, 32).map(lambda n: f"/{ipaddress.IPv4Network((0, n)).netmask}"),
)


@settings(max_examples=500, deadline=None)
@given(pieces=st.lists(_cidr_pieces, min_size=1, max_size=4))
def test_string_parsing_agrees_with_ipaddress(pieces: list[str]) -> None:
    """insert() parses strings on a fast path; it must accept exactly what ipaddress does
    (zone indexes and netmasks aside) and mean the same prefix."""
    text = "".join(pieces)
    try:
        expected: Network | None = ip_network(text.strip(), strict=False)
    except ValueError:
        expected = None
    _, slash, plen = text.strip().partition("/")
    if "%" in text or (slash and not (plen.isascii() and plen.isdigit())):
        expected = None  # zone indexes and netmasks: ipaddress takes them, wg does not
    t: AllowedIPs[Peer] = AllowedIPs()
    p = Peer("p")
    if expected is None:
        with pytest.raises(ValueError, match="invalid allowed IP"):
            t.insert(text, p)
    else:
        t.insert(text, p)
        assert t.networks_for(p) == [expected]


def test_bad_arguments() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    with pytest.raises(TypeError):
        t.insert(ipaddress.ip_address("10.0.0.1"), Peer("p"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        t.insert("10.0.0.0/8", None)  # type: ignore[arg-type]
    u: AllowedIPs[list[int]] = AllowedIPs()
    with pytest.raises(TypeError):
        u.insert("10.0.0.0/8", [1])  # unhashable: refused before any change
    assert len(u) == 0
    assert u.lookup(a("10.0.0.1")) is None
    with pytest.raises(ValueError):
        AllowedIPs(cache_size=0)


def test_parse_network() -> None:
    assert parse_network("10.1.2.3/8") == ip_network("10.0.0.0/8")
    assert parse_network("fe80::1") == ip_network("fe80::1/128")
    net = ip_network("10.0.0.0/8")
    assert parse_network(net) is net


def test_networks_for_insertion_order_and_clear() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p = Peer("p")
    cidrs = ["192.168.0.0/16", "::/0", "10.0.0.1/32", "fd00::/8", "0.0.0.0/0", "10.0.0.0/8"]
    for cidr in cidrs:
        t.insert(cidr, p)
    assert t.networks_for(p) == [ip_network(c) for c in cidrs]
    t.remove("fd00::/8", p)
    t.insert("fd00::/8", p)
    assert t.networks_for(p)[-1] == ip_network("fd00::/8")
    assert len(t) == len(cidrs)
    t.clear()
    assert len(t) == 0
    assert t.networks_for(p) == []
    assert t.lookup(a("10.0.0.1")) is None
    t.insert("10.0.0.0/8", p)
    assert t.lookup(a("10.0.0.1")) is p


def test_kernel_selftest_answers() -> None:
    """The inserts and look-ups of the kernel's selftest/allowedips.c."""
    t: AllowedIPs[Peer] = AllowedIPs()
    pa, pb, pc, pd, pe, pf, pg, ph = (Peer(x) for x in "abcdefgh")
    t.insert(net4(192, 168, 4, 0, 24), pa)
    t.insert(net4(192, 168, 4, 4, 32), pb)
    t.insert(net4(192, 168, 0, 0, 16), pc)
    t.insert(net4(192, 95, 5, 64, 27), pd)
    t.insert(net4(192, 95, 5, 65, 27), pc)  # same prefix after masking: replaces d
    t.insert(net6(0x26075300, 0x60006B00, 0, 0xC05F0543, 128), pd)
    t.insert(net6(0x26075300, 0x60006B00, 0, 0, 64), pc)
    t.insert(net4(0, 0, 0, 0, 0), pe)
    t.insert(net6(0, 0, 0, 0, 0), pe)
    t.insert(net6(0, 0, 0, 0, 0), pf)  # replaces e
    t.insert(net6(0x24046800, 0, 0, 0, 32), pg)
    t.insert(net6(0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF, 64), ph)
    t.insert(net6(0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF, 128), pa)
    t.insert(net6(0x24446800, 0x40E40800, 0xDEAEBEEF, 0x0DEFBEEF, 128), pc)
    t.insert(net6(0x24446800, 0xF0E40800, 0xEEAEBEEF, 0, 98), pb)
    t.insert(net4(64, 15, 112, 0, 20), pg)
    t.insert(net4(64, 15, 123, 211, 25), ph)
    t.insert(net4(10, 0, 0, 0, 25), pa)
    t.insert(net4(10, 0, 0, 128, 25), pb)
    t.insert(net4(10, 1, 0, 0, 30), pa)
    t.insert(net4(10, 1, 0, 4, 30), pb)
    t.insert(net4(10, 1, 0, 8, 29), pc)
    t.insert(net4(10, 1, 0, 16, 29), pd)

    cases: list[tuple[Peer, bytes]] = [
        (pa, ip4(192, 168, 4, 20)),
        (pa, ip4(192, 168, 4, 0)),
        (pb, ip4(192, 168, 4, 4)),
        (pc, ip4(192, 168, 200, 182)),
        (pc, ip4(192, 95, 5, 68)),
        (pe, ip4(192, 95, 5, 96)),
        (pd, ip6(0x26075300, 0x60006B00, 0, 0xC05F0543)),
        (pc, ip6(0x26075300, 0x60006B00, 0, 0xC02E01EE)),
        (pf, ip6(0x26075300, 0x60006B01, 0, 0)),
        (pg, ip6(0x24046800, 0x40040806, 0, 0x1006)),
        (pg, ip6(0x24046800, 0x40040806, 0x1234, 0x5678)),
        (pf, ip6(0x240467FF, 0x40040806, 0x1234, 0x5678)),
        (pf, ip6(0x24046801, 0x40040806, 0x1234, 0x5678)),
        (ph, ip6(0x24046800, 0x40040800, 0x1234, 0x5678)),
        (ph, ip6(0x24046800, 0x40040800, 0, 0)),
        (ph, ip6(0x24046800, 0x40040800, 0x10101010, 0x10101010)),
        (pa, ip6(0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF)),
        (pg, ip4(64, 15, 116, 26)),
        (pg, ip4(64, 15, 127, 3)),
        (pg, ip4(64, 15, 123, 1)),
        (ph, ip4(64, 15, 123, 128)),
        (ph, ip4(64, 15, 123, 129)),
        (pa, ip4(10, 0, 0, 52)),
        (pb, ip4(10, 0, 0, 220)),
        (pa, ip4(10, 1, 0, 2)),
        (pb, ip4(10, 1, 0, 6)),
        (pc, ip4(10, 1, 0, 10)),
        (pd, ip4(10, 1, 0, 20)),
    ]
    got = [(t.lookup(addr), addr) for _, addr in cases]
    assert got == cases

    for first in (1, 64, 128, 192, 255):
        t.insert(net4(first, 0, 0, 0, 32), pa)
    t.remove_by_value(pa)
    for first in (1, 64, 128, 192, 255):
        assert t.lookup(ip4(first, 0, 0, 0)) is not pa

    t = AllowedIPs()
    t.insert(net4(192, 168, 0, 0, 16), pa)
    t.insert(net4(192, 168, 0, 0, 24), pa)
    t.remove_by_value(pa)
    assert t.lookup(ip4(192, 168, 0, 1)) is None

    t = AllowedIPs()
    t.insert(net4(192, 95, 5, 93, 27), pa)
    t.insert(net6(0x26075300, 0x60006B00, 0, 0xC05F0543, 128), pa)
    t.insert(net4(10, 1, 0, 20, 29), pa)
    t.insert(net6(0x26075300, 0x6D8A6BF8, 0xDAB1F1DF, 0xC05F1523, 83), pa)
    t.insert(net6(0x26075300, 0x6D8A6BF8, 0xDAB1F1DF, 0xC05F1523, 21), pa)
    assert t.networks_for(pa) == [
        net4(192, 95, 5, 64, 27),
        net6(0x26075300, 0x60006B00, 0, 0xC05F0543, 128),
        net4(10, 1, 0, 16, 29),
        net6(0x26075300, 0x6D8A6BF8, 0xDAB1E000, 0, 83),
        net6(0x26075000, 0, 0, 0, 21),
    ]


# -- the naive model ---------------------------------------------------------------------


class NaiveTable:
    """A list of (network, value); a look-up scans it all for the longest containing prefix."""

    def __init__(self) -> None:
        self.entries: list[tuple[Network, Peer]] = []

    def insert(self, net: Network, value: Peer) -> None:
        for i, (n, v) in enumerate(self.entries):
            if n == net:
                if v is value:
                    return
                del self.entries[i]
                break
        self.entries.append((net, value))

    def remove(self, net: Network, value: Peer) -> bool:
        for i, (n, v) in enumerate(self.entries):
            if n == net and v is value:
                del self.entries[i]
                return True
        return False

    def remove_by_value(self, value: Peer) -> None:
        self.entries = [(n, v) for n, v in self.entries if v is not value]

    def lookup(self, addr: bytes) -> Peer | None:
        ip = ip_address(addr)
        best: tuple[int, Peer] | None = None
        for n, v in self.entries:
            if n.version == ip.version and ip in n and (best is None or n.prefixlen > best[0]):
                best = (n.prefixlen, v)
        return None if best is None else best[1]

    def networks_for(self, value: Peer) -> list[Network]:
        return [n for n, v in self.entries if v is value]


PEERS = [Peer(str(i)) for i in range(4)]

# Addresses drawn near a few bases, so that prefixes nest and collide often.
_BASES4 = [0x0A000000, 0x0A010200, 0xC0A80000, 0x00000000, 0xFFFFFFFF]
_BASES6 = [0x20010DB8 << 96, (0x20010DB8 << 96) | (1 << 64), 0xFD << 120, 0, (1 << 128) - 1]


@st.composite
def addresses(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        base = draw(st.sampled_from(_BASES4))
        flip = draw(st.one_of(st.just(0), st.integers(0, 0xFF), st.integers(0, 2**32 - 1)))
        return ((base ^ flip) & 0xFFFFFFFF).to_bytes(4)
    base = draw(st.sampled_from(_BASES6))
    flip = draw(
        st.one_of(
            st.just(0),
            st.integers(0, 0xFFFF),
            st.integers(0, 2**64 - 1).map(lambda x: x << 64),
            st.integers(0, 2**128 - 1),
        )
    )
    return ((base ^ flip) & ((1 << 128) - 1)).to_bytes(16)


@st.composite
def networks(draw: st.DrawFn) -> Network:
    addr = draw(addresses())
    bits = 8 * len(addr)
    plen = draw(
        st.one_of(
            st.integers(0, bits),
            st.sampled_from([0, 8, 16, 24, 32] if bits == 32 else [0, 32, 48, 64, 128]),
        )
    )
    return ip_network((addr, plen), strict=False)


_ops = st.one_of(
    st.tuples(st.just("insert"), networks(), st.integers(0, len(PEERS) - 1)),
    st.tuples(st.just("remove"), networks(), st.integers(0, len(PEERS) - 1)),
    st.tuples(st.just("remove_by_value"), st.none(), st.integers(0, len(PEERS) - 1)),
    st.tuples(st.just("lookup"), addresses(), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_ops, max_size=80), probes=st.lists(addresses(), max_size=20))
def test_matches_naive_model(
    ops: list[tuple[str, Network | bytes | None, int]], probes: list[bytes]
) -> None:
    t: AllowedIPs[Peer] = AllowedIPs(cache_size=16)
    model = NaiveTable()
    for op, arg, i in ops:
        peer = PEERS[i]
        if op == "insert":
            assert isinstance(arg, IPv4Network | IPv6Network)
            # Alternate the spelling: a string with all host bits set, or the network object.
            t.insert(f"{arg.broadcast_address}/{arg.prefixlen}" if i % 2 else arg, peer)
            model.insert(arg, peer)
        elif op == "remove":
            assert isinstance(arg, IPv4Network | IPv6Network)
            assert t.remove(arg, peer) == model.remove(arg, peer)
        elif op == "remove_by_value":
            t.remove_by_value(peer)
            model.remove_by_value(peer)
        else:
            assert isinstance(arg, bytes)
            assert t.lookup(arg) is model.lookup(arg)
        assert len(t) == len(model.entries)
    # Every inserted prefix's own edges, plus random probes, twice (the second time cached).
    edges = [
        x for n, _ in model.entries for x in (n.network_address.packed, n.broadcast_address.packed)
    ]
    for addr in [*edges, *probes] * 2:
        assert t.lookup(addr) is model.lookup(addr), ip_address(addr)
    for peer in PEERS:
        assert t.networks_for(peer) == model.networks_for(peer)
