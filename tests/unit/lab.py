"""An in-memory network of engines on a fake clock: hours of protocol time in milliseconds."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from wiresnake.crypto import generate_private_key
from wiresnake.protocol.device import Device, Output
from wiresnake.protocol.events import Event
from wiresnake.protocol.peer import Endpoint, Peer

Filter = Callable[[Endpoint, Endpoint, bytes], bool]


def ipv4_packet(src: str, dst: str, payload: bytes = b"", proto: int = 17) -> bytes:
    """A minimal IPv4 packet (checksums are not checked by the engine)."""
    import ipaddress

    total = 20 + len(payload)
    header = bytes([0x45, 0, total >> 8, total & 0xFF, 0, 0, 0, 0, 64, proto, 0, 0])
    return header + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"", proto: int = 17) -> bytes:
    import ipaddress

    n = len(payload)
    header = bytes([0x60, 0, 0, 0, n >> 8, n & 0xFF, proto, 64])
    return header + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


@dataclass
class Host:
    name: str
    endpoint: Endpoint
    device: Device
    tunnel_ip: str
    received: list[bytes] = field(default_factory=list)
    # the engine's events, in order, with the time of the call that reported them
    events: list[tuple[float, Event]] = field(default_factory=list)


class Lab:
    """Hosts joined by a lossless (unless filtered) zero-latency network."""

    def __init__(self, seed: int = 1, start: float = 1000.0) -> None:
        self.now = start
        self.random = random.Random(seed)
        self.hosts: dict[str, Host] = {}
        self.by_endpoint: dict[Endpoint, Host] = {}
        # every datagram that crossed: (time, src, dst, bytes)
        self.wire: list[tuple[float, Endpoint, Endpoint, bytes]] = []
        self.filter: Filter | None = None

    def rng(self, n: int) -> bytes:
        return self.random.randbytes(n)

    def add_host(
        self, name: str, endpoint: Endpoint, tunnel_ip: str, key: bytes | None = None, **kw: object
    ) -> Host:
        dev = Device(key or generate_private_key(), rng=self.rng, **kw)  # type: ignore[arg-type]
        host = Host(name, endpoint, dev, tunnel_ip)
        self.hosts[name] = host
        self.by_endpoint[endpoint] = host
        return host

    def replace_device(self, name: str, device: Device) -> None:
        self.hosts[name].device = device

    def move(self, name: str, endpoint: Endpoint) -> None:
        host = self.hosts[name]
        del self.by_endpoint[host.endpoint]
        host.endpoint = endpoint
        self.by_endpoint[endpoint] = host

    def connect(
        self, a: Host, b: Host, *, endpoints: bool = True, psk: bytes | None = None
    ) -> None:
        """Make each a peer of the other, with /32 allowed IPs."""
        for x, y in ((a, b), (b, a)):
            assert y.device.public_key is not None
            peer = x.device.add_peer(y.device.public_key)
            x.device.allow(peer, y.tunnel_ip + "/32")
            x.device.set_preshared_key(peer, psk)
            if endpoints:
                x.device.set_endpoint(peer, y.endpoint)

    def peer(self, host: Host, other: Host) -> Peer:
        assert other.device.public_key is not None
        p = host.device.peer(other.device.public_key)
        assert p is not None
        return p

    def _emit(self, src: Host, out: Output) -> None:
        src.received.extend(out.packets)
        src.events.extend((self.now, e) for e in out.events)
        pending = [(src.endpoint, dst, data) for dst, data in out.datagrams]
        while pending:
            s, d, data = pending.pop(0)
            self.wire.append((self.now, s, d, data))
            if self.filter is not None and not self.filter(s, d, data):
                continue
            dst = self.by_endpoint.get(d)
            if dst is None:
                continue
            res = dst.device.from_network([(s, data)], self.now)
            dst.received.extend(res.packets)
            dst.events.extend((self.now, e) for e in res.events)
            pending.extend((dst.endpoint, d2, x) for d2, x in res.datagrams)

    def send(self, src: Host, dst: Host, payload: bytes = b"x" * 100) -> None:
        pkt = ipv4_packet(src.tunnel_ip, dst.tunnel_ip, payload)
        self._emit(src, src.device.from_tunnel([pkt], self.now))

    def send_packets(self, src: Host, packets: list[bytes]) -> None:
        self._emit(src, src.device.from_tunnel(packets, self.now))

    def run(self, seconds: float) -> None:
        """Advance the clock, firing every timer when it falls due."""
        end = self.now + seconds
        while True:
            deadlines = [
                (t, h) for h in self.hosts.values() if (t := h.device.next_deadline()) is not None
            ]
            due = [d for d in deadlines if d[0] <= end]
            if not due:
                break
            t, host = min(due, key=lambda d: d[0])
            self.now = max(self.now, t)
            self._emit(host, host.device.tick(self.now))
        self.now = end

    def datagrams(
        self, src: Host | None = None, kind: int | None = None, since: float = float("-inf")
    ) -> list[tuple[float, Endpoint, Endpoint, bytes]]:
        return [
            w
            for w in self.wire
            if w[0] >= since
            and (src is None or w[1] == src.endpoint)
            and (kind is None or w[3][0] == kind)
        ]
