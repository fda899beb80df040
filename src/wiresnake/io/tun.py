"""Linux TUN devices: create or adopt one, read and write IP packets, query its MTU."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

__all__ = ["Tun", "TunGone"]

_TUNSETIFF = 0x400454CA
_TUNGETIFF = 0x800454D2
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_SIOCGIFMTU = 0x8921
_SIOCSIFMTU = 0x8922
_IFNAMSIZ = 16
# errors a TUN read or write gives once its interface is deleted
_GONE = {errno.EBADFD, errno.EIO, errno.ENXIO, errno.ENODEV, errno.EINVAL}


class TunGone(Exception):
    """The interface was deleted (e.g. `ip link del`); the device should shut down."""


def _ifreq(name: str, flags: int = 0) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= _IFNAMSIZ or b"/" in raw or raw in (b".", b".."):
        raise ValueError(f"invalid interface name {name!r}")
    return struct.pack("16sH22x", raw, flags)


class Tun:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        info = fcntl.ioctl(fd, _TUNGETIFF, bytes(40))
        self.name = info[:_IFNAMSIZ].rstrip(b"\0").decode()
        os.set_blocking(fd, False)

    @classmethod
    def create(cls, name: str, mtu: int | None = 1420) -> Tun:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, _TUNSETIFF, _ifreq(name, _IFF_TUN | _IFF_NO_PI))
            tun = cls(fd)
            if mtu is not None:
                tun.set_mtu(mtu)
        except BaseException:
            os.close(fd)
            raise
        return tun

    def _ioctl_sock(self) -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def mtu(self) -> int:
        with self._ioctl_sock() as s:
            try:
                res = fcntl.ioctl(s, _SIOCGIFMTU, _ifreq(self.name))
            except OSError as e:
                raise TunGone(str(e)) from None
        return int(struct.unpack_from("i", res, _IFNAMSIZ)[0])

    def set_mtu(self, mtu: int) -> None:
        req = struct.pack("16si20x", self.name.encode(), mtu)
        with self._ioctl_sock() as s:
            fcntl.ioctl(s, _SIOCSIFMTU, req)

    def read_batch(self, limit: int = 64) -> list[bytes]:
        """Up to `limit` packets that are ready, without blocking."""
        out: list[bytes] = []
        read = os.read
        fd = self.fd
        try:
            for _ in range(limit):
                out.append(read(fd, 65536))
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno in _GONE:
                raise TunGone(str(e)) from None
            raise
        return out

    def write_batch(self, packets: list[bytes]) -> int:
        """Write each packet; returns how many the kernel refused (counted, not fatal)."""
        refused = 0
        write = os.write
        fd = self.fd
        for pkt in packets:
            try:
                write(fd, pkt)
            except BlockingIOError:
                refused += 1
            except OSError as e:
                if e.errno in _GONE:
                    raise TunGone(str(e)) from None
                refused += 1
        return refused

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
