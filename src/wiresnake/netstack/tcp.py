"""TCP (RFC 9293) as a sans-IO connection state machine.

A `TcpConnection` consumes and produces `Segment` values; addresses, checksums and the IP
header belong to the glue that feeds it.  Three things drive it: the application's calls
(`send`, `recv`, `close`, `abort`), `on_segment(seg, now)`, and `poll(now)`, which fires any
due timer and returns the segments to send.  `next_deadline()` says when `poll` is next due;
call `poll` after every input as well.

What it does: the three-way handshake both ways (and simultaneous open), MSS and window
scaling (RFC 7323; no timestamps), SACK (RFC 2018: up to four blocks, most recent first, from
the reassembly queue), RTO estimation with Karn's rule and exponential backoff (RFC 6298),
slow start and congestion avoidance (RFC 5681), limited transmit (RFC 3042), fast retransmit
with SACK-based conservative loss recovery (RFC 6675: scoreboard, pipe, NextSeg rules 1-3,
and SACK kept across a timeout so that only holes are resent) or NewReno (RFC 6582) when the
peer has no SACK, detection of lost retransmissions (once more than two segments' worth sent
after one is SACKed), a tail loss probe (RFC 8985 section 7) after 2 * SRTT, go-back-N after
a timeout without SACK, bounded out-of-order reassembly, delayed ACKs (every second full
segment or 40 ms), silly window avoidance on both sides (RFC 9293 section 3.8.6.2),
zero-window probing, RST acceptance and challenge ACKs (RFC 5961), TIME-WAIT and keepalives
(RFC 1122 section 4.2.3.6, off by default).  A duplicate ACK is RFC 6675's with SACK (one
that SACKs new data, whatever its window: Linux receivers change theirs freely) and RFC
5681's without (same window, so that window updates from a reader do not fake a loss).

A bad segment never raises: it is dropped and counted in `stats`.  Sequence numbers are kept
internally as unbounded integers (the ISS plus the bytes since), so comparisons are plain;
they wrap only on the wire.  Pure ACKs carry SND.MAX rather than SND.NXT, so that going back
N never makes them fall below the peer's window; ACKs answering unacceptable segments are
limited to one per half second, so two confused ends cannot ping-pong forever.

Not done: Nagle (a small write goes out at once), timestamps and PAWS, D-SACK (RFC 2883)
and undoing spurious recoveries, RACK's time-based loss detection (RFC 8985 section 6; only
its tail loss probe, and the probe repairing a loss does not reduce cwnd), proportional rate
reduction (RFC 6937), restarting cwnd after idle, urgent data (URG is ignored), a FIN-WAIT-2
timeout (a half-closed connection waits for the peer's FIN as long as it takes), and a
listener with a backlog (the glue calls `accept` on a SYN for a listening port and
`reset_for` on anything else).
"""

from __future__ import annotations

import enum
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "ACK",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "Segment",
    "State",
    "TcpConfig",
    "TcpConnection",
    "TcpError",
    "TcpStats",
    "TcpUsageError",
    "reset_for",
]

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

_MASK = 0xFFFFFFFF
_HALF = 0x80000000
_DEFAULT_MSS = 536  # RFC 9293 section 3.7.1, when the peer sends no MSS option
_MAX_WSCALE = 14  # RFC 7323 section 2.3
_CLOCK_GRANULARITY = 0.001  # G of RFC 6298
# At most one ACK per this many seconds answers unacceptable segments, so that two ends
# that each find the other's segments out of window cannot ACK each other forever.
_INVALID_ACK_INTERVAL = 0.5
_MAX_DUPACKS_OWED = 16
_MAX_SACK_BLOCKS = 4  # RFC 2018 section 3: 4 blocks fill the 40 option bytes without timestamps
_DUPTHRESH = 3


def _unwrap(value: int, ref: int) -> int:
    """The unbounded sequence number nearest `ref` whose low 32 bits are `value`."""
    return ref + ((value - ref + _HALF) & _MASK) - _HALF


class Segment(NamedTuple):
    """One TCP segment, without addresses or checksum; `window` is the raw 16-bit field."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    # (left edge, right edge) pairs, raw 32-bit sequence numbers like `seq` and `ack`.
    sack: tuple[tuple[int, int], ...] = ()

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies (SYN and FIN count one each)."""
        return len(self.payload) + (self.flags & SYN) // SYN + (self.flags & FIN)


class State(enum.Enum):
    CLOSED = "CLOSED"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


class TcpError(enum.Enum):
    """Why a connection ended other than by a graceful close."""

    REFUSED = "connection refused"
    RESET = "connection reset by peer"
    TIMEOUT = "connection timed out"


class TcpUsageError(RuntimeError):
    """The application asked for something its connection's state does not allow."""


# The transitions, as tables (RFC 9293 section 3.3.2 and its figure 5).
# The application's close(); SYN-RECEIVED closes once established (section 3.10.4).
_ON_CLOSE: dict[State, State] = {
    State.SYN_SENT: State.CLOSED,
    State.ESTABLISHED: State.FIN_WAIT_1,
    State.CLOSE_WAIT: State.LAST_ACK,
}
# The ACK of our SYN.
_ON_SYN_ACKED: dict[State, State] = {
    State.SYN_SENT: State.ESTABLISHED,
    State.SYN_RECEIVED: State.ESTABLISHED,
}
# The ACK of our FIN.
_ON_FIN_ACKED: dict[State, State] = {
    State.FIN_WAIT_1: State.FIN_WAIT_2,
    State.CLOSING: State.TIME_WAIT,
    State.LAST_ACK: State.CLOSED,
}
# The peer's FIN, once every byte before it has arrived.
_ON_FIN: dict[State, State] = {
    State.ESTABLISHED: State.CLOSE_WAIT,
    State.FIN_WAIT_1: State.CLOSING,
    State.FIN_WAIT_2: State.TIME_WAIT,
}

