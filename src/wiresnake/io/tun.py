"""Linux TUN devices: create or adopt one, read and write IP packets, query its MTU."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Sequence

from wiresnake.io.gro import coalesce
from wiresnake.io.gso import split
from wiresnake.io.vnet import F_NEEDS_CSUM, VNET_HDR_LEN

__all__ = ["OFFLOAD_ENV", "Tun", "TunGone", "offload_mode", "offloads_wanted"]

_TUNSETIFF = 0x400454CA
_TUNGETIFF = 0x800454D2
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
# the largest IPv6 packet (a 64 KiB payload after its 40-byte header) and a vnet header
_READ_SIZE = 40 + 65535 + VNET_HDR_LEN
_TUNSETOFFLOAD = 0x400454D0
_TUN_F_CSUM, _TUN_F_TSO4, _TUN_F_TSO6, _TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
_TUN_F_USO4, _TUN_F_USO6 = 0x20, 0x40
_TSO = _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6 | _TUN_F_TSO_ECN
# most first; a kernel older than 6.2 refuses USO, one without TSO support refuses that
_OFFLOAD_CHOICES = (_TSO | _TUN_F_USO4 | _TUN_F_USO6, _TSO, 0)
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


OFFLOAD_ENV = "WIRESNAKE_OFFLOAD"
OFFLOAD_MODES = ("0", "1", "tso")


def offload_mode() -> str:
    """WIRESNAKE_OFFLOAD: 0 plain TUN; 1 (the default) the virtio-net header and GRO
    writes; tso also asks the kernel for TSO/USO super-packets on reads. Reads split
    in Python cost more than the syscalls they save (bench/RESULTS.md), hence opt-in."""
    mode = os.environ.get(OFFLOAD_ENV, "1").strip() or "1"
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"{OFFLOAD_ENV}={mode!r}: must be one of {', '.join(OFFLOAD_MODES)}")
    return mode


def offloads_wanted() -> bool:
    """Whether to ask for the virtio-net header (WIRESNAKE_OFFLOAD is not 0)."""
    return offload_mode() != "0"


class Tun:
    """A TUN device. With the virtio-net header (`vnet`), every read starts with one and
    may be a TCP/UDP super-packet or carry an unfinished checksum, as the offloads asked
    of the kernel allow (split and finished by `gso`), and writes may carry coalesced TCP
    super-packets (see `gro`); without it, packets are plain."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        info = fcntl.ioctl(fd, _TUNGETIFF, bytes(40))
        self.name = info[:_IFNAMSIZ].rstrip(b"\0").decode()
        flags = struct.unpack_from("H", info, _IFNAMSIZ)[0]
        self.vnet = bool(flags & _IFF_VNET_HDR)
        self.writes = 0
        self.offloads = 0  # what TUNSETOFFLOAD accepted, when this object asked
        self.offload_reads = 0  # reads that were super-packets or had checksums to finish
        self.malformed = 0  # such reads `gso.split` could not make sense of, dropped
        # one socket for the interface ioctls, kept: reading the MTU every second must not
        # need a free descriptor, which a flood of configuration clients may have taken
        self._ioctl: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
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

    def negotiate_offloads(self) -> int:
        """Ask for checksum, TSO and USO offloads, taking less where the kernel refuses;
        what the kernel accepted stays in `offloads`."""
        for wanted in _OFFLOAD_CHOICES:
            try:
                fcntl.ioctl(self.fd, _TUNSETOFFLOAD, wanted)
            except OSError:
                continue
            self.offloads = wanted
            break
        return self.offloads

    def _ioctl_sock(self) -> socket.socket:
        if self._ioctl is None:
            self._ioctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        return self._ioctl

    def mtu(self) -> int:
        s = self._ioctl_sock()
        try:
            res = fcntl.ioctl(s, _SIOCGIFMTU, _ifreq(self.name))
        except OSError as e:
            raise TunGone(str(e)) from None
        return int(struct.unpack_from("i", res, _IFNAMSIZ)[0])

    def set_mtu(self, mtu: int) -> None:
        req = struct.pack("16si20x", self.name.encode(), mtu)
        fcntl.ioctl(self._ioctl_sock(), _SIOCSIFMTU, req)

    def read_batch(self, limit: int = 64) -> list[bytes]:
        """The packets of up to `limit` reads that are ready, without blocking (a read
        with offloads may hold many)."""
        out: list[bytes] = []
        read = os.read
        fd = self.fd
        vnet = self.vnet
        try:
            for _ in range(limit):
                buf = read(fd, _READ_SIZE)
                if not vnet:
                    out.append(buf)
                elif not buf[1] and not buf[0] & F_NEEDS_CSUM:
                    # no GSO, no checksum to finish (DATA_VALID may be set): the common case
                    out.append(buf[VNET_HDR_LEN:])
                else:
                    self.offload_reads += 1
                    packets = split(buf)
                    if packets is None:
                        self.malformed += 1
                    else:
                        out += packets
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
        if self._ioctl is not None:
            self._ioctl.close()
            self._ioctl = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
