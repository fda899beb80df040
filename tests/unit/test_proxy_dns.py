"""The DNS codec, the resolver through two rootless tunnels, and the dialer on top."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from ipaddress import IPv4Address, ip_address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_proxy_streams import _echo
from test_proxy_tunnel import _pair

from wiresnake.proxy.config import parse_proxy_config
from wiresnake.proxy.dial import Dialer
from wiresnake.proxy.dns import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    InvalidNameError,
    MalformedResponse,
    Resolver,
    ResponseMismatch,
    build_query,
    normalize_name,
    parse_response,
)
from wiresnake.proxy.tunnel import Tunnel, UdpEndpoint
from wiresnake.proxy.upstream import NameResolutionError

# ------------------------------------------------------------------ a test-side DNS writer
# Written independently of the codec under test, so that each checks the other.

Q = b"\xc0\x0c"  # a compression pointer to the question's name, right after the header


def _wire_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


def _rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = 1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def _a(owner: bytes, ip: str, ttl: int = 60) -> bytes:
    packed = ip_address(ip).packed
    return _rr(owner, TYPE_A if len(packed) == 4 else TYPE_AAAA, ttl, packed)


def _reply(
    query: bytes,
    answers: list[bytes],
    *,
    rcode: int = 0,
    tc: bool = False,
    qid: bytes | None = None,
    question: bytes | None = None,
) -> bytes:
    flags = 0x8180 | rcode | (0x0200 if tc else 0)
    header = (qid or query[:2]) + struct.pack("!5H", flags, 1, len(answers), 0, 0)
    return header + (question if question is not None else query[12:]) + b"".join(answers)


def _read_question(data: bytes) -> tuple[str, int]:
    labels, pos = [], 12
    while data[pos]:
        labels.append(data[pos + 1 : pos + 1 + data[pos]].decode())
        pos += 1 + data[pos]
    (qtype,) = struct.unpack_from("!H", data, pos + 1)
    return ".".join(labels), qtype


# ------------------------------------------------------------------ names


def test_names_are_normalized_and_idna_encoded() -> None:
    assert normalize_name("WWW.Example.COM.") == "www.example.com"
    assert normalize_name("bücher.example") == "xn--bcher-kva.example"
    assert normalize_name("_dns.x-1.example") == "_dns.x-1.example"
    assert normalize_name("a" * 63 + ".b") == "a" * 63 + ".b"
    name = ".".join(["a" * 61] * 4)  # 4 * 61 + 3 = 247
    assert normalize_name(name) == name


@pytest.mark.parametrize(
    "bad",
    ["", ".", "a..b", ".a", "a" * 64 + ".b", ".".join(["a" * 62] * 4) + ".abc", "a b", "a/b", "\0"],
)
def test_bad_names_are_a_clean_error(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        normalize_name(bad)


# ------------------------------------------------------------------ codec


def test_query_layout() -> None:
    q = build_query("Example.ORG", TYPE_AAAA, query_id=0x1234)
    assert q.name == "example.org" and q.qtype == TYPE_AAAA
    qid, flags, qd, an, ns, ar = struct.unpack_from("!6H", q.wire)
    assert (qid, flags, qd, an, ns, ar) == (0x1234, 0x0100, 1, 0, 0, 0)
    assert q.wire[12:] == _wire_name("example.org") + struct.pack("!HH", 28, 1)
    assert _read_question(q.wire) == ("example.org", 28)
    ids = {build_query("x.org", TYPE_A).id for _ in range(50)}
    assert len(ids) > 40  # random, not a counter
    with pytest.raises(ValueError):
        build_query("x.org", TYPE_CNAME)


def test_answer_with_compression_round_trip() -> None:
    q = build_query("host.example", TYPE_A)
    data = _reply(q.wire, [_a(Q, "192.0.2.1", 30), _a(Q, "192.0.2.2", 20)])
    r = parse_response(q, data)
    assert r.addresses == ("192.0.2.1", "192.0.2.2")
    assert (r.ttl, r.rcode, r.truncated, r.cnames) == (20, 0, False, ())
    # the same records with owners written out, in another case: names compare caselessly
    data = _reply(q.wire, [_a(_wire_name("HOST.example"), "192.0.2.1", 30)])
    assert parse_response(q, data).addresses == ("192.0.2.1",)


def test_cname_chain_is_followed_with_pointers_into_earlier_records() -> None:
    q = build_query("www.example", TYPE_AAAA)
    unrelated = _a(_wire_name("unrelated.example"), "2001:db8::9")  # not on the chain
    # "edge.example": its own label, then a pointer to "example" inside the question name
    cname1 = _rr(Q, TYPE_CNAME, 300, b"\x04edge" + struct.pack("!H", 0xC000 | 12 + 4))
    first_rdata = len(q.wire) + len(unrelated) + 12  # owner pointer and 10 bytes before it
    cname2 = _rr(struct.pack("!H", 0xC000 | first_rdata), TYPE_CNAME, 100, _wire_name("cdn.test"))
    target = struct.pack("!H", 0xC000 | first_rdata + len(cname1))  # "cdn.test"
    data = _reply(
        q.wire,
        [
            unrelated,
            cname1,
            cname2,
            _a(target, "2001:db8::1", 200),
            _a(target, "192.0.2.1", 5),  # another type: ignored
        ],
    )
    r = parse_response(q, data)
    assert r.cnames == ("edge.example", "cdn.test")
    assert r.addresses == ("2001:db8::1",)
    assert r.ttl == 100  # the smallest along the chain


def test_cname_without_final_address_is_no_data() -> None:
    q = build_query("a.example", TYPE_A)
    r = parse_response(q, _reply(q.wire, [_rr(Q, TYPE_CNAME, 60, _wire_name("b.example"))]))
    assert r.addresses == () and r.ttl is None and r.cnames == ("b.example",)


def test_cname_loop_is_malformed() -> None:
    q = build_query("a.example", TYPE_A)
    loop = [
        _rr(Q, TYPE_CNAME, 60, _wire_name("b.example")),
        _rr(_wire_name("b.example"), TYPE_CNAME, 60, _wire_name("a.example")),
    ]
    with pytest.raises(MalformedResponse, match="loops"):
        parse_response(q, _reply(q.wire, loop))


def test_rcode_truncation_and_high_ttl() -> None:
    q = build_query("a.example", TYPE_A)
    r = parse_response(q, _reply(q.wire, [], rcode=3))
    assert (r.rcode, r.rcode_name, r.addresses) == (3, "NXDOMAIN", ())
    # a truncated reply's records are not read, even when they are cut short
    r = parse_response(q, _reply(q.wire, [_a(Q, "192.0.2.1")[:-2]], tc=True))
    assert r.truncated and r.addresses == ()
    r = parse_response(q, _reply(q.wire, [_a(Q, "192.0.2.1", 0x80000001)]))
    assert r.ttl == 0  # RFC 2181: the top bit set means zero


def test_mismatched_replies() -> None:
    q = build_query("a.example", TYPE_A, query_id=7)
    good = _reply(q.wire, [_a(Q, "192.0.2.1")])
    with pytest.raises(ResponseMismatch):
        parse_response(q, _reply(q.wire, [_a(Q, "192.0.2.1")], qid=b"\0\x08"))
    other = build_query("b.example", TYPE_A, query_id=7)
    with pytest.raises(ResponseMismatch):
        parse_response(q, _reply(other.wire, []))
    aaaa = build_query("a.example", TYPE_AAAA, query_id=7)
    with pytest.raises(ResponseMismatch):
        parse_response(q, _reply(aaaa.wire, []))
    with pytest.raises(MalformedResponse, match="query"):
        parse_response(q, good[:2] + b"\x01\x00" + good[4:])  # QR clear
    assert issubclass(ResponseMismatch, MalformedResponse)
    assert issubclass(MalformedResponse, ValueError)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"\xc0\x30" + b"\0" * 10, "backwards"),  # a pointer forwards
        (b"\x01a\xc0\x23" + b"\0" * 10, "backwards"),  # past its own start
        (b"\x80abc", "label type"),
        (b"\x3f" + b"a" * 10, "past the end"),
        (Q + struct.pack("!HHIH", 1, 1, 60, 5) + b"\1\2\3\4\5", "5 bytes"),
        (Q + struct.pack("!HHIH", 1, 1, 60, 4) + b"\1\2", "past the end"),
        (Q + struct.pack("!HH", 1, 1), "past the end"),
        (Q + struct.pack("!HHIH", 5, 1, 60, 5) + b"\1a\0\0\0", "fill"),
        (b"\xc0\x1b" + b"\0" * 10, "backwards"),  # a pointer to itself
    ],
)
def test_malformed_answers(answer: bytes, why: str) -> None:
    q = build_query("a.example", TYPE_A)  # question ends at 12 + 11 + 4 = 27 = 0x1b
    assert len(q.wire) == 0x1B
    data = _reply(q.wire, [answer])
    with pytest.raises(MalformedResponse, match=why):
        parse_response(q, data)


def test_pointer_chain_that_loops_between_two_names() -> None:
    q = build_query("a.example", TYPE_A)
    # name at 27: label "x" then a pointer to 29 (the pointer itself is at 29): a loop
    data = _reply(q.wire, [b"\x01x\xc0\x1d"])
    with pytest.raises(MalformedResponse):
        parse_response(q, data)
    # two names pointing at each other
    data = _reply(q.wire, [b"\x01x\xc0\x1f" + b"\0" * 10, b"\x01y\xc0\x1b" + b"\0" * 10])
    with pytest.raises(MalformedResponse):
        parse_response(q, data)


def test_short_messages() -> None:
    q = build_query("a.example", TYPE_A)
    for n in range(len(q.wire) + 12):
        data = _reply(q.wire, [_a(Q, "192.0.2.1")])[:n]
        with pytest.raises(MalformedResponse):
            parse_response(q, data)


_FUZZ_QUERY = build_query("www.example", TYPE_A, query_id=0xABCD)
_FUZZ_GOOD = _reply(
    _FUZZ_QUERY.wire,
    [
        _rr(Q, TYPE_CNAME, 60, b"\x03cdn" + struct.pack("!H", 0xC000 | 16)),
        _a(struct.pack("!H", 0xC000 | 29 + 12), "192.0.2.7"),  # "cdn.example" in the CNAME
    ],
)


def test_fuzz_seed_is_valid() -> None:
    r = parse_response(_FUZZ_QUERY, _FUZZ_GOOD)
    assert r.cnames == ("cdn.example",) and r.addresses == ("192.0.2.7",)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_only_raise_the_declared_error(data: bytes) -> None:
    for candidate in (data, _FUZZ_GOOD[:2] + data, _FUZZ_GOOD[:29] + data):
        with suppress(MalformedResponse):
            parse_response(_FUZZ_QUERY, candidate)


@settings(max_examples=600, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(_FUZZ_GOOD) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, len(_FUZZ_GOOD) + 20),
    st.binary(max_size=20),
)
def test_fuzz_mutated_replies_only_raise_the_declared_error(
    edits: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    data = bytearray(_FUZZ_GOOD)
    for pos, value in edits:
        data[pos] = value
    candidate = bytes(data[:cut]) + tail
    try:
        r = parse_response(_FUZZ_QUERY, candidate)
    except MalformedResponse:
        return
    for address in r.addresses:
        assert isinstance(ip_address(address), IPv4Address)


# ------------------------------------------------------------------ a DNS server in tunnel b

Zone = dict[str, list[tuple[int, str]]]

ZONE: Zone = {
    "www.test": [(TYPE_A, "10.60.0.2"), (TYPE_AAAA, "fd60::2")],
    "v4only.test": [(TYPE_A, "10.60.0.2")],
    "alias.test": [(TYPE_CNAME, "www.test")],
    "big.test": [(TYPE_A, "10.60.0.2"), (TYPE_AAAA, "fd60::2")],  # truncated over UDP
    "short.test": [(TYPE_A, "10.60.0.2")],  # a TTL of 1 s
}


def _answer(query: bytes, zone: Zone, *, udp: bool = True) -> bytes:
    name, qtype = _read_question(query)
    if name not in zone:
        return _reply(query, [], rcode=3)
    if udp and name == "big.test":
        return _reply(query, [], tc=True)
    ttl = 1 if name == "short.test" else 60
    answers: list[bytes] = []
    owner = Q
    offset = len(query)  # where the answer section starts
    for rtype, value in zone[name]:
        if rtype == TYPE_CNAME:
            cname = _rr(owner, TYPE_CNAME, ttl, _wire_name(value))
            answers.append(cname)
            owner = struct.pack("!H", 0xC000 | offset + len(cname) - len(_wire_name(value)))
            offset += len(cname)
            name = value
    for rtype, value in zone[name]:
        if rtype == qtype:
            answers.append(_a(owner, value, ttl))
    return _reply(query, answers)


class _DnsServer:
    """Answers from `zone` on UDP port 53 of one of b's addresses (None: stays silent),
    and over TCP too when asked; counts every query."""

    def __init__(self, tunnel: Tunnel, address: str, zone: Zone | None) -> None:
        self.endpoint: UdpEndpoint = tunnel.udp_endpoint(53, address)
        self.zone = zone
        self.queries: list[tuple[str, int]] = []
        self.tcp_queries: list[tuple[str, int]] = []
        self.task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            try:
                data, peer = await self.endpoint.recvfrom(timeout=30)
            except TimeoutError:
                continue
            self.queries.append(_read_question(data))
            if self.zone is not None:
                self.endpoint.sendto(_answer(data, self.zone), peer)

    async def serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        query = await reader.readexactly(size)
        self.tcp_queries.append(_read_question(query))
        assert self.zone is not None
        reply = _answer(query, self.zone, udp=False)
        writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()
        writer.close()

    def close(self) -> None:
        self.task.cancel()
        self.endpoint.close()


@asynccontextmanager
async def _tunnels() -> AsyncIterator[tuple[Tunnel, Tunnel, _DnsServer]]:
    a, b = await _pair()
    async with a, b:
        server = _DnsServer(b, "10.60.0.2", ZONE)
        try:
            yield a, b, server
        finally:
            server.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_resolve_through_the_tunnel_in_strategy_order_and_from_cache() -> None:
    async def scenario() -> None:
        async with _tunnels() as (a, _b, server):
            clock = _Clock()
            v4 = Resolver(a, [IPv4Address("10.60.0.2")], "ipv4", clock=clock)
            assert await v4.resolve("www.test") == ["10.60.0.2", "fd60::2"]
            assert sorted(server.queries) == [("www.test", 1), ("www.test", 28)]
            assert await v4.resolve("WWW.test.") == ["10.60.0.2", "fd60::2"]
            assert len(server.queries) == 2  # from the cache
            clock.now += 61  # past the TTL
            assert await v4.resolve("www.test") == ["10.60.0.2", "fd60::2"]
            assert len(server.queries) == 4

            v6 = Resolver(a, ["10.60.0.2"], "ipv6", clock=clock)
            assert await v6.resolve("www.test") == ["fd60::2", "10.60.0.2"]
            assert await v6.resolve("v4only.test") == ["10.60.0.2"]  # AAAA: no data
            assert await v6.resolve("alias.test") == ["fd60::2", "10.60.0.2"]  # via a CNAME

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_concurrent_lookups_of_one_name_share_one_pair_of_queries() -> None:
    async def scenario() -> None:
        async with _tunnels() as (a, _b, server):
            resolver = Resolver(a, ["10.60.0.2"])
            answers = await asyncio.gather(*(resolver.resolve("www.test") for _ in range(50)))
            assert all(x == ["10.60.0.2", "fd60::2"] for x in answers)
            assert len(server.queries) == 2
            # a failure reaches every waiter, and is not remembered
            errors = await asyncio.gather(
                *(resolver.resolve("nope.test") for _ in range(5)), return_exceptions=True
            )
            assert all(isinstance(e, NameResolutionError) for e in errors)
            assert len(server.queries) == 4

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_max_ttl_caps_the_cache_and_short_ttls_expire() -> None:
    async def scenario() -> None:
        async with _tunnels() as (a, _b, server):
            clock = _Clock()
            r = Resolver(a, ["10.60.0.2"], clock=clock, max_ttl=10)
            await r.resolve("www.test")
            clock.now += 9
            await r.resolve("www.test")
            assert len(server.queries) == 2
            clock.now += 2
            await r.resolve("www.test")
            assert len(server.queries) == 4
            await r.resolve("short.test")
            clock.now += 1
            await r.resolve("short.test")
            assert len(server.queries) == 8

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_nxdomain_and_no_servers_and_literals() -> None:
    class NoUdp:
        def udp_endpoint(self) -> UdpEndpoint:
            raise AssertionError("a literal needs no query")

    async def scenario() -> None:
        async with _tunnels() as (a, _b, server):
            r = Resolver(a, ["10.60.0.2"])
            with pytest.raises(NameResolutionError, match=r"nowhere\.test.*NXDOMAIN"):
                await r.resolve("nowhere.test")
            with pytest.raises(NameResolutionError, match="no DNS server"):
                await Resolver(a, []).resolve("www.test")
            with pytest.raises(NameResolutionError, match="label"):
                await r.resolve("a..test")
            assert len(server.queries) == 2
        literal = Resolver(NoUdp(), [])
        assert await literal.resolve("192.0.2.1") == ["192.0.2.1"]
        assert await literal.resolve("2001:DB8::1") == ["2001:DB8::1"]  # unchanged
        # a literal is not 'localhost': through a tunnel that is a name like any other
        with pytest.raises(NameResolutionError, match="no DNS server"):
            await literal.resolve("localhost")

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_a_dead_server_times_out_into_the_next_and_endpoints_are_closed() -> None:
    opened: list[UdpEndpoint] = []

    async def scenario() -> None:
        async with _tunnels() as (a, b, live):
            dead = _DnsServer(b, "fd60::2", None)  # hears, never answers

            class Recording:
                def udp_endpoint(self) -> UdpEndpoint:
                    endpoint = a.udp_endpoint()
                    opened.append(endpoint)
                    return endpoint

            r = Resolver(Recording(), ["fd60::2", "10.60.0.2"], timeout=0.3, attempts=2)
            start = time.monotonic()
            assert await r.resolve("www.test") == ["10.60.0.2", "fd60::2"]
            elapsed = time.monotonic() - start
            assert 0.6 <= elapsed < 1.5  # A and AAAA waited side by side, not one after other
            assert sorted(dead.queries) == [("www.test", 1)] * 2 + [("www.test", 28)] * 2
            assert len(live.queries) == 2
            # with only the dead one, the error says what happened
            only_dead = Resolver(a, ["fd60::2"], timeout=0.2, attempts=1)
            with pytest.raises(NameResolutionError, match=r"fd60::2: no reply"):
                await only_dead.resolve("www.test")
            dead.close()
        assert len(opened) == 2 and all(e.sock.closed for e in opened)

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_truncated_reply_is_asked_again_over_tcp() -> None:
    async def scenario() -> None:
        async with _tunnels() as (a, b, server):
            await b.start_server(server.serve_tcp, 53, host="10.60.0.2")
            r = Resolver(a, ["10.60.0.2"])
            assert await r.resolve("big.test") == ["10.60.0.2", "fd60::2"]
            assert sorted(server.tcp_queries) == [("big.test", 1), ("big.test", 28)]

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_dialer_resolves_then_connects_falling_back_over_addresses() -> None:
    async def scenario() -> None:
        async with _tunnels() as (a, b, _server):
            await b.start_server(_echo, 7, host="10.60.0.2")  # fd60::2:7 refuses
            # IPv6 first: fd60::2 refuses, then 10.60.0.2 answers
            dialer = Dialer(a, Resolver(a, ["10.60.0.2"], "ipv6"), connect_timeout=2)
            reader, writer = await dialer.open_connection("www.test", 7)
            assert writer.get_extra_info("peername")[0] == "10.60.0.2"
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            writer.close()
            assert await dialer.resolve("www.test") == ["fd60::2", "10.60.0.2"]
            endpoint = dialer.udp_endpoint()
            assert endpoint.port > 0
            endpoint.close()
            with pytest.raises(ConnectionRefusedError):
                await dialer.open_connection("www.test", 9)
            with pytest.raises(NameResolutionError, match="nowhere"):
                await dialer.open_connection("nowhere.test", 7)
            reader, writer = await dialer.open_connection("10.60.0.2", 7)  # a literal
            writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_dialer_for_config_takes_dns_servers_and_strategy() -> None:
    text = """
[Interface]
PrivateKey = {key}
Address = 10.60.0.1/24, fd60::1/64
DNS = 10.60.0.2, fd60::53

[Peer]
PublicKey = {key}
Endpoint = 127.0.0.1:51820
"""
    key = base64.b64encode(bytes(range(32))).decode()
    config = parse_proxy_config(text.format(key=key))
    assert config.resolve_strategy == "ipv6"

    async def scenario() -> None:
        async with _tunnels() as (a, _b, _server):
            dialer = Dialer.for_config(a, config)
            assert dialer.resolver.servers == ("10.60.0.2", "fd60::53")
            assert dialer.resolver.strategy == "ipv6"
            assert await dialer.resolve("www.test") == ["fd60::2", "10.60.0.2"]

    asyncio.run(asyncio.wait_for(scenario(), 5))
