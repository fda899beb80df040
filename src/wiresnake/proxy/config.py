"""wireproxy's configuration file: parse, check, and map onto the engine's settings.

The format is the one wireproxy reads (github.com/windtf/wireproxy, formerly
pufferffish/wireproxy, `config.go`), an INI file read by go-ini with section and key names
case-insensitive, a repeated section kept as another section, and these sections:

- `[Interface]` (exactly one): PrivateKey, Address (comma list of addresses, a prefix length
  allowed and kept), DNS and CheckAlive (comma lists of addresses), MTU (1420), ListenPort,
  CheckAliveInterval (5 s; only with CheckAlive).
- `[Peer]` (one or more): PublicKey, PresharedKey, Endpoint (`host:port`, `[v6]:port`; names
  are kept and resolved when the device is set up), AllowedIPs (none means `0.0.0.0/0, ::/0`),
  PersistentKeepalive.
- Services, each repeatable: `[TCPClientTunnel]` (BindAddress, Target), `[TCPServerTunnel]`
  (ListenPort, Target), `[UDPProxyTunnel]` (BindAddress, Target, InactivityTimeout, 0 = never),
  `[Socks5]` and `[http]` (BindAddress, Username, Password; `[http]` also CertFile and KeyFile
  for HTTPS), `[SNI]` (BindAddress); `[STDIOTunnel]` (Target) once; `[Resolve]`
  (ResolveStrategy: auto, ipv4 or ipv6) once.
- `WGConfig = FILE` before the first section takes `[Interface]` and `[Peer]` from a wg-quick
  file instead (a relative path is relative to the including file's directory).

Lines are read as go-ini reads them: `#` and `;` start comment lines and also end a value
anywhere in it (quote a value with backticks or triple double quotes to keep them); `=` or `:`
ends a key; a value in matching single or double quotes loses them; a value ending in `\\`
continues on the next line; `%(key)s` is replaced by that key's value from the same section or
from the top of the file. A key that wireproxy reads as a string (Address, PrivateKey, DNS,
CheckAlive, PublicKey, AllowedIPs, BindAddress, Target, Username, Password, CertFile, KeyFile,
ResolveStrategy) may be `$NAME` as a whole, the environment variable NAME (unset is an error),
and a leading `$$` stands for one literal `$`. Numbers are Go integer literals (`0x5dc`, `1_420`).

What wireproxy refuses, when it reads the file or when it starts, is refused here, as a
`ProxyConfigError` (a `ConfigError`) whose text is `FILE:LINE: Key: what is wrong`. Beyond
that, on purpose, so that a mistake is not silently turned into something else:

- unknown sections and keys are refused (wireproxy ignores them); wg-quick's own keys in
  `[Interface]` (Table, FwMark, PreUp, PostUp, PreDown, PostDown, SaveConfig) are ignored with
  a warning;
- `[Interface]`/`[Peer]` beside `WGConfig`, and services inside a WGConfig file, are refused
  (wireproxy ignores them);
- BindAddress and Target are required, Target needs a host and a numeric port (wireproxy
  would listen on a random port, or fail each connection), ResolveStrategy must be one of its
  three words, CertFile and KeyFile come together, a SOCKS5 Password needs a Username;
- a repeated key with a different value is refused (wireproxy takes the first, wg-quick the
  last); repeated Address, DNS, CheckAlive and AllowedIPs lines add up as in wg-quick, where
  wireproxy reads only the first (a warning says so);
- two peers with one public key, a second `[Resolve]` or `[STDIOTunnel]` are refused; MTU must
  be 68-65535, CheckAliveInterval at least 1.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_interface
from typing import Final, Literal, TypeAlias, TypeVar

from wiresnake.config import (
    ConfigError,
    EndpointSpec,
    InterfaceAddress,
    resolve_endpoint,
    resolve_endpoint_async,
)
from wiresnake.protocol.settings import DeviceConfig, Network, PeerConfig, parse_network

__all__ = [
    "DEFAULT_ALLOWED_IPS",
    "DEFAULT_CHECK_ALIVE_INTERVAL",
    "DEFAULT_CONFIG_PATHS",
    "DEFAULT_MTU",
    "HTTPProxy",
    "IPAddress",
    "ProxyConfig",
    "ProxyConfigError",
    "ProxyInterface",
    "ProxyPeer",
    "ResolveSettings",
    "ResolveStrategy",
    "SNIProxy",
    "STDIOTunnel",
    "Socks5Proxy",
    "Source",
    "TCPClientTunnel",
    "TCPServerTunnel",
    "Tunnels",
    "UDPProxyTunnel",
    "find_default_config",
    "parse_proxy_config",
    "read_proxy_config",
]

_log = logging.getLogger("wiresnake.proxy")

IPAddress: TypeAlias = IPv4Address | IPv6Address
_T = TypeVar("_T")
ResolveStrategy: TypeAlias = Literal["auto", "ipv4", "ipv6"]

DEFAULT_MTU: Final = 1420
DEFAULT_CHECK_ALIVE_INTERVAL: Final = 5
DEFAULT_ALLOWED_IPS: Final[tuple[Network, ...]] = (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))
# Where wireproxy looks when it is given no -c.
DEFAULT_CONFIG_PATHS: Final = (
    "/etc/wireproxy/wireproxy.conf",
    os.environ.get("HOME", "") + "/.config/wireproxy.conf",
)


class ProxyConfigError(ConfigError):
    """A wireproxy configuration that cannot be used; str() is `FILE:LINE: Key: message`."""


# ---------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True, slots=True)
class Source:
    """Where a section came from: its file, its header line, and the line of each key."""

    path: str = "<string>"
    line: int = 0
    keys: Mapping[str, int] = field(default_factory=dict, hash=False, compare=False)

    def line_of(self, key: str = "") -> int:
        return self.keys.get(key, self.line)

    def error(self, key: str, message: str) -> ProxyConfigError:
        """An error about `key` (or the section itself, for "") pointing at its line."""
        return ProxyConfigError(message, self.path, self.line_of(key), key)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


_NOWHERE: Final = Source()


@dataclass(frozen=True, slots=True)
class ProxyInterface:
    """`[Interface]`: the device's key, its addresses inside the tunnel, and its DNS."""

    private_key: bytes = field(repr=False)
    addresses: tuple[InterfaceAddress, ...] = ()
    dns: tuple[IPAddress, ...] = ()
    mtu: int = DEFAULT_MTU
    listen_port: int | None = None  # None: a random port, as wireguard-go picks
    check_alive: tuple[IPAddress, ...] = ()
    check_alive_interval: int = DEFAULT_CHECK_ALIVE_INTERVAL
    source: Source = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ProxyPeer:
    """One `[Peer]`; `allowed_ips` already holds the default when the file gives none."""

    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: EndpointSpec | None = None
    allowed_ips: tuple[Network, ...] = DEFAULT_ALLOWED_IPS
    persistent_keepalive: int = 0  # seconds; 0 is off
    source: Source = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TCPClientTunnel:
    """Listen on `bind` here; carry each connection to `target` through the tunnel."""

    bind: EndpointSpec
    target: EndpointSpec
    source: Source = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TCPServerTunnel:
    """Listen on `listen_port` inside the tunnel; carry each connection to `target` here."""

    listen_port: int
    target: EndpointSpec
    source: Source = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class STDIOTunnel:
    """Connect stdin and stdout to `target` through the tunnel (an ssh ProxyCommand)."""

    target: EndpointSpec
    source: Source = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class UDPProxyTunnel:
    """Receive datagrams on `bind` here; one tunnel UDP flow to `target` per sender, closed
    after `inactivity_timeout` idle seconds (0 or less: never)."""

    bind: EndpointSpec
    target: EndpointSpec
    inactivity_timeout: int = 0
    source: Source = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Socks5Proxy:
    """A SOCKS5 server on `bind`; user/password authentication when `username` is set."""

    bind: EndpointSpec
    username: str = ""
    password: str = field(default="", repr=False)
    source: Source = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class HTTPProxy:
    """An HTTP CONNECT proxy on `bind`; Basic authentication when a username or password is
    set; TLS (HTTPS) with `cert_file` and `key_file` (paths as written)."""

    bind: EndpointSpec
    username: str = ""
    password: str = field(default="", repr=False)
    cert_file: str = ""
    key_file: str = ""
    source: Source = field(default=_NOWHERE, compare=False, repr=False)

    @property
    def tls(self) -> bool:
        return bool(self.cert_file and self.key_file)


