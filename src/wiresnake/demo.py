"""Two engines over real UDP sockets on loopback: a handshake, then data both ways.

Each side is a `Device` driven by a `Pump` over its UDP socket and its timer; plaintext
"tunnel" packets are handed in and out directly, since no TUN is involved. Run it with
`python -m wiresnake.demo`.
"""

from __future__ import annotations

import ipaddress
import selectors
import sys
import time

from wiresnake.crypto import generate_private_key, key_to_base64
from wiresnake.io.pump import Pump
from wiresnake.io.udp import UdpSockets
from wiresnake.protocol.device import Datagram, Device
from wiresnake.protocol.messages import TYPE_COOKIE_REPLY, TYPE_INITIATION, TYPE_RESPONSE

__all__ = ["main"]

_KINDS = {
    TYPE_INITIATION: "handshake initiation",
    TYPE_RESPONSE: "handshake response",
    TYPE_COOKIE_REPLY: "cookie reply",
}


def _udp_packet(src: str, dst: str, payload: bytes) -> bytes:
    """An IPv4/UDP packet carrying `payload` (checksums left zero: nothing checks them)."""
    udp = (40000).to_bytes(2, "big") + (7).to_bytes(2, "big")
    udp += (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
    total = 20 + len(udp)
    header = bytes([0x45, 0, total >> 8, total & 0xFF, 0, 0, 0x40, 0, 64, 17, 0, 0])
    return header + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + udp


class Side:
    def __init__(self, name: str, tunnel_ip: str) -> None:
        self.name = name
        self.tunnel_ip = tunnel_ip
        self.udp = UdpSockets(0, host="127.0.0.1")
        self.port = self.udp.port
        self.device = Device(generate_private_key(), wall_offset=time.time() - time.monotonic())
        self.delivered: list[bytes] = []
        self.pump = Pump(self.device, self.send, self.deliver)

    def send(self, datagrams: list[Datagram]) -> list[Datagram]:
        for endpoint, data in datagrams:
            kind = _KINDS.get(data[0], f"transport, {len(data)} bytes")
            print(f"  {self.name} -> {endpoint[0]}:{endpoint[1]}  {kind}")
        return self.udp.send_batch(datagrams)

    def deliver(self, packets: list[bytes], _now: float) -> None:
        for pkt in packets:
            print(f"  {self.name} delivers to its tunnel: {pkt[28:].decode(errors='replace')!r}")
            self.delivered.append(pkt)

    def close(self) -> None:
        self.udp.close()


def run(timeout: float = 5.0) -> int:
    a, b = Side("alice", "10.7.0.1"), Side("bob", "10.7.0.2")
    try:
        now = time.monotonic()
        for x, y in ((a, b), (b, a)):
            assert y.device.public_key is not None
            peer = x.device.add_peer(y.device.public_key)
            x.device.allow(peer, y.tunnel_ip + "/32")
            x.device.set_endpoint(peer, ("127.0.0.1", y.port))
            print(
                f"{x.name}: udp 127.0.0.1:{x.port}, tunnel {x.tunnel_ip}, "
                f"public key {key_to_base64(x.device.public_key or b'')}"
            )
        sel = selectors.DefaultSelector()
        for side in (a, b):
            for sock in side.udp.sockets():
                sel.register(sock, selectors.EVENT_READ, (side, sock))

        print("alice sends a packet to bob; the engine starts a handshake first:")
        a.pump.from_tunnel([_udp_packet(a.tunnel_ip, b.tunnel_ip, b"hello bob")], now)
        sent_reply = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for key, _ in sel.select(0.05):
                side, sock = key.data
                side.pump.read(sock)
            for side in (a, b):
                side.pump.due(time.monotonic())
            if b.delivered and not sent_reply:
                sent_reply = True
                print("bob answers:")
                pkt = _udp_packet(b.tunnel_ip, a.tunnel_ip, b"hello alice")
                b.pump.from_tunnel([pkt], time.monotonic())
            if a.delivered:
                break
        ok = bool(a.delivered and b.delivered)
        for x, y in ((a, b), (b, a)):
            assert y.device.public_key is not None
            p = x.device.peer(y.device.public_key)
            assert p is not None
            print(
                f"{x.name}: peer {key_to_base64(y.device.public_key)[:12]}… "
                f"rx {p.rx_bytes} B, tx {p.tx_bytes} B, endpoint {p.endpoint}"
            )
        print("OK: data crossed both ways" if ok else "FAILED: no data crossed")
        return 0 if ok else 1
    finally:
        a.close()
        b.close()


def main() -> int:
    return run()


if __name__ == "__main__":
    sys.exit(main())
