"""Steering on the listen port: the kernel hands transport data to a socket of its own.

Runs on loopback without root: SO_REUSEPORT and its BPF program need no privilege.
"""

from __future__ import annotations

import errno
import socket
import time

import pytest

from wiresnake.io.udp import UdpSockets

TRANSPORT = b"\x04\x00\x00\x00" + bytes(28)
INITIATION = b"\x01\x00\x00\x00" + bytes(144)
COOKIE = b"\x03\x00\x00\x00" + bytes(60)


def drain(sock: socket.socket, seconds: float = 1.0) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        runs = UdpSockets.recv_runs(sock)
        for _, data, size in runs:
            step = size or len(data) or 1
            got += [data[k : k + step] for k in range(0, len(data), step)] or [data]
        if not runs:
            time.sleep(0.01)
    return got


def test_transport_data_reaches_the_twin_and_the_rest_the_first_socket() -> None:
    udp = UdpSockets(0, steer=True)
    try:
        assert udp.v4 is not None and len(udp.twins) >= 1
        twin = next(t for t in udp.twins if t.family == socket.AF_INET)
        assert twin.getsockname()[1] == udp.port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            # many sources (ports): reuseport's own hash would spread them over both sockets
            for _ in range(20):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(INITIATION, ("127.0.0.1", udp.port))
                    s.sendto(TRANSPORT, ("127.0.0.1", udp.port))
            sender.sendto(COOKIE, ("127.0.0.1", udp.port))
            sender.sendto(b"", ("127.0.0.1", udp.port))  # too short to read a type from
        first, second = drain(udp.v4), drain(twin)
        assert sorted(first) == sorted([INITIATION] * 20 + [COOKIE, b""])
        assert second == [TRANSPORT] * 20
    finally:
        udp.close()


def test_without_steering_there_is_one_socket_a_family() -> None:
    udp = UdpSockets(0)
    try:
        assert udp.twins == [] and len(udp.sockets()) == sum(
            s is not None for s in (udp.v4, udp.v6)
        )
    finally:
        udp.close()


def test_rebinding_moves_both_sockets_and_the_same_port_is_kept_as_is() -> None:
    udp = UdpSockets(0, steer=True)
    try:
        before = [s.fileno() for s in udp.sockets()]
        udp.bind(udp.port)  # the port in use: nothing changes
        assert [s.fileno() for s in udp.sockets()] == before
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("0.0.0.0", 0))
            free = probe.getsockname()[1]
        udp.bind(free)
        assert udp.port == free
        assert all(s.getsockname()[1] == free for s in udp.sockets())
        twin = next(t for t in udp.twins if t.family == socket.AF_INET)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(TRANSPORT, ("127.0.0.1", free))
        assert drain(twin) == [TRANSPORT]
    finally:
        udp.close()


def test_a_port_held_by_another_steering_socket_is_refused() -> None:
    # both set SO_REUSEPORT: without a plain probe the second would join the first's group
    first = UdpSockets(0, steer=True)
    try:
        with pytest.raises(OSError) as e:
            UdpSockets(first.port, steer=True)
        assert e.value.errno == errno.EADDRINUSE
        other = UdpSockets(0, steer=True)
        try:
            with pytest.raises(OSError):
                other.bind(first.port)
            assert other.port != first.port and other.twins  # the old sockets stay
        finally:
            other.close()
    finally:
        first.close()