@dataclass(frozen=True, slots=True)
class SNIProxy:
    """A transparent TLS proxy on `bind`, routed by the ClientHello's server name."""

    bind: EndpointSpec
    source: Source = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ResolveSettings:
    """`[Resolve]`: which family a name's addresses are tried in first (`auto`: IPv4 when the
    interface has only IPv4 addresses, IPv6 otherwise)."""

    strategy: ResolveStrategy = "auto"
    source: Source = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Tunnels:
    """The tunnel sections, by kind, in file order."""

    tcp_client: tuple[TCPClientTunnel, ...] = ()
    tcp_server: tuple[TCPServerTunnel, ...] = ()
    stdio: tuple[STDIOTunnel, ...] = ()
    udp_proxy: tuple[UDPProxyTunnel, ...] = ()


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    interface: ProxyInterface
    peers: tuple[ProxyPeer, ...]
    tunnels: Tunnels = Tunnels()
    socks5: tuple[Socks5Proxy, ...] = ()
    http: tuple[HTTPProxy, ...] = ()
    sni: tuple[SNIProxy, ...] = ()
    resolve: ResolveSettings = ResolveSettings()
    path: str = field(default="<string>", compare=False)
    wg_config: str | None = field(default=None, compare=False)  # the imported file's path
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def resolve_strategy(self) -> Literal["ipv4", "ipv6"]:
        """The strategy in effect once `auto` is settled by the interface's addresses."""
        if self.resolve.strategy != "auto":
            return self.resolve.strategy
        versions = {a.version for a in self.interface.addresses}
        return "ipv4" if versions == {4} else "ipv6"

    async def lookup_endpoints(
        self, log: Callable[[str], None] | None = None
    ) -> dict[EndpointSpec, tuple[str, int]]:
        """Every Endpoint name resolved (with wg's retries) without blocking the loop, for
        `to_device_config(found.__getitem__)`; a failure is a ProxyConfigError naming the
        Endpoint line. Retries are announced through `log` (default: the proxy's logger)."""
        found: dict[EndpointSpec, tuple[str, int]] = {}
        say = log or _log.warning
        for p in self.peers:
            if p.endpoint is None or p.endpoint.is_numeric or p.endpoint in found:
                continue
            try:
                found[p.endpoint] = await resolve_endpoint_async(p.endpoint, log=say)
            except ValueError as e:
                raise p.source.error("Endpoint", str(e)) from None
        return found

    def to_device_config(
        self, resolve: Callable[[EndpointSpec], tuple[str, int]] | None = None
    ) -> DeviceConfig:
        """The engine's settings, as wireproxy hands them to wireguard-go.

        Endpoint names are resolved with `resolve` (default `wiresnake.config.resolve_endpoint`);
        a failure is a ProxyConfigError naming the Endpoint line. A prefix listed by two peers
        goes to the later one, as wireguard-go's configuration protocol does it; a zero
        private or preshared key means none.
        """
        resolver = resolve or resolve_endpoint
        claimed: set[Network] = set()
        peers: list[PeerConfig] = []
        for p in reversed(self.peers):
            ips = tuple(n for n in dict.fromkeys(p.allowed_ips) if n not in claimed)
            claimed.update(ips)
            endpoint: tuple[str, int] | None = None
            if p.endpoint is not None:
                if p.endpoint.is_numeric:
                    endpoint = (p.endpoint.host, p.endpoint.port)
                else:
                    try:
                        endpoint = resolver(p.endpoint)
                    except ValueError as e:
                        raise p.source.error("Endpoint", str(e)) from None
            psk = p.preshared_key if p.preshared_key is not None and any(p.preshared_key) else None
            peers.append(
                PeerConfig(
                    public_key=p.public_key,
                    preshared_key=psk,
                    endpoint=endpoint,
                    allowed_ips=ips,
                    persistent_keepalive=p.persistent_keepalive,
                )
            )
        key = self.interface.private_key
        return DeviceConfig(
            private_key=key if any(key) else None,
            listen_port=self.interface.listen_port or 0,
            peers=tuple(reversed(peers)),
        )


