"""Sticky source addresses in UdpSockets, on loopback (all of 127/8 is ours): a source
learned on receive is used on send, single and in GSO runs, and dropped when refused."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from wiresnake.io.udp import StickyEndpoint, UdpSockets

_IP_PKTINFO = 8


@pytest.fixture
def sink() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        yield s


@pytest.fixture
def udp() -> Iterator[UdpSockets]:
    sockets = UdpSockets(0, host="127.0.0.1")
    yield sockets
    sockets.close()


def sticky(host: str, port: int, local: str) -> StickyEndpoint:
    ep = StickyEndpoint((host, port))
    ep.local = socket.inet_aton(local)
    return ep


def sources(sink: socket.socket, n: int) -> list[str]:
    return [sink.recvfrom(65536)[1][0] for _ in range(n)]


def test_the_source_is_the_address_written_to(sink: socket.socket, udp: UdpSockets) -> None:
    # a socket bound to 127.0.0.1 still writes from 127.0.0.5 when told to
    port = sink.getsockname()[1]
    ep = sticky("127.0.0.1", port, "127.0.0.5")
    assert udp.send_batch([(ep, b"one")]) == []
    run = [(ep, b"x" * 100)] * 5 + [(ep, b"y" * 40)]
    assert udp.send_batch(run) == []
    assert sources(sink, 7) == ["127.0.0.5"] * 7
    assert ep.local == socket.inet_aton("127.0.0.5") and udp.unstuck == 0


def test_a_run_breaks_where_the_local_address_changes(sink: socket.socket, udp: UdpSockets) -> None:
    port = sink.getsockname()[1]
    first, second = sticky("127.0.0.1", port, "127.0.0.5"), sticky("127.0.0.1", port, "127.0.0.6")
    assert first == second  # the engine sees one peer endpoint
    assert udp.send_batch([(first, b"a" * 50)] * 3 + [(second, b"a" * 50)] * 3) == []
    assert sources(sink, 6) == ["127.0.0.5"] * 3 + ["127.0.0.6"] * 3


@pytest.mark.parametrize("count", [1, 4])
def test_a_source_no_longer_ours_falls_back_and_is_forgotten(
    sink: socket.socket, udp: UdpSockets, count: int
) -> None:
    port = sink.getsockname()[1]
    ep = sticky("127.0.0.1", port, "192.0.2.77")  # never a local address
    assert udp.send_batch([(ep, b"z" * 64)] * count) == []
    # the kernel chose the source: the socket's own address
    assert sources(sink, count) == ["127.0.0.1"] * count
    assert ep.local == b"" and udp.unstuck == 1
    assert udp.gso  # a refused source says nothing against segmentation
    assert udp.send_batch([(ep, b"again")]) == [] and udp.unstuck == 1


def test_received_datagrams_name_the_address_they_were_sent_to(udp: UdpSockets) -> None:
    sock = udp.sockets()[0]
    sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)  # as a wildcard-bound socket has it
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.9", 0))
        client.sendto(b"hi", ("127.0.0.1", udp.port))
        assert select.select([sock], [], [], 2)[0]
        got = UdpSockets.recv_batch(sock)
        assert len(got) == 1
        ep, data = got[0]
        assert data == b"hi" and ep == ("127.0.0.9", client.getsockname()[1])
        assert isinstance(ep, StickyEndpoint) and ep.local == socket.inet_aton("127.0.0.1")


def test_forget_source_hands_the_choice_back_to_the_kernel() -> None:
    ep = sticky("127.0.0.1", 1, "127.0.0.5")
    UdpSockets.forget_source(ep)
    assert ep.local == b""
    UdpSockets.forget_source(("127.0.0.1", 1))  # a configured endpoint: nothing to forget
    UdpSockets.forget_source(None)
