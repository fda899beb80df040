"""`wiresnake install-extras`: what pip cannot put in place, copied from the package.

pip installs the `wiresnake` command and the package; the systemd units, the man pages and
the bash completion ship inside it (`wiresnake/data/`) and this verb copies them where
systemd, man and bash-completion look, under `--root` (default /, for a staging directory
or a test) and `--prefix` (default /usr/local, for man pages and completion):

    ROOT/etc/systemd/system/wiresnake@.service               wiresnake up/down IFACE
    ROOT/etc/systemd/system/wiresnake-proxy@.service         wiresnake proxy, unprivileged
    ROOT/etc/systemd/system/wg-quick@.service.d/wiresnake.conf   wg-quick@ falls back to us
    ROOT/PREFIX/share/man/man8/wiresnake.8, wiresnake-proxy.8
    ROOT/PREFIX/share/bash-completion/completions/wiresnake

Units name the command by absolute path (`--bin`, default: the one running), since
systemd and wg-quick may not have its directory (a virtualenv's bin) on their PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from importlib.resources import files
from typing import Final, NamedTuple

__all__ = ["EXTRAS", "Extra", "command_path", "install", "main"]

PLACEHOLDER: Final = "@WIRESNAKE@"


class Extra(NamedTuple):
    source: str
    """Path under the package's data/ directory."""
    target: str
    """Where it goes, relative to ROOT (or to ROOT/PREFIX when `in_prefix`)."""
    in_prefix: bool
    unit: bool = False
    """A unit: PLACEHOLDER becomes the command's path."""


EXTRAS: Final[tuple[Extra, ...]] = (
    Extra("systemd/wiresnake@.service", "etc/systemd/system/wiresnake@.service", False, True),
    Extra(
        "systemd/wiresnake-proxy@.service",
        "etc/systemd/system/wiresnake-proxy@.service",
        False,
        True,
    ),
    Extra(
        "systemd/wg-quick@.service.d/wiresnake.conf",
        "etc/systemd/system/wg-quick@.service.d/wiresnake.conf",
        False,
        True,
    ),
    Extra("man/wiresnake.8", "share/man/man8/wiresnake.8", True),
    Extra("man/wiresnake-proxy.8", "share/man/man8/wiresnake-proxy.8", True),
    Extra("completion/wiresnake", "share/bash-completion/completions/wiresnake", True),
)


def command_path() -> str | None:
    """The absolute path of the `wiresnake` command: the one running, else the one pip put
    beside this Python, else the first on PATH."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "wiresnake" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    beside = os.path.join(sysconfig.get_path("scripts"), "wiresnake")
    if os.path.isfile(beside):
        return beside
    found = shutil.which("wiresnake")
    return os.path.abspath(found) if found else None


def _write(path: str, data: bytes) -> None:
    """Replace `path` (mode 0644) so that no reader sees half a file."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def install(root: str, prefix: str, command: str) -> list[str]:
    """Copy every extra under `root`; the paths written, in EXTRAS order."""
    data = files("wiresnake") / "data"
    written = []
    for extra in EXTRAS:
        content = (data / extra.source).read_bytes()
        if extra.unit:
            content = content.replace(PLACEHOLDER.encode(), command.encode())
        base = os.path.join(root, prefix.lstrip("/")) if extra.in_prefix else root
        path = os.path.join(base, extra.target)
        _write(path, content)
        written.append(path)
    return written


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wiresnake install-extras",
        description="Install wiresnake's systemd units, man pages and bash completion.",
    )
    p.add_argument("--root", default="/", help="install under this directory (default /)")
    p.add_argument(
        "--prefix", default="/usr/local", help="for man pages and completion (default /usr/local)"
    )
    p.add_argument("--bin", help="the wiresnake command the units run (default: this one)")
    return p


def main(argv: Sequence[str]) -> int:
    """`argv` starts after the word `install-extras`."""
    args = _parser().parse_args(list(argv))
    command = args.bin or command_path()
    if command is None:
        sys.stderr.write("wiresnake: cannot find the wiresnake command; name it with --bin\n")
        return 1
    if not os.path.isabs(command) or any(c.isspace() for c in command):
        sys.stderr.write(f"wiresnake: --bin needs an absolute path without spaces: {command}\n")
        return 1
    try:
        written = install(args.root, args.prefix, command)
    except OSError as e:
        sys.stderr.write(f"wiresnake: {e.filename}: {e.strerror or e}\n")
        return 1
    for path in written:
        print(path)
    if os.path.realpath(args.root) == "/":
        print("then: systemctl daemon-reload", file=sys.stderr)
    return 0
