"""The `wiresnake` command line.

`main` dispatches on its first argument the way `wg` does: `-h`/`--help`/`help` and
`-v`/`--version`/`version` on their own, else a subcommand from `SUBCOMMANDS`, which is
called with the argument list that starts at its own name (so one function can serve two
names, as `genkey` and `genpsk` do). Key tools are byte for byte like wireguard-tools'
`wg genkey`, `wg genpsk` and `wg pubkey`: same output, same messages (with "wiresnake"
where `wg` prints its own name), same exit codes.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Sequence
from typing import BinaryIO, Final, NamedTuple

from wiresnake import __version__
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
# Dispatch

SUBCOMMANDS: Final[tuple[Subcommand, ...]] = (
    # Later sessions add, in this table: show (also what a bare `wiresnake` runs, as with
    # wg), showconf, set, setconf, addconf, syncconf, up, down, proxy, mesh.
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
        # wg runs `show` here; until `show` exists, this is a usage error.
        _err(usage_text())
        return 1

    command = _BY_NAME.get(args[0])
    if command is not None:
        return command.run(args)

    # `wiresnake [-f] IFACE`: a word that is no subcommand but a valid interface name
    # starts the userspace daemon, under wireguard-go's contract.
    if args[0] in ("-f", "--foreground") or (len(args) == 1 and _is_interface_name(args[0])):
        from wiresnake import daemon

        return daemon.main(args)
    _err(f"Invalid subcommand: `{args[0]}'\n")
    _err(usage_text())
    return 1
