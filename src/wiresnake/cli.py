"""The `wiresnake` command line.

`main` dispatches on its first argument the way `wg` does: `-h`/`--help`/`help` and
`-v`/`--version`/`version` on their own, else a subcommand from `SUBCOMMANDS`, which is
called with the argument list that starts at its own name (so one function can serve two
names, as `genkey` and `genpsk` do). Key tools are byte for byte like wireguard-tools'
`wg genkey`, `wg genpsk` and `wg pubkey`: same output, same messages (with "wiresnake"
where `wg` prints its own name), same exit codes. So are `show`, `showconf`, `set`,
`setconf`, `addconf` and `syncconf` (and a bare `wiresnake`, which is `show`), which talk to
the configuration socket through `wgctl`; configuration files are read by `config`, and a bad
one is reported as `FILE:LINE: ...` before anything is sent. `up`, `down`, `save` and
`strip` are wg-quick's (`quick`).

Any other lone word that is a valid interface name starts the daemon, as `wireguard-go
IFACE` does, unless `daemon_refusal` takes it for a mistyped subcommand.
"""

from __future__ import annotations

import difflib
import errno
import os
import stat
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
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
# up, down, save, strip: wg-quick's job (see `quick`); proxy; install-extras


def cmd_quick(argv: Sequence[str]) -> int:
    """`up`, `down`, `save` and `strip` with CONF-or-IFACE, as `wg-quick` has them."""
    from wiresnake import quick

    return quick.main(argv)


def cmd_proxy(argv: Sequence[str]) -> int:
    """`proxy CONFIG`: rootless proxy mode, as wireproxy (see `proxy.command`)."""
    from wiresnake.proxy import command

    return command.main(argv[1:])


def cmd_install_extras(argv: Sequence[str]) -> int:
    """`install-extras [--root DIR] [--prefix DIR]`: units, man pages, completion."""
    from wiresnake import extras

    return extras.main(argv[1:])


# ---------------------------------------------------------------------------------------
# Dispatch

SUBCOMMANDS: Final[tuple[Subcommand, ...]] = (
    # Later sessions add, in this table: mesh.
    Subcommand("up", cmd_quick, "Brings up a WireGuard interface from a wg-quick file"),
    Subcommand("down", cmd_quick, "Takes down a WireGuard interface brought up from a file"),
    Subcommand("save", cmd_quick, "Writes an interface's running configuration to its file"),
    Subcommand("strip", cmd_quick, "Prints a wg-quick file without wg-quick's keys, for syncconf"),
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
    Subcommand(
        "install-extras",
        cmd_install_extras,
        "Installs the systemd units, man pages and bash completion",
    ),
)

_BY_NAME: Final = {c.name: c for c in SUBCOMMANDS}

# Words a bare `wiresnake WORD` never takes for an interface name: verbs to come, and the
# verbs people guess (`wiresnake start`). They get wg's "Invalid subcommand", not a daemon.
RESERVED_WORDS: Final = frozenset(
    [
        "mesh",
        "help",
        "version",
        "all",
        "interfaces",
        "daemon",
        "start",
        "stop",
        "status",
        "restart",
        "reload",
        "list",
        "ls",
        "add",
        "del",
        "delete",
        "remove",
        "rm",
        "run",
        "create",
        "new",
        "init",
        "enable",
        "disable",
        "connect",
        "disconnect",
        "config",
        "conf",
        "key",
        "keys",
        "peer",
        "peers",
        "dump",
        "log",
        "logs",
        "info",
    ]
)
# difflib's ratio from which a word is a typo of a verb: catches one swapped, missing or
# extra letter (`shwo`, `strp`, `syncconfig`) yet not names such as `home` or `vpn`.
TYPO_CUTOFF: Final = 0.75
# wg-quick runs `$WG_QUICK_USERSPACE_IMPLEMENTATION IFACE` with this variable set: the name
# comes from a file, so no typo check, and nothing is said beyond wg-quick's own `[#]` line.
WG_QUICK_ENV: Final = "WG_QUICK_USERSPACE_IMPLEMENTATION"
FOREGROUND_FLAGS: Final = ("-f", "--foreground")

# Every variable the program reads (a test checks the source against this list).
ENVIRONMENT: Final[tuple[tuple[str, str], ...]] = (
    ("LOG_LEVEL", "verbose (or debug), error (the default) or silent: daemon and proxy logs"),
    ("WG_PROCESS_FOREGROUND", "=1 keeps the daemon in the foreground, as -f"),
    ("WG_TUN_FD", "a TUN descriptor the daemon serves instead of creating one"),
    ("WG_UAPI_FD", "a listening socket the daemon serves instead of creating one"),
    ("WG_SOCKET_DIR", "directory of the configuration sockets (default /var/run/wireguard)"),
    ("WIRESNAKE_OFFLOAD", "=0 turns the TUN and UDP offloads off; =tso also reads TSO/USO"),
    ("WIRESNAKE_BUSY_POLL_US", "microseconds of polling before epoll sleeps (default 300)"),
    (
        "WIRESNAKE_RERESOLVE",
        "=1 re-resolves peers' endpoint names from /etc/wireguard/IFACE.conf (=PATH: from "
        "that file) when their handshakes go stale; in proxy mode on unless =0",
    ),
    (
        "WIRESNAKE_RERESOLVE_STALE",
        "for tests: seconds without a handshake before a name is looked up again (135)",
    ),
    ("WIRESNAKE_PROXY_MAX_CONNECTIONS", "proxy: connections per listener (default 4096)"),
    ("WIRESNAKE_PROXY_MAX_PER_CLIENT", "proxy: connections per client address (default 1024)"),
    (
        "WIRESNAKE_PROXY_HANDSHAKE_TIMEOUT",
        "proxy: seconds a client has to finish its SOCKS5 or HTTP request (default 5)",
    ),
    ("WIRESNAKE_READY_FD", "internal: the daemon child's start-up pipe to its parent"),
    (WG_QUICK_ENV, "set (as wg-quick sets it): a bare IFACE is not checked for typos"),
    ("WG_ENDPOINT_RESOLUTION_RETRIES", "tries to resolve an endpoint name (default 15)"),
    ("WG_COLOR_MODE", "always or never: colours in `show' (default: on a terminal)"),
    ("WG_HIDE_KEYS", "=never shows private and preshared keys in `show'"),
    ("HOME", "proxy without a file reads $HOME/.config/wireproxy.conf (after /etc/wireproxy)"),
)


