"""The `wg` and `wg-quick` configuration file formats: parse, check, render.

A `wg` file (what `wg setconf`, `addconf` and `syncconf` read and `wg showconf` writes) has an
`[Interface]` section (PrivateKey, ListenPort, FwMark) and `[Peer]` sections (PublicKey,
PresharedKey, AllowedIPs, Endpoint, PersistentKeepalive). It is read as wireguard-tools'
`config.c` reads it: everything from a `#` on is a comment, every space character (space, tab,
CR, LF, VT, FF) anywhere in a line is dropped, section names and keys are case-insensitive,
a later value of a key wins, AllowedIPs lines add up, and an empty value is an error.

A `wg-quick` file adds Address, DNS, MTU, Table, PreUp, PostUp, PreDown, PostDown and
SaveConfig to `[Interface]`; those are read as `wg-quick` reads them (value trimmed, inner
spaces kept, so hook commands survive) and kept in `WgQuickSettings` for `up`/`down`.
`parse_config(..., wg_quick=False)` refuses them as `wg setconf` does; `strip_wg_quick` is
`wg-quick strip`.

Values are checked while parsing; host names in endpoints are kept as written and resolved
separately (`resolve_endpoint`, or `resolve_endpoint_async` on an asyncio loop), once, just
before a configuration is applied (`wiresnake.reresolve` looks them up again later). Every
error is a `ConfigError` whose text is `FILE:LINE: Key: what is wrong`; what is allowed but
rarely meant (a peer given twice, a file that sets nothing) is a warning.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_interface
from typing import TYPE_CHECKING, Final, TypeAlias, TypeVar

from wiresnake.crypto import KEY_LEN, KeyFormatError, key_from_base64, key_to_base64
from wiresnake.protocol.settings import DeviceConfig, Network, PeerConfig

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "WG_QUICK_KEYS",
    "Config",
    "ConfigError",
    "EndpointSpec",
    "InterfaceAddress",
    "InterfaceSection",
    "PeerSection",
    "WgQuickSettings",
    "format_allowed_ip",
    "format_config",
    "in_daemon_thread",
    "parse_allowed_ips",
    "parse_config",
    "parse_endpoint_spec",
    "parse_fwmark",
    "parse_key",
    "parse_listen_port",
    "parse_persistent_keepalive",
    "parse_set_arguments",
    "read_config",
    "read_key_file",
    "resolve_config",
    "resolve_endpoint",
    "resolve_endpoint_async",
    "strip_wg_quick",
]

InterfaceAddress: TypeAlias = IPv4Interface | IPv6Interface

WG_QUICK_KEYS: Final = (
    "Address",
    "DNS",
    "MTU",
    "Table",
    "PreUp",
    "PostUp",
    "PreDown",
    "PostDown",
    "SaveConfig",
)
_INTERFACE_KEYS: Final = ("PrivateKey", "ListenPort", "FwMark")
_PEER_KEYS: Final = ("PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive")
_CANONICAL: Final = {k.lower(): k for k in (*WG_QUICK_KEYS, *_INTERFACE_KEYS, *_PEER_KEYS)}

# The characters wg drops from every line (C-locale isspace), and wg-quick trims (bash
# [[:space:]] in the C locale): the same six.
_SPACES: Final = " \t\n\v\f\r"
_DROP_SPACES: Final = str.maketrans("", "", _SPACES)
_COMMENT: Final = "#"


class ConfigError(ValueError):
    """A configuration that cannot be used; str() is `FILE:LINE: message` when from a file."""

    def __init__(
        self, message: str, path: str | None = None, line: int | None = None, key: str = ""
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.key = key
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")


# ---------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """An endpoint as written: a host (IP address or name) and a UDP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_numeric(self) -> bool:
        """The host is an IP address literal (an IPv6 zone is allowed), so needs no look-up."""
        host = self.host.split("%", 1)[0] if ":" in self.host else self.host
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(family, host)
            except (OSError, ValueError):
                continue
            return True
        return False


@dataclass(frozen=True, slots=True)
class InterfaceSection:
    """`[Interface]`; None means "not given" (setconf then sends zero, addconf nothing)."""

    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None


