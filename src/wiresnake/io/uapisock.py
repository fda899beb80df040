"""The configuration socket, /var/run/wireguard/<iface>.sock, created as wireguard-go does."""

from __future__ import annotations

import contextlib
import errno
import os
import socket

__all__ = ["BACKLOG", "SOCKET_DIR", "SocketInUse", "adopt_listener", "open_listener", "socket_path"]

# WG_SOCKET_DIR moves it (our CLI honours it too); wg and wireguard-go use the default
SOCKET_DIR = os.environ.get("WG_SOCKET_DIR", "/var/run/wireguard")


# as wireguard-go (Go listens with net.core.somaxconn): the kernel caps this at that sysctl,
# 4096 by default, so many `wg` started at once all get in
BACKLOG = 4096


class SocketInUse(Exception):
    """Another live process already serves this interface's socket."""


def socket_path(iface: str, directory: str = SOCKET_DIR) -> str:
    return os.path.join(directory, f"{iface}.sock")


def open_listener(iface: str, directory: str = SOCKET_DIR) -> socket.socket:
    """Listen on the interface's socket (mode 0600 via umask 077). A socket file left by a
    process that died (connect() refused) is replaced; a live one is an error."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    path = socket_path(iface, directory)
    old_umask = os.umask(0o077)
    try:
        for _attempt in range(2):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
                sock.listen(BACKLOG)
                sock.setblocking(False)
                return sock
            except OSError as e:
                sock.close()
                if e.errno != errno.EADDRINUSE:
                    raise
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            finally:
                probe.close()
            raise SocketInUse(f"{path} is in use by a running process")
        raise SocketInUse(f"{path} could not be created")
    finally:
        os.umask(old_umask)


def adopt_listener(fd: int) -> socket.socket:
    """The listening socket a parent handed down (WG_UAPI_FD). Listening again sets our
    backlog on it, whatever the parent chose."""
    sock = socket.socket(fileno=fd)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock
