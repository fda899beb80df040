"""UdpSockets.send_batch says which datagrams the kernel refused, so tx_bytes stay honest."""

from __future__ import annotations

import socket

from wiresnake.io.udp import UdpSockets


def test_refused_sends_are_returned_and_the_rest_arrive() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(2)
        port = sink.getsockname()[1]
        udp = UdpSockets(0, host="127.0.0.1")  # IPv4 only: IPv6 endpoints cannot be sent to
        try:
            batch = [
                (("127.0.0.1", port), b"a" * 100),
                (("::1", port), b"b" * 70),
                (("::1", port), b"b" * 70),
                (("::1", port), b"c" * 30),
                (("127.0.0.1", port), b"d" * 10),
            ]
            failed = udp.send_batch(batch)
            assert failed == batch[1:4]  # each refused datagram, once
            assert udp.send_errors == 3
            got = sorted(len(sink.recv(2048)) for _ in range(2))
            assert got == [10, 100]
            assert udp.send_batch([(("127.0.0.1", port), b"ok")]) == []
        finally:
            udp.close()
