"""Linux TUN devices: create or adopt one, read and write IP packets, query its MTU."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Sequence

from wiresnake.io.gro import VNET_HDR_LEN, coalesce

__all__ = ["Tun", "TunGone"]

_TUNSETIFF = 0x400454CA
_TUNGETIFF = 0x800454D2
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_SIOCGIFMTU = 0x8921
_SIOCSIFMTU = 0x8922
_IFNAMSIZ = 16
# errors a TUN read or write gives once its interface is deleted
# (EIO is only "link down", which `ip link set up` undoes: not a reason to exit)
_GONE = {errno.EBADFD, errno.ENXIO, errno.ENODEV}


class TunGone(Exception):
    """The interface was deleted (e.g. `ip link del`); the device should shut down."""


def _ifreq(name: str, flags: int = 0) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= _IFNAMSIZ or b"/" in raw or raw in (b".", b".."):
        raise ValueError(f"invalid interface name {name!r}")
    return struct.pack("16sH22x", raw, flags)


def offloads_wanted() -> bool:
    """WIRESNAKE_OFFLOAD=0 turns the virtio-net header (and with it GRO writes) off."""
    return os.environ.get("WIRESNAKE_OFFLOAD", "1") != "0"


class Tun:
    """A TUN device. With the virtio-net header (`vnet`), every read starts with one
    (all zero here, since no offloads are asked of the kernel) and writes may carry
    coalesced TCP super-packets (see `gro`); without it, packets are plain."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        info = fcntl.ioctl(fd, _TUNGETIFF, bytes(40))
        self.name = info[:_IFNAMSIZ].rstrip(b"\0").decode()
        flags = struct.unpack_from("H", info, _IFNAMSIZ)[0]
        self.vnet = bool(flags & _IFF_VNET_HDR)
        self.writes = 0
        os.set_blocking(fd, False)

    @classmethod
    def create(cls, name: str, mtu: int | None = 1420, vnet: bool | None = None) -> Tun:
        if vnet is None:
            vnet = offloads_wanted()
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            flags = _IFF_TUN | _IFF_NO_PI
            try:
                fcntl.ioctl(fd, _TUNSETIFF, _ifreq(name, flags | (_IFF_VNET_HDR if vnet else 0)))
            except OSError:
                if not vnet:
                    raise
                fcntl.ioctl(fd, _TUNSETIFF, _ifreq(name, flags))  # no vnet header here
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
        skip = VNET_HDR_LEN if self.vnet else 0
        try:
            for _ in range(limit):
                pkt = read(fd, 65536)
                out.append(pkt[skip:] if skip else pkt)
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno in _GONE:
                raise TunGone(str(e)) from None
            raise
        return out

    def write_batch(self, packets: list[bytes]) -> int:
        """Write the packets, TCP segments of one flow merged into one write where the
        virtio-net header allows; returns how many the kernel refused (not fatal)."""
        if not self.vnet:
            return self._write_each([(p,) for p in packets])
        return self._write_each(coalesce(packets))

    def _write_each(self, writes: Sequence[Sequence[bytes | memoryview]]) -> int:
        refused = 0
        writev = os.writev
        fd = self.fd
        for parts in writes:
            try:
                writev(fd, parts)
            except BlockingIOError:
                refused += 1
            except OSError as e:
                if e.errno in _GONE:
                    raise TunGone(str(e)) from None
                refused += 1
        self.writes += len(writes)
        return refused

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