# ---------------------------------------------------------------------------------------
# go-ini's reading of lines (LoadOptions{Insensitive, AllowShadows, AllowNonUniqueSections})

# Go's unicode.IsSpace, which go-ini trims with.
_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)
_DELIMITERS: Final = re.compile(r"[=:]")
_COMMENT: Final = re.compile(r"[#;]")
_VARIABLE: Final = re.compile(r"%\(([^)]+)\)s")


@dataclass
class _Entry:
    name: str  # as written
    value: str  # as go-ini stores it: quotes and inline comment gone, not yet expanded
    line: int
    referenced: bool = False  # named by a %(name)s somewhere

    @property
    def key(self) -> str:
        return self.name.lower()


@dataclass
class _Section:
    name: str  # as written between the brackets; "" for the top of the file
    line: int  # of the header; 0 for the top of the file
    entries: list[_Entry] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.name.lower()

    def first(self, key: str) -> _Entry | None:
        return next((e for e in self.entries if e.key == key), None)

    def every(self, key: str) -> list[_Entry]:
        return [e for e in self.entries if e.key == key]


@dataclass
class _Ini:
    path: str
    root: _Section
    sections: list[_Section]
    last_line: int


class _Lines:
    """The file as go-ini's reader sees it: pieces up to and including each `\\n`, the
    last piece (maybe empty) being where it meets the end of the file."""

    def __init__(self, text: str) -> None:
        parts = text.split("\n")
        self.pieces = [p + "\n" for p in parts[:-1]] + [parts[-1]]
        self.next = 0

    def read(self) -> tuple[str, int, bool]:
        """(piece, its line number, whether the end of the file was reached)."""
        n = self.next
        self.next += 1
        if n >= len(self.pieces):
            return "", len(self.pieces), True
        return self.pieces[n], n + 1, n == len(self.pieces) - 1


def _surrounded(value: str, quote: str) -> bool:
    return (
        len(value) >= 2
        and value[0] == quote
        and value[-1] == quote
        and value.find(quote, 1) == len(value) - 1
    )


def _read_key_name(line: str, fail: Callable[[str], ProxyConfigError]) -> tuple[str, int]:
    """The key name of a line and the offset just past its delimiter."""
    quote = ""
    if line.startswith('"'):
        quote = '"""' if len(line) > 6 and line.startswith('"""') else '"'
    elif line.startswith("`"):
        quote = "`"
    if quote:
        start = len(quote)
        close = line.find(quote, start)
        if close < 0:
            raise fail(f"missing closing key quote: `{line.rstrip(_SPACE)}'")
        delimiter = _DELIMITERS.search(line, close + start)
        if delimiter is None:
            raise fail(f"key-value delimiter not found: `{line.rstrip(_SPACE)}'")
        name = line[start:close].strip(_SPACE)
        offset = delimiter.end()
    else:
        delimiter = _DELIMITERS.search(line)
        if delimiter is None:
            raise fail(f"key-value delimiter not found: `{line.rstrip(_SPACE)}'")
        name = line[: delimiter.start()].strip(_SPACE)
        offset = delimiter.end()
        if delimiter.start() == 0:
            name = ""
    if not name:
        raise fail(f"empty key name: `{line.rstrip(_SPACE)}'")
    return name, offset


def _read_value(rest: str, lines: _Lines, fail: Callable[[str], ProxyConfigError]) -> str:
    line = rest.lstrip(_SPACE)
    if not line:
        return ""
    quote = ""
    if len(line) > 3 and line.startswith('"""'):
        quote = '"""'
    elif line.startswith("`"):
        quote = "`"
    if quote:
        start = len(quote)
        close = line.rfind(quote, start)
        if close >= 0:
            return line[start:close]
        value = line[start:]  # runs on over the following lines, newlines kept
        while True:
            piece, _, end = lines.read()
            close = piece.rfind(quote)
            if close >= 0:
                return value + piece[:close]
            value += piece
            if end:
                raise fail("missing closing quote")
    line = line.strip(_SPACE)
    if line.endswith("\\"):  # continued: following lines, trimmed, until one without `\`
        value = line[:-1]
        while True:
            piece = lines.read()[0].strip(_SPACE)
            if not piece:
                return value
            value += piece
            if not value.endswith("\\"):
                return value
            value = value[:-1]
    comment = _COMMENT.search(line)
    if comment is not None:
        line = line[: comment.start()].strip(_SPACE)
    if _surrounded(line, "'") or _surrounded(line, '"'):
        line = line[1:-1]
    return line