_HANDSHAKING = frozenset({State.SYN_SENT, State.SYN_RECEIVED})
_APP_CAN_SEND = frozenset({State.SYN_SENT, State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT})
_SENDS_DATA = frozenset(
    {State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK}
)
_SENDS_FIN = frozenset({State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK})
_RECEIVES_DATA = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})
_ABORT_SENDS_RST = frozenset(
    {State.SYN_RECEIVED, State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSE_WAIT}
)
_KEEPALIVE_STATES = frozenset({State.ESTABLISHED, State.CLOSE_WAIT})


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Knobs of one connection.  Times are seconds.

    `rto_min` is RFC 6298's 1 s; Linux uses 0.2 s.  `msl` is shortened from RFC 9293's
    2 minutes to 1, so TIME-WAIT lasts 2 minutes: longer than `rto_max`, so that a peer
    whose last ACK keeps getting lost, retransmitting its FIN at the largest RTO, still finds
    us there to answer (TIME-WAIT restarts on each FIN).  Keep 2 * msl > rto_max if you
    change either.  Keepalives are off unless
    `keepalive_idle` is set; then after that much silence a probe goes every
    `keepalive_interval`, and the connection dies after `keepalive_count` unanswered ones.
    """

    mss: int = 1460
    rcv_buf: int = 256 * 1024
    snd_buf: int = 256 * 1024
    window_scaling: bool = True
    sack: bool = True
    rto_initial: float = 1.0
    rto_min: float = 1.0
    rto_max: float = 60.0
    syn_retries: int = 6
    data_retries: int = 15
    delayed_ack: float = 0.04
    msl: float = 60.0
    keepalive_idle: float | None = None
    keepalive_interval: float = 75.0
    keepalive_count: int = 9
    max_ooo_segments: int = 256


@dataclass(slots=True)
class TcpStats:
    segments_in: int = 0
    segments_out: int = 0
    dropped: int = 0
    retransmits: int = 0
    fast_retransmits: int = 0
    timeouts: int = 0
    dupacks: int = 0
    challenge_acks: int = 0
    window_probes: int = 0
    keepalive_probes: int = 0
    lost_retransmits: int = 0
    tail_loss_probes: int = 0
    bad_sack_blocks: int = 0


def reset_for(seg: Segment) -> Segment | None:
    """The RST that answers a segment for which no connection exists (RFC 9293 3.10.7.1)."""
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return Segment(seg.dst_port, seg.src_port, seg.ack & _MASK, 0, RST, 0)
    ack = (seg.seq + seg.seg_len) & _MASK
    return Segment(seg.dst_port, seg.src_port, 0, ack, RST | ACK, 0)


class TcpConnection:
    """One TCP connection.  Build it with `connect` (active) or `accept` (passive)."""

    def __init__(
        self,
        local_port: int,
        remote_port: int,
        iss: int,
        now: float,
        config: TcpConfig,
        state: State,
    ) -> None:
        self.local_port = local_port
        self.remote_port = remote_port
        self.config = config
        self.error: TcpError | None = None
        self.stats = TcpStats()
        self._state = state
        c = config
        iss &= _MASK
        self._iss = iss
        # Send side.  The send buffer holds the unacknowledged and unsent bytes; its first
        # byte has sequence number _buf_seq.
        self._snd_una = iss
        self._snd_nxt = iss
        self._snd_max = iss
        self._probe_end = iss
        self._snd_wnd = 0
        self._max_snd_wnd = 0
        self._snd_wl1 = 0
        self._snd_wl2 = iss
        self._snd_wscale = 0
        self._sndbuf = bytearray()
        self._buf_seq = iss + 1
        self._close_requested = False
        self._fin_seq: int | None = None
        self._mss = min(c.mss, _DEFAULT_MSS)
        # Congestion control.
        self._cwnd = self._mss
        self._ssthresh = 1 << 62
        self._dupacks = 0
        self._recover = iss
        self._in_recovery = False
        self._rexmit_first = False
        # SACK (RFC 2018) and its loss recovery (RFC 6675).  The scoreboard is the SACKed
        # ranges above SND.UNA as two sorted lists of disjoint, non-touching edges.
        self._sack_ok = False
        self._sb_starts: list[int] = []
        self._sb_ends: list[int] = []
        self._sacked = 0
        self._high_rxt = iss  # HighRxt: holes below it were resent in this recovery
        self._loss_state = False  # recovering after a timeout: everything unSACKed is lost
        self._lost_mark = iss  # a delivered tail loss probe shows the holes below it lost
        # (start of a retransmission, SND.MAX when it was sent), oldest first: a retransmission
        # is lost once enough data sent after it has been SACKed.
        self._rxt_log: deque[tuple[int, int]] = deque()
        # Tail loss probe (RFC 8985 section 7).
        self._tlp_deadline: float | None = None
        self._tlp_due = False
        self._tlp_seq: int | None = None
        self._tlp_end = iss
        # Retransmission timer.
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = c.rto_initial
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._retries = 0
        self._syn_retransmitted = False
        self._rto_deadline: float | None = None
        self._persist_deadline: float | None = None
        self._persist_backoff = 0
        self._probe_due = False
        # Receive side.
        wscale = 0
        while (c.rcv_buf >> wscale) > 0xFFFF and wscale < _MAX_WSCALE:
            wscale += 1
        self._rcv_wscale = wscale if c.window_scaling else 0
        self._offer_wscale = c.window_scaling
        self._rcv_nxt = 0
        self._rcv_adv = 0
        self._rcvbuf = bytearray()
        self._ooo: dict[int, bytes] = {}
        self._ooo_bytes = 0
        # The reassembly queue's coverage as disjoint, non-touching ranges, and the SACK
        # blocks to report, most recent first (RFC 2018 section 4).
        self._ooo_starts: list[int] = []
        self._ooo_ends: list[int] = []
        self._sack_blocks: list[tuple[int, int]] = []
        self._rcv_fin: int | None = None
        self._fin_received = False
        self._ack_now = False
        self._dupacks_owed = 0
        self._delack_deadline: float | None = None
        self._unacked = 0
        # Closing and liveness.
        self._time_wait_deadline: float | None = None
        self._pending_rst: Segment | None = None
        self._last_rx = now
        self._keepalives_sent = 0
        self._keepalive_due = False
        self._last_invalid_ack = -_INVALID_ACK_INTERVAL

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        local_port: int,
        remote_port: int,
        iss: int,
        now: float,
        config: TcpConfig | None = None,
    ) -> TcpConnection:
        """Active open: the first `poll` sends the SYN."""
        return cls(local_port, remote_port, iss, now, config or TcpConfig(), State.SYN_SENT)

    @classmethod
    def accept(
        cls, syn: Segment, iss: int, now: float, config: TcpConfig | None = None
    ) -> TcpConnection | None:
        """Passive open from a received SYN; None if `syn` is not a plain SYN."""
        if syn.flags & (SYN | ACK | RST | FIN) != SYN:
            return None
        conn = cls(syn.dst_port, syn.src_port, iss, now, config or TcpConfig(), State.SYN_RECEIVED)
        conn._learn_syn(syn)
        return conn

    def _learn_syn(self, seg: Segment) -> None:
        self._rcv_nxt = seg.seq + 1
        self._rcv_adv = self._rcv_nxt
        if seg.mss is not None and seg.mss > 0:
            self._mss = min(self.config.mss, seg.mss)
        if self._offer_wscale and seg.wscale is not None:
            self._snd_wscale = min(seg.wscale, _MAX_WSCALE)
        else:
            self._snd_wscale = 0
            self._rcv_wscale = 0
            self._offer_wscale = False  # RFC 7323 section 1.3: both sides or neither
        self._sack_ok = self.config.sack and seg.sack_permitted
        self._snd_wnd = seg.window  # never scaled in a SYN
        self._max_snd_wnd = seg.window
        self._snd_wl1 = seg.seq
        self._snd_wl2 = self._iss

    # -- application side ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def srtt(self) -> float | None:
        return self._srtt

    @property
    def rto(self) -> float:
        return self._rto

    @property
    def cwnd(self) -> int:
        return self._cwnd

    @property
    def in_flight(self) -> int:
        """Bytes (and SYN/FIN) sent and not yet acknowledged."""
        return self._snd_nxt - self._snd_una

    @property
    def in_recovery(self) -> bool:
        return self._in_recovery

    @property
    def sack_enabled(self) -> bool:
        """Whether both ends offered SACK (RFC 2018) in their SYNs."""
        return self._sack_ok

    @property
    def readable(self) -> bool:
        return bool(self._rcvbuf)

    @property
    def available(self) -> int:
        """Bytes received in order and not yet read."""
        return len(self._rcvbuf)

    @property
    def eof(self) -> bool:
        """No more bytes will ever arrive (the peer's FIN was read, or the connection ended)."""
        return not self._rcvbuf and (self._fin_received or self._state is State.CLOSED)

    @property
    def writable(self) -> bool:
        return (
            self._state in _APP_CAN_SEND
            and not self._close_requested
            and len(self._sndbuf) < self.config.snd_buf
        )

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue bytes to send; returns how many fit in the send buffer."""
        if self._state not in _APP_CAN_SEND or self._close_requested:
            reason = self.error.value if self.error else f"state {self._state.value}"
            raise TcpUsageError(f"cannot send: {reason}")
        room = self.config.snd_buf - len(self._sndbuf)
        n = min(room, len(data))
        if n > 0:
            self._sndbuf += data[:n]
        return n

    def recv(self, max_bytes: int) -> bytes:
        """Take up to `max_bytes` received bytes; b"" when none are waiting (see `eof`)."""
        n = min(max_bytes, len(self._rcvbuf))
        if n <= 0:
            return b""
        data = bytes(self._rcvbuf[:n])
        del self._rcvbuf[:n]
        if self._state in _RECEIVES_DATA and self._window_grew():
            # Announce at once only a window that at least doubles: a sender held back by
            # it gains much, and the delayed ACK will carry lesser growth soon enough.
            free = self.config.rcv_buf - len(self._rcvbuf)
            if free >= 2 * (self._rcv_adv - self._rcv_nxt):
                self._ack_now = True
        return data

    def close(self) -> None:
        """Send a FIN after the queued data; the peer may still send until it closes too."""
        state = self._state
        if state is State.SYN_SENT:
            self._enter_closed(flush=True)
            return
        if self._close_requested or state not in (
            State.SYN_RECEIVED,
            State.ESTABLISHED,
            State.CLOSE_WAIT,
        ):
            return
        self._close_requested = True
        self._fin_seq = self._buf_seq + len(self._sndbuf)
        if state in _ON_CLOSE:
            self._state = _ON_CLOSE[state]

    def abort(self) -> None:
        """Drop the connection at once, telling the peer with a RST where it knows us."""
        if self._state in _ABORT_SENDS_RST:
            self._pending_rst = Segment(
                self.local_port, self.remote_port, self._snd_max & _MASK, 0, RST, 0
            )
        self._enter_closed(flush=True)

    # -- timers and output ---------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `poll` must next be called for a timer, or None if no timer runs."""
        deadlines = [
            d
            for d in (
                self._rto_deadline,
                self._tlp_deadline,
                self._persist_deadline,
                self._delack_deadline,
                self._time_wait_deadline,
                self._keepalive_deadline(),
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    def poll(self, now: float) -> list[Segment]:
        """Fire due timers and return the segments to send now."""
        out: list[Segment] = []
        if self._pending_rst is not None:
            out.append(self._pending_rst)
            self._pending_rst = None
        if self._state is not State.CLOSED:
            self._fire_timers(now)
        state = self._state
        if state is State.CLOSED:
            self.stats.segments_out += len(out)
            return out
        if state in _HANDSHAKING:
            if self._snd_nxt == self._iss:
                out.append(self._syn_segment(now))
        else:
            if self._tlp_due:
                self._send_tail_loss_probe(out, now)
            if self._in_recovery and self._sack_ok:
                if state in _SENDS_DATA:
                    self._send_sack_recovery(out, now)
            else:
                if self._rexmit_first:
                    self._retransmit_at(out, self._snd_una, self._snd_max)
                    self._rexmit_first = False
                if state in _SENDS_DATA:
                    self._send_data(out, now)
            if self._probe_due:
                self._send_window_probe(out)
            if self._keepalive_due:
                self._keepalive_due = False
                self.stats.keepalive_probes += 1
                out.append(self._segment((self._snd_max - 1), ACK))
        # One duplicate ACK per out-of-order segment, however many came since the last poll.
        acks = max(self._dupacks_owed, 1 if self._ack_now else 0)
        self._dupacks_owed = 0
        if state is not State.SYN_SENT:
            for _ in range(acks):
                # SND.MAX, not SND.NXT: while going back N the peer may already hold more.
                out.append(self._segment(self._snd_max, ACK))
        if self._snd_nxt > self._snd_una:
            if self._rto_deadline is None:
                self._rto_deadline = now + self._rto
        else:
            self._rto_deadline = None
        if self._tlp_deadline is None and self._sack_ok:
            self._arm_tail_loss_probe(now)
        self._update_persist(now)
        self.stats.segments_out += len(out)
        return out

    def _arm_tail_loss_probe(self, now: float) -> None:
        """RFC 8985 section 7.2: probe 2 * SRTT after the last progress, unless RTO is sooner."""
        srtt = self._srtt
        rto = self._rto_deadline
        if (
            srtt is None
            or rto is None
            or self._in_recovery
            or self._tlp_seq is not None
            or self._state not in _SENDS_DATA
        ):
            return
        pto = 2 * srtt
        if self._snd_max - self._snd_una <= self._mss:
            # One segment out: its ACK may be delayed.  The peer's delayed-ACK timer is
            # unknown; ours stands in for RFC 8985's WCDelAckT.
            pto += self.config.delayed_ack
        if now + pto < rto:
            self._tlp_deadline = now + pto

    def _fire_timers(self, now: float) -> None:
        if self._time_wait_deadline is not None and now >= self._time_wait_deadline:
            self._enter_closed(flush=False)
            return
        if self._rto_deadline is not None and now >= self._rto_deadline:
            self._on_retransmission_timeout()
            if self._state is State.CLOSED:
                return
        if self._tlp_deadline is not None and now >= self._tlp_deadline:
            self._tlp_deadline = None
            self._tlp_due = True
        if self._persist_deadline is not None and now >= self._persist_deadline:
            self._persist_deadline = None
            self._persist_backoff += 1
            self._probe_due = True
        if self._delack_deadline is not None and now >= self._delack_deadline:
            self._delack_deadline = None
            self._ack_now = True
        deadline = self._keepalive_deadline()
        if deadline is not None and now >= deadline:
            if self._keepalives_sent >= self.config.keepalive_count:
                self._fail(TcpError.TIMEOUT)
                return
            self._keepalives_sent += 1
            self._keepalive_due = True

    def _on_retransmission_timeout(self) -> None:
        self._rto_deadline = None
        self._retries += 1
        self.stats.timeouts += 1
        handshaking = self._state in _HANDSHAKING
        limit = self.config.syn_retries if handshaking else self.config.data_retries
        if self._retries > limit:
            self._fail(TcpError.TIMEOUT)
            return
        self._rto = min(self._rto * 2, self.config.rto_max)
        self._rtt_seq = None  # Karn: no sample from anything sent before the timeout
        self._tlp_deadline = None
        self._tlp_due = False
        self._tlp_seq = None
        if handshaking:
            self._syn_retransmitted = True
        else:
            if self._retries == 1:  # RFC 5681 eq. 4, held on later timeouts
                self._ssthresh = max((self._snd_max - self._snd_una) // 2, 2 * self._mss)
            self._cwnd = self._mss
            self._in_recovery = False
            self._rexmit_first = False
            self._dupacks = 0
            self._recover = self._snd_max  # RFC 6582 section 3.2 step 4
            if self._sack_ok and self._state in _SENDS_DATA:
                # RFC 6675 section 5.1: recover with the SACK information instead of going
                # back N over data the peer holds.  Everything unSACKed counts as lost and is
                # resent in order under slow start.  A second timeout in a row may mean the
                # peer reneged (RFC 2018 section 8), so it forgets the scoreboard.
                if self._retries > 1:
                    self._sb_clear()
                self._in_recovery = True
                self._loss_state = True
                self._high_rxt = self._snd_una
                self._rxt_log.clear()
                return
        self._snd_nxt = self._snd_una  # go back N

    def _keepalive_deadline(self) -> float | None:
        c = self.config
        if (
            c.keepalive_idle is None
            or self._state not in _KEEPALIVE_STATES
            or self._snd_max != self._snd_una
        ):
            return None
        return self._last_rx + c.keepalive_idle + self._keepalives_sent * c.keepalive_interval

    def _update_persist(self, now: float) -> None:
        stalled = (
            self._state in _SENDS_DATA
            and self._snd_wnd == 0
            and self._snd_nxt == self._snd_una
            and self._snd_nxt < self._buf_seq + len(self._sndbuf)
        )
        if not stalled:
            self._persist_deadline = None
            self._persist_backoff = 0
        elif self._persist_deadline is None:
            c = self.config
            interval = max(self._rto, c.rto_min) * (1 << min(self._persist_backoff, 16))
            self._persist_deadline = now + min(interval, c.rto_max)

    def _advertise(self) -> int:
        """The window field to send, with receiver-side silly window avoidance."""
        free = self.config.rcv_buf - len(self._rcvbuf)
        current = max(self._rcv_adv - self._rcv_nxt, 0)
        wnd = free if self._window_grew() else current
        field = min(wnd >> self._rcv_wscale, 0xFFFF)
        self._rcv_adv = max(self._rcv_adv, self._rcv_nxt + (field << self._rcv_wscale))
        return field

    def _window_grew(self) -> bool:
        """Whether free space exceeds the advertised window by enough to announce it."""
        cap = self.config.rcv_buf
        free = cap - len(self._rcvbuf)
        current = max(self._rcv_adv - self._rcv_nxt, 0)
        return free - current >= min(cap // 2, self._mss)

    def _segment(self, seq: int, flags: int, payload: bytes = b"") -> Segment:
        sack: tuple[tuple[int, int], ...] = ()
        if flags & ACK:
            window = self._advertise()
            ack = self._rcv_nxt & _MASK
            self._ack_now = False
            self._delack_deadline = None
            self._unacked = 0
            blocks = self._sack_blocks
            if blocks:
                # As many blocks as fit beside the payload in one MSS (2 + 2 + 8 per block).
                room = min((self._mss - len(payload) - 4) // 8, _MAX_SACK_BLOCKS)
                sack = tuple((a & _MASK, b & _MASK) for a, b in blocks[:room])
        else:
            window = ack = 0
        return Segment(
            self.local_port, self.remote_port, seq & _MASK, ack, flags, window, payload, sack=sack
        )

    def _syn_segment(self, now: float) -> Segment:
        flags = SYN
        ack = 0
        window = min(self.config.rcv_buf - len(self._rcvbuf), 0xFFFF)
        if self._state is State.SYN_RECEIVED:
            flags |= ACK
            ack = self._rcv_nxt & _MASK
            self._rcv_adv = self._rcv_nxt + window
            self._ack_now = False
        if self._snd_max == self._iss:
            self._rtt_seq = self._iss
            self._rtt_time = now
        else:
            self.stats.retransmits += 1
        self._snd_nxt = self._iss + 1
        self._snd_max = max(self._snd_max, self._snd_nxt)
        return Segment(
            self.local_port,
            self.remote_port,
            self._iss,
            ack,
            flags,
            window,
            b"",
            self.config.mss,
            self._rcv_wscale if self._offer_wscale else None,
            # RFC 2018 section 2: in a SYN-ACK only if the SYN carried it.
            self._sack_ok if flags & ACK else self.config.sack,
        )

    def _send_data(
        self, out: list[Segment], now: float, room: int | None = None, max_segments: int = -1
    ) -> int:
        """Send from SND.NXT what the windows allow, or at most `room` bytes and
        `max_segments` segments when given; returns the sequence space sent."""
        data_end = self._buf_seq + len(self._sndbuf)
        fin_seq = self._fin_seq if self._state in _SENDS_FIN else None
        mss = self._mss
        sent = 0
        while max_segments != 0:
            nxt = self._snd_nxt
            if nxt < data_end:
                in_flight = nxt - self._snd_una
                if room is None:
                    allowed = self._cwnd
                    if self._dupacks and not self._in_recovery and nxt >= self._snd_max:
                        # Limited transmit (RFC 3042): a new segment for each of the first
                        # two duplicate ACKs, so that a small window still yields three.
                        allowed += min(self._dupacks, _DUPTHRESH - 1) * mss
                    usable = min(self._snd_wnd, allowed) - in_flight
                else:
                    usable = min(self._snd_wnd - in_flight, room - sent)
                n = min(mss, usable, data_end - nxt)
                if n <= 0:
                    break
                # Sender silly window avoidance (RFC 9293 3.8.6.2.1), overridden when
                # nothing is in flight so that a small window can never stall us.
                if n < mss and n < data_end - nxt and 2 * n < self._max_snd_wnd and in_flight > 0:
                    break
                off = nxt - self._buf_seq
                payload = bytes(self._sndbuf[off : off + n])
                end = nxt + n
                flags = ACK | PSH if end == data_end else ACK
                if fin_seq is not None and end == fin_seq:
                    flags |= FIN
                    end += 1
                out.append(self._segment(nxt, flags, payload))
            elif fin_seq is not None and nxt == fin_seq:
                end = nxt + 1
                out.append(self._segment(nxt, ACK | FIN))
            else:
                break
            if nxt >= self._snd_max:
                if self._rtt_seq is None:
                    self._rtt_seq = nxt
                    self._rtt_time = now
            else:
                self.stats.retransmits += 1
            self._snd_max = max(self._snd_max, end)
            self._snd_nxt = end
            sent += end - nxt
            max_segments -= 1
        return sent

    def _retransmit_at(self, out: list[Segment], seq: int, end: int) -> int:
        """Resend one segment from `seq`, not past `end`; returns the sequence space sent."""
        end = min(end, self._snd_max)
        data_end = self._buf_seq + len(self._sndbuf)
        fin_seq = self._fin_seq if self._state in _SENDS_FIN else None
        fin_sent = fin_seq is not None and self._snd_max > fin_seq
        if self._buf_seq <= seq < data_end:
            n = min(self._mss, data_end - seq, end - seq)
            if n <= 0:
                return 0
            off = seq - self._buf_seq
            flags = ACK
            length = n
            if fin_sent and seq + n == fin_seq and end > seq + n:
                flags |= FIN
                length += 1
            out.append(self._segment(seq, flags, bytes(self._sndbuf[off : off + n])))
        elif fin_sent and seq == fin_seq and end > seq:
            out.append(self._segment(seq, ACK | FIN))
            length = 1
        else:
            return 0
        self.stats.retransmits += 1
        if self._rtt_seq is not None and self._rtt_seq < seq + length:
            self._rtt_seq = None  # Karn's rule
        return length

    def _send_sack_recovery(self, out: list[Segment], now: float) -> None:
        """RFC 6675 section 5: send while cwnd - pipe >= 1 SMSS, choosing by NextSeg()."""
        mss = self._mss
        lost = self._lost_edge()
        pipe = self._pipe(lost)
        force = self._rexmit_first  # the first retransmission goes regardless (step 4.3)
        self._rexmit_first = False
        while force or self._cwnd - pipe >= mss:
            force = False
            una = self._snd_una
            start, hole_end = self._next_hole(max(self._high_rxt, una))
            if start < lost:  # rule 1: the first lost hole not yet resent
                n = self._retransmit_at(out, start, hole_end)
            else:  # rule 2: new data
                n = self._send_data(out, now, room=self._cwnd - pipe, max_segments=1)
                if n == 0 and start < self._snd_max:
                    n = self._retransmit_at(out, start, hole_end)  # rule 3
                    if n:
                        self._high_rxt = start + n
                        self._rxt_log.append((start, self._snd_max))
                if n == 0:
                    return
                pipe += n
                continue
            if n == 0:
                return
            self._high_rxt = start + n
            self._rxt_log.append((start, self._snd_max))
            pipe += n

    def _send_tail_loss_probe(self, out: list[Segment], now: float) -> None:
        """RFC 8985 section 7.3: new data if the peer's window allows, else the last segment."""
        self._tlp_due = False
        una = self._snd_una
        if self._state not in _SENDS_DATA or self._snd_max <= una or self._in_recovery:
            return
        start = self._snd_max
        n = self._send_data(out, now, room=self._mss, max_segments=1)
        if n == 0:
            data_hi = min(self._snd_max, self._buf_seq + len(self._sndbuf))
            start = max(una, data_hi - self._mss)
            n = self._retransmit_at(out, start, self._snd_max)
            if n == 0:
                return
        self.stats.tail_loss_probes += 1
        self._tlp_seq = start
        self._tlp_end = start + n
        self._rto_deadline = now + self._rto

    # -- the SACK scoreboard (sender) ----------------------------------------------------------

    def _sb_clear(self) -> None:
        self._sb_starts.clear()
        self._sb_ends.clear()
        self._sacked = 0

    def _sb_add(self, start: int, end: int) -> int:
        """Mark [start, end) SACKed; returns how many bytes are newly SACKed."""
        starts, ends = self._sb_starts, self._sb_ends
        i = bisect_left(ends, start)  # first range ending at or after start (touching merges)
        j = bisect_right(starts, end)  # ranges from i to j overlap or touch
        if i == j:
            starts.insert(i, start)
            ends.insert(i, end)
            added = end - start
        else:
            covered = 0
            for k in range(i, j):
                covered += ends[k] - starts[k]
            start = min(start, starts[i])
            end = max(end, ends[j - 1])
            starts[i:j] = [start]
            ends[i:j] = [end]
            added = end - start - covered
        self._sacked += added
        return added

    def _sb_prune(self, una: int) -> None:
        """Forget what the cumulative ACK now covers."""
        starts, ends = self._sb_starts, self._sb_ends
        n = bisect_right(ends, una)
        if n:
            for k in range(n):
                self._sacked -= ends[k] - starts[k]
            del starts[:n]
            del ends[:n]
        if starts and starts[0] < una:
            self._sacked -= una - starts[0]
            starts[0] = una

    def _is_sacked(self, seq: int) -> bool:
        i = bisect_right(self._sb_starts, seq) - 1
        return i >= 0 and seq < self._sb_ends[i]

    def _next_hole(self, seq: int) -> tuple[int, int]:
        """The first unSACKed sequence number from `seq`, and where its hole ends."""
        starts, ends = self._sb_starts, self._sb_ends
        i = bisect_right(ends, seq)
        if i < len(starts) and starts[i] <= seq:
            seq = ends[i]
            i += 1
        return seq, starts[i] if i < len(starts) else self._snd_max

    def _sacked_between(self, lo: int, hi: int) -> int:
        starts, ends = self._sb_starts, self._sb_ends
        total = 0
        i = bisect_right(ends, lo)
        while i < len(starts) and starts[i] < hi:
            total += min(ends[i], hi) - max(starts[i], lo)
            i += 1
        return total

    def _dupthresh_edge(self, *, within: bool = False) -> int:
        """RFC 6675 IsLost(): unSACKed bytes below the returned sequence number have more
        than (DupThresh - 1) * SMSS bytes SACKed above them.  With `within`, the edge may lie
        inside a SACKed range: the highest point with that much SACKed at or above it.
        Walks down from the top, so it stops after the first few ranges."""
        starts, ends = self._sb_starts, self._sb_ends
        limit = (_DUPTHRESH - 1) * self._mss
        above = 0
        for i in range(len(starts) - 1, -1, -1):
            size = ends[i] - starts[i]
            if above + size > limit:
                return ends[i] - (limit - above) if within else starts[i]
            above += size
        return self._snd_una

    def _lost_edge(self) -> int:
        if self._loss_state:
            return self._snd_max
        return max(self._dupthresh_edge(), self._lost_mark)

    def _pipe(self, lost: int) -> int:
        """RFC 6675 SetPipe() by ranges: every unSACKed byte counts once, less the lost ones
        not yet resent, plus the resent ones not (yet) deemed lost."""
        una = self._snd_una
        rxt = max(self._high_rxt, una)
        lost = max(lost, una)
        pipe = self._snd_max - una - self._sacked
        if lost > rxt:
            pipe -= lost - rxt - self._sacked_between(rxt, lost)
        elif rxt > lost:
            pipe += rxt - lost - self._sacked_between(lost, rxt)
        return pipe

    def _on_sack(self, blocks: tuple[tuple[int, int], ...]) -> int:
        """Take the SACK blocks of an ACK; returns the bytes newly SACKed."""
        una = self._snd_una
        hi = self._snd_max
        added = 0
        for left, right in blocks:
            start = _unwrap(left, una)
            end = _unwrap(right, una)
            if end <= una:
                continue  # old, or a D-SACK (RFC 2883), which we do not use
            if not (start < end <= hi) or start < una - self._max_snd_wnd:
                self.stats.bad_sack_blocks += 1
                continue
            added += self._sb_add(max(start, una), end)
        return added

    def _send_window_probe(self, out: list[Segment]) -> None:
        self._probe_due = False
        nxt = self._snd_nxt
        off = nxt - self._buf_seq
        if self._snd_wnd != 0 or not 0 <= off < len(self._sndbuf):
            return
        out.append(self._segment(nxt, ACK, bytes(self._sndbuf[off : off + 1])))
        self._probe_end = max(self._probe_end, nxt + 1)
        self.stats.window_probes += 1

    # -- input ------------------------------------------------------------------------------------

    def on_segment(self, seg: Segment, now: float) -> None:
        """Take one segment from the peer.  Never raises: bad segments are dropped."""
        self.stats.segments_in += 1
        state = self._state
        if (
            state is State.CLOSED
            or seg.src_port != self.remote_port
            or seg.dst_port != self.local_port
        ):
            self.stats.dropped += 1
            return
        self._last_rx = now
        self._keepalives_sent = 0
        if state is State.SYN_SENT:
            self._on_segment_syn_sent(seg, now)
        else:
            self._on_segment_synchronized(seg, now)

    def _drop(self) -> None:
        self.stats.dropped += 1

    def _on_segment_syn_sent(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        if flags & ACK and (seg.ack & _MASK) != (self._iss + 1) & _MASK:
            if not flags & RST:
                self._pending_rst = Segment(
                    self.local_port, self.remote_port, seg.ack & _MASK, 0, RST, 0
                )
            self._drop()
            return
        if flags & RST:
            if flags & ACK:
                self._fail(TcpError.REFUSED)
            else:
                self._drop()
            return
        if not flags & SYN:
            self._drop()
            return
        self._learn_syn(seg)
        if flags & ACK:
            self._snd_wl2 = self._iss + 1
            self._on_new_ack(self._iss + 1, now)
            self._ack_now = True
        else:
            # Simultaneous open: answer with a SYN-ACK, resending our SYN's sequence number.
            self._state = State.SYN_RECEIVED
            self._snd_nxt = self._iss
            self._rtt_seq = None

    def _acceptable(self, seq: int, length: int) -> bool:
        """RFC 9293 section 3.10.7.4's four cases; a zero window still admits SEQ = RCV.NXT
        so that ACKs and RSTs get through (the data is trimmed away later)."""
        nxt = self._rcv_nxt
        wnd = self.config.rcv_buf - len(self._rcvbuf)
        if wnd <= 0:
            return seq == nxt
        if nxt <= seq < nxt + wnd:
            return True
        return length > 0 and nxt <= seq + length - 1 < nxt + wnd

    def _on_segment_synchronized(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        state = self._state
        if (
            state is State.SYN_RECEIVED
            and flags & (SYN | ACK | RST) == SYN
            and (seg.seq & _MASK) == ((self._rcv_nxt - 1) & _MASK)
        ):
            self._snd_nxt = self._iss  # our SYN-ACK was lost: send it again now
            return
        if state is State.TIME_WAIT and flags & FIN:
            self._time_wait_deadline = now + 2 * self.config.msl
        seq = _unwrap(seg.seq, self._rcv_nxt)
        if not self._acceptable(seq, seg.seg_len):
            if not flags & RST and now - self._last_invalid_ack >= _INVALID_ACK_INTERVAL:
                self._last_invalid_ack = now
                self._ack_now = True
            self._drop()
            return
        if flags & RST:
            if seq == self._rcv_nxt:
                if state is State.TIME_WAIT:
                    self._enter_closed(flush=False)
                else:
                    self._fail(TcpError.RESET)
            else:
                self._challenge_ack()
            return
        if flags & SYN:
            self._challenge_ack()  # RFC 5961 section 4.2
            return
        if not flags & ACK:
            self._drop()
            return
        if not self._process_ack(seg, seq, now):
            return
        if self._state in _RECEIVES_DATA:
            self._process_data(seg, seq, now)

    def _challenge_ack(self) -> None:
        self.stats.challenge_acks += 1
        self._ack_now = True
        self._drop()

    def _process_ack(self, seg: Segment, seq: int, now: float) -> bool:
        ack = _unwrap(seg.ack, self._snd_una)
        if ack > max(self._snd_max, self._probe_end) or (
            self._state is State.SYN_RECEIVED and ack <= self._snd_una
        ):
            if self._state is State.SYN_RECEIVED:
                self._pending_rst = Segment(
                    self.local_port, self.remote_port, seg.ack & _MASK, 0, RST, 0
                )
            else:
                self._ack_now = True
            self._drop()
            return False
        if ack < self._snd_una - self._max_snd_wnd:
            self._challenge_ack()  # RFC 5961 section 5: too old to be from our peer
            return False
        if ack < self._snd_una:
            return True  # an old duplicate: its data may still be new
        wnd = seg.window << self._snd_wscale
        advanced = ack > self._snd_una
        if advanced:
            self._on_new_ack(ack, now)
            if self._state is State.CLOSED:
                return False
        if self._sack_ok:
            newly_sacked = self._on_sack(seg.sack) if seg.sack else 0
            # RFC 6675 section 2: with SACK a duplicate ACK is one that SACKs new data,
            # whatever its window says (a Linux receiver changes its window freely).
            if newly_sacked and not advanced:
                self._on_dupack()
            self._sack_loss_detection()
        elif (
            not advanced
            and not seg.payload
            and not seg.flags & (SYN | FIN)
            and wnd == self._snd_wnd
            and self._snd_max > self._snd_una
        ):
            # Without SACK, RFC 5681's definition: an ACK changing the window may be a window
            # update after the application read, and three of those must not fake a loss.
            self._on_dupack()
        if self._snd_wl1 < seq or (self._snd_wl1 == seq and self._snd_wl2 <= ack):
            self._snd_wnd = wnd
            self._max_snd_wnd = max(self._max_snd_wnd, wnd)
            self._snd_wl1 = seq
            self._snd_wl2 = ack
        return True

    def _on_new_ack(self, ack: int, now: float) -> None:
        newly = ack - self._snd_una
        state = self._state
        mss = self._mss
        if self._rtt_seq is not None and ack > self._rtt_seq:
            self._rtt_sample(now - self._rtt_time)
            self._rtt_seq = None
        acked_data = min(ack, self._buf_seq + len(self._sndbuf)) - self._buf_seq
        if acked_data > 0:
            del self._sndbuf[:acked_data]
            self._buf_seq += acked_data
        self._snd_una = ack
        self._snd_nxt = max(self._snd_nxt, ack)
        self._snd_max = max(self._snd_max, ack)
        self._retries = 0
        self._dupacks = 0
        if self._sb_starts:
            self._sb_prune(ack)
        self._tlp_deadline = None  # re-armed from this ACK (RFC 8985 section 7.2)
        if self._tlp_seq is not None and ack >= self._tlp_end:
            self._tlp_seq = None
        if state not in _HANDSHAKING:
            grow = not self._in_recovery or self._loss_state
            if self._in_recovery:
                if ack >= self._recover:  # full ACK: RFC 6582 section 3.2 step 3
                    if not self._loss_state:
                        flight = self._snd_max - self._snd_una
                        self._cwnd = min(self._ssthresh, max(flight, mss) + mss)
                    self._in_recovery = False
                    self._loss_state = False
                    self._rxt_log.clear()
                elif not self._sack_ok:  # partial ACK: resend the next hole, deflate
                    self._rexmit_first = True
                    self._cwnd = max(self._cwnd - newly + (mss if newly >= mss else 0), mss)
                # With SACK, cwnd holds during fast recovery (RFC 6675 section 5) and pipe
                # decides what goes out; after a timeout it slow-starts.
            if grow:
                if self._cwnd < self._ssthresh:
                    self._cwnd += min(newly, mss)
                else:
                    self._cwnd += max(1, mss * mss // self._cwnd)
        self._rto_deadline = now + self._rto if self._snd_nxt > self._snd_una else None
        if state in _ON_SYN_ACKED:
            self._state = State.ESTABLISHED
            self._on_established()
        elif self._fin_seq is not None and ack > self._fin_seq and state in _ON_FIN_ACKED:
            self._state = _ON_FIN_ACKED[state]
            if self._state is State.TIME_WAIT:
                self._time_wait_deadline = now + 2 * self.config.msl
            elif self._state is State.CLOSED:
                self._enter_closed(flush=False)

    def _on_established(self) -> None:
        mss = self._mss
        if self._syn_retransmitted:
            self._cwnd = mss  # RFC 5681 section 3.1: one segment after a lost SYN
            if self._srtt is None:
                self._rto = max(self._rto, 3.0)  # RFC 6298 section 5.7
        else:
            self._cwnd = min(4 * mss, max(2 * mss, 4380))  # RFC 5681 eq. 3
        if self._close_requested:
            self._state = State.FIN_WAIT_1

    def _on_dupack(self) -> None:
        self._dupacks += 1
        self.stats.dupacks += 1
        if self._sack_ok:
            return  # the scoreboard decides, in _sack_loss_detection
        if self._in_recovery:
            self._cwnd += self._mss
        elif self._dupacks == _DUPTHRESH and self._snd_una >= self._recover:
            self._enter_fast_recovery()

    def _enter_fast_recovery(self) -> None:
        mss = self._mss
        flight = self._snd_max - self._snd_una
        self._ssthresh = max(flight // 2, 2 * mss)
        # NewReno inflates by the three segments that left; RFC 6675 counts them in pipe.
        self._cwnd = self._ssthresh if self._sack_ok else self._ssthresh + 3 * mss
        self._recover = self._snd_max
        self._in_recovery = True
        self._rexmit_first = True
        self._rtt_seq = None
        self._high_rxt = self._snd_una
        self._rxt_log.clear()
        self._tlp_deadline = None
        self._tlp_due = False
        self._tlp_seq = None
        self.stats.fast_retransmits += 1

    def _sack_loss_detection(self) -> None:
        """After an ACK's SACK blocks are in: start recovery (RFC 6675 section 5, DupThresh
        duplicate ACKs or IsLost(HighACK + 1)), or find retransmissions that were lost."""
        una = self._snd_una
        if self._snd_max <= una or self._state not in _SENDS_DATA:
            return
        tlp = self._tlp_seq
        if tlp is not None and self._is_sacked(tlp):
            # The tail loss probe arrived: whatever is still missing below it was sent
            # before it and is lost (RFC 8985 section 7.4's detection, by sequence).
            self._lost_mark = max(self._lost_mark, tlp)
            self._tlp_seq = None
        if not self._in_recovery:
            if self._snd_una >= self._recover and (
                self._dupacks >= _DUPTHRESH or self._lost_edge() > una
            ):
                self._enter_fast_recovery()
            return
        log = self._rxt_log
        if not log:
            return
        # A retransmission is lost once more than (DupThresh - 1) * SMSS of data first sent
        # after it has been SACKed; resend it (what RACK, RFC 8985, finds by time).
        edge = self._dupthresh_edge(within=True)
        while log and (log[0][1] < edge or log[0][0] < una):
            seq, sent_max = log.popleft()
            if seq >= una and sent_max < edge and not self._is_sacked(seq):
                self._high_rxt = min(self._high_rxt, seq)
                self.stats.lost_retransmits += 1

    def _rtt_sample(self, r: float) -> None:
        c = self.config
        if self._srtt is None:
            self._srtt = r
            self._rttvar = r / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - r)
            self._srtt = 0.875 * self._srtt + 0.125 * r
        rto = self._srtt + max(_CLOCK_GRANULARITY, 4 * self._rttvar)
        self._rto = min(max(rto, c.rto_min), c.rto_max)

    def _process_data(self, seg: Segment, seq: int, now: float) -> None:
        if self._fin_received:
            return
        payload = seg.payload
        end = seq + len(payload)
        fin = bool(seg.flags & FIN)
        nxt = self._rcv_nxt
        if seq < nxt:
            payload = payload[nxt - seq :]
            seq = nxt
        limit = nxt + self.config.rcv_buf - len(self._rcvbuf)
        if self._rcv_fin is not None:
            limit = min(limit, self._rcv_fin)
        if seq + len(payload) > limit:
            payload = payload[: max(limit - seq, 0)]
            fin = False
            self._ack_now = True
        if fin and end >= nxt:
            self._rcv_fin = end
        if payload:
            if seq == nxt:
                self._rcvbuf += payload
                self._rcv_nxt = nxt + len(payload)
                self._unacked += len(payload)
                if self._ooo:
                    if self._ooo_starts and self._ooo_starts[0] <= self._rcv_nxt:
                        self._merge_ooo()
                    self._ack_now = True  # a hole filled: tell the sender at once
                delay = self.config.delayed_ack
                if self._unacked >= 2 * self._mss or delay <= 0:
                    self._ack_now = True
                elif self._delack_deadline is None:
                    self._delack_deadline = now + delay
            else:
                if self._store_ooo(seq, payload):
                    self._note_ooo(seq, seq + len(payload))
                self._dupacks_owed = min(self._dupacks_owed + 1, _MAX_DUPACKS_OWED)
        elif fin:
            self._ack_now = True
        if self._rcv_fin is not None and self._rcv_nxt == self._rcv_fin:
            self._rcv_nxt += 1
            self._fin_received = True
            self._ack_now = True
            self._clear_ooo()
            state = self._state
            if state in _ON_FIN:
                self._state = _ON_FIN[state]
                if self._state is State.TIME_WAIT:
                    self._time_wait_deadline = now + 2 * self.config.msl

    def _store_ooo(self, seq: int, payload: bytes) -> bool:
        """Queue an out-of-order segment; False if it had to be dropped."""
        old = self._ooo.get(seq)
        if old is not None and len(old) >= len(payload):
            return True
        grow = len(payload) - (len(old) if old is not None else 0)
        c = self.config
        if (old is None and len(self._ooo) >= c.max_ooo_segments) or (
            self._ooo_bytes + grow > c.rcv_buf
        ):
            self._drop()
            return False
        self._ooo[seq] = payload
        self._ooo_bytes += grow
        return True

    def _note_ooo(self, start: int, end: int) -> None:
        """Record that the queue holds [start, end); its block becomes the first SACK block,
        followed by the earlier ones it did not absorb (RFC 2018 section 4)."""
        starts, ends = self._ooo_starts, self._ooo_ends
        i = bisect_left(ends, start)
        j = bisect_right(starts, end)
        if i < j:
            start = min(start, starts[i])
            end = max(end, ends[j - 1])
        starts[i:j] = [start]
        ends[i:j] = [end]
        if self._sack_ok:
            blocks = [(start, end)]
            for block in self._sack_blocks:
                if block[1] < start or block[0] > end:
                    blocks.append(block)
            del blocks[_MAX_SACK_BLOCKS:]
            self._sack_blocks = blocks

    def _clear_ooo(self) -> None:
        self._ooo.clear()
        self._ooo_bytes = 0
        self._ooo_starts.clear()
        self._ooo_ends.clear()
        self._sack_blocks = []

    def _merge_ooo(self) -> None:
        for start in sorted(self._ooo):
            if start > self._rcv_nxt:
                break
            data = self._ooo.pop(start)
            self._ooo_bytes -= len(data)
            end = start + len(data)
            if end > self._rcv_nxt:
                tail = data[self._rcv_nxt - start :]
                self._rcvbuf += tail
                self._rcv_nxt = end
                self._unacked += len(tail)
        # The ranges that reached RCV.NXT went in whole: they were contiguous.
        nxt = self._rcv_nxt
        n = bisect_right(self._ooo_starts, nxt)
        del self._ooo_starts[:n]
        del self._ooo_ends[:n]
        if self._sack_blocks:
            self._sack_blocks = [b for b in self._sack_blocks if b[0] > nxt]

    # -- endings ----------------------------------------------------------------------------------

    def _fail(self, error: TcpError) -> None:
        self.error = error
        self._enter_closed(flush=True)

    def _enter_closed(self, *, flush: bool) -> None:
        self._state = State.CLOSED
        self._rto_deadline = None
        self._persist_deadline = None
        self._delack_deadline = None
        self._time_wait_deadline = None
        self._ack_now = False
        self._dupacks_owed = 0
        self._probe_due = False
        self._keepalive_due = False
        self._rexmit_first = False
        self._tlp_deadline = None
        self._tlp_due = False
        self._sndbuf.clear()
        self._sb_clear()
        self._rxt_log.clear()
        self._clear_ooo()
        if flush:
            self._rcvbuf.clear()
