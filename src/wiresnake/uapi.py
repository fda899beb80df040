"""The cross-platform configuration protocol that `wg` and `wg-quick` speak, sans-IO.

A connection carries requests `get=1` or `set=1`, each followed by `key=value` lines and a
blank line; every answer ends with `errno=N` and a blank line (negative errno values, as
wireguard-go writes them). `UapiSession.feed` takes bytes as they arrive and returns the
bytes to answer. Keys are hex here. A `set` is parsed and checked whole before any of it
is applied, so a bad line leaves the device as it was.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
from collections.abc import Callable
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
]

EINVAL = -_errno.EINVAL
EPROTO = -_errno.EPROTO
EADDRINUSE = -_errno.EADDRINUSE
EIO = -_errno.EIO


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


def parse_endpoint(text: str) -> Endpoint:
    """`a.b.c.d:port` or `[v6]:port`, as addresses (names are resolved by the caller)."""
    bracketed = text.startswith("[")
    if bracketed:
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"endpoint {text!r} lacks ']:port'")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"endpoint {text!r} lacks ':port'")
        if ":" in host:
            raise ValueError(f"endpoint {text!r}: an IPv6 address needs [brackets]")
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"endpoint {text!r} is not an IP address and port") from None
    if bracketed and not isinstance(addr, ipaddress.IPv6Address):
        raise ValueError(f"endpoint {text!r}: only IPv6 addresses take brackets")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        raise ValueError(f"endpoint {text!r} has a bad port")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (str(addr), int(port))


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
        raise UapiError(EINVAL, f"invalid {name} value {value!r}")
    return True


def _int(value: str, name: str, limit: int) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > limit:
        raise UapiError(EINVAL, f"invalid {name} value {value!r}")
    return int(value)


def parse_set(lines: list[str]) -> SetRequest:
    """Check a whole `set` request; UapiError names the first bad line."""
    req = SetRequest()
    peer: PeerChange | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(EPROTO, f"line {line!r} is not key=value")
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
                raise UapiError(EINVAL, f"invalid device key {key!r}")
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
                raise UapiError(EINVAL, f"allowed_ip {value!r} is not address/length")
            try:
                net = parse_network(text)
            except ValueError as e:
                raise UapiError(EINVAL, str(e)) from None
            peer.allowed_ips.append(("add" if add else "remove", net))
        elif key == "protocol_version":
            if value != "1":
                raise UapiError(EINVAL, f"invalid protocol version {value!r}")
        else:
            raise UapiError(EINVAL, f"invalid peer key {key!r}")
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


class UapiSession:
    """One connection: feed it bytes, send back what it returns; `closed` ends it."""

    def __init__(self, host: UapiHost, log: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.closed = False
        self._buf = b""
        self._op: str | None = None
        self._lines: list[str] = []
        self._log = log or (lambda _msg: None)

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = b""
        while not self.closed:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > 1 << 20:
                    self.closed = True
                break
            raw, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                self._log("UAPI: line is not UTF-8")
                self.closed = True
                break
            out += self._line(line)
        return out

    def _line(self, line: str) -> bytes:
        if self._op is None:
            if line in ("get=1", "set=1"):
                self._op = line
                self._lines = []
                return b""
            self._log("UAPI: invalid operation")  # the line may carry a key: not logged
            self.closed = True
            return b""
        if line:
            if self._op == "get=1":
                self._op = None
                return f"errno={EINVAL}\n\n".encode()
            self._lines.append(line)
            return b""
        op, self._op = self._op, None
        if op == "get=1":
            return get_response(self.host.device).encode()
        try:
            apply_set(self.host, parse_set(self._lines))
        except UapiError as e:
            self._log(f"UAPI set: {e}")
            return f"errno={e.code}\n\n".encode()
        return b"errno=0\n\n"