def _read_ini(text: str, path: str) -> _Ini:
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = _Lines(text)
    root = _Section("", 0)
    sections: list[_Section] = []
    current = root
    while lines.next < len(lines.pieces):
        raw, n, _ = lines.read()

        def fail(message: str, n: int = n) -> ProxyConfigError:
            return ProxyConfigError(message, path, n)

        line = raw.lstrip(_SPACE)
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            close = line.rfind("]")
            if close < 0:
                raise fail(f"unclosed section: `{line.rstrip(_SPACE)}'")
            if close == 1:
                raise fail("empty section name")
            current = _Section(line[1:close], n)
            sections.append(current)
            continue
        name, offset = _read_key_name(line, fail)
        current.entries.append(_Entry(name, _read_value(line[offset:], lines, fail), n))
    return _Ini(path, root, sections, max(1, len(lines.pieces) - (lines.pieces[-1] == "")))


# ---------------------------------------------------------------------------------------
# What wireproxy reads

_SECTIONS: Final = {
    s.lower(): s
    for s in (
        "Interface",
        "Peer",
        "TCPClientTunnel",
        "TCPServerTunnel",
        "STDIOTunnel",
        "UDPProxyTunnel",
        "Socks5",
        "http",
        "SNI",
        "Resolve",
    )
}
_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "": ("WGConfig",),
    "interface": (
        "Address",
        "PrivateKey",
        "DNS",
        "MTU",
        "ListenPort",
        "CheckAlive",
        "CheckAliveInterval",
    ),
    "peer": ("PublicKey", "PresharedKey", "Endpoint", "PersistentKeepalive", "AllowedIPs"),
    "tcpclienttunnel": ("BindAddress", "Target"),
    "tcpservertunnel": ("ListenPort", "Target"),
    "stdiotunnel": ("Target",),
    "udpproxytunnel": ("BindAddress", "Target", "InactivityTimeout"),
    "socks5": ("BindAddress", "Username", "Password"),
    "http": ("BindAddress", "Username", "Password", "CertFile", "KeyFile"),
    "sni": ("BindAddress",),
    "resolve": ("ResolveStrategy",),
}
# wg-quick's own [Interface] keys, which a pasted or imported wg-quick file carries.
_WG_QUICK_ONLY: Final = ("Table", "FwMark", "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig")
_CANONICAL: Final = {k.lower(): k for keys in (*_KEYS.values(), _WG_QUICK_ONLY) for k in keys}
# The keys wireproxy reads through its parseString, the only ones with $ENV expansion.
_ENV_KEYS: Final = frozenset(
    k.lower()
    for k in (
        "Address",
        "PrivateKey",
        "DNS",
        "CheckAlive",
        "PublicKey",
        "AllowedIPs",
        "BindAddress",
        "Target",
        "Username",
        "Password",
        "CertFile",
        "KeyFile",
        "ResolveStrategy",
    )
)
# Lists whose repeated lines add up (wg-quick does so; wireproxy reads the first line only).
_LIST_KEYS: Final = frozenset(("address", "dns", "checkalive", "allowedips"))
_ONCE: Final = frozenset(("interface", "stdiotunnel", "resolve"))
_DEVICE: Final = frozenset(("interface", "peer"))


def _name(key: str) -> str:
    return _CANONICAL.get(key, key)


def _section_name(kind: str) -> str:
    return "[" + _SECTIONS.get(kind, kind) + "]"


class _Reader:
    """Values of one file, as wireproxy's config.go gets them from go-ini."""

    def __init__(self, ini: _Ini, env: Mapping[str, str], warnings: list[str]) -> None:
        self.ini = ini
        self.env = env
        self.warnings = warnings

    def error(self, entry: _Entry | int, message: str, key: str = "") -> ProxyConfigError:
        if isinstance(entry, _Entry):
            return ProxyConfigError(message, self.ini.path, entry.line, key or _name(entry.key))
        return ProxyConfigError(message, self.ini.path, entry, key)

    def warn(self, line: int, key: str, message: str) -> None:
        self.warnings.append(f"{self.ini.path}:{line}: {key + ': ' if key else ''}{message}")

    def source(self, section: _Section) -> Source:
        lines: dict[str, int] = {}
        for e in section.entries:
            lines.setdefault(_name(e.key), e.line)
        return Source(self.ini.path, section.line, lines)

    def _interpolate(self, section: _Section, entry: _Entry) -> str:
        """go-ini's `%(key)s`: from the same section (not the key itself), else the top."""
        value = entry.value
        for _ in range(99):
            found = _VARIABLE.search(value)
            if found is None:
                break
            name = found.group(1).lower()
            other = section.first(name)
            if other is None or other.key == entry.key:
                other = self.ini.root.first(name)
                if other is None:
                    break
            value = value.replace(found.group(0), other.value)
        return value

    def string(self, section: _Section, entry: _Entry) -> str:
        value = self._interpolate(section, entry)
        if entry.key not in _ENV_KEYS or not value.startswith("$"):
            return value
        if value.startswith("$$"):
            return value[1:]
        name = value[1:]
        if name not in self.env:
            raise self.error(entry, f"references unset environment variable `{value}'")
        return self.env[name]

    def get(self, section: _Section, key: str) -> tuple[str, _Entry] | None:
        entry = section.first(key)
        return None if entry is None else (self.string(section, entry), entry)

    def items(self, section: _Section, key: str) -> Iterator[tuple[str, _Entry]]:
        """The trimmed, non-empty items of a comma list, over every line of the key."""
        for entry in section.every(key):
            for item in self.string(section, entry).split(","):
                item = item.strip(_SPACE)
                if item:
                    yield item, entry

    def integer(self, section: _Section, key: str) -> tuple[int, _Entry] | None:
        got = self.get(section, key)
        if got is None:
            return None
        value, entry = got
        number = _go_int(value)
        if number is None:
            hint = _no_env_hint(value, entry)
            raise self.error(entry, f"`{value}' is not an integer{hint}")
        return number, entry

    def required(self, section: _Section, key: str) -> tuple[str, _Entry]:
        got = self.get(section, key)
        if got is None:
            raise self.error(section.line, f"{_section_name(section.kind)} has no {_name(key)}")
        if not got[0]:
            raise self.error(got[1], "empty value")
        return got


