"""The cross-platform configuration protocol that `wg` and `wg-quick` speak, sans-IO.

A connection carries requests `get=1` or `set=1`, each followed by `key=value` lines and a
blank line; every answer ends with `errno=N` and a blank line (negative errno values, as
wireguard-go writes them). `UapiSession.feed` takes bytes as they arrive and returns the
bytes to answer. Keys are hex here. A `set` is parsed and checked whole before any of it
is applied, so a bad line leaves the device as it was (wireguard-go applies the lines
before a bad one). Nothing a client sends raises: every bad value is an errno answer.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from wiresnake.crypto import KeyFormatError, key_from_hex
from wiresnake.protocol.device import Device
from wiresnake.protocol.peer import Endpoint
from wiresnake.protocol.settings import Network, parse_network

__all__ = [
    "UapiError",
    "UapiHost",
    "UapiSession",
    "format_endpoint",
    "get_response",
    "parse_endpoint",
    "parse_set",
    "parse_uint",
]

EINVAL = -_errno.EINVAL
EPROTO = -_errno.EPROTO
EADDRINUSE = -_errno.EADDRINUSE
EIO = -_errno.EIO
EMSGSIZE = -_errno.EMSGSIZE

# One request's text, from its first line to its blank line. wireguard-go streams a set and
# has no such bound; we hold a set whole (to check it before applying it), so it is bounded.
# 16 MiB is over 500,000 allowed_ip lines, or 50,000 peers with a key, a preshared key,
# an endpoint, a keepalive and two allowed IPs each.
MAX_REQUEST = 16 << 20
_OPS = (b"get=1", b"set=1")
_OP_LINE = len(b"get=1\n")
# error messages quote values: a quoted value is cut so that a huge line cannot flood the log
_QUOTE = 80


class UapiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class UapiHost(Protocol):
    """What a `set` may need from the I/O side beyond the engine."""

    device: Device

    def now(self) -> float: ...

    def set_listen_port(self, port: int) -> None:
        """Rebind the UDP socket(s); raise OSError if the port is taken."""

    def set_fwmark(self, mark: int) -> None: ...


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_uint(text: str, limit: int) -> int | None:
    """`text` as a decimal number from 0 to `limit` (leading zeros allowed, as Go's
    ParseUint takes them), else None. Checked as text before int(): int() raises on strings
    of over 4,300 digits, and non-ASCII digits are not digits here."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(limit)):
        return None
    value = int(digits)
    return value if value <= limit else None


def _quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTE else text[:_QUOTE] + "...")


def parse_endpoint(text: str) -> Endpoint:
    """`a.b.c.d:port` or `[v6]:port`, as addresses (names are resolved by the caller)."""
    bracketed = text.startswith("[")
    if bracketed:
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"endpoint {_quote(text)} lacks ']:port'")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"endpoint {_quote(text)} lacks ':port'")
        if ":" in host:
            raise ValueError(f"endpoint {_quote(text)}: an IPv6 address needs [brackets]")
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"endpoint {_quote(text)} is not an IP address and port") from None
    if bracketed and not isinstance(addr, ipaddress.IPv6Address):
        raise ValueError(f"endpoint {_quote(text)}: only IPv6 addresses take brackets")
    number = parse_uint(port, 65535)
    if not number:
        raise ValueError(f"endpoint {_quote(text)} has a bad port")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (str(addr), number)


