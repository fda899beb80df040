"""The `wiresnake` command line.

`main` dispatches on its first argument the way `wg` does: `-h`/`--help`/`help` and
`-v`/`--version`/`version` on their own, else a subcommand from `SUBCOMMANDS`, which is
called with the argument list that starts at its own name (so one function can serve two
names, as `genkey` and `genpsk` do). Key tools are byte for byte like wireguard-tools'
`wg genkey`, `wg genpsk` and `wg pubkey`: same output, same messages (with "wiresnake"
where `wg` prints its own name), same exit codes. So are `show`, `showconf`, `set`,
`setconf`, `addconf` and `syncconf` (and a bare `wiresnake`, which is `show`), which talk to
the configuration socket through `wgctl`; configuration files are read by `config`, and a bad
one is reported as `FILE:LINE: ...` before anything is sent.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO, Final, NamedTuple

from wiresnake import __version__, config, wgctl
from wiresnake.crypto import (
    KEY_LEN,
    KeyFormatError,
    generate_private_key,
    key_from_base64,
    key_to_base64,
    public_key,
)

__all__ = ["SUBCOMMANDS", "Subcommand", "main"]

PROG: Final = "wiresnake"

# A base64 key as `wg` writes and reads it: 43 alphabet characters, then one "=".
KEY_LEN_BASE64: Final = 44

MSG_KEY_FORMAT: Final = f"{PROG}: Key is not the correct length or format\n"
MSG_TRAILING: Final = f"{PROG}: Trailing characters found after key\n"
MSG_WORLD_ACCESSIBLE: Final = (
    "Warning: writing to world accessible file.\n"
    "Consider setting the umask to 077 and trying again.\n"
)

# What `wg pubkey` lets follow a key: NUL and the C-locale spaces (\t \n \v \f \r and " ").
_SKIPPED_AFTER_KEY: Final = b"\0\t\n\v\f\r "


class Subcommand(NamedTuple):
    name: str
    run: Callable[[Sequence[str]], int]
    """Called with the arguments starting at the subcommand's own name."""
    description: str


# ---------------------------------------------------------------------------------------
# Output helpers. stdout/stderr may be None (fd closed at start-up) or capture objects
# without a file descriptor (tests); neither may crash the command.


def _err(text: str) -> None:
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass


def _out(text: str) -> int:
    """Write to stdout now; on failure say so on stderr and return 1, else 0.

    `wg` ignores a failed write (`wg genkey > /dev/full` exits 0 with the key lost); we
    refuse to report success for a key nobody received. When stdout has a descriptor the
    bytes go straight to it, so nothing is left in Python's buffer for the interpreter to
    fail on again at exit.
    """
    stream = sys.stdout
    try:
        if stream is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))  # closed at start-up
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            stream.write(text)
            stream.flush()
            return 0
        stream.flush()
        data = text.encode()
        while data:
            data = data[os.write(fd, data) :]
    except OSError as e:
        _err(f"{PROG}: write error: {e.strerror or e}\n")
        return 1
    return 0


def _usage(name: str) -> int:
    _err(f"Usage: {PROG} {name}\n")
    return 1


# ---------------------------------------------------------------------------------------
# genkey, genpsk


def _stdout_is_world_accessible() -> bool:
    try:
        st = os.fstat(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & stat.S_IRWXO)


def cmd_genkey(argv: Sequence[str]) -> int:
    """`genkey`: a clamped X25519 private key; `genpsk`: 32 random bytes. Base64 + newline."""
    if len(argv) != 1:
        return _usage(argv[0])
    # Like wg, only a regular file counts (a terminal or pipe is fine), any of the
    # "other" bits (read, write or execute) triggers it, and it is a warning only.
    if _stdout_is_world_accessible():
        _err(MSG_WORLD_ACCESSIBLE)
    try:
        key = generate_private_key() if argv[0] == "genkey" else os.urandom(KEY_LEN)
    except OSError as e:
        _err(f"getrandom: {e.strerror or e}\n")
        return 1
    return _out(key_to_base64(key) + "\n")


# ---------------------------------------------------------------------------------------
# pubkey