def _no_env_hint(value: str, entry: _Entry) -> str:
    if value.startswith("$") and entry.key not in _ENV_KEYS:
        return f" (wireproxy expands no $ENV in {_name(entry.key)})"
    return ""


# ---------------------------------------------------------------------------------------
# Values, as Go reads them


_GO_INT: Final = re.compile(
    r"([+-]?)(0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|0[0-7_]*|[1-9][0-9_]*)"
)


def _go_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64): sign, 0x/0o/0b or a leading 0 (octal), `_` between
    digits; None if Go would refuse it."""
    m = _GO_INT.fullmatch(text)
    if m is None or not _underscores_ok(m.group(2)):
        return None
    digits = m.group(2).replace("_", "")
    prefix = digits[:2].lower()
    if prefix in ("0x", "0b", "0o"):
        number = int(digits[2:], {"0x": 16, "0b": 2, "0o": 8}[prefix])
    elif len(digits) > 1 and digits[0] == "0":
        number = int(digits[1:], 8)
    else:
        number = int(digits)
    if m.group(1) == "-":
        number = -number
    return number if -(2**63) <= number < 2**63 else None


def _underscores_ok(digits: str) -> bool:
    """Go's rule: `_` only between digits, or between a base prefix and a digit."""
    saw = "^"
    i = 0
    if len(digits) >= 2 and digits[0] == "0" and digits[1] in "bBoOxX":
        i, saw = 2, "0"
    for c in digits[i:]:
        if c == "_":
            if saw != "0":
                return False
            saw = "_"
        else:
            saw = "0"
    return saw != "_"


_BASE64_KEY: Final = re.compile(r"[A-Za-z0-9+/]{43}=")


def _go_key(text: str, *, secret: bool) -> bytes:
    """A key as Go's base64.StdEncoding decodes it (CR and LF ignored, unused low bits of
    the last character not checked), which must give 32 bytes."""
    compact = text.replace("\r", "").replace("\n", "")
    if _BASE64_KEY.fullmatch(compact) is None:
        what = "not a key" if secret else f"`{text}' is not a key"
        raise ValueError(f"{what} (44 characters of base64 ending in `=' are needed)")
    return base64.b64decode(compact)


def _go_addr(text: str) -> IPAddress:
    """netip.ParseAddr: an IPv4 or IPv6 address, an IPv6 zone allowed; no prefix."""
    try:
        return ip_address(text)
    except ValueError:
        raise ValueError(f"`{text}' is not an IP address") from None


def _check_prefix_length(text: str, what: str) -> None:
    """netip.ParsePrefix takes only a decimal length, without sign or leading zero."""
    bits = text.rpartition("/")[2]
    if not (bits.isascii() and bits.isdigit()) or (len(bits) > 1 and bits[0] == "0"):
        raise ValueError(f"`{text}' is not {what}: bad prefix length `{bits}'")


def _address(text: str) -> InterfaceAddress:
    """One Address item: an address (netip.ParseAddr) or address/length (ParsePrefix)."""
    what = "an IP address with an optional /prefix length"
    if "/" in text and "%" not in text:  # Go reads `fe80::1%eth0/64` as a zone `eth0/64`
        _check_prefix_length(text, what)
    try:
        return ip_interface(text)
    except ValueError:
        raise ValueError(f"`{text}' is not {what}") from None


def _allowed_ip(text: str) -> Network:
    """One AllowedIPs item: netip.ParsePrefix (a length is required); host bits are masked
    off, as wireguard-go does when it inserts the prefix."""
    what = "an IP prefix (address/length)"
    if "/" not in text:
        raise ValueError(f"`{text}' is not {what}: no `/'")
    _check_prefix_length(text, what)
    try:
        return parse_network(text)
    except ValueError:
        raise ValueError(f"`{text}' is not {what}") from None


def _split_host_port(text: str) -> tuple[str, str]:
    """Go's net.SplitHostPort: `host:port` or `[host]:port`; the host may be empty."""
    colon = text.rfind(":")
    if colon < 0:
        raise ValueError(f"missing port in address `{text}'")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"missing `]' in address `{text}'")
        if close + 1 != colon:
            if close + 1 < len(text) and text[close + 1] == ":":
                raise ValueError(f"too many colons in address `{text}'")
            raise ValueError(f"missing port in address `{text}'")
        host, after_open, after_close = text[1:close], 1, close + 1
    else:
        host, after_open, after_close = text[:colon], 0, 0
        if ":" in host:
            raise ValueError(f"too many colons in address `{text}' (put an IPv6 host in [])")
    if "[" in text[after_open:]:
        raise ValueError(f"unexpected `[' in address `{text}'")
    if "]" in text[after_close:]:
        raise ValueError(f"unexpected `]' in address `{text}'")
    return host, text[colon + 1 :]