def usage_text() -> str:
    lines = [
        f"Usage: {PROG} <cmd> [<args>]",
        f"       {PROG} [-f|--foreground] <interface>",
        "",
        "Available subcommands:",
    ]
    lines += [f"  {c.name}: {c.description}" for c in SUBCOMMANDS]
    lines.append("You may pass `--help' to any of these subcommands to view usage.")
    return "\n".join(lines) + "\n"


DAEMON_HELP: Final = f"""\
Daemon mode, a drop-in for wireguard-go:
  {PROG} wg0     creates the TUN interface wg0, serves its configuration
                    socket /var/run/wireguard/wg0.sock and detaches; wg-quick
                    runs this with {WG_QUICK_ENV}={PROG}
  {PROG} -f wg0  the same in the foreground
  The daemon exits on SIGTERM or SIGINT, when its interface is deleted
  (`ip link del wg0') and when its socket file is removed. A bare word that is
  a subcommand, a word people try as one (start, stop, list, ...), or, without
  a digit, close to a subcommand (`shwo') is refused as a typo; with -f any
  interface name but a subcommand's is taken.
"""


_ENV_COLUMN: Final = 26


def help_text() -> str:
    """`--help`: the subcommands, daemon mode and the environment."""
    env = []
    for name, text in ENVIRONMENT:
        # a name that does not fit the column has its text below it
        head = f"  {name:<{_ENV_COLUMN - 4}}  " if len(name) <= _ENV_COLUMN - 4 else None
        if head is None:
            env.append(f"  {name}")
        lines = textwrap.wrap(text, 80 - _ENV_COLUMN)
        env += [
            (head if n == 0 and head else " " * _ENV_COLUMN) + line for n, line in enumerate(lines)
        ]
    return (
        "\n".join(
            [
                usage_text(),
                DAEMON_HELP,
                "Environment:",
                *env,
                "",
                f"See {PROG}(8) and {PROG}-proxy(8).",
            ]
        )
        + "\n"
    )


def _is_interface_name(word: str) -> bool:
    return (
        0 < len(word.encode()) < 16
        and word not in (".", "..")
        and not word.startswith("-")
        and not any(c in word for c in "/: \t\n")
    )


def daemon_refusal(word: str, *, explicit: bool, env: Mapping[str, str]) -> str | None:
    """Why `wiresnake [-f] WORD` must not start a daemon for WORD, or None when it may.

    A subcommand's name is never an interface name. Without -f, and unless wg-quick calls
    (it names interfaces from files), a reserved word or a word close to a subcommand is
    taken for a mistyped subcommand; a word with a digit never is (verbs have none, and
    interface names often do: `wg0`, `down0`).
    """
    if word in _BY_NAME:
        return f"`{word}' is a subcommand, not an interface name"
    if explicit or WG_QUICK_ENV in env:
        return None
    if word.lower() in RESERVED_WORDS:
        return f"Invalid subcommand: `{word}'"
    if any(c.isdigit() for c in word):
        return None
    close = difflib.get_close_matches(word.lower(), _BY_NAME, n=1, cutoff=TYPO_CUTOFF)
    if close:
        return f"Invalid subcommand: `{word}'; did you mean `{close[0]}'?"
    return None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _start_daemon(args: list[str]) -> int:
    explicit = args[0] in FOREGROUND_FLAGS
    if len(args) == (2 if explicit else 1):
        refusal = daemon_refusal(args[-1], explicit=explicit, env=os.environ)
        if refusal is not None:
            _err(refusal + "\n")
            if refusal.startswith("Invalid subcommand"):
                _err(usage_text())
                _err(f"(`{PROG} -f {args[-1]}' starts a daemon for an interface of that name)\n")
            return 1
    from wiresnake import daemon

    # said on a terminal only, so that a daemon nobody meant to start is seen; never to
    # wg-quick, nor by the re-executed child (it is handed its TUN)
    announce = (
        _stderr_is_terminal() and WG_QUICK_ENV not in os.environ and "WG_TUN_FD" not in os.environ
    )
    return daemon.main(args, announce=announce)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; `argv` excludes the program name (default: sys.argv[1:])."""
    args = sys.argv[1:] if argv is None else list(argv)

    if len(args) == 1 and args[0] in ("-v", "--version", "version"):
        return _out(f"{PROG} v{__version__}\n")
    if len(args) == 1 and args[0] in ("-h", "--help", "help"):
        return _out(help_text())
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
    if args[0] in FOREGROUND_FLAGS or (len(args) == 1 and _is_interface_name(args[0])):
        return _start_daemon(args)
    _err(f"Invalid subcommand: `{args[0]}'\n")
    _err(usage_text())
    return 1