@dataclass(frozen=True, slots=True)
class PeerSection:
    """One `[Peer]` (or one `peer` of `wg set`); None means "not given, leave as is".

    A zero PresharedKey clears the key, PersistentKeepalive 0 is "off". A `[Peer]` replaces
    the peer's allowed IPs with its own list unless an entry carries `+` or `-` (wireguard-tools
    since 2025: add or remove one prefix); `removed_allowed_ips` are the `-` entries.
    """

    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: EndpointSpec | None = None
    persistent_keepalive: int | None = None
    allowed_ips: tuple[Network, ...] = ()
    removed_allowed_ips: tuple[Network, ...] = ()
    replace_allowed_ips: bool = True
    remove: bool = False


@dataclass(frozen=True, slots=True)
class WgQuickSettings:
    """The `[Interface]` keys only wg-quick reads, kept for `up` and `down`."""

    addresses: tuple[InterfaceAddress, ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    mtu: int | None = None
    table: str | None = None
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()
    save_config: bool = False

    @property
    def is_empty(self) -> bool:
        return self == _NO_QUICK


_NO_QUICK: Final = WgQuickSettings()


@dataclass(frozen=True, slots=True)
class Config:
    """A parsed configuration file. Peers are in file order; a key may appear twice, as wg
    allows (the later section then updates the same peer)."""

    interface: InterfaceSection = InterfaceSection()
    peers: tuple[PeerSection, ...] = ()
    quick: WgQuickSettings = _NO_QUICK
    path: str = field(default="<string>", compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # (peer index or -1 for [Interface], canonical key or "" for the header) -> line
    lines: Mapping[tuple[int, str], int] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    def where(self, peer: int, key: str) -> int | None:
        """The line a key was set on (peer index, or -1 for `[Interface]`)."""
        return self.lines.get((peer, key)) or self.lines.get((peer, ""))

    def error(self, peer: int, key: str, message: str) -> ConfigError:
        return ConfigError(message, self.path, self.where(peer, key), key)

    def port_in_use(self) -> str | None:
        """What to say when the daemon could not bind our ListenPort (EADDRINUSE): the port
        and the line that asked for it; None when this file asked for no port."""
        port = self.interface.listen_port
        if not port or self.where(-1, "ListenPort") is None:
            return None
        return str(self.error(-1, "ListenPort", f"UDP port {port} is already in use"))

    def strip(self) -> Config:
        """The same configuration without its wg-quick settings (`wg-quick strip`)."""
        return replace(self, quick=_NO_QUICK)

    def merged_peers(self) -> tuple[PeerSection, ...]:
        """One section per public key, later sections applied over earlier ones as a `set`
        applies them; first-appearance order. Removed peers are dropped."""
        merged: dict[bytes, PeerSection] = {}
        for p in self.peers:
            old = merged.pop(p.public_key, None)
            if p.remove:
                continue
            if old is None:
                merged[p.public_key] = p
                continue
            ips: tuple[Network, ...]
            if p.replace_allowed_ips:
                ips = p.allowed_ips
            else:
                ips = tuple(n for n in old.allowed_ips if n not in p.removed_allowed_ips)
                ips += tuple(n for n in p.allowed_ips if n not in ips)
            merged[p.public_key] = PeerSection(
                public_key=p.public_key,
                preshared_key=old.preshared_key if p.preshared_key is None else p.preshared_key,
                endpoint=p.endpoint or old.endpoint,
                persistent_keepalive=(
                    old.persistent_keepalive
                    if p.persistent_keepalive is None
                    else p.persistent_keepalive
                ),
                allowed_ips=ips,
            )
        return tuple(merged.values())

    def to_device_config(
        self, resolve: Callable[[EndpointSpec], tuple[str, int]] | None = None
    ) -> DeviceConfig:
        """The engine's settings for this file, as `setconf` would leave a fresh device.

        Endpoints that name a host are resolved with `resolve` (default `resolve_endpoint`);
        a failure is a ConfigError naming the Endpoint line.
        """
        resolver = resolve or resolve_endpoint
        key = self.interface.private_key
        peers: list[PeerConfig] = []
        resolved = resolve_config(self, resolver)
        for p in resolved.merged_peers():
            psk = p.preshared_key if p.preshared_key and any(p.preshared_key) else None
            ep = (p.endpoint.host, p.endpoint.port) if p.endpoint is not None else None
            peers.append(
                PeerConfig(
                    public_key=p.public_key,
                    preshared_key=psk,
                    endpoint=ep,
                    allowed_ips=p.allowed_ips,
                    persistent_keepalive=p.persistent_keepalive or 0,
                )
            )
        return DeviceConfig(
            private_key=key if key is not None and any(key) else None,
            listen_port=self.interface.listen_port or 0,
            fwmark=self.interface.fwmark or 0,
            peers=tuple(peers),
        )


# ---------------------------------------------------------------------------------------
# Values, each checked as wg checks it; the messages are wg's own.


def parse_key(value: str) -> bytes:
    try:
        return key_from_base64(value)
    except KeyFormatError:
        raise ValueError(f"Key is not the correct length or format: `{value}'") from None


def parse_listen_port(value: str) -> int:
    """A port number or a service name (wg asks getaddrinfo, so /etc/services names work).

    Unlike glibc's getaddrinfo, which wg uses, numbers above 65535 are refused rather than
    wrapped around (`70000` would be port 4464).
    """
    if not value:
        raise ValueError("Unable to parse empty port")
    if value.isascii() and value.isdigit():
        port = int(value)
        if port > 65535:
            raise ValueError(f"Port is not in 0-65535: `{value}'")
        return port
    try:
        return socket.getservbyname(value, "udp")
    except OSError:
        raise ValueError(f"Servname not supported for ai_socktype: `{value}'") from None


def parse_fwmark(value: str) -> int:
    """`off`, a decimal number, or `0x` and hex digits; at most 0xffffffff."""
    bad = ValueError(f"Fwmark is neither 0/off nor 0-0xffffffff: `{value}'")
    if value.lower() == "off":
        return 0
    if not value[:1].isdigit() or not value.isascii():
        raise bad
    digits, base = (value[2:], 16) if len(value) > 2 and value.startswith("0x") else (value, 10)
    try:
        mark = int(digits, base) if digits.isalnum() else -1
    except ValueError:
        raise bad from None
    if not 0 <= mark <= 0xFFFFFFFF:
        raise bad
    return mark


def parse_persistent_keepalive(value: str) -> int:
    """`off` or 0-65535 seconds (0 is off)."""
    if value.lower() == "off":
        return 0
    if value.isascii() and value.isdigit() and int(value) <= 65535:
        return int(value)
    raise ValueError(f"Persistent keepalive interval is neither 0/off nor 1-65535: `{value}'")


def parse_endpoint_spec(value: str) -> EndpointSpec:
    """`host:port` or `[host]:port`; the host is kept as written (name or address)."""
    if not value:
        raise ValueError("Unable to parse empty endpoint")
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise ValueError(f"Unable to find matching brace of endpoint: `{value}'")
        host, rest = value[1:close], value[close + 1 :]
        if not rest.startswith(":") or len(rest) < 2:
            raise ValueError(f"Unable to find port of endpoint: `{value}'")
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not port_text:
            raise ValueError(f"Unable to find port of endpoint: `{value}'")
    if not host:
        raise ValueError(f"Name or service not known: `{value}'")
    if port_text.isascii() and port_text.isdigit():
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"Port is not in 0-65535: `{value}'")
    else:
        try:
            port = socket.getservbyname(port_text, "udp")
        except OSError:
            raise ValueError(f"Servname not supported for ai_socktype: `{value}'") from None
    return EndpointSpec(host, port)


def _parse_ip(text: str) -> tuple[int, bytes] | None:
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return family, socket.inet_pton(family, text)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class AllowedIPs:
    """One AllowedIPs value: prefixes to add, to remove, and whether to replace."""

    add: tuple[Network, ...]
    remove: tuple[Network, ...]
    replace: bool
    warnings: tuple[str, ...]


def parse_allowed_ips(value: str) -> AllowedIPs:
    """A comma list of `ip[/cidr]`, each optionally prefixed with `+` or `-`.

    An entry with a prefix sign makes the list incremental (no replace). Host bits are
    masked off with a warning, as wg does. An empty value (only from `wg set`) clears.
    """
    add: list[Network] = []
    remove: list[Network] = []
    warnings: list[str] = []
    replace = True
    if not value:
        return AllowedIPs((), (), True, ())
    for raw in value.split(","):
        entry = raw
        sign = entry[:1]
        if sign in ("+", "-"):
            replace = False
            entry = entry[1:]
        ip_text, slash, mask = entry.partition("/")
        parsed = _parse_ip(ip_text)
        if parsed is None:
            raise ValueError(f"Unable to parse IP address: `{ip_text}'")
        family, packed = parsed
        bits = 32 if family == socket.AF_INET else 128
        if slash:
            if not (mask.isascii() and mask.isdigit()) or int(mask) > bits:
                raise ValueError(f"AllowedIP is not in the correct format: `{entry}'")
            cidr = int(mask)
        else:
            cidr = bits
        address = int.from_bytes(packed, "big")
        net: Network = (
            IPv4Network((address, cidr), strict=False)
            if bits == 32
            else IPv6Network((address, cidr), strict=False)
        )
        if int(net.network_address) != address:
            warnings.append(f"Warning: AllowedIP has nonzero host part: {ip_text}/{mask}")
        (remove if sign == "-" else add).append(net)
    return AllowedIPs(tuple(add), tuple(remove), replace, tuple(warnings))


def format_allowed_ip(net: Network) -> str:
    """As wg prints a prefix: the address through inet_ntop (so `::ffff:1.2.3.4`), `/cidr`."""
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    return f"{socket.inet_ntop(family, net.network_address.packed)}/{net.prefixlen}"


def read_key_file(path: str) -> bytes:
    """A base64 key from a file as `wg set private-key FILE` reads it: 44 characters, then
    only spaces; an empty file (or /dev/null) is the zero key, which clears."""
    try:
        with open(path, "rb") as f:
            head = f.read(44)
            if not head:
                return bytes(KEY_LEN)
            if len(head) < 44:
                raise ValueError("Invalid length key in key file")
            while chunk := f.read(65536):
                junk = chunk.translate(None, _SPACES.encode())
                if junk:
                    raise ValueError(f"Found trailing character in key file: `{chr(junk[0])}'")
    except OSError as e:
        raise ValueError(f"fopen: {e.strerror}") from None
    return parse_key(head.decode("latin-1"))


# ---------------------------------------------------------------------------------------
# wg-quick's own keys


def _quick_items(value: str) -> list[str]:
    return value.replace(",", " ").split()


def _parse_address(item: str) -> InterfaceAddress:
    ip_text, slash, plen = item.partition("/")
    if _parse_ip(ip_text) is None or (slash and not (plen.isascii() and plen.isdigit())):
        raise ValueError(f"`{item}' is not an IP address with an optional /prefix length")
    try:
        return ip_interface(item)
    except ValueError:
        raise ValueError(f"`{item}' is not an IP address with an optional /prefix length") from None


# wg-quick sorts DNS entries into servers (an IPv4 address or anything with a colon) and
# search domains (the rest).
_DNS_SERVER: Final = re.compile(r"^[0-9.]+$|:")


@dataclass
class _QuickBuilder:
    addresses: list[InterfaceAddress] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    mtu: int | None = None
    table: str | None = None
    hooks: dict[str, list[str]] = field(
        default_factory=lambda: {"preup": [], "postup": [], "predown": [], "postdown": []}
    )
    save_config: bool = False

    def take(self, key: str, value: str) -> None:
        k = key.lower()
        if k == "address":
            self.addresses += [_parse_address(item) for item in _quick_items(value)]
        elif k == "dns":
            for item in _quick_items(value):
                (self.dns if _DNS_SERVER.search(item) else self.dns_search).append(item)
        elif k == "mtu":
            if value and not (value.isascii() and value.isdigit()):
                raise ValueError(f"`{value}' is not a number")
            self.mtu = int(value) if value else None
        elif k == "table":
            self.table = value or None
        elif k == "saveconfig":
            if value.lower() not in ("true", "false"):
                raise ValueError(f"`{value}' is neither true nor false")
            self.save_config = value.lower() == "true"
        else:
            self.hooks[k].append(value)

    def build(self) -> WgQuickSettings:
        return WgQuickSettings(
            addresses=tuple(self.addresses),
            dns=tuple(self.dns),
            dns_search=tuple(self.dns_search),
            mtu=self.mtu,
            table=self.table,
            pre_up=tuple(self.hooks["preup"]),
            post_up=tuple(self.hooks["postup"]),
            pre_down=tuple(self.hooks["predown"]),
            post_down=tuple(self.hooks["postdown"]),
            save_config=self.save_config,
        )


def _quick_key(line: str, *, need_equals: bool = True) -> tuple[str, str] | None:
    """(key, value) as wg-quick splits a line, when the key is one of its own.

    wg-quick itself takes a line without `=` whole as both key and value; `strip` follows
    it there, parsing insists on the `=`.
    """
    stripped = line.split(_COMMENT, 1)[0]
    key, sep, value = stripped.partition("=")
    key = key.strip(_SPACES)
    if (need_equals and not sep) or key.lower() not in _QUICK_LOWER:
        return None
    return _CANONICAL[key.lower()], (value if sep else key).strip(_SPACES)


_QUICK_LOWER: Final = frozenset(k.lower() for k in WG_QUICK_KEYS)


# ---------------------------------------------------------------------------------------
# The file


@dataclass
class _PeerBuilder:
    line: int
    public_key: bytes | None = None
    preshared_key: bytes | None = None
    endpoint: EndpointSpec | None = None
    persistent_keepalive: int | None = None
    allowed_ips: list[Network] = field(default_factory=list)
    removed: list[Network] = field(default_factory=list)
    replace: bool = True
    remove: bool = False

    def build(self) -> PeerSection:
        assert self.public_key is not None
        return PeerSection(
            public_key=self.public_key,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            persistent_keepalive=self.persistent_keepalive,
            allowed_ips=tuple(self.allowed_ips),
            removed_allowed_ips=tuple(self.removed),
            replace_allowed_ips=self.replace,
            remove=self.remove,
        )


@dataclass
class _InterfaceBuilder:
    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None

    def build(self) -> InterfaceSection:
        return InterfaceSection(self.private_key, self.listen_port, self.fwmark)


def _lines(text: str) -> Iterable[tuple[int, str]]:
    # Lines end at "\n" only, as getline reads them; other breaks are spaces or junk.
    return enumerate(text.split("\n"), 1)


def parse_config(text: str, path: str = "<string>", *, wg_quick: bool = False) -> Config:
    """Parse a `wg` file (or, with `wg_quick`, a wg-quick file) into a checked `Config`."""
    section = ""
    iface = _InterfaceBuilder()
    peers: list[_PeerBuilder] = []
    quick = _QuickBuilder()
    warnings: list[str] = []
    where: dict[tuple[int, str], int] = {}

    def fail(n: int, message: str, key: str = "") -> ConfigError:
        return ConfigError(message, path, n, key)

    for n, raw in _lines(text):
        line = raw.split(_COMMENT, 1)[0].translate(_DROP_SPACES)
        if not line:
            continue
        lowered = line.lower()
        if lowered == "[interface]":
            section = "interface"
            where.setdefault((-1, ""), n)
            continue
        if lowered == "[peer]":
            section = "peer"
            peers.append(_PeerBuilder(n))
            where[(len(peers) - 1, "")] = n
            continue
        if line.startswith("["):
            raise fail(n, f"Line unrecognized: `{line}' (sections are [Interface] and [Peer])")
        name, sep, value = line.partition("=")
        if not sep:
            raise fail(n, f"Line unrecognized: `{line}'")
        key = _CANONICAL.get(name.lower(), name)
        if not section:
            raise fail(n, "key outside of an [Interface] or [Peer] section", key)

        if section == "interface" and key in WG_QUICK_KEYS:
            taken = _quick_key(raw) if wg_quick else None
            if taken is None:
                if wg_quick:  # e.g. `Post Up = ...`: wg-quick passes it on, wg refuses it
                    raise fail(n, f"Line unrecognized: `{line}'")
                raise fail(
                    n, f"a wg-quick key; `wiresnake strip {path}' prints the file without them", key
                )
            try:
                quick.take(*taken)
            except ValueError as e:
                raise fail(n, str(e), key) from None
            where[(-1, key)] = n
            continue
        if not value:
            raise fail(n, "empty value", key)
        try:
            if section == "interface":
                if key == "PrivateKey":
                    iface.private_key = parse_key(value)
                elif key == "ListenPort":
                    iface.listen_port = parse_listen_port(value)
                elif key == "FwMark":
                    iface.fwmark = parse_fwmark(value)
                else:
                    raise fail(n, "unknown key in [Interface]", key)
                where[(-1, key)] = n
                continue
            peer = peers[-1]
            if key == "PublicKey":
                peer.public_key = parse_key(value)
            elif key == "PresharedKey":
                peer.preshared_key = parse_key(value)
            elif key == "Endpoint":
                peer.endpoint = parse_endpoint_spec(value)
            elif key == "PersistentKeepalive":
                peer.persistent_keepalive = parse_persistent_keepalive(value)
            elif key == "AllowedIPs":
                ips = parse_allowed_ips(value)
                peer.allowed_ips += ips.add
                peer.removed += ips.remove
                # each AllowedIPs line sets "replace" anew; a +/- entry in it clears it
                peer.replace = ips.replace
                warnings += [f"{path}:{n}: {w}" for w in ips.warnings]
            else:
                raise fail(n, "unknown key in [Peer]", key)
            where[(len(peers) - 1, key)] = n
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise fail(n, str(e), key) from None

    first_line: dict[bytes, int] = {}
    for i, p in enumerate(peers):
        if p.public_key is None:
            raise ConfigError("[Peer] section has no PublicKey", path, p.line)
        first = first_line.setdefault(p.public_key, p.line)
        if first != p.line:  # allowed (the later section updates the peer), but rarely meant
            warnings.append(
                f"{path}:{where.get((i, 'PublicKey'), p.line)}: Warning: PublicKey: a second "
                f"[Peer] with this key (the first is on line {first}) updates that peer"
            )
    if all(key == "" for _, key in where):  # only comments, blanks, an empty [Interface]
        header = where.get((-1, ""))
        at = f"{path}:{header}" if header else path
        warnings.append(f"{at}: Warning: an empty configuration: no key is set in any section")
    return Config(
        interface=iface.build(),
        peers=tuple(p.build() for p in peers),
        quick=quick.build(),
        path=path,
        warnings=tuple(warnings),
        lines=where,
    )


def read_config(path: str, *, wg_quick: bool = False) -> Config:
    """Read and parse a file; a file that cannot be read is a ConfigError naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(e.strerror or str(e), path) from None
    return parse_config(data.decode("utf-8", "surrogateescape"), path, wg_quick=wg_quick)


def strip_wg_quick(text: str) -> str:
    """`wg-quick strip`: the file without wg-quick's keys, each line trimmed, as wg-quick
    prints it (its `echo` adds one newline at the end)."""
    out: list[str] = []
    interface = False
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another
    for raw in lines:
        line = raw.strip(" \t\n")  # bash's `read -r` trims IFS whitespace
        key = line.split(_COMMENT, 1)[0].partition("=")[0].strip(_SPACES)
        if key.startswith("["):
            interface = key.lower() == "[interface]"
        taken = _quick_key(line, need_equals=False) if interface else None
        if taken is not None:
            if taken[0] == "SaveConfig" and taken[1].lower() not in ("true", "false"):
                raise ValueError(f"`{taken[1]}' is neither true nor false")
            continue
        out.append(line + "\n")
    return "".join(out) + "\n"


# ---------------------------------------------------------------------------------------
# `wg set` arguments, the command-line form of one change


def parse_set_arguments(args: Sequence[str]) -> tuple[Config, tuple[str, ...]]:
    """`listen-port P fwmark M private-key FILE peer KEY [remove] [preshared-key FILE]
    [endpoint H:P] [persistent-keepalive N] [allowed-ips LIST] ...` as `wg set` reads them.

    Returns the change (absent means "leave as is") and warnings; a bad argument raises
    ConfigError with wg's own message (no file, no line).
    """
    iface = _InterfaceBuilder()
    peers: list[_PeerBuilder] = []
    warnings: list[str] = []
    i = 0
    try:
        while i < len(args):
            word = args[i]
            has_value = i + 1 < len(args)
            value = args[i + 1] if has_value else ""
            peer = peers[-1] if peers else None
            if word == "listen-port" and has_value and peer is None:
                iface.listen_port = parse_listen_port(value)
            elif word == "fwmark" and has_value and peer is None:
                iface.fwmark = parse_fwmark(value)
            elif word == "private-key" and has_value and peer is None:
                iface.private_key = read_key_file(value)
            elif word == "peer" and has_value:
                peers.append(_PeerBuilder(0, parse_key(value), replace=False))
            elif word == "remove" and peer is not None:
                peer.remove = True
                i += 1
                continue
            elif word == "endpoint" and has_value and peer is not None:
                peer.endpoint = parse_endpoint_spec(value)
            elif word == "allowed-ips" and has_value and peer is not None:
                ips = parse_allowed_ips(value.translate(_DROP_SPACES))
                peer.allowed_ips += ips.add
                peer.removed += ips.remove
                peer.replace = ips.replace  # as in files: the last list decides
                warnings += ips.warnings
            elif word == "persistent-keepalive" and has_value and peer is not None:
                peer.persistent_keepalive = parse_persistent_keepalive(value)
            elif word == "preshared-key" and has_value and peer is not None:
                peer.preshared_key = read_key_file(value)
            else:
                raise ConfigError(f"Invalid argument: {word}")
            i += 2
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    config = Config(
        interface=iface.build(), peers=tuple(p.build() for p in peers), path="<arguments>"
    )
    return config, tuple(warnings)


# ---------------------------------------------------------------------------------------
# Endpoint names


# getaddrinfo's answers that will not change on a retry (glibc's NameResolver notes).
_PERMANENT: Final = frozenset(
    code
    for code in (
        getattr(socket, "EAI_NONAME", None),
        getattr(socket, "EAI_FAIL", None),
        getattr(socket, "EAI_NODATA", None),
    )
    if code is not None
)


def _resolution_retries() -> int:
    """WG_ENDPOINT_RESOLUTION_RETRIES: a count, or `infinity` (-1); 15 when unset."""
    text = os.environ.get("WG_ENDPOINT_RESOLUTION_RETRIES")
    if text is None:
        return 15
    if text == "infinity":
        return -1
    if not (text.isascii() and text.isdigit()) or int(text) > 0x7FFFFFFF:
        raise ValueError(f"Unable to parse WG_ENDPOINT_RESOLUTION_RETRIES: `{text}'")
    return int(text)


def _stderr(text: str) -> None:
    if sys.stderr is not None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


class _Retries:
    """wg's schedule for transient look-up failures: a pause of 1 s, growing by 1.2 to at
    most 20 s, `retries` times (default WG_ENDPOINT_RESOLUTION_RETRIES or 15; -1 forever)."""

    def __init__(self, text: str, retries: int | None) -> None:
        self.text = text
        self.left = _resolution_retries() if retries is None else retries
        self.pause = 1_000_000  # microseconds, as wg counts them

    def after(self, e: socket.gaierror, log: Callable[[str], None]) -> float:
        """Seconds to wait before the next try; ValueError (wg's message) when none is left."""
        reason = e.strerror or str(e)
        if e.errno in _PERMANENT or self.left == 0:
            raise ValueError(f"{reason}: `{self.text}'") from None
        if self.left > 0:
            self.left -= 1
        pause = self.pause / 1_000_000
        log(f"{reason}: `{self.text}'. Trying again in {pause:.2f} seconds...")
        self.pause = min(20_000_000, self.pause * 6 // 5)
        return pause


def _lookup(spec: EndpointSpec) -> tuple[str, int]:
    """One getaddrinfo: the first answer of either family. gaierror is for the caller to
    retry; ValueError is final."""
    try:
        answers = socket.getaddrinfo(
            spec.host, spec.port, socket.AF_UNSPEC, socket.SOCK_DGRAM, socket.IPPROTO_UDP
        )
    except UnicodeError:
        raise ValueError(f"Name or service not known: `{spec}'") from None
    for family, _type, _proto, _name, sockaddr in answers:
        if family in (socket.AF_INET, socket.AF_INET6):
            host, port = socket.getnameinfo(
                sockaddr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV | socket.NI_DGRAM
            )
            return host, int(port)
    raise ValueError(f"Neither IPv4 nor IPv6 address found: `{spec}'")


def resolve_endpoint(
    host_port: str | EndpointSpec,
    *,
    retries: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = _stderr,
) -> tuple[str, int]:
    """Resolve `host:port` (or an EndpointSpec) to (ip, port) with getaddrinfo, as wg does:
    the first answer of either family; transient failures are retried as `_Retries` says,
    each announced through `log`. ValueError carries wg's message.
    """
    spec = host_port if isinstance(host_port, EndpointSpec) else parse_endpoint_spec(host_port)
    schedule = _Retries(str(spec) if isinstance(host_port, EndpointSpec) else host_port, retries)
    while True:
        try:
            return _lookup(spec)
        except socket.gaierror as e:
            sleep(schedule.after(e, log))


async def resolve_endpoint_async(
    spec: EndpointSpec,
    *,
    retries: int | None = None,
    log: Callable[[str], None] = _stderr,
    lookup: Callable[[EndpointSpec], tuple[str, int]] = _lookup,
) -> tuple[str, int]:
    """`resolve_endpoint` for an asyncio loop, which it never blocks: each `lookup` runs in
    its own daemon thread and the pauses are `asyncio.sleep`, so cancelling (Ctrl-C) ends it
    at once. Not `loop.getaddrinfo`: `asyncio.run` joins the default executor's threads on
    the way out, so a look-up stuck on a dead DNS server would hold up the exit."""
    import asyncio  # here: the command line should not pay for it

    schedule = _Retries(str(spec), retries)
    while True:
        try:
            return await in_daemon_thread(lookup, spec)
        except socket.gaierror as e:
            await asyncio.sleep(schedule.after(e, log))


_T = TypeVar("_T")
_A = TypeVar("_A")


async def in_daemon_thread(fn: Callable[[_A], _T], arg: _A) -> _T:
    """`fn(arg)` in a new daemon thread, awaited without blocking the loop; a thread left
    behind by a cancelled await finishes on its own and keeps nothing from exiting."""
    import asyncio

    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            outcome: tuple[_T | None, BaseException | None] = (fn(arg), None)
        except Exception as e:
            outcome = (None, e)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name="getaddrinfo", daemon=True).start()
    return await future


def resolve_config(
    config: Config, resolve: Callable[[EndpointSpec], tuple[str, int]] | None = None
) -> Config:
    """The config with every endpoint an IP address; a failure names the Endpoint line."""
    resolver = resolve or resolve_endpoint
    peers: list[PeerSection] = []
    for i, p in enumerate(config.peers):
        if p.endpoint is not None and not p.endpoint.is_numeric:
            try:
                host, port = resolver(p.endpoint)
            except ValueError as e:
                raise config.error(i, "Endpoint", str(e)) from None
            p = replace(p, endpoint=EndpointSpec(host, port))
        peers.append(p)
    return replace(config, peers=tuple(peers))


# ---------------------------------------------------------------------------------------
# Rendering


def format_config(config: Config) -> str:
    """The text of a configuration, in `wg showconf`'s layout and order (byte for byte for
    a plain device state), with wg-quick's keys first in `[Interface]` as `wg-quick save`
    writes them. Parsing the result gives the same Config back."""
    out = ["[Interface]\n"]
    q = config.quick
    out += [f"Address = {a}\n" for a in q.addresses]
    if q.dns or q.dns_search:
        out.append(f"DNS = {', '.join((*q.dns, *q.dns_search))}\n")
    if q.mtu is not None:
        out.append(f"MTU = {q.mtu}\n")
    if q.table is not None:
        out.append(f"Table = {q.table}\n")
    if q.save_config:
        out.append("SaveConfig = true\n")
    for name, hooks in (
        ("PreUp", q.pre_up),
        ("PostUp", q.post_up),
        ("PreDown", q.pre_down),
        ("PostDown", q.post_down),
    ):
        out += [f"{name} = {cmd}\n" for cmd in hooks]
    i = config.interface
    if i.listen_port is not None:
        out.append(f"ListenPort = {i.listen_port}\n")
    if i.fwmark is not None:
        out.append(f"FwMark = {f'0x{i.fwmark:x}' if i.fwmark else 'off'}\n")
    if i.private_key is not None:
        out.append(f"PrivateKey = {key_to_base64(i.private_key)}\n")
    out.append("\n")
    blocks: list[str] = []
    for p in config.peers:
        block = [f"[Peer]\nPublicKey = {key_to_base64(p.public_key)}\n"]
        if p.preshared_key is not None:
            block.append(f"PresharedKey = {key_to_base64(p.preshared_key)}\n")
        sign = "" if p.replace_allowed_ips else "+"
        entries = [sign + format_allowed_ip(n) for n in p.allowed_ips]
        entries += ["-" + format_allowed_ip(n) for n in p.removed_allowed_ips]
        if entries:
            block.append(f"AllowedIPs = {', '.join(entries)}\n")
        if p.endpoint is not None:
            block.append(f"Endpoint = {p.endpoint}\n")
        if p.persistent_keepalive is not None:
            block.append(f"PersistentKeepalive = {p.persistent_keepalive or 'off'}\n")
        blocks.append("".join(block))
    out.append("\n".join(blocks))
    return "".join(out)