def _bind_address(text: str, protocol: str) -> EndpointSpec:
    """A local address to listen on, as Go's Listen reads it: an empty host is every
    address, the port a number or a service name (an empty one is port 0, any free port)."""
    host, port_text = _split_host_port(text)
    if not port_text:
        port = 0
    elif re.fullmatch(r"[+-]?[0-9]+", port_text):
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range in `{text}'")
    else:
        try:
            port = socket.getservbyname(port_text.lower(), protocol)
        except (OSError, UnicodeError):
            raise ValueError(f"unknown port `{port_text}' in `{text}'") from None
    return EndpointSpec(host, port)


def _target(text: str) -> EndpointSpec:
    """A Target, as wireproxy's parseAddressPort reads it (a numeric port 0-65535, strconv's
    sign allowed); unlike wireproxy, a Target without a host is refused."""
    host, port_text = _split_host_port(text)
    if re.fullmatch(r"[+-]?[0-9]+", port_text) is None or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number 0-65535 in `{text}'")
    if not host:
        raise ValueError(f"no host in `{text}'")
    return EndpointSpec(host, int(port_text))


def _endpoint(text: str) -> EndpointSpec:
    """A peer's Endpoint: wireproxy lower-cases it and splits it as Go does; wireguard-go
    then wants a decimal port 0-65535. A name is kept, to be resolved later."""
    host, port_text = _split_host_port(text.lower())
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"port must be a number 0-65535 in `{text}'")
    if not host:
        raise ValueError(f"no host in `{text}'")
    return EndpointSpec(host, int(port_text))


# ---------------------------------------------------------------------------------------
# Sections


def _check_keys(r: _Reader, section: _Section) -> None:
    """Unknown keys, and repeated keys whose values disagree."""
    known = {k.lower() for k in _KEYS.get(section.kind, ())}
    where = f"in {_section_name(section.kind)}" if section.line else "at the top of the file"
    seen: dict[str, _Entry] = {}
    for e in section.entries:
        if section.kind == "interface" and e.key in {k.lower() for k in _WG_QUICK_ONLY}:
            if e.key not in seen:
                r.warn(e.line, _name(e.key), "ignored: a wg-quick key wireproxy has no use for")
            seen.setdefault(e.key, e)
            continue
        if e.key not in known:
            if e.referenced:
                continue
            if section.kind == "" and e.key in _CANONICAL:
                raise r.error(e, "belongs in a section, not at the top of the file")
            raise r.error(e, f"unknown key {where}", e.name)
        first = seen.setdefault(e.key, e)
        if first is e:
            continue
        if e.key in _LIST_KEYS:
            r.warn(
                e.line,
                _name(e.key),
                f"added to line {first.line}'s (wg-quick does; wireproxy reads only the first)",
            )
        elif e.value != first.value:
            raise r.error(
                e,
                f"given again with another value (first on line {first.line}); "
                "wireproxy would take the first, wg-quick the last",
            )


def _mark_references(ini: _Ini) -> None:
    """Mark the keys some `%(name)s` refers to, so they are not unknown keys."""
    pending = [(s, e) for s in (ini.root, *ini.sections) for e in s.entries]
    while pending:
        section, entry = pending.pop()
        for name in _VARIABLE.findall(entry.value):
            other = section.first(name.lower())
            if other is None or other.key == entry.key:
                other = ini.root.first(name.lower())
            if other is not None and not other.referenced:
                other.referenced = True
                in_root = any(other is e for e in ini.root.entries)
                pending.append((ini.root if in_root else section, other))


def _each(
    r: _Reader, s: _Section, key: str, parse: Callable[[str], _T], hint: str = ""
) -> list[_T]:
    """Every item of a comma-list key, parsed; a bad one names its line."""
    out: list[_T] = []
    for item, entry in r.items(s, key):
        try:
            out.append(parse(item))
        except ValueError as e:
            raise r.error(entry, f"{e}{hint}") from None
    return out


def _one(r: _Reader, got: tuple[str, _Entry], parse: Callable[[str], _T]) -> _T:
    value, entry = got
    try:
        return parse(value)
    except ValueError as e:
        raise r.error(entry, f"{e}{_no_env_hint(value, entry)}") from None


def _parse_interface(r: _Reader, s: _Section) -> ProxyInterface:
    addresses = _each(r, s, "address", _address)
    private_key = _one(r, r.required(s, "privatekey"), lambda v: _go_key(v, secret=True))
    dns = _each(r, s, "dns", _go_addr, " (wireproxy takes addresses only, no search domains)")
    mtu = DEFAULT_MTU
    if (got := r.integer(s, "mtu")) is not None:
        mtu, entry = got
        if not 68 <= mtu <= 65535:
            raise r.error(entry, f"{mtu} is not an MTU in 68-65535")
    listen_port = None
    if (got := r.integer(s, "listenport")) is not None:
        listen_port, entry = got
        if not 0 <= listen_port <= 65535:
            raise r.error(entry, f"{listen_port} is not a port in 0-65535")
    check_alive = _each(r, s, "checkalive", _go_addr)
    interval = DEFAULT_CHECK_ALIVE_INTERVAL
    if (got := r.integer(s, "checkaliveinterval")) is not None:
        interval, entry = got
        if not check_alive:
            raise r.error(entry, "only valid when CheckAlive is set")
        if interval < 1:
            raise r.error(entry, f"{interval} is not an interval of at least 1 second")
    return ProxyInterface(
        private_key=private_key,
        addresses=tuple(addresses),
        dns=tuple(dns),
        mtu=mtu,
        listen_port=listen_port,
        check_alive=tuple(check_alive),
        check_alive_interval=interval,
        source=r.source(s),
    )


