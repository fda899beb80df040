"""The UDP side: one IPv4 and one IPv6 socket on the same port, read and written in batches."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from collections import Counter

from wiresnake.protocol.peer import Endpoint

__all__ = ["UdpSockets"]

_SO_MARK = 36
_SOL_UDP = 17
_UDP_SEGMENT = 103  # not in the socket module: send many equal datagrams in one sendmsg
_UDP_GRO = 104  # receive a sender's datagrams glued together, with their size
_CMSG_SPACE = socket.CMSG_SPACE(4)
_UDP_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000


def _gro_wanted() -> bool:
    return os.environ.get("WIRESNAKE_OFFLOAD", "1") != "0"


class UdpSockets:
    """Sockets for the device's listen port; port 0 picks a free one for both families.

    With `host`, only that address's family is bound, to that address (a rootless tunnel
    on loopback, say)."""

    def __init__(self, port: int = 0, fwmark: int = 0, host: str | None = None) -> None:
        self.v4: socket.socket | None = None
        self.v6: socket.socket | None = None
        self.port = 0
        self.fwmark = fwmark
        self.host = host
        self.send_errors = 0
        # UDP_SEGMENT until the kernel refuses it once; then one sendto per datagram
        self.gso = True
        self.bind(port)

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.v4, self.v6) if s is not None]

    def _open(self, family: int, port: int) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.fwmark:
                s.setsockopt(socket.SOL_SOCKET, _SO_MARK, self.fwmark)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            if _gro_wanted():
                with contextlib.suppress(OSError):  # older kernels: one datagram per read
                    s.setsockopt(_SOL_UDP, _UDP_GRO, 1)
            wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
            s.bind((self.host or wildcard, port))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    def bind(self, port: int) -> None:
        """(Re)bind both families to `port`; on failure the old sockets stay in place."""
        if self.host is not None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = self._open(family, port)
            self.close()
            self.v4, self.v6 = (None, sock) if family == socket.AF_INET6 else (sock, None)
            self.port = sock.getsockname()[1]
            return
        for _attempt in range(16):
            v4 = self._open(socket.AF_INET, port)
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
            self.close()
            self.v4, self.v6, self.port = v4, v6, chosen
            return
        raise OSError(errno.EADDRINUSE, "no port free on both IPv4 and IPv6")

    def set_fwmark(self, mark: int) -> None:
        for s in self.sockets():
            s.setsockopt(socket.SOL_SOCKET, _SO_MARK, mark)
        self.fwmark = mark

    @staticmethod
    def recv_batch(
        sock: socket.socket, limit: int = 64, counters: Counter[str] | None = None
    ) -> list[tuple[Endpoint, bytes]]:
        """Up to `limit` reads without blocking. With UDP_GRO on, one read may return many
        datagrams of one sender glued together, with their size in a control message;
        such reads are counted in `counters["udp_gro_reads"]` when given."""
        out: list[tuple[Endpoint, bytes]] = []
        recv = sock.recvmsg
        v6 = sock.family == socket.AF_INET6
        try:
            for _ in range(limit):
                data, ancdata, _flags, addr = recv(65536, _CMSG_SPACE)
                host: str = addr[0]
                if v6 and host.startswith("::ffff:") and "." in host:
                    host = host[7:]
                endpoint = (host, addr[1])
                size = 0
                for level, kind, value in ancdata:
                    if level == _SOL_UDP and kind == _UDP_GRO:
                        size = int.from_bytes(value[:4], sys.byteorder)
                if size and len(data) > size:
                    out.extend((endpoint, data[k : k + size]) for k in range(0, len(data), size))
                    if counters is not None:
                        counters["udp_gro_reads"] += 1
                else:
                    out.append((endpoint, data))
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
                    if ep != endpoint or len(data) > size:
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
        try:
            sock.sendto(data, endpoint)
        except OSError:
            self.send_errors += 1
            failed.append((endpoint, data))

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
        try:
            sock.sendmsg(
                [b"".join(run)],
                [(_SOL_UDP, _UDP_SEGMENT, size.to_bytes(2, sys.byteorder))],
                0,
                endpoint,
            )
            return
        except OSError as e:
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