def _stdin_binary() -> BinaryIO | None:
    stream = sys.stdin
    if stream is None:
        return None
    buffer: BinaryIO | None = getattr(stream, "buffer", None)
    return buffer


def _read_up_to(src: BinaryIO, n: int) -> bytes:
    """Up to n bytes, fewer only at end of input (fread)."""
    got = b""
    while len(got) < n:
        chunk = src.read(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def _only_skippable_follows(src: BinaryIO) -> bool:
    """Consume the rest of the input; False at the first byte other than NUL or space.

    Reads what is available rather than waiting for a full block, so on a terminal a bad
    line is reported as soon as it is typed, as `wg`'s getc loop does.
    """
    read_some: Callable[[int], bytes] = getattr(src, "read1", src.read)
    while chunk := read_some(65536):
        if chunk.translate(None, _SKIPPED_AFTER_KEY):
            return False
    return True


def decode_key_strict(text: bytes) -> bytes | None:
    """The 32-byte key `wg` would accept for `text` (canonical base64 only), or None."""
    try:
        return key_from_base64(text.decode("ascii"))
    except (UnicodeDecodeError, KeyFormatError):
        return None


def cmd_pubkey(argv: Sequence[str]) -> int:
    """Read a base64 private key from stdin, write its base64 public key."""
    if len(argv) != 1:
        return _usage(argv[0])
    src = _stdin_binary()
    if src is None:  # stdin closed: no key, as fread on a closed descriptor sees
        _err(MSG_KEY_FORMAT)
        return 1
    try:
        # wg reads exactly 44 bytes (no leading whitespace is skipped), then checks what
        # follows before it even looks at the key: trailing junk wins over a bad key.
        head = _read_up_to(src, KEY_LEN_BASE64)
        if len(head) != KEY_LEN_BASE64:
            _err(MSG_KEY_FORMAT)
            return 1
        if not _only_skippable_follows(src):
            _err(MSG_TRAILING)
            return 1
    except OSError:
        _err(MSG_KEY_FORMAT)
        return 1
    except KeyboardInterrupt:
        return 130
    key = decode_key_strict(head)
    if key is None:
        _err(MSG_KEY_FORMAT)
        return 1
    return _out(key_to_base64(public_key(key)) + "\n")


# ---------------------------------------------------------------------------------------
# show, showconf: the device state through the configuration socket, printed as wg prints it

SHOW_USAGE_TAIL: Final = (
    "{ <interface> | all | interfaces } [public-key | private-key | listen-port | fwmark | "
    "peers | preshared-keys | endpoints | allowed-ips | latest-handshakes | transfer | "
    "persistent-keepalive | dump]"
)


def _show_usage(name: str) -> None:
    _err(f"Usage: {PROG} {name} {SHOW_USAGE_TAIL}\n")


def _color_mode() -> bool:
    """wg's rule: WG_COLOR_MODE=always or never, else colour when stdout is a terminal."""
    mode = os.environ.get("WG_COLOR_MODE")
    if mode in ("always", "never"):
        return mode == "always"
    try:
        return sys.stdout is not None and os.isatty(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _pretty(state: wgctl.DeviceState) -> str:
    return wgctl.format_pretty(
        state,
        now=int(time.time()),
        color=_color_mode(),
        hide_keys=os.environ.get("WG_HIDE_KEYS") != "never",
    )


def _show_all(argv: Sequence[str]) -> int:
    try:
        names = wgctl.list_interfaces()
    except wgctl.WgctlError as e:
        _err(f"Unable to list interfaces: {e.strerror}\n")
        return 1
    # As wg: 1 when there were interfaces and none could be read, else 0.
    ret = 1 if names else 0
    for n, name in enumerate(names):
        try:
            state = wgctl.get(name)
        except wgctl.WgctlError as e:
            _err(f"Unable to access interface {name}: {e.strerror}\n")
            continue
        if len(argv) == 3:
            text = wgctl.format_field(state, argv[2], with_interface=True)
            if text is None:
                _err(f"Invalid parameter: `{argv[2]}'\n")
                _show_usage(argv[0])
                return 1
        else:
            text = _pretty(state) + ("\n" if n + 1 < len(names) else "")
        if _out(text):
            return 1
        ret = 0
    return ret


def cmd_show(argv: Sequence[str]) -> int:
    """`show [IFACE | all | interfaces] [FIELD]`, byte for byte as `wg show`."""
    if len(argv) > 3:
        _show_usage(argv[0])
        return 1
    if len(argv) == 1 or argv[1] == "all":
        return _show_all(argv)
    if argv[1] == "interfaces":
        if len(argv) > 2:
            _show_usage(argv[0])
            return 1
        try:
            names = wgctl.list_interfaces()
        except wgctl.WgctlError as e:
            _err(f"Unable to list interfaces: {e.strerror}\n")
            return 1
        return _out(" ".join(names) + "\n") if names else 0
    if len(argv) == 2 and argv[1] in ("-h", "--help", "help"):
        _show_usage(argv[0])
        return 0
    try:
        state = wgctl.get(argv[1])
    except wgctl.WgctlError as e:
        _err(f"Unable to access interface: {e.strerror}\n")
        return 1
    if len(argv) == 3:
        text = wgctl.format_field(state, argv[2])
        if text is None:
            _err(f"Invalid parameter: `{argv[2]}'\n")
            _show_usage(argv[0])
            return 1
        return _out(text)
    return _out(_pretty(state))


def cmd_showconf(argv: Sequence[str]) -> int:
    """`showconf IFACE`: the running configuration as a file for `setconf`."""
    if len(argv) != 2:
        return _usage(f"{argv[0]} <interface>")
    try:
        state = wgctl.get(argv[1])
    except wgctl.WgctlError as e:
        _err(f"Unable to access interface: {e.strerror}\n")
        return 1
    return _out(wgctl.format_showconf(state))


# ---------------------------------------------------------------------------------------
# set, setconf, addconf, syncconf: changes, checked whole before anything is sent

SET_USAGE_TAIL: Final = (
    "<interface> [listen-port <port>] [fwmark <mark>] [private-key <file path>] "
    "[peer <base64 public key> [remove] [preshared-key <file path>] [endpoint <ip>:<port>] "
    "[persistent-keepalive <interval seconds>] "
    "[allowed-ips [+|-]<ip1>/<cidr1>[,[+|-]<ip2>/<cidr2>]...] ]..."
)


def _send(iface: str, lines: list[str], file: config.Config | None = None) -> int:
    try:
        wgctl.set(iface, lines)
    except wgctl.WgctlError as e:
        _err(f"Unable to modify interface: {e.strerror}\n")
        in_use = file.port_in_use() if file is not None and e.errno == errno.EADDRINUSE else None
        if in_use:
            _err(in_use + "\n")
        return 1
    return 0


def cmd_set(argv: Sequence[str]) -> int:
    """`set IFACE ...`: the arguments of `wg set`, with its messages."""
    if len(argv) < 3:
        return _usage(f"{argv[0]} {SET_USAGE_TAIL}")
    try:
        change, warnings = config.parse_set_arguments(argv[2:])
        for warning in warnings:
            _err(warning + "\n")
        change = config.resolve_config(change)
    except config.ConfigError as e:
        _err(e.message + "\n")
        return 1
    return _send(argv[1], wgctl.set_lines(change))


def cmd_setconf(argv: Sequence[str]) -> int:
    """`setconf` (replace everything), `addconf` (add to it) and `syncconf` (change only
    what differs, so peers that stay keep their sessions) from a `wg` configuration file."""
    name = argv[0]
    if len(argv) != 3:
        return _usage(f"{name} <interface> <configuration filename>")
    iface, path = argv[1], argv[2]
    try:
        cfg = config.read_config(path)
        for warning in cfg.warnings:
            _err(warning + "\n")
        cfg = config.resolve_config(cfg)
    except config.ConfigError as e:
        _err(f"{e}\n")
        return 1
    if name == "addconf":
        return _send(iface, wgctl.set_lines(cfg), cfg)
    file_cfg = cfg
    replace_peers = True
    if name == "syncconf" and cfg.peers:
        try:
            runtime = wgctl.get(iface)
        except wgctl.WgctlError as e:
            _err(f"Unable to retrieve current interface configuration: {e.strerror}\n")
            return 1
        cfg, replace_peers = wgctl.sync_change(cfg, runtime)
    lines = wgctl.set_lines(cfg, whole_device=True, replace_peers=replace_peers)
    return _send(iface, lines, file_cfg)


# ---------------------------------------------------------------------------------------
# up, down: wg-quick's job (see `quick`)


def cmd_up_down(argv: Sequence[str]) -> int:
    """`up CONF-or-IFACE` and `down CONF-or-IFACE`, as `wg-quick up` and `wg-quick down`."""
    from wiresnake import quick

    return quick.main(argv)


def cmd_proxy(argv: Sequence[str]) -> int:
    """`proxy CONFIG`: rootless proxy mode, as wireproxy (see `proxy.command`)."""
    from wiresnake.proxy import command

    return command.main(argv[1:])


# ---------------------------------------------------------------------------------------
# Dispatch

SUBCOMMANDS: Final[tuple[Subcommand, ...]] = (
    # Later sessions add, in this table: up, down, proxy, mesh.
    Subcommand("up", cmd_up_down, "Brings up a WireGuard interface from a wg-quick file"),
    Subcommand("down", cmd_up_down, "Takes down a WireGuard interface brought up from a file"),
    Subcommand("proxy", cmd_proxy, "Runs a rootless SOCKS5/HTTP proxy from a wireproxy file"),
    Subcommand("show", cmd_show, "Shows the current configuration and device information"),
    Subcommand(
        "showconf",
        cmd_showconf,
        "Shows the current configuration of a given WireGuard interface, for use with `setconf'",
    ),
    Subcommand(
        "set",
        cmd_set,
        "Change the current configuration, add peers, remove peers, or change peers",
    ),
    Subcommand("setconf", cmd_setconf, "Applies a configuration file to a WireGuard interface"),
    Subcommand("addconf", cmd_setconf, "Appends a configuration file to a WireGuard interface"),
    Subcommand(
        "syncconf", cmd_setconf, "Synchronizes a configuration file to a WireGuard interface"
    ),
    Subcommand("genkey", cmd_genkey, "Generates a new private key and writes it to stdout"),
    Subcommand("genpsk", cmd_genkey, "Generates a new preshared key and writes it to stdout"),
    Subcommand(
        "pubkey", cmd_pubkey, "Reads a private key from stdin and writes a public key to stdout"
    ),
)

_BY_NAME: Final = {c.name: c for c in SUBCOMMANDS}


def usage_text() -> str:
    lines = [f"Usage: {PROG} <cmd> [<args>]", "", "Available subcommands:"]
    lines += [f"  {c.name}: {c.description}" for c in SUBCOMMANDS]
    lines.append("You may pass `--help' to any of these subcommands to view usage.")
    return "\n".join(lines) + "\n"


def _is_interface_name(word: str) -> bool:
    return (
        0 < len(word.encode()) < 16
        and word not in (".", "..")
        and not word.startswith("-")
        and not any(c in word for c in "/: \t\n")
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; `argv` excludes the program name (default: sys.argv[1:])."""
    args = sys.argv[1:] if argv is None else list(argv)

    if len(args) == 1 and args[0] in ("-v", "--version", "version"):
        return _out(f"{PROG} v{__version__}\n")
    if len(args) == 1 and args[0] in ("-h", "--help", "help"):
        return _out(usage_text())
    if not args:
        return cmd_show(["show"])  # as wg: show every interface

    command = _BY_NAME.get(args[0])
    if command is not None:
        try:
            return command.run(args)
        except KeyboardInterrupt:  # Ctrl-C, say while Endpoint names are retried
            _err(f"{PROG}: interrupted\n")
            return 130

    # `wiresnake [-f] IFACE`: a word that is no subcommand but a valid interface name
    # starts the userspace daemon, under wireguard-go's contract.
    if args[0] in ("-f", "--foreground") or (len(args) == 1 and _is_interface_name(args[0])):
        from wiresnake import daemon

        return daemon.main(args)
    _err(f"Invalid subcommand: `{args[0]}'\n")
    _err(usage_text())
    return 1