def _parse_peer(r: _Reader, s: _Section) -> ProxyPeer:
    public_key = _one(r, r.required(s, "publickey"), lambda v: _go_key(v, secret=False))
    preshared_key = None
    if (got_psk := r.get(s, "presharedkey")) is not None:  # no $ENV here in wireproxy
        preshared_key = _one(r, got_psk, lambda v: _go_key(v, secret=True))
    endpoint = None
    if (got_endpoint := r.get(s, "endpoint")) is not None:  # nor here
        endpoint = _one(r, got_endpoint, _endpoint)
    keepalive = 0
    if (got := r.integer(s, "persistentkeepalive")) is not None:
        keepalive, entry = got
        if not 0 <= keepalive <= 65535:
            raise r.error(entry, f"{keepalive} is not an interval in 0-65535 seconds")
    allowed = _each(r, s, "allowedips", _allowed_ip)
    return ProxyPeer(
        public_key=public_key,
        preshared_key=preshared_key,
        endpoint=endpoint,
        allowed_ips=tuple(allowed) or DEFAULT_ALLOWED_IPS,
        persistent_keepalive=keepalive,
        source=r.source(s),
    )


def _bind(r: _Reader, s: _Section, protocol: str = "tcp") -> EndpointSpec:
    return _one(r, r.required(s, "bindaddress"), lambda v: _bind_address(v, protocol))


def _target_of(r: _Reader, s: _Section) -> EndpointSpec:
    return _one(r, r.required(s, "target"), _target)


def _optional(r: _Reader, s: _Section, key: str) -> str:
    got = r.get(s, key)
    return "" if got is None else got[0]


def _parse_service(r: _Reader, s: _Section) -> object:
    kind = s.kind
    source = r.source(s)
    if kind == "tcpclienttunnel":
        return TCPClientTunnel(_bind(r, s), _target_of(r, s), source)
    if kind == "tcpservertunnel":
        got = r.integer(s, "listenport")
        if got is None:
            raise r.error(s.line, "[TCPServerTunnel] has no ListenPort")
        port, entry = got
        if not 0 <= port <= 65535:
            raise r.error(entry, f"{port} is not a port in 0-65535")
        return TCPServerTunnel(port, _target_of(r, s), source)
    if kind == "stdiotunnel":
        return STDIOTunnel(_target_of(r, s), source)
    if kind == "udpproxytunnel":
        bind, target = _bind(r, s, "udp"), _target_of(r, s)
        got = r.integer(s, "inactivitytimeout")
        return UDPProxyTunnel(bind, target, 0 if got is None else got[0], source)
    if kind == "socks5":
        bind, username = _bind(r, s), _optional(r, s, "username")
        password = _optional(r, s, "password")
        if password and not username:
            raise r.error(
                source.line_of("Password"),
                "without a Username, wireproxy's SOCKS5 asks for no authentication at all",
                "Password",
            )
        return Socks5Proxy(bind, username, password, source)
    if kind == "http":
        proxy = HTTPProxy(
            _bind(r, s),
            _optional(r, s, "username"),
            _optional(r, s, "password"),
            _optional(r, s, "certfile"),
            _optional(r, s, "keyfile"),
            source,
        )
        if bool(proxy.cert_file) != bool(proxy.key_file):
            given, missing = ("CertFile", "KeyFile") if proxy.cert_file else ("KeyFile", "CertFile")
            raise r.error(
                source.line_of(given),
                f"needs {missing} too (wireproxy would serve plain HTTP)",
                given,
            )
        return proxy
    if kind == "sni":
        return SNIProxy(_bind(r, s), source)
    assert kind == "resolve", kind
    got_strategy = r.get(s, "resolvestrategy")
    if got_strategy is None:
        return ResolveSettings("auto", source)
    value, entry = got_strategy
    if value == "auto":
        return ResolveSettings("auto", source)
    if value == "ipv4":
        return ResolveSettings("ipv4", source)
    if value == "ipv6":
        return ResolveSettings("ipv6", source)
    raise r.error(entry, f"`{value}' is none of auto, ipv4, ipv6 (lower case)")


def _check_sections(r: _Reader, *, wg_line: int | None, services: bool) -> None:
    """Unknown, misplaced and repeated sections, then each section's keys."""
    seen: dict[str, _Section] = {}
    for s in r.ini.sections:
        kind = s.kind
        if kind not in _SECTIONS:
            raise r.error(s.line, f"unknown section `[{s.name}]'")
        if kind in _DEVICE and wg_line is not None:
            raise r.error(
                s.line,
                f"{_section_name(kind)} beside WGConfig (line {wg_line}), which wireproxy "
                "would ignore: keep the device in one place",
            )
        if kind not in _DEVICE and not services:
            raise r.error(
                s.line,
                f"{_section_name(kind)} in a WGConfig file: wireproxy reads only "
                "[Interface] and [Peer] from it",
            )
        first = seen.setdefault(kind, s)
        if first is not s and kind in _ONCE:
            raise r.error(
                s.line, f"a second {_section_name(kind)} (the first is on line {first.line})"
            )
    for s in (r.ini.root, *r.ini.sections):
        _check_keys(r, s)


