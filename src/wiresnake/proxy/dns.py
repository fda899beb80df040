"""A stub DNS resolver that asks the tunnel's DNS servers, through the tunnel.

In proxy mode there is no host network behind the tunnel's addresses, so names given to the
SOCKS5/HTTP front ends must be resolved by the servers of the `[Interface]` DNS line, over
the userspace stack, the way wireproxy does it. This module has two halves:

- a codec for the few DNS messages needed (RFC 1035): `build_query` makes one A or AAAA
  question with RD set and a random id; `parse_response` checks a reply strictly against its
  query and follows the CNAME chain inside the answer section. Anything malformed is a
  `MalformedResponse` (a `ValueError`), never an IndexError or struct.error, because replies
  come from the network;
- `Resolver`, which asks A and AAAA at once over UDP, tries each server in turn, caches
  positive answers for their TTL and orders the addresses by the resolve strategy.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Final, Literal, Protocol, runtime_checkable

from wiresnake.proxy.upstream import NameResolutionError

__all__ = [
    "CLASS_IN",
    "TYPE_A",
    "TYPE_AAAA",
    "TYPE_CNAME",
    "DnsError",
    "InvalidNameError",
    "MalformedResponse",
    "Query",
    "Resolver",
    "Response",
    "ResponseMismatch",
    "build_query",
    "normalize_name",
    "parse_response",
]

TYPE_A: Final = 1
TYPE_CNAME: Final = 5
TYPE_AAAA: Final = 28
CLASS_IN: Final = 1

RCODE_NOERROR: Final = 0
RCODE_NXDOMAIN: Final = 3
_RCODES: Final = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
}

_HEADER: Final = struct.Struct("!6H")
_QUESTION_TAIL: Final = struct.Struct("!2H")
_RECORD_TAIL: Final = struct.Struct("!2HIH")  # type, class, ttl, rdlength
_FLAG_QR: Final = 0x8000
_FLAG_TC: Final = 0x0200
_FLAG_RD: Final = 0x0100
_MAX_WIRE_NAME: Final = 255  # RFC 1035 2.3.4, length octets included
_MAX_CNAME_CHAIN: Final = 16
_MAX_POINTERS: Final = 64
_ADDRESS_SIZE: Final = {TYPE_A: 4, TYPE_AAAA: 16}
# Host names only (letters, digits, hyphen) plus '_', which service names use; anything
# else (spaces, control bytes, '/', ...) is far more likely a mistake or an injection.
_HOST_CHARS: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


class DnsError(ValueError):
    """Base of this module's errors."""


class InvalidNameError(DnsError):
    """A host name that cannot be asked for (bad IDNA, empty or too long label or name)."""


class MalformedResponse(DnsError):
    """A reply that is not a well-formed answer to our query."""


class ResponseMismatch(MalformedResponse):
    """A well-formed reply that is not for our query (other id or question): a late or
    spoofed datagram, which a resolver drops while it keeps waiting."""


# ------------------------------------------------------------------------ names


def normalize_name(host: str) -> str:
    """`host` as the ASCII, lower-case, dot-separated name to ask for (no trailing dot).

    Unicode labels go through IDNA (`encodings.idna`, IDNA 2003 as Python ships it). Each
    label must be 1..63 bytes, the name at most 253 characters: InvalidNameError otherwise.
    """
    text = host[:-1] if host.endswith(".") else host
    if not text:
        raise InvalidNameError(f"{host!r} is not a host name: it is empty")
    try:
        raw = text.encode("idna")
    except UnicodeError as e:
        raise InvalidNameError(f"{host!r} is not a valid host name: {e}") from None
    name = raw.lower()
    if len(name) > 253:
        raise InvalidNameError(f"{host!r} is longer than 253 characters")
    for label in name.split(b"."):
        if not 1 <= len(label) <= 63:
            raise InvalidNameError(f"{host!r} has a label that is empty or over 63 bytes")
        if not _HOST_CHARS.issuperset(label):
            raise InvalidNameError(
                f"{host!r} is not a valid host name: only letters, digits, '-' and '_' "
                "are allowed in a label"
            )
    return name.decode("ascii")


def _encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.encode("ascii").split(b"."):
        out.append(len(label))
        out += label
    out.append(0)
    return bytes(out)


