"""The one place the engine meets the network: receive, send, deliver, tick.

Every host (the TUN daemon, the rootless proxy tunnel, the demo) runs the same cycle:
datagrams from a UDP socket through the link's demultiplexer and `from_network_runs`, the
engine's datagrams out through one batch send (what the kernel refused given back with
`unsent`, so tx counters say what left), its packets to the host's tunnel side, and the
timer when its deadline is due. Hosts differ only in how packets are delivered and
datagrams sent, which they pass in; when to wake is theirs (epoll timeout, call_later),
read from `next_deadline`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from wiresnake.io.demux import Demux
from wiresnake.io.udp import UdpSockets
from wiresnake.protocol.device import Datagram, Device, Output
from wiresnake.protocol.peer import Endpoint

__all__ = ["Deliver", "Pump", "Send"]

Send = Callable[[list[Datagram]], list[Datagram]]
"""Sends a batch in order and returns what could not be sent (UdpSockets.send_batch)."""
Deliver = Callable[[list[bytes], float], None]
"""Hands decrypted IP packets to the tunnel side (a TUN write batch, the netstack...)."""


class Pump:
    def __init__(
        self,
        device: Device,
        send: Send,
        deliver: Deliver,
        *,
        demux: Demux | None = None,
        batch: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = device
        self.send = send
        self.deliver = deliver
        self.demux = demux if demux is not None else Demux()
        self.batch = batch  # reads per wake-up of one socket (more datagrams with GRO)
        self.clock = clock
        self.closed = False

    def read(self, sock: socket.socket) -> bool:
        """Everything queued on `sock` (any of the port's sockets: the daemon's steered
        twins too), in one pass through the engine; False if nothing was."""
        counters = self.device.counters
        runs = UdpSockets.recv_runs(sock, self.batch, counters)
        if not runs:
            return False
        if self.demux:
            runs = self.demux.split(runs, self.send_raw, counters)
        if runs:
            now = self.clock()
            self.act(self.device.from_network_runs(runs, now), now)
        return True

    def act(self, out: Output, now: float) -> None:
        """Carry out one engine call's effects: send first (a handshake reply should not
        wait on the tunnel), then deliver."""
        if out.datagrams and not self.closed:
            failed = self.send(out.datagrams)
            if failed:
                self.device.unsent(failed)
        if out.packets:
            self.deliver(out.packets, now)

    def from_tunnel(self, packets: list[bytes], now: float) -> None:
        self.act(self.device.from_tunnel(packets, now), now)

    def next_deadline(self) -> float | None:
        return self.device.next_deadline()

    def due(self, now: float) -> bool:
        """Run the engine's timers if their deadline has come; True if it had."""
        deadline = self.device.next_deadline()
        if deadline is None or deadline > now:
            return False
        self.tick(now)
        return True

    def tick(self, now: float) -> None:
        self.act(self.device.tick(now), now)

    def send_raw(self, endpoint: Endpoint, data: bytes) -> bool:
        """One datagram from the WireGuard port that is not the engine's (STUN, probes)."""
        if self.closed:
            return False
        return not self.send([(endpoint, data)])

    def close(self) -> None:
        """Nothing is sent any more (the sockets are going away)."""
        self.closed = True