def _parse_device(r: _Reader) -> tuple[ProxyInterface, tuple[ProxyPeer, ...]]:
    interfaces = [s for s in r.ini.sections if s.kind == "interface"]
    if not interfaces:
        raise r.error(r.ini.last_line, "no [Interface] section (wireproxy needs one)")
    interface = _parse_interface(r, interfaces[0])
    peers: list[ProxyPeer] = []
    owners: dict[bytes, ProxyPeer] = {}
    for s in r.ini.sections:
        if s.kind != "peer":
            continue
        peer = _parse_peer(r, s)
        other = owners.setdefault(peer.public_key, peer)
        if other is not peer:
            raise peer.source.error(
                "PublicKey",
                f"a second [Peer] with this key (the first is on line {other.source.line})",
            )
        peers.append(peer)
    if not peers:
        raise r.error(r.ini.last_line, "no [Peer] section (wireproxy needs at least one)")
    _warn_shared_prefixes(r, peers)
    return interface, tuple(peers)


def _warn_shared_prefixes(r: _Reader, peers: list[ProxyPeer]) -> None:
    owner: dict[Network, ProxyPeer] = {}
    for peer in peers:
        for net in dict.fromkeys(peer.allowed_ips):
            earlier = owner.get(net)
            if earlier is not None:
                line = peer.source.line_of("AllowedIPs")
                r.warn(
                    line,
                    "AllowedIPs",
                    f"{net} is also given to the [Peer] on line {earlier.source.line}; "
                    "the later peer gets it, as in wireguard-go",
                )
            owner[net] = peer


def _decode(data: bytes) -> str:
    if data[:2] in (b"\xfe\xff", b"\xff\xfe"):  # go-ini drops a UTF-16 mark, nothing more
        data = data[2:]
    return data.decode("utf-8", "surrogateescape")


def parse_proxy_config(
    text: str,
    path: str = "<string>",
    *,
    env: Mapping[str, str] | None = None,
) -> ProxyConfig:
    """Parse a wireproxy configuration; `WGConfig` is read relative to `path`'s directory.

    `env` stands for the environment `$NAME` values come from (default `os.environ`).
    """
    environment = os.environ if env is None else env
    warnings: list[str] = []
    main = _Reader(_read_ini(text, path), environment, warnings)
    _mark_references(main.ini)
    wg_entry = main.ini.root.first("wgconfig")
    _check_sections(main, wg_line=None if wg_entry is None else wg_entry.line, services=True)

    device_reader = main
    wg_path: str | None = None
    if wg_entry is not None:
        wg_path = main.string(main.ini.root, wg_entry)  # no $ENV, as in wireproxy
        if not wg_path:
            raise main.error(wg_entry, "empty value")
        if not os.path.isabs(wg_path):
            wg_path = os.path.join(os.path.dirname(path), wg_path)
        try:
            with open(wg_path, "rb") as f:
                wg_text = _decode(f.read())
        except OSError as e:
            raise main.error(wg_entry, f"cannot read `{wg_path}': {e.strerror or e}") from None
        device_reader = _Reader(_read_ini(wg_text, wg_path), environment, warnings)
        _mark_references(device_reader.ini)
        for entry in device_reader.ini.root.entries:
            if entry.key == "wgconfig":
                raise device_reader.error(entry, "a WGConfig file cannot import another")
        _check_sections(device_reader, wg_line=None, services=False)

    interface, peers = _parse_device(device_reader)

    tcp_client: list[TCPClientTunnel] = []
    tcp_server: list[TCPServerTunnel] = []
    stdio: list[STDIOTunnel] = []
    udp_proxy: list[UDPProxyTunnel] = []
    socks5: list[Socks5Proxy] = []
    http: list[HTTPProxy] = []
    sni: list[SNIProxy] = []
    resolve = ResolveSettings()
    for s in main.ini.sections:
        if s.kind in _DEVICE:
            continue
        service = _parse_service(main, s)
        if isinstance(service, TCPClientTunnel):
            tcp_client.append(service)
        elif isinstance(service, TCPServerTunnel):
            tcp_server.append(service)
        elif isinstance(service, STDIOTunnel):
            stdio.append(service)
        elif isinstance(service, UDPProxyTunnel):
            udp_proxy.append(service)
        elif isinstance(service, Socks5Proxy):
            socks5.append(service)
        elif isinstance(service, HTTPProxy):
            http.append(service)
        elif isinstance(service, SNIProxy):
            sni.append(service)
        elif isinstance(service, ResolveSettings):
            resolve = service
    return ProxyConfig(
        interface=interface,
        peers=peers,
        tunnels=Tunnels(tuple(tcp_client), tuple(tcp_server), tuple(stdio), tuple(udp_proxy)),
        socks5=tuple(socks5),
        http=tuple(http),
        sni=tuple(sni),
        resolve=resolve,
        path=path,
        wg_config=wg_path,
        warnings=tuple(warnings),
    )


def read_proxy_config(path: str, *, env: Mapping[str, str] | None = None) -> ProxyConfig:
    """Read and parse a file; one that cannot be read is a ProxyConfigError naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ProxyConfigError(e.strerror or str(e), path) from None
    return parse_proxy_config(_decode(data), path, env=env)


def find_default_config() -> str | None:
    """The first of wireproxy's default paths that exists (its `-c` default), or None."""
    return next((p for p in DEFAULT_CONFIG_PATHS if os.path.exists(p)), None)
