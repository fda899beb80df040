"""The UDP side: one IPv4 and one IPv6 socket on the same port, read and written in batches."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import sys
from collections import Counter

from wiresnake.io.steer import attach_steering
from wiresnake.protocol.peer import Endpoint

__all__ = ["StickyEndpoint", "UdpSockets"]

_SO_MARK = 36
_SOL_UDP = 17
_UDP_SEGMENT = 103  # not in the socket module: send many equal datagrams in one sendmsg
_UDP_GRO = 104  # receive a sender's datagrams glued together, with their size
_IP_PKTINFO = 8  # not in the socket module before Python 3.13
_IPV6_PKTINFO = socket.IPV6_PKTINFO
# room for a UDP_GRO size and an in_pktinfo (12 bytes) or in6_pktinfo (20 bytes)
_CMSG_SPACE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(20)
# sendmsg's answers when a source address is no longer ours: EINVAL (IPv6), ENETUNREACH
# (IPv4: no route from that source), EADDRNOTAVAIL
_SOURCE_GONE = (errno.EINVAL, errno.ENETUNREACH, errno.EADDRNOTAVAIL)
_UDP_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000
_SO_RCVBUFFORCE = 33
# room for a burst: a flood that outruns us a moment must not overflow the queue, since
# the kernel then drops at random, an honest peer's handshake as soon as the flood's
_RCVBUF = 4 << 20  # the kernel doubles it


def _set_receive_buffer(s: socket.socket, size: int) -> None:
    """Past net.core.rmem_max where we may (CAP_NET_ADMIN), as wireguard-go does."""
    try:
        s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _gro_wanted() -> bool:
    return os.environ.get("WIRESNAKE_OFFLOAD", "1") != "0"


class StickyEndpoint(tuple[str, int]):
    """A peer's (host, port), as the engine sees it, carrying the local address that
    peer's datagram arrived at, so that replies leave from that address (sticky source,
    like the kernel's endpoint src4/src6): a peer writing to one of several addresses
    hears back from it. The engine keeps the endpoint of the latest authenticated packet,
    so the local address follows it; one set by configuration is a plain tuple, and the
    kernel picks the source. `local` is the packed address, b"" once it is cleared."""

    local: bytes

    def pktinfo(self) -> tuple[int, int, bytes]:
        """The control message that sends from `local` (interface left to routing)."""
        if len(self.local) == 4:
            return (socket.IPPROTO_IP, _IP_PKTINFO, bytes(4) + self.local + bytes(4))
        return (socket.IPPROTO_IPV6, _IPV6_PKTINFO, self.local + bytes(4))


def _sticky(endpoint: Endpoint) -> StickyEndpoint | None:
    if type(endpoint) is StickyEndpoint and endpoint.local:
        return endpoint
    return None


def _local(endpoint: Endpoint) -> bytes:
    return endpoint.local if type(endpoint) is StickyEndpoint else b""


def _with_local(endpoint: Endpoint, local: bytes) -> StickyEndpoint:
    sticky = StickyEndpoint(endpoint)
    sticky.local = local
    return sticky


def _set_mark(sock: socket.socket, mark: int) -> None:
    # packed: setsockopt() takes a plain int only up to 2**31 - 1, and a mark has 32 bits
    sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, struct.pack("=I", mark))


class UdpSockets:
    """Sockets for the device's listen port; port 0 picks a free one for both families.

    With `host`, only that address's family is bound, to that address (a rootless tunnel
    on loopback, say). With `steer`, each family also gets a second socket on the port that
    the kernel hands transport data (io/steer.py), so a handshake flood cannot crowd live
    sessions out of the receive queue; sends always leave from the first."""

    def __init__(
        self, port: int = 0, fwmark: int = 0, host: str | None = None, *, steer: bool = False
    ) -> None:
        self.v4: socket.socket | None = None
        self.v6: socket.socket | None = None
        self.steer = steer and host is None
        # the transport-data sockets, one per family, while steering works
        self.twins: list[socket.socket] = []
        self.port = 0
        self.fwmark = fwmark
        self.host = host
        self.send_errors = 0
        # sticky source addresses dropped because sending from them failed
        self.unstuck = 0
        # UDP_SEGMENT until the kernel refuses it once; then one sendto per datagram
        self.gso = True
        self.bind(port)

    def sockets(self) -> list[socket.socket]:
        """Every socket to read (and to mark, and to close)."""
        return [s for s in (self.v4, self.v6) if s is not None] + self.twins

    def _open(self, family: int, port: int) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if self.steer:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.fwmark:
                _set_mark(s, self.fwmark)
            _set_receive_buffer(s, _RCVBUF)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            if _gro_wanted():
                with contextlib.suppress(OSError):  # older kernels: one datagram per read
                    s.setsockopt(_SOL_UDP, _UDP_GRO, 1)
            if self.host is None:
                # bound to every address: learn which one each datagram was sent to
                with contextlib.suppress(OSError):
                    if family == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                    else:
                        s.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
            s.bind((self.host or wildcard, port))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    def bind(self, port: int) -> None:
        """(Re)bind both families to `port`; on failure the old sockets stay in place. The
        port already bound changes nothing (as the kernel's set_port)."""
        if port and port == self.port and (self.v4 or self.v6):
            return
        if self.host is not None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = self._open(family, port)
            self.close()
            self.v4, self.v6 = (None, sock) if family == socket.AF_INET6 else (sock, None)
            self.port = sock.getsockname()[1]
            return
        for _attempt in range(16):
            try:
                v4 = self._open(socket.AF_INET, self._claim(port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE and port == 0:
                    continue  # taken between the probe and the bind
                raise
            chosen = v4.getsockname()[1]
            try:
                v6: socket.socket | None = self._open(socket.AF_INET6, chosen)
            except OSError as e:
                if e.errno == errno.EADDRINUSE and port == 0:
                    v4.close()
                    continue  # the v4 port is taken on v6: pick another pair
                if e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    v6 = None  # no IPv6 here: carry on with IPv4 alone
                else:
                    v4.close()
                    raise
            twins = self._steer([s for s in (v4, v6) if s is not None], chosen)
            self.close()
            self.v4, self.v6, self.port, self.twins = v4, v6, chosen, twins
            return
        raise OSError(errno.EADDRINUSE, "no port free on both IPv4 and IPv6")

    def _claim(self, port: int) -> int:
        """The port to bind. A reuseport socket would share a port with any other of ours
        (a second daemon given the same ListenPort, or one landing there by port 0), so
        with steering the port is first bound plainly, which fails if anyone holds it."""
        if not self.steer:
            return port
        port = port or _free_port()
        for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                probe = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as e:
                if e.errno == errno.EAFNOSUPPORT:
                    continue
                raise
            with probe:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    probe.bind((wildcard, port))
                except OSError as e:
                    if e.errno != errno.EADDRNOTAVAIL:  # no IPv6 here: nothing to hold
                        raise
        return port

    def _steer(self, firsts: list[socket.socket], port: int) -> list[socket.socket]:
        """A transport-data twin for each of `firsts`; none if the kernel cannot steer."""
        if not self.steer:
            return []
        twins: list[socket.socket] = []
        try:
            for first in firsts:
                twins.append(self._open(first.family, port))
                attach_steering(first)
        except OSError:
            for twin in twins:
                twin.close()
            return []
        return twins

    def set_fwmark(self, mark: int) -> None:
        for s in self.sockets():
            _set_mark(s, mark)
        self.fwmark = mark

    @staticmethod
    def forget_source(endpoint: Endpoint | None) -> None:
        """Let the kernel pick the source for `endpoint` again (routing may have changed,
        with a new fwmark, say), as the kernel's wg_socket_clear_peer_endpoint_src."""
        if endpoint is not None and type(endpoint) is StickyEndpoint:
            endpoint.local = b""

    @staticmethod
    def recv_batch(sock: socket.socket, limit: int = 64) -> list[tuple[Endpoint, bytes]]:
        """Up to `limit` reads without blocking, as single datagrams. With packet info on,
        each source is a `StickyEndpoint` naming the address the datagram was sent to."""
        out: list[tuple[Endpoint, bytes]] = []
        for endpoint, data, size in UdpSockets.recv_runs(sock, limit):
            if size and len(data) > size:
                out.extend((endpoint, data[k : k + size]) for k in range(0, len(data), size))
            else:
                out.append((endpoint, data))
        return out

    @staticmethod
    def recv_runs(
        sock: socket.socket, limit: int = 64, counters: Counter[str] | None = None
    ) -> list[tuple[Endpoint, bytes, int]]:
        """Up to `limit` reads without blocking, each as (source, data, segment size). With
        UDP_GRO on, one read may return many datagrams of one sender glued together, all of
        that size but the last; the size is 0 for a read of one datagram. Such glued reads
        are counted in `counters["udp_gro_reads"]` when given."""
        out: list[tuple[Endpoint, bytes, int]] = []
        recv = sock.recvmsg
        v6 = sock.family == socket.AF_INET6
        try:
            for _ in range(limit):
                data, ancdata, _flags, addr = recv(65536, _CMSG_SPACE)
                host: str = addr[0]
                if v6 and host.startswith("::ffff:") and "." in host:
                    host = host[7:]
                endpoint: Endpoint = (host, addr[1])
                size = 0
                for level, kind, value in ancdata:
                    if level == _SOL_UDP and kind == _UDP_GRO:
                        size = int.from_bytes(value[:4], sys.byteorder)
                    elif kind == _IPV6_PKTINFO and level == socket.IPPROTO_IPV6:
                        endpoint = _with_local(endpoint, value[:16])
                    elif kind == _IP_PKTINFO and level == socket.IPPROTO_IP:
                        endpoint = _with_local(endpoint, value[8:12])  # the header's dst
                if size and len(data) > size:
                    if counters is not None:
                        counters["udp_gro_reads"] += 1
                    out.append((endpoint, data, size))
                else:
                    out.append((endpoint, data, 0))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # ICMP errors surface here (e.g. ECONNREFUSED); they are not fatal
            pass
        return out

    def send_batch(self, datagrams: list[tuple[Endpoint, bytes]]) -> list[tuple[Endpoint, bytes]]:
        """Send in order. Runs of datagrams to one endpoint, all of one size but the last,
        leave in one sendmsg with UDP_SEGMENT (GSO): one syscall for up to 64. Returns
        the datagrams the kernel refused, so the sender's counters can say what really
        left (usually nothing)."""
        failed: list[tuple[Endpoint, bytes]] = []
        i, count = 0, len(datagrams)
        while i < count:
            endpoint, first = datagrams[i]
            size = len(first)
            j = i + 1
            if self.gso:
                limit = min(count, i + _UDP_MAX_SEGMENTS, i + _GSO_MAX_BYTES // max(size, 1))
                while j < limit:
                    ep, data = datagrams[j]
                    if ep is not endpoint and (ep != endpoint or _local(ep) != _local(endpoint)):
                        break  # another peer, or the same one from another local address
                    if len(data) > size:
                        break
                    j += 1
                    if len(data) < size:
                        break  # a shorter datagram can only end a run
            if j - i == 1:
                self._send_one(endpoint, first, failed)
            else:
                self._send_run(endpoint, [d for _, d in datagrams[i:j]], size, failed)
            i = j
        return failed

    def _sock_for(self, endpoint: Endpoint) -> socket.socket | None:
        return self.v6 if ":" in endpoint[0] else self.v4

    def _send_one(
        self, endpoint: Endpoint, data: bytes, failed: list[tuple[Endpoint, bytes]]
    ) -> None:
        sock = self._sock_for(endpoint)
        if sock is None:
            self.send_errors += 1
            failed.append((endpoint, data))
            return
        sticky = _sticky(endpoint)
        try:
            if sticky is None:
                sock.sendto(data, endpoint)
            else:
                sock.sendmsg([data], [sticky.pktinfo()], 0, endpoint)
        except OSError as e:
            if sticky is not None and e.errno in _SOURCE_GONE:
                self._unstick(sticky)
                self._send_one(endpoint, data, failed)
                return
            self.send_errors += 1
            failed.append((endpoint, data))

    def _unstick(self, endpoint: StickyEndpoint) -> None:
        """The address a peer wrote to is gone (or never could be a source): the kernel
        picks the source from now on, for this endpoint wherever the engine holds it."""
        endpoint.local = b""
        self.unstuck += 1

    def _send_run(
        self,
        endpoint: Endpoint,
        run: list[bytes],
        size: int,
        failed: list[tuple[Endpoint, bytes]],
    ) -> None:
        sock = self._sock_for(endpoint)
        if sock is None:
            self.send_errors += len(run)
            failed.extend((endpoint, d) for d in run)
            return
        cmsgs = [(_SOL_UDP, _UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
        sticky = _sticky(endpoint)
        if sticky is not None:
            cmsgs.append(sticky.pktinfo())
        try:
            sock.sendmsg([b"".join(run)], cmsgs, 0, endpoint)
            return
        except OSError as e:
            if sticky is not None and e.errno in _SOURCE_GONE:
                # the source first: an EINVAL here says nothing yet about segmentation
                self._unstick(sticky)
                self._send_run(endpoint, run, size, failed)
                return
            if e.errno not in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT):
                self.send_errors += len(run)
                failed.extend((endpoint, d) for d in run)
                return
            self.gso = False  # this kernel or route cannot segment: fall back for good
        for data in run:
            self._send_one(endpoint, data, failed)

    def close(self) -> None:
        for s in self.sockets():
            with contextlib.suppress(OSError):
                s.close()
        self.v4 = self.v6 = None
        self.twins = []


def _free_port() -> int:
    """A UDP port free on IPv4 now (it may be taken again before we bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
    return port