def get_response(device: Device) -> str:
    """The body of a `get=1` answer, ending with errno=0 and the blank line."""
    lines: list[str] = []
    key = device.private_key
    if key is not None:
        lines.append(f"private_key={key.hex()}")
    if device.listen_port:
        lines.append(f"listen_port={device.listen_port}")
    if device.fwmark:
        lines.append(f"fwmark={device.fwmark}")
    for peer in device.peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={peer.preshared_key.hex()}")
        lines.append("protocol_version=1")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        secs = nsec = 0
        if peer.last_handshake is not None:
            whole = int(peer.last_handshake * 1e9)
            secs, nsec = divmod(whole, 1_000_000_000)
        lines.append(f"last_handshake_time_sec={secs}")
        lines.append(f"last_handshake_time_nsec={nsec}")
        lines.append(f"tx_bytes={peer.tx_bytes}")
        lines.append(f"rx_bytes={peer.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        for net in device.allowed_ips.networks_for(peer):
            lines.append(f"allowed_ip={net}")
    lines.append("errno=0")
    return "\n".join(lines) + "\n\n"


@dataclass
class PeerChange:
    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None
    clear_preshared_key: bool = False
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    # in request order: ("replace", None), ("add", network) or ("remove", network)
    allowed_ips: list[tuple[str, Network | None]] = field(default_factory=list)


@dataclass
class SetRequest:
    private_key: bytes | None = None
    clear_private_key: bool = False
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


def _key(value: str, name: str) -> bytes:
    try:
        return key_from_hex(value)
    except KeyFormatError:
        raise UapiError(EINVAL, f"invalid {name}") from None


def _true(value: str, name: str) -> bool:
    if value != "true":
        raise UapiError(EINVAL, f"invalid {name} value {_quote(value)}")
    return True


def _int(value: str, name: str, limit: int) -> int:
    number = parse_uint(value, limit)
    if number is None:
        raise UapiError(EINVAL, f"invalid {name} value {_quote(value)}")
    return number


def parse_set(lines: Iterable[str]) -> SetRequest:
    """Check a whole `set` request; UapiError names the first bad line."""
    req = SetRequest()
    peer: PeerChange | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            # not quoted: a line without '=' may be a pasted key
            raise UapiError(EPROTO, f"a line of {len(line)} characters is not key=value")
        if key == "public_key":
            peer = PeerChange(_key(value, "public_key"))
            req.peers.append(peer)
            continue
        if peer is None:
            if key == "private_key":
                k = _key(value, "private_key")
                if any(k):
                    req.private_key, req.clear_private_key = k, False
                else:
                    req.private_key, req.clear_private_key = None, True
            elif key == "listen_port":
                req.listen_port = _int(value, key, 65535)
            elif key == "fwmark":
                req.fwmark = _int(value, key, 0xFFFFFFFF)
            elif key == "replace_peers":
                req.replace_peers = _true(value, key)
            else:
                raise UapiError(EINVAL, f"invalid device key {_quote(key)}")
            continue
        if key == "remove":
            peer.remove = _true(value, key)
        elif key == "update_only":
            peer.update_only = _true(value, key)
        elif key == "preshared_key":
            k = _key(value, key)
            peer.preshared_key, peer.clear_preshared_key = (k, False) if any(k) else (None, True)
        elif key == "endpoint":
            try:
                peer.endpoint = parse_endpoint(value)
            except ValueError as e:
                raise UapiError(EINVAL, str(e)) from None
        elif key == "persistent_keepalive_interval":
            peer.persistent_keepalive = _int(value, key, 65535)
        elif key == "replace_allowed_ips":
            _true(value, key)
            peer.allowed_ips.append(("replace", None))
        elif key == "allowed_ip":
            add = not value.startswith("-")
            text = value if add else value[1:]
            if "/" not in text or text != text.strip():
                raise UapiError(EINVAL, f"allowed_ip {_quote(value)} is not address/length")
            try:
                net = parse_network(text)
            except ValueError:
                raise UapiError(EINVAL, f"invalid allowed_ip {_quote(value)}") from None
            peer.allowed_ips.append(("add" if add else "remove", net))
        elif key == "protocol_version":
            if value != "1":
                raise UapiError(EINVAL, f"invalid protocol version {_quote(value)}")
        else:
            raise UapiError(EINVAL, f"invalid peer key {_quote(key)}")
    return req


def apply_set(host: UapiHost, req: SetRequest) -> None:
    device = host.device
    now = host.now()
    if req.listen_port is not None and req.listen_port != device.listen_port:
        try:
            host.set_listen_port(req.listen_port)
        except OSError as e:
            raise UapiError(EADDRINUSE, f"cannot listen on port {req.listen_port}: {e}") from None
    if req.fwmark is not None and req.fwmark != device.fwmark:
        try:
            host.set_fwmark(req.fwmark)
        except OSError as e:
            raise UapiError(EIO, f"cannot set fwmark: {e}") from None
    if req.private_key is not None or req.clear_private_key:
        device.set_private_key(req.private_key)
    if req.replace_peers:
        device.remove_all_peers()
    own = device.public_key
    for change in req.peers:
        if change.public_key == own:
            continue  # a peer with our own key is ignored, as the reference does
        existing = device.peer(change.public_key)
        if change.remove:
            device.remove_peer(change.public_key)
            continue
        if existing is None and change.update_only:
            continue
        peer = existing or device.add_peer(change.public_key)
        if change.preshared_key is not None or change.clear_preshared_key:
            device.set_preshared_key(peer, change.preshared_key)
        if change.endpoint is not None:
            device.set_endpoint(peer, change.endpoint, now)
        for op, net in change.allowed_ips:
            if net is None:
                device.clear_allowed_ips(peer)
            elif op == "add":
                device.allow(peer, net)
            else:
                device.disallow(peer, net)
        if change.persistent_keepalive is not None:
            device.set_persistent_keepalive(peer, change.persistent_keepalive, now)


def _body_lines(buf: bytearray, start: int, end: int) -> Iterator[str]:
    """The lines of buf[start:end] (each ending with a newline), one at a time. Bytes that
    are not UTF-8 are kept as surrogates, so they fail as any bad value does (EINVAL)."""
    while start < end:
        nl = buf.index(b"\n", start, end)
        yield buf[start:nl].decode("utf-8", "surrogateescape")
        start = nl + 1


class UapiSession:
    """One connection: feed it bytes, send back what it returns; `closed` ends it.

    Input is kept in one buffer that is searched only where new bytes arrived and cut once
    per call, so many requests in one read cost linear time. `receive` and `answers` split
    `feed`, for a server that bounds the work done per call (`more` then says requests are
    waiting).
    """

    def __init__(self, host: UapiHost, log: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.closed = False
        self.more = False
        self._buf = bytearray()
        self._op: bytes | None = None
        self._scan = 0  # where the search for the end of the current set resumes
        self._log = log or (lambda _msg: None)

    def feed(self, data: bytes) -> bytes:
        self.receive(data)
        return self.answers()

    def receive(self, data: bytes) -> None:
        if not self.closed:
            self._buf += data

    def answers(self, max_requests: int | None = None, max_output: int | None = None) -> bytes:
        """Answer the complete requests received, stopping after `max_requests` of them or
        once the answers reach `max_output` bytes (then `more` is True)."""
        out: list[bytes] = []
        size = handled = pos = 0
        buf = self._buf
        self.more = False
        while not self.closed:
            if (max_requests is not None and handled >= max_requests) or (
                max_output is not None and size >= max_output
            ):
                self.more = True
                break
            step = self._step(buf, pos)
            if step is None:
                break
            answer, pos, done = step
            if answer:
                out.append(answer)
                size += len(answer)
            handled += done
        if self.closed:
            buf.clear()
            self._scan = 0
        elif pos:
            del buf[:pos]
            self._scan = max(0, self._scan - pos)
        return b"".join(out)

    def _step(self, buf: bytearray, pos: int) -> tuple[bytes, int, int] | None:
        """One step at buf[pos:]: (answer, where the next step starts, requests finished),
        or None until more bytes arrive."""
        if self._op is None:
            nl = buf.find(b"\n", pos, pos + _OP_LINE)
            if nl < 0:
                if len(buf) - pos < _OP_LINE:
                    return None
                nl = pos + _OP_LINE  # longer than any operation: not one
            op = bytes(buf[pos:nl])
            if op not in _OPS:
                self._log("UAPI: invalid operation")  # the line may carry a key: not logged
                self.closed = True
                return b"", len(buf), 0
            self._op = op
            self._scan = nl + 1
            return b"", nl + 1, 0
        if pos >= len(buf):
            return None
        if self._op == b"get=1":
            self._op = None
            if buf[pos] != 0x0A:
                # as wireguard-go: one byte is read after get=1, and it must end the request
                return f"errno={EINVAL}\n\n".encode(), pos + 1, 1
            return get_response(self.host.device).encode(), pos + 1, 1
        # a set runs to its blank line: an empty one, or the first "\n\n" past its op line
        if buf[pos] == 0x0A:
            end = pos
        else:
            found = buf.find(b"\n\n", max(pos, self._scan))
            if found < 0:
                self._scan = max(pos, len(buf) - 1)
                if len(buf) - pos > MAX_REQUEST:
                    return self._refuse_big(), len(buf), 1
                return None
            end = found + 1
        if end - pos > MAX_REQUEST:
            return self._refuse_big(), len(buf), 1
        self._op = None
        try:
            apply_set(self.host, parse_set(_body_lines(buf, pos, end)))
        except UapiError as e:
            self._log(f"UAPI set: {e}")
            return f"errno={e.code}\n\n".encode(), end + 1, 1
        return b"errno=0\n\n", end + 1, 1

    def _refuse_big(self) -> bytes:
        """A set past MAX_REQUEST: answered, and the connection ends (its rest is unread)."""
        self._log(f"UAPI set: request over {MAX_REQUEST >> 20} MiB refused")
        self.closed = True
        return f"errno={EMSGSIZE}\n\n".encode()
