"""The `wg` side of the configuration protocol: a client of `/var/run/wireguard/IFACE.sock`.

`list_interfaces`, `get` and `set` talk to any userspace WireGuard (wireguard-go, boringtun,
our daemon) the way wireguard-tools' `ipc-uapi` does: one connection per request, a socket
whose `connect()` is refused is stale and unlinked, failures are `WgctlError` carrying the
errno the daemon answered with. The rest turns device state and configuration changes into
the texts `wg` prints (`show`, its one-field forms and `dump`, `showconf`) and the `set=1`
lines `wg set`, `setconf`, `addconf` and `syncconf` send.

The socket directory is `WG_SOCKET_DIR` from the environment when set, else
`/var/run/wireguard`; every function also takes `directory=`. Kernel WireGuard interfaces
(netlink) are out of reach of this module.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import re
import socket
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network
from typing import Final

from wiresnake.config import (
    Config,
    EndpointSpec,
    InterfaceSection,
    PeerSection,
    format_allowed_ip,
    format_config,
)
from wiresnake.crypto import KEY_LEN, KeyFormatError, key_from_hex, key_to_base64, public_key
from wiresnake.protocol.settings import Network

__all__ = [
    "DEFAULT_SOCKET_DIR",
    "SHOW_FIELDS",
    "SOCKET_DIR_ENV",
    "DeviceState",
    "PeerState",
    "WgctlError",
    "format_field",
    "format_pretty",
    "format_showconf",
    "get",
    "list_interfaces",
    "parse_get_response",
    "set",
    "set_lines",
    "socket_dir",
    "socket_path",
    "sync_change",
]

DEFAULT_SOCKET_DIR: Final = "/var/run/wireguard"
SOCKET_DIR_ENV: Final = "WG_SOCKET_DIR"
SOCKET_SUFFIX: Final = ".sock"

# The one-field forms of `wg show IFACE FIELD`, in wg's usage order.
SHOW_FIELDS: Final = (
    "public-key",
    "private-key",
    "listen-port",
    "fwmark",
    "peers",
    "preshared-keys",
    "endpoints",
    "allowed-ips",
    "latest-handshakes",
    "transfer",
    "persistent-keepalive",
    "dump",
)


class WgctlError(OSError):
    """A request failed; `errno` is what the daemon or the system answered."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, os.strerror(code))
        self.detail = detail


def socket_dir(directory: str | None = None) -> str:
    return directory or os.environ.get(SOCKET_DIR_ENV) or DEFAULT_SOCKET_DIR


def socket_path(iface: str, directory: str | None = None) -> str:
    return os.path.join(socket_dir(directory), iface + SOCKET_SUFFIX)


# ---------------------------------------------------------------------------------------
# Device state, as a `get=1` answers it


@dataclass(frozen=True, slots=True)
class PeerState:
    public_key: bytes
    preshared_key: bytes | None = None  # None: none (the daemon sends zeros)
    endpoint: tuple[str, int] | None = None  # numeric host as getnameinfo prints it, port
    last_handshake_sec: int = 0
    last_handshake_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0
    allowed_ips: tuple[Network, ...] = ()
    protocol_version: int = 1

    @property
    def has_handshake(self) -> bool:
        return bool(self.last_handshake_sec or self.last_handshake_nsec)


@dataclass(frozen=True, slots=True)
class DeviceState:
    name: str
    private_key: bytes | None = None
    public_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: tuple[PeerState, ...] = ()

    def to_config(self) -> Config:
        """The configuration `showconf` prints: what a `setconf` needs to recreate this."""
        peers = tuple(
            PeerSection(
                public_key=p.public_key,
                preshared_key=p.preshared_key,
                endpoint=EndpointSpec(*p.endpoint) if p.endpoint else None,
                persistent_keepalive=p.persistent_keepalive or None,
                allowed_ips=p.allowed_ips,
            )
            for p in self.peers
        )
        iface = InterfaceSection(
            private_key=self.private_key,
            listen_port=self.listen_port or None,
            fwmark=self.fwmark or None,
        )
        return Config(interface=iface, peers=peers, path=self.name)