def _label_text(label: bytes) -> str:
    # lower case and presentation-format escapes, so that names compare as strings
    return "".join(
        chr(c) if 0x21 <= c < 0x7F and c not in b".\\" else f"\\{c:03d}" for c in label.lower()
    )


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at `offset` and the offset just after it (after the first pointer, if any).

    Every pointer must go strictly below the lowest offset read so far, so following them
    always ends: this refuses loops and forward pointers (RFC 1035 4.1.4 points to a prior
    occurrence).
    """
    labels: list[str] = []
    pos = offset
    floor = offset  # pointers must land below this
    after: int | None = None
    wire = 1  # the final zero octet
    pointers = 0
    size = len(data)
    while True:
        if pos >= size:
            raise MalformedResponse("a name runs past the end of the message")
        n = data[pos]
        kind = n & 0xC0
        if kind == 0xC0:
            if pos + 1 >= size:
                raise MalformedResponse("a compression pointer runs past the end")
            target = ((n & 0x3F) << 8) | data[pos + 1]
            if target >= floor:
                raise MalformedResponse("a compression pointer does not point backwards")
            pointers += 1
            if pointers > _MAX_POINTERS:
                raise MalformedResponse("too many compression pointers in a name")
            if after is None:
                after = pos + 2
            pos = floor = target
            continue
        if kind:
            raise MalformedResponse(f"unsupported label type 0x{kind:02x}")
        if n == 0:
            return ".".join(labels), (pos + 1 if after is None else after)
        end = pos + 1 + n
        if end > size:
            raise MalformedResponse("a label runs past the end of the message")
        wire += 1 + n
        if wire > _MAX_WIRE_NAME:
            raise MalformedResponse("a name is longer than 255 octets")
        labels.append(_label_text(data[pos + 1 : end]))
        pos = end


# ------------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True)
class Query:
    """One question as sent: keep it to check the reply with `parse_response`."""

    id: int
    name: str  # as `normalize_name` gives it
    qtype: int
    wire: bytes


def build_query(name: str, qtype: int, *, query_id: int | None = None) -> Query:
    """A recursive query (RD set) for `name` (normalized here), type A or AAAA, class IN.

    The id is random unless given: with a fresh source port it is what keeps a blind
    attacker from answering for the server."""
    if qtype not in _ADDRESS_SIZE:
        raise ValueError(f"query type {qtype} is not A (1) or AAAA (28)")
    qname = normalize_name(name)
    qid = secrets.randbelow(0x10000) if query_id is None else query_id
    if not 0 <= qid <= 0xFFFF:
        raise ValueError(f"query id {qid} is not a 16-bit number")
    header = _HEADER.pack(qid, _FLAG_RD, 1, 0, 0, 0)
    wire = header + _encode_name(qname) + _QUESTION_TAIL.pack(qtype, CLASS_IN)
    return Query(qid, qname, qtype, wire)


@dataclass(frozen=True, slots=True)
class Response:
    """What a reply says about our question.

    `addresses` are those of the asked type at the end of the CNAME chain (`cnames`, in
    order); `ttl` is the smallest TTL along that chain (None when there are no addresses).
    A truncated reply (`truncated`) carries no records: ask again over TCP.
    """

    id: int
    rcode: int
    truncated: bool
    addresses: tuple[str, ...] = ()
    ttl: int | None = None
    cnames: tuple[str, ...] = ()

    @property
    def rcode_name(self) -> str:
        return _RCODES.get(self.rcode, f"RCODE {self.rcode}")


@dataclass(frozen=True, slots=True)
class _Record:
    owner: str
    rtype: int
    ttl: int
    value: str  # an address or a CNAME target


def parse_response(query: Query, data: bytes) -> Response:
    """Check `data` as the reply to `query` and read its answer.

    ResponseMismatch when the id or the question differ; MalformedResponse for anything
    else wrong (short message, bad name, bad record length, CNAME loop...). The authority
    and additional sections are not read: a stub resolver has no use for them.
    """
    if len(data) < _HEADER.size:
        raise MalformedResponse(f"a DNS message of {len(data)} bytes is shorter than a header")
    qid, flags, qdcount, ancount, _nscount, _arcount = _HEADER.unpack_from(data)
    if qid != query.id:
        raise ResponseMismatch(f"reply id {qid} is not the query's {query.id}")
    if not flags & _FLAG_QR:
        raise MalformedResponse("the message is a query, not a response")
    if (flags >> 11) & 0xF:
        raise MalformedResponse(f"unexpected opcode {(flags >> 11) & 0xF}")
    if qdcount != 1:
        raise ResponseMismatch(f"the reply has {qdcount} questions, not our one")
    qname, offset = _read_name(data, _HEADER.size)
    if offset + _QUESTION_TAIL.size > len(data):
        raise MalformedResponse("the question runs past the end of the message")
    qtype, qclass = _QUESTION_TAIL.unpack_from(data, offset)
    offset += _QUESTION_TAIL.size
    if (qname, qtype, qclass) != (query.name, query.qtype, CLASS_IN):
        raise ResponseMismatch(f"the reply is for {qname!r} type {qtype}, not our question")
    rcode = flags & 0xF
    truncated = bool(flags & _FLAG_TC)
    if truncated or rcode != RCODE_NOERROR:
        # a truncated message may end inside a record; an error has no answer to read
        return Response(qid, rcode, truncated)
    records: list[_Record] = []
    for _ in range(ancount):
        record, offset = _read_record(data, offset)
        if record is not None:
            records.append(record)
    addresses, ttl, cnames = _follow_chain(query, records)
    return Response(qid, rcode, False, addresses, ttl, cnames)


def _read_record(data: bytes, offset: int) -> tuple[_Record | None, int]:
    owner, offset = _read_name(data, offset)
    if offset + _RECORD_TAIL.size > len(data):
        raise MalformedResponse("a resource record runs past the end of the message")
    rtype, rclass, ttl, rdlength = _RECORD_TAIL.unpack_from(data, offset)
    start = offset + _RECORD_TAIL.size
    end = start + rdlength
    if end > len(data):
        raise MalformedResponse("record data runs past the end of the message")
    if ttl & 0x80000000:
        ttl = 0  # RFC 2181 8: a TTL with the top bit set means zero
    if rclass != CLASS_IN:
        return None, end
    if rtype in _ADDRESS_SIZE:
        if rdlength != _ADDRESS_SIZE[rtype]:
            raise MalformedResponse(f"a type {rtype} record has {rdlength} bytes of data")
        raw = data[start:end]
        value = str(IPv4Address(raw) if rtype == TYPE_A else IPv6Address(raw))
        return _Record(owner, rtype, ttl, value), end
    if rtype == TYPE_CNAME:
        target, after = _read_name(data, start)
        if after != end:
            raise MalformedResponse("a CNAME's target does not fill its record data")
        return _Record(owner, rtype, ttl, target), end
    return None, end


def _follow_chain(
    query: Query, records: list[_Record]
) -> tuple[tuple[str, ...], int | None, tuple[str, ...]]:
    current = query.name
    cnames: list[str] = []
    ttl: int | None = None
    while True:
        hits = [r for r in records if r.owner == current and r.rtype == query.qtype]
        if hits:
            low = min(r.ttl for r in hits)
            ttl = low if ttl is None else min(ttl, low)
            return tuple(dict.fromkeys(r.value for r in hits)), ttl, tuple(cnames)
        aliases = {r.value: r.ttl for r in records if r.owner == current and r.rtype == TYPE_CNAME}
        if not aliases:
            return (), None, tuple(cnames)  # no data (NODATA), or a chain left unfinished
        if len(aliases) > 1:
            raise MalformedResponse(f"{current!r} has several CNAME records")
        ((target, alias_ttl),) = aliases.items()
        if target == query.name or target in cnames:
            raise MalformedResponse(f"the CNAME chain of {query.name!r} loops")
        if len(cnames) >= _MAX_CNAME_CHAIN:
            raise MalformedResponse(f"the CNAME chain of {query.name!r} is too long")
        ttl = alias_ttl if ttl is None else min(ttl, alias_ttl)
        cnames.append(target)
        current = target


# ------------------------------------------------------------------------ the resolver


class DatagramEndpoint(Protocol):
    """What `Resolver` uses of `wiresnake.proxy.tunnel.UdpEndpoint`."""

    def sendto(self, payload: bytes, address: tuple[str, int]) -> None: ...

    async def recvfrom(self, timeout: float = ...) -> tuple[bytes, tuple[str, int]]: ...

    def close(self) -> None: ...


class DatagramProvider(Protocol):
    def udp_endpoint(self) -> DatagramEndpoint: ...


@runtime_checkable
class _StreamProvider(Protocol):
    def open_connection(
        self, host: str, port: int, *, timeout: float = ...
    ) -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]: ...


class _ServerFailed(Exception):
    """One server gave no usable answer; the text says why (for the final error)."""


@dataclass(frozen=True, slots=True)
class _Cached:
    expires: float
    v4: tuple[str, ...]
    v6: tuple[str, ...]


class Resolver:
    """Names to addresses through the tunnel's DNS servers.

    For each name, A and AAAA are asked at once, each from its own UDP port; each question
    goes to the servers in order, `attempts` times each with `timeout` seconds to answer,
    until one answers NOERROR or NXDOMAIN (SERVFAIL, REFUSED, a malformed reply, silence move
    on to the next server). A truncated UDP reply is asked again over TCP through the tunnel
    when `tunnel` can `open_connection` (a `Tunnel` can), else that server counts as failed.

    Addresses come with the `strategy` family first. Answers with at least one address are
    cached for their smallest TTL, at most `max_ttl` seconds, read from `clock`; failures
    and NXDOMAIN are not cached; at most `max_entries` names are kept. Concurrent look-ups
    of one name share one set of queries. An IP literal is answered as is, without a query.
    """

    def __init__(
        self,
        tunnel: DatagramProvider,
        servers: Iterable[str | IPv4Address | IPv6Address],
        strategy: Literal["ipv4", "ipv6"] = "ipv4",
        *,
        port: int = 53,
        timeout: float = 2.0,
        # 3 x 2 s outlasts one lost handshake packet, which WireGuard resends after 5 s
        attempts: int = 3,
        max_ttl: float = 300.0,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if strategy not in ("ipv4", "ipv6"):
            raise ValueError(f"resolve strategy {strategy!r} is not 'ipv4' or 'ipv6'")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.tunnel = tunnel
        self.servers = tuple(str(ip_address(str(s))) for s in servers)
        self.strategy = strategy
        self.port = port
        self.timeout = timeout
        self.attempts = attempts
        self.max_ttl = max_ttl
        self.max_entries = max_entries
        self.clock = clock
        self._cache: dict[str, _Cached] = {}
        self._inflight: dict[str, asyncio.Future[tuple[tuple[str, ...], tuple[str, ...]]]] = {}

    def clear_cache(self) -> None:
        self._cache.clear()

    async def resolve(self, host: str) -> list[str]:
        """The addresses of `host`, the strategy's family first (NameResolutionError)."""
        with contextlib.suppress(ValueError):
            ip_address(host)
            return [host]
        try:
            name = normalize_name(host)
        except InvalidNameError as e:
            raise NameResolutionError(str(e)) from None
        if not self.servers:
            raise NameResolutionError(f"no DNS server configured to resolve {host!r}")
        cached = self._cache.get(name)
        if cached is not None:
            if self.clock() < cached.expires:
                return self._ordered(cached.v4, cached.v6)
            del self._cache[name]
        # one query in flight per name: a burst of connections to one host asks once
        flight = self._inflight.get(name)
        if flight is None:
            flight = asyncio.ensure_future(self._query_both(host, name))
            self._inflight[name] = flight
            flight.add_done_callback(lambda f: self._landed(name, f))
        four, six = await asyncio.shield(flight)
        return self._ordered(four, six)

    def _remember(self, name: str, entry: _Cached) -> None:
        cache = self._cache
        cache.pop(name, None)
        if len(cache) >= self.max_entries:
            # full: drop what has expired, else the oldest entry (dicts keep insertion order)
            now = self.clock()
            for stale in [n for n, e in cache.items() if e.expires <= now] or [next(iter(cache))]:
                del cache[stale]
        cache[name] = entry

    def _landed(self, name: str, flight: asyncio.Future[Any]) -> None:
        self._inflight.pop(name, None)
        if not flight.cancelled():
            flight.exception()  # retrieved here, so a flight nobody awaits any more is quiet

    async def _query_both(self, host: str, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        v4, v6 = await asyncio.gather(
            self._lookup(host, name, TYPE_A),
            self._lookup(host, name, TYPE_AAAA),
            return_exceptions=True,
        )
        for result in (v4, v6):
            if isinstance(result, BaseException) and not isinstance(result, NameResolutionError):
                raise result
        answers = [r for r in (v4, v6) if isinstance(r, Response)]
        four = v4.addresses if isinstance(v4, Response) else ()
        six = v6.addresses if isinstance(v6, Response) else ()
        if four or six:
            if len(answers) == 2:  # a family that failed may have addresses next time
                ttls = [r.ttl for r in answers if r.ttl is not None]
                lifetime = min(min(ttls), self.max_ttl)
                if lifetime > 0:
                    self._remember(name, _Cached(self.clock() + lifetime, four, six))
            return four, six
        errors = [r for r in (v4, v6) if isinstance(r, NameResolutionError)]
        if errors:
            # NXDOMAIN is the more telling of two errors
            errors.sort(key=lambda e: "NXDOMAIN" not in str(e))
            raise errors[0]
        raise NameResolutionError(f"{host!r} has no IPv4 or IPv6 address")

    def _ordered(self, v4: tuple[str, ...], v6: tuple[str, ...]) -> list[str]:
        return [*v4, *v6] if self.strategy == "ipv4" else [*v6, *v4]

    async def _lookup(self, host: str, name: str, qtype: int) -> Response:
        """A NOERROR answer from the first server that gives one (NameResolutionError)."""
        failures: list[str] = []
        endpoint = self.tunnel.udp_endpoint()
        try:
            for server in self.servers:
                query = build_query(name, qtype)
                try:
                    response = await self._ask_udp(endpoint, server, query)
                    if response.truncated:
                        response = await self._ask_tcp(server, query)
                except _ServerFailed as e:
                    failures.append(f"{server}: {e}")
                    continue
                if response.rcode == RCODE_NOERROR:
                    return response
                if response.rcode == RCODE_NXDOMAIN:
                    raise NameResolutionError(f"{host!r} does not exist (NXDOMAIN from {server})")
                failures.append(f"{server}: {response.rcode_name}")
        finally:
            endpoint.close()
        kind = "A" if qtype == TYPE_A else "AAAA"
        raise NameResolutionError(f"cannot resolve {host!r} ({kind}): {'; '.join(failures)}")

    async def _ask_udp(self, endpoint: DatagramEndpoint, server: str, query: Query) -> Response:
        expected = ip_address(server)
        for _ in range(self.attempts):
            try:
                endpoint.sendto(query.wire, (server, self.port))
            except OSError as e:  # no route of that family, say
                raise _ServerFailed(str(e) or type(e).__name__) from None
            deadline = time.monotonic() + self.timeout
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    data, (src, sport) = await endpoint.recvfrom(remaining)
                except TimeoutError:
                    break
                if sport != self.port or not _same_address(src, expected):
                    continue  # not from the server we asked
                try:
                    return parse_response(query, data)
                except ResponseMismatch:
                    continue  # a late reply to an earlier try, or a spoof
                except MalformedResponse as e:
                    raise _ServerFailed(f"malformed reply: {e}") from None
        raise _ServerFailed(f"no reply in {self.attempts} x {self.timeout:g} s")

    async def _ask_tcp(self, server: str, query: Query) -> Response:
        """RFC 1035 4.2.2 / RFC 7766: the same query, two-byte length first, over TCP."""
        if not isinstance(self.tunnel, _StreamProvider):
            raise _ServerFailed("truncated reply and no TCP to ask again")
        try:
            async with asyncio.timeout(self.timeout * self.attempts):
                reader, writer = await self.tunnel.open_connection(
                    server, self.port, timeout=self.timeout * self.attempts
                )
                try:
                    writer.write(struct.pack("!H", len(query.wire)) + query.wire)
                    await writer.drain()
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(size)
                finally:
                    writer.close()
        except (OSError, asyncio.IncompleteReadError) as e:
            raise _ServerFailed(f"TCP after a truncated reply: {e or type(e).__name__}") from None
        try:
            response = parse_response(query, data)
        except MalformedResponse as e:
            raise _ServerFailed(f"malformed TCP reply: {e}") from None
        if response.truncated:
            raise _ServerFailed("truncated reply over TCP")
        return response


def _same_address(text: str, expected: IPv4Address | IPv6Address) -> bool:
    try:
        return ip_address(text) == expected
    except ValueError:
        return False
