"""TCP on the interface: headers and checksums, connection sockets and listeners.

`tcp.TcpConnection` is the state machine; this module is its glue to the `Interface`.  It
parses and builds TCP headers (with the MSS, window-scale and SACK-permitted options of a
SYN, and SACK blocks, RFC 2018; a malformed option is counted and ignored), checks the
checksum of every segment that arrives (bad ones are dropped and counted) and fills it in on
every one that leaves.  `receive` is the input function of `PROTOCOLS[6]`: a segment goes to
the connection of its four-tuple, else a plain SYN to the listener of its port (which starts
a connection and queues it, once established, for `accept()`), else it is answered with a
reset (never a reset for a reset).  `connect()` opens a connection from an ephemeral port.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from typing import TYPE_CHECKING

from wiresnake.netstack.checksum import checksum, pseudo_header
from wiresnake.netstack.icmp import IcmpError
from wiresnake.netstack.ip import PROTO_TCP, AddressLike, IpPacket, format_address, pack_address
from wiresnake.netstack.sockets import Endpoint, Socket
from wiresnake.netstack.tcp import (
    ACK,
    FIN,
    RST,
    SYN,
    Segment,
    State,
    TcpConfig,
    TcpConnection,
    reset_for,
)

if TYPE_CHECKING:
    from wiresnake.netstack.iface import Interface

__all__ = [
    "BACKLOG",
    "HEADER_SIZE",
    "TcpListener",
    "TcpSocket",
    "build_segment",
    "connect",
    "mss_for",
    "parse_segment",
    "receive",
]

HEADER_SIZE = 20
BACKLOG = 128
"""Connections a listener holds, half-open or waiting for `accept()`; more SYNs are dropped."""

_HEADER = struct.Struct("!HHIIBBHHH")
_UNPACK = _HEADER.unpack_from
_FLAGS = 0x3F
_SACK_BLOCK = struct.Struct("!II")
_MAX_OPTIONS = 40


def mss_for(mtu: int, version: int) -> int:
    """The MSS to announce on a link of `mtu`: MTU - 40 over IPv4, MTU - 60 over IPv6."""
    return mtu - (40 if version == 4 else 60)


def parse_segment(p: IpPacket, counters: Counter[str], verify: bool = True) -> Segment | None:
    """The segment in `p`, its checksum verified (unless not `verify`), or None (the
    reason counted)."""
    msg = p.payload
    n = len(msg)
    if n < HEADER_SIZE:
        counters["tcp_truncated"] += 1
        return None
    sport, dport, seq, ack, offset, flags, window, _, _ = _UNPACK(msg)
    hlen = (offset >> 4) << 2
    if hlen < HEADER_SIZE or hlen > n:
        counters["tcp_bad_offset"] += 1
        return None
    if verify and checksum(msg, pseudo_header(p.src, p.dst, PROTO_TCP, n)) != 0:
        counters["tcp_bad_checksum"] += 1
        return None
    mss: int | None = None
    wscale: int | None = None
    sack_permitted = False
    sack: tuple[tuple[int, int], ...] = ()
    if hlen > HEADER_SIZE:
        syn = bool(flags & SYN)
        i = HEADER_SIZE
        while i < hlen:
            kind = msg[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= hlen:
                counters["tcp_bad_option"] += 1
                break
            length = msg[i + 1]
            if length < 2 or i + length > hlen:
                counters["tcp_bad_option"] += 1
                break
            if kind == 5:  # SACK: 8 bytes per block (RFC 2018 section 3)
                if length >= 10 and (length - 2) % 8 == 0:
                    sack = tuple(_SACK_BLOCK.iter_unpack(msg[i + 2 : i + length]))
                else:
                    counters["tcp_bad_option"] += 1
            elif syn:  # the rest only mean something in a SYN
                if kind == 2 and length == 4:
                    mss = int.from_bytes(msg[i + 2 : i + 4], "big")
                elif kind == 3 and length == 3:
                    wscale = msg[i + 2]
                elif kind == 4 and length == 2:
                    sack_permitted = True
            i += length
    return Segment(
        sport,
        dport,
        seq,
        ack,
        flags & _FLAGS,
        window,
        bytes(msg[hlen:]),
        mss,
        wscale,
        sack_permitted,
        sack,
    )


def build_segment(src: bytes, dst: bytes, seg: Segment) -> bytes:
    """The TCP header (options included) and payload of `seg`, with its checksum."""
    options = b""
    if seg.mss is not None:
        options += struct.pack("!BBH", 2, 4, seg.mss)
    if seg.wscale is not None:
        options += struct.pack("!BBBB", 1, 3, 3, seg.wscale)
    if seg.sack_permitted:
        options += b"\x01\x01\x04\x02"
    if seg.sack:
        blocks = seg.sack[: (_MAX_OPTIONS - len(options) - 4) // 8]
        if blocks:
            options += struct.pack("!BBBB", 1, 1, 5, 2 + 8 * len(blocks))
            for left, right in blocks:
                options += _SACK_BLOCK.pack(left & 0xFFFFFFFF, right & 0xFFFFFFFF)
    hlen = HEADER_SIZE + len(options)
    header = _HEADER.pack(
        seg.src_port,
        seg.dst_port,
        seg.seq & 0xFFFFFFFF,
        seg.ack & 0xFFFFFFFF,
        (hlen >> 2) << 4,
        seg.flags,
        seg.window,
        0,
        0,
    )
    msg = bytearray(header + options + seg.payload)
    csum = checksum(msg, pseudo_header(src, dst, PROTO_TCP, len(msg)))
    msg[16:18] = csum.to_bytes(2, "big")
    return bytes(msg)


def _send_reset(iface: Interface, p: IpPacket, seg: Segment) -> None:
    rst = reset_for(seg)
    if rst is None:
        return
    iface.counters["tcp_resets_sent"] += 1
    iface.transmit(p.dst, p.src, PROTO_TCP, build_segment(p.dst, p.src, rst))


class TcpSocket(Socket):
    """One TCP connection on the interface, bound to its four-tuple until it ends."""

    def __init__(
        self,
        iface: Interface,
        conn: TcpConnection,
        local: bytes,
        remote: bytes,
        *,
        listener: TcpListener | None = None,
    ) -> None:
        super().__init__(iface)
        self.conn = conn
        self._local = local
        self._remote = remote
        self._listener = listener
        self._dirty = True  # poll the connection at once: it may have a SYN to send
        iface.sockets.bind(self, PROTO_TCP, local, conn.local_port, (remote, conn.remote_port))
        self.errors: deque[IcmpError] = deque(maxlen=16)
        iface.wake(self)

    @property
    def sockname(self) -> Endpoint:
        return (format_address(self._local), self.conn.local_port)

    @property
    def peername(self) -> Endpoint:
        return (format_address(self._remote), self.conn.remote_port)

    @property
    def state(self) -> State:
        return self.conn.state

    # -- the application's calls, each waking the interface ----------------------------------

    def _touch(self) -> None:
        if not self.closed:
            self._dirty = True
            self.iface.wake(self)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        n = self.conn.send(data)
        self._touch()
        return n

    def recv(self, max_bytes: int) -> bytes:
        data = self.conn.recv(max_bytes)
        if data:
            self._touch()
        return data

    def shutdown(self) -> None:
        """Send a FIN after the queued data (the connection's `close`)."""
        self.conn.close()
        self._touch()

    def abort(self) -> None:
        """Reset the connection."""
        self.conn.abort()
        self._touch()

    # -- the interface's calls ----------------------------------------------------------------

    def poll_at(self) -> float | None:
        if self._dirty:
            return float("-inf")
        return self.conn.next_deadline()

    def dispatch(self, now: float) -> None:
        self._dirty = False
        iface = self.iface
        src, dst = self._local, self._remote
        for seg in self.conn.poll(now):
            iface.transmit(src, dst, PROTO_TCP, build_segment(src, dst, seg))
        iface.notify(self)  # a timer may have ended the connection or opened the window
        if self.conn.state is State.CLOSED:
            self._release()

    def _input(self, seg: Segment, now: float) -> None:
        self.conn.on_segment(seg, now)
        self._dirty = True
        self.iface.wake(self)
        self.iface.notify(self)
        listener = self._listener
        if listener is not None and self.conn.state is not State.SYN_RECEIVED:
            self._listener = None
            listener._established(self)

    def _release(self) -> None:
        if self._listener is not None:
            self._listener._pending.pop(self, None)
            self._listener = None
        Socket.close(self)

    def icmp_error(self, error: IcmpError) -> None:
        self.errors.append(error)

    def close(self) -> None:
        """Close gracefully (FIN); the socket leaves the interface once the connection ends."""
        self.shutdown()


class TcpListener(Socket):
    """A listening socket on (address, port); address None is every address we have."""

    def __init__(
        self,
        iface: Interface,
        port: int,
        address: AddressLike | None = None,
        *,
        backlog: int = BACKLOG,
        config: TcpConfig | None = None,
    ) -> None:
        super().__init__(iface)
        bound = iface.bind_address(address)
        self._bound = bound
        self.port = iface.sockets.bind(self, PROTO_TCP, bound, port)
        self.backlog = backlog
        self.config = config
        self._pending: dict[TcpSocket, None] = {}
        self._queue: deque[TcpSocket] = deque()

    def accept(self) -> TcpSocket | None:
        """The next established connection, or None."""
        return self._queue.popleft() if self._queue else None

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _on_syn(self, p: IpPacket, seg: Segment, now: float) -> None:
        iface = self.iface
        if len(self._pending) + len(self._queue) >= self.backlog:
            iface.counters["tcp_backlog_full"] += 1
            return
        config = self.config or default_config(iface.mtu, p.version)
        iss = iface.isn(p.dst, seg.dst_port, p.src, seg.src_port, now)
        conn = TcpConnection.accept(seg, iss, now, config)
        if conn is None:  # pragma: no cover - receive() passes plain SYNs only
            return
        sock = TcpSocket(iface, conn, p.dst, p.src, listener=self)
        self._pending[sock] = None
        iface.counters["tcp_accepted"] += 1

    def _established(self, sock: TcpSocket) -> None:
        self.iface.notify(self)
        self._pending.pop(sock, None)
        if sock.conn.state is not State.CLOSED and not self.closed:
            self._queue.append(sock)

    def close(self) -> None:
        if self.closed:
            return
        for sock in [*self._pending, *self._queue]:
            sock._listener = None
            sock.abort()
        self._pending.clear()
        self._queue.clear()
        super().close()


def connect(
    iface: Interface,
    address: tuple[AddressLike, int],
    now: float,
    *,
    config: TcpConfig | None = None,
) -> TcpSocket:
    """Open a connection to (address, port) from an ephemeral port; the SYN leaves on the
    next `Interface.poll`."""
    host, port = address
    if not 1 <= port <= 0xFFFF:
        raise ValueError(f"destination port {port} is not in 1..65535")
    dst = pack_address(host)
    src = iface.source_for(dst)
    local_port = iface.sockets._ephemeral(PROTO_TCP)
    cfg = config or default_config(iface.mtu, 4 if len(dst) == 4 else 6)
    iss = iface.isn(src, local_port, dst, port, now)
    conn = TcpConnection.connect(local_port, port, iss, now, cfg)
    return TcpSocket(iface, conn, src, dst)


def default_config(mtu: int, version: int) -> TcpConfig:
    """Connections on the stack: MSS from the MTU, and Linux's 200 ms RTO floor, because
    RFC 6298's 1 s floor makes every tail loss cost a second on a path whose round trip
    is a millisecond."""
    return TcpConfig(mss=mss_for(mtu, version), rto_min=0.2)


def receive(iface: Interface, p: IpPacket, now: float) -> None:
    """Deliver a segment to its connection or listener, or answer it with a reset."""
    counters = iface.counters
    seg = parse_segment(p, counters, not iface.trust_checksums)
    if seg is None:
        return
    counters["tcp_received"] += 1
    sock = iface.sockets.lookup(PROTO_TCP, p.dst, seg.dst_port, p.src, seg.src_port)
    if isinstance(sock, TcpSocket):
        sock._input(seg, now)
        return
    if isinstance(sock, TcpListener) and seg.flags & (SYN | ACK | RST | FIN) == SYN:
        sock._on_syn(p, seg, now)
        return
    counters["tcp_no_socket"] += 1
    _send_reset(iface, p, seg)