class _Malformed(Exception):
    pass


def _number(value: str, limit: int) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > limit:
        raise _Malformed(value)
    return int(value)


def _hex_key(value: str) -> bytes:
    try:
        return key_from_hex(value)
    except KeyFormatError:
        raise _Malformed(value) from None


def _normalize_endpoint(value: str) -> tuple[str, int]:
    """host:port or [host]:port, through getaddrinfo and getnameinfo as wg does (so the
    text is what `wg` would print for the same answer)."""
    spec_host, port = _split_host_port(value)
    try:
        answers = socket.getaddrinfo(
            spec_host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, socket.IPPROTO_UDP
        )
        for family, _t, _p, _n, sockaddr in answers:
            if family in (socket.AF_INET, socket.AF_INET6):
                host, service = socket.getnameinfo(
                    sockaddr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV | socket.NI_DGRAM
                )
                return host, int(service)
    except (OSError, UnicodeError, ValueError):
        raise WgctlError(_errno.ENETUNREACH, f"endpoint {value!r}") from None
    raise _Malformed(value)


def _split_host_port(value: str) -> tuple[str, str]:
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not port:
        raise _Malformed(value)
    return host, port


def parse_get_response(lines: Iterable[str], name: str) -> DeviceState:
    """The device state in the `key=value` lines of a `get=1` answer (without the blank
    line). Raises WgctlError: the answer's own errno, or EPROTO when it is malformed."""
    private: bytes | None = None
    listen_port = fwmark = 0
    peers: list[PeerState] = []
    peer: PeerState | None = None
    ips: list[Network] = []
    code: int | None = None

    def close_peer() -> None:
        if peer is not None:
            peers.append(replace(peer, allowed_ips=tuple(ips)))

    try:
        for line in lines:
            key, sep, value = line.partition("=")
            if not sep:
                raise _Malformed(line)
            if key == "errno":
                code = abs(int(value)) if value.lstrip("-").isdigit() else _errno.EPROTO
            elif key == "public_key":
                close_peer()
                peer, ips = PeerState(_hex_key(value)), []
            elif peer is None:
                if key == "private_key":
                    private = _hex_key(value)
                elif key == "listen_port":
                    listen_port = _number(value, 0xFFFF)
                elif key == "fwmark":
                    fwmark = _number(value, 0xFFFFFFFF)
            elif key == "preshared_key":
                psk = _hex_key(value)
                peer = replace(peer, preshared_key=psk if any(psk) else None)
            elif key == "endpoint":
                peer = replace(peer, endpoint=_normalize_endpoint(value))
            elif key == "persistent_keepalive_interval":
                peer = replace(peer, persistent_keepalive=_number(value, 0xFFFF))
            elif key == "allowed_ip":
                ips.append(_parse_prefix(value))
            elif key == "last_handshake_time_sec":
                peer = replace(peer, last_handshake_sec=_number(value, (1 << 63) - 1))
            elif key == "last_handshake_time_nsec":
                peer = replace(peer, last_handshake_nsec=_number(value, (1 << 63) - 1))
            elif key == "rx_bytes":
                peer = replace(peer, rx_bytes=_number(value, (1 << 64) - 1))
            elif key == "tx_bytes":
                peer = replace(peer, tx_bytes=_number(value, (1 << 64) - 1))
            elif key == "protocol_version":
                peer = replace(peer, protocol_version=_number(value, 0xFFFFFFFF))
        close_peer()
    except _Malformed as e:
        raise WgctlError(_errno.EPROTO, f"malformed answer near {e.args[0]!r}") from None
    if code is None:
        raise WgctlError(_errno.EPROTO, "answer without errno")
    if code:
        raise WgctlError(code)
    return DeviceState(
        name=name,
        private_key=private,
        public_key=public_key(private) if private is not None else None,
        listen_port=listen_port,
        fwmark=fwmark,
        peers=tuple(peers),
    )


def _parse_prefix(value: str) -> Network:
    address, slash, cidr = value.partition("/")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        packed = socket.inet_pton(family, address)
    except (OSError, ValueError):
        raise _Malformed(value) from None
    bits = 32 if family == socket.AF_INET else 128
    if not slash or not (cidr.isascii() and cidr.isdigit()) or int(cidr) > bits:
        raise _Malformed(value)
    n = int.from_bytes(packed, "big")
    if bits == 32:
        return IPv4Network((n, int(cidr)), strict=False)
    return IPv6Network((n, int(cidr)), strict=False)


# ---------------------------------------------------------------------------------------
# The socket


def _connect(iface: str, directory: str | None, timeout: float | None) -> socket.socket:
    if "/" in iface:
        raise WgctlError(_errno.EINVAL, "interface name with '/'")
    path = socket_path(iface, directory)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        # wg then asks the kernel, which says there is no such device
        raise WgctlError(_errno.ENODEV, path) from None
    except OSError as e:
        raise WgctlError(e.errno or _errno.EIO, path) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise WgctlError(_errno.EBADF, f"{path} is not a socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        if e.errno == _errno.ECONNREFUSED:  # nobody listens: the daemon is gone
            _unlink_quietly(path)
        if isinstance(e, TimeoutError):
            raise WgctlError(_errno.ETIMEDOUT, path) from None
        raise WgctlError(e.errno or _errno.EIO, path) from None
    return sock


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _exchange(sock: socket.socket, request: bytes) -> list[str]:
    """Send a request, read the answer up to its blank line; the lines before it."""
    buf = b""
    try:
        sock.sendall(request)
        while not buf.startswith(b"\n") and b"\n\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise WgctlError(_errno.EPROTO, "connection closed before the answer ended")
            buf += chunk
    except TimeoutError:
        raise WgctlError(_errno.ETIMEDOUT) from None
    except WgctlError:
        raise
    except OSError as e:
        raise WgctlError(e.errno or _errno.EIO) from None
    finally:
        sock.close()
    if buf.startswith(b"\n"):
        return []
    try:
        return buf[: buf.index(b"\n\n")].decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise WgctlError(_errno.EPROTO, "answer is not UTF-8") from None


def list_interfaces(directory: str | None = None) -> list[str]:
    """The interfaces with a live socket, in directory order (as `wg show interfaces`).

    Socket files nobody listens on are deleted on the way, as wg does.
    """
    where = socket_dir(directory)
    try:
        names = os.listdir(where)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise WgctlError(e.errno or _errno.EIO, where) from None
    found: list[str] = []
    for entry in names:
        if len(entry) <= len(SOCKET_SUFFIX) or not entry.endswith(SOCKET_SUFFIX):
            continue
        iface = entry[: -len(SOCKET_SUFFIX)]
        try:
            _connect(iface, directory, 5.0).close()
        except WgctlError as e:
            # wg counts anything but a missing, foreign or refused socket as an interface
            if e.errno in (_errno.ENODEV, _errno.EBADF, _errno.ECONNREFUSED, _errno.EINVAL):
                continue
        found.append(iface)
    return found


def get(iface: str, directory: str | None = None, timeout: float | None = None) -> DeviceState:
    """The device state of `iface`; WgctlError (ENODEV when there is no such socket)."""
    sock = _connect(iface, directory, timeout)
    return parse_get_response(_exchange(sock, b"get=1\n\n"), iface)


def set(
    iface: str, lines: Iterable[str], directory: str | None = None, timeout: float | None = None
) -> None:
    """Send one `set=1` request of `lines` (without the final blank line).

    WgctlError with the daemon's errno (EINVAL for a line it refused, EADDRINUSE for a
    port in use, ...), or EPROTO when the answer has none.
    """
    body = "".join(line + "\n" for line in lines)
    if any(c in body for c in "\0") or "\n\n" in body:
        raise WgctlError(_errno.EINVAL, "a line of the request is empty or has a NUL")
    sock = _connect(iface, directory, timeout)
    answer = _exchange(sock, f"set=1\n{body}\n".encode())
    code: int | None = None
    for line in answer:
        key, _, value = line.partition("=")
        if key == "errno":
            code = abs(int(value)) if value.lstrip("-").isdigit() else None
            if code is None:
                break
    if code is None:
        raise WgctlError(_errno.EPROTO, "answer without errno")
    if code:
        raise WgctlError(code)


# ---------------------------------------------------------------------------------------
# Changes: configuration to `set=1` lines


def set_lines(
    change: Config, *, whole_device: bool = False, replace_peers: bool = False
) -> list[str]:
    """The `set=1` lines for a change, in the order wg writes them.

    `whole_device` (setconf, syncconf): the `[Interface]` keys that are absent are sent as
    zero (no private key, port 0 = any, no fwmark). `replace_peers` (setconf): peers not in
    the change are removed. Endpoints must already be IP addresses (`resolve_config`).
    """
    lines: list[str] = []
    i = change.interface
    zero = bytes(KEY_LEN)
    if i.private_key is not None or whole_device:
        lines.append(f"private_key={(i.private_key or zero).hex()}")
    if i.listen_port is not None or whole_device:
        lines.append(f"listen_port={i.listen_port or 0}")
    if i.fwmark is not None or whole_device:
        lines.append(f"fwmark={i.fwmark or 0}")
    if replace_peers:
        lines.append("replace_peers=true")
    for p in change.peers:
        lines.append(f"public_key={p.public_key.hex()}")
        if p.remove:
            lines.append("remove=true")
            continue
        if p.preshared_key is not None:
            lines.append(f"preshared_key={p.preshared_key.hex()}")
        if p.endpoint is not None:
            if not p.endpoint.is_numeric:
                raise ValueError(f"endpoint {p.endpoint} is not resolved")
            lines.append(f"endpoint={p.endpoint}")
        if p.persistent_keepalive is not None:
            lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        if p.replace_allowed_ips:
            lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={format_allowed_ip(n)}" for n in p.allowed_ips]
        lines += [f"allowed_ip=-{format_allowed_ip(n)}" for n in p.removed_allowed_ips]
    return lines


def sync_change(config: Config, runtime: DeviceState | None) -> tuple[Config, bool]:
    """What `syncconf` sends for `config` against the running state: (change, replace_peers).

    Without peers on either side it is a plain setconf. Otherwise peers are not replaced
    wholesale (sessions of unchanged peers survive): running peers absent from the file are
    removed (first, in the order wg sends them), and for the others a preshared key or
    keepalive the file does not name is cleared, as wireguard-tools does since 2025.
    """
    if not config.peers or runtime is None or not runtime.peers:
        return config, True
    in_file = {p.public_key for p in config.peers}
    running = {p.public_key: p for p in runtime.peers}
    removals = [
        PeerSection(public_key=k, remove=True, replace_allowed_ips=False)
        for k in sorted(running, reverse=True)
        if k not in in_file
    ]
    peers: list[PeerSection] = []
    seen: dict[bytes, bool] = {}
    for p in config.peers:
        now = running.get(p.public_key)
        if now is not None and p.public_key not in seen:
            if now.preshared_key is not None and p.preshared_key is None:
                p = replace(p, preshared_key=bytes(KEY_LEN))
            if now.persistent_keepalive and p.persistent_keepalive is None:
                p = replace(p, persistent_keepalive=0)
        seen[p.public_key] = True
        peers.append(p)
    return replace(config, peers=(*removals, *peers)), False


# ---------------------------------------------------------------------------------------
# What `wg show` and `wg showconf` print

_RESET: Final = "\x1b[0m"
_BOLD: Final = "\x1b[1m"
_RED: Final = "\x1b[31m"
_GREEN: Final = "\x1b[32m"
_YELLOW: Final = "\x1b[33m"
_CYAN: Final = "\x1b[36m"

# wg's filter when colour is off: ESC [ then everything up to and including a letter.
_ANSI: Final = re.compile(r"\x1b\[[^A-Za-z]*[A-Za-z]?")


def _key(k: bytes) -> str:
    return key_to_base64(k)


def _maybe_key(k: bytes | None) -> str:
    return "(none)" if k is None else key_to_base64(k)


def _endpoint(ep: tuple[str, int]) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pretty_time(left: int) -> str:
    years, left = divmod(left, 365 * 24 * 60 * 60)
    days, left = divmod(left, 24 * 60 * 60)
    hours, left = divmod(left, 60 * 60)
    minutes, seconds = divmod(left, 60)
    parts = [
        f"{n} {_CYAN}{unit}{'' if n == 1 else 's'}{_RESET}"
        for n, unit in (
            (years, "year"),
            (days, "day"),
            (hours, "hour"),
            (minutes, "minute"),
            (seconds, "second"),
        )
        if n
    ]
    return ", ".join(parts)


def _ago(sec: int, now: int) -> str:
    if now == sec:
        return "Now"
    if now < sec:
        return f"({_RED}System clock wound backward; connection problems may ensue.{_RESET})"
    return _pretty_time(now - sec) + " ago"


def _bytes(b: int) -> str:
    for limit, unit in ((1 << 10, "B"), (1 << 20, "KiB"), (1 << 30, "MiB"), (1 << 40, "GiB")):
        if b < limit:
            if unit == "B":
                return f"{b} {_CYAN}B{_RESET}"
            return f"{b / (limit >> 10):.2f} {_CYAN}{unit}{_RESET}"
    return f"{b / (1 << 30) / 1024:.2f} {_CYAN}TiB{_RESET}"


def _sorted_for_show(peers: Sequence[PeerState]) -> list[PeerState]:
    """Latest handshake first, peers without one last; otherwise as the daemon listed them."""
    return sorted(
        peers,
        key=lambda p: (not p.has_handshake, -p.last_handshake_sec, -p.last_handshake_nsec),
    )


def format_pretty(
    state: DeviceState, *, now: int, color: bool = False, hide_keys: bool = True
) -> str:
    """`wg show IFACE`: the interface, then its peers, most recent handshake first.

    `now` is the wall clock in whole seconds (wg's time(NULL)); `color` is wg's terminal
    mode; `hide_keys` is everything but WG_HIDE_KEYS=never.
    """
    out = [_RESET, f"{_GREEN}{_BOLD}interface{_RESET}: {_GREEN}{state.name}{_RESET}\n"]
    if state.public_key is not None:
        out.append(f"  {_BOLD}public key{_RESET}: {_key(state.public_key)}\n")
    if state.private_key is not None:
        shown = "(hidden)" if hide_keys else _key(state.private_key)
        out.append(f"  {_BOLD}private key{_RESET}: {shown}\n")
    if state.listen_port:
        out.append(f"  {_BOLD}listening port{_RESET}: {state.listen_port}\n")
    if state.fwmark:
        out.append(f"  {_BOLD}fwmark{_RESET}: 0x{state.fwmark:x}\n")
    peers = _sorted_for_show(state.peers)
    if peers:
        out.append("\n")
    for n, p in enumerate(peers):
        out.append(f"{_YELLOW}{_BOLD}peer{_RESET}: {_YELLOW}{_key(p.public_key)}{_RESET}\n")
        if p.preshared_key is not None:
            shown = "(hidden)" if hide_keys else _key(p.preshared_key)
            out.append(f"  {_BOLD}preshared key{_RESET}: {shown}\n")
        if p.endpoint is not None:
            out.append(f"  {_BOLD}endpoint{_RESET}: {_endpoint(p.endpoint)}\n")
        out.append(f"  {_BOLD}allowed ips{_RESET}: ")
        if p.allowed_ips:
            out.append(
                ", ".join(
                    f"{ip}{_CYAN}/{_RESET}{cidr}"
                    for ip, _, cidr in (format_allowed_ip(a).partition("/") for a in p.allowed_ips)
                )
                + "\n"
            )
        else:
            out.append("(none)\n")
        if p.last_handshake_sec:
            out.append(f"  {_BOLD}latest handshake{_RESET}: {_ago(p.last_handshake_sec, now)}\n")
        if p.rx_bytes or p.tx_bytes:
            out.append(
                f"  {_BOLD}transfer{_RESET}: {_bytes(p.rx_bytes)} received, "
                f"{_bytes(p.tx_bytes)} sent\n"
            )
        if p.persistent_keepalive:
            out.append(
                f"  {_BOLD}persistent keepalive{_RESET}: "
                f"every {_pretty_time(p.persistent_keepalive)}\n"
            )
        if n + 1 < len(peers):
            out.append("\n")
    text = "".join(out)
    return text if color else _ANSI.sub("", text)


def _dump(state: DeviceState, prefix: str) -> str:
    fwmark = f"0x{state.fwmark:x}" if state.fwmark else "off"
    rows = [
        f"{prefix}{_maybe_key(state.private_key)}\t{_maybe_key(state.public_key)}\t"
        f"{state.listen_port}\t{fwmark}\n"
    ]
    for p in state.peers:
        endpoint = _endpoint(p.endpoint) if p.endpoint else "(none)"
        ips = ",".join(format_allowed_ip(a) for a in p.allowed_ips) or "(none)"
        keepalive = p.persistent_keepalive or "off"
        rows.append(
            f"{prefix}{_key(p.public_key)}\t{_maybe_key(p.preshared_key)}\t{endpoint}\t{ips}\t"
            f"{p.last_handshake_sec}\t{p.rx_bytes}\t{p.tx_bytes}\t{keepalive}\n"
        )
    return "".join(rows)


def format_field(state: DeviceState, field: str, *, with_interface: bool = False) -> str | None:
    """`wg show IFACE FIELD` (with_interface: `wg show all FIELD`, every line prefixed with
    the interface name and a tab); None for a field wg does not know. Peers are in the
    daemon's order, as wg prints them."""
    prefix = f"{state.name}\t" if with_interface else ""
    if field == "public-key":
        return f"{prefix}{_maybe_key(state.public_key)}\n"
    if field == "private-key":
        return f"{prefix}{_maybe_key(state.private_key)}\n"
    if field == "listen-port":
        return f"{prefix}{state.listen_port}\n"
    if field == "fwmark":
        return f"{prefix}{f'0x{state.fwmark:x}' if state.fwmark else 'off'}\n"
    if field == "dump":
        return _dump(state, prefix)
    columns: dict[str, Callable[[PeerState], object] | None] = {
        "endpoints": lambda p: _endpoint(p.endpoint) if p.endpoint else "(none)",
        "allowed-ips": lambda p: " ".join(format_allowed_ip(a) for a in p.allowed_ips) or "(none)",
        "latest-handshakes": lambda p: p.last_handshake_sec,
        "transfer": lambda p: f"{p.rx_bytes}\t{p.tx_bytes}",
        "persistent-keepalive": lambda p: p.persistent_keepalive or "off",
        "preshared-keys": lambda p: _maybe_key(p.preshared_key),
        "peers": None,
    }
    if field not in columns:
        return None
    column = columns[field]
    rows = []
    for p in state.peers:
        tail = "" if column is None else f"\t{column(p)}"
        rows.append(f"{prefix}{_key(p.public_key)}{tail}\n")
    return "".join(rows)


def format_showconf(state: DeviceState) -> str:
    """`wg showconf IFACE`."""
    return format_config(state.to_config())
