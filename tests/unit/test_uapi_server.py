"""The configuration socket's server (`io/uapiserver.py`) on a real listening socket and a
real epoll, driven one wake-up at a time as the daemon's loop drives it, with a fake clock.

What it must hold to: the loop never waits on a client (non-blocking sends; a client that
does not read keeps at most a bounded buffer of answers, and its further requests are not
read meanwhile), such a client is dropped once it took nothing for STALL_TIMEOUT, and a
failing `accept` pauses accepting without ending anything and without spinning.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_uapi import FULL_CONFIG, GET, FakeHost, set_req

from wiresnake.io import uapiserver
from wiresnake.io.uapiserver import OUTPUT_MARK, STALL_TIMEOUT, UapiServer
from wiresnake.io.uapisock import open_listener, socket_path
from wiresnake.uapi import UapiSession


class Loop:
    """The daemon's epoll loop in miniature."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[], None]] = {}
        self.events: dict[int, int] = {}

    def watch(self, fd: int, handler: Callable[[], None], events: int) -> None:
        self.handlers[fd] = handler
        self.events[fd] = events
        self.epoll.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self.events[fd] = events
        self.epoll.modify(fd, events)

    def unwatch(self, fd: int) -> None:
        self.handlers.pop(fd, None)
        self.events.pop(fd, None)
        with contextlib.suppress(OSError):
            self.epoll.unregister(fd)

    def once(self, timeout: float = 0.0) -> int:
        """One wake-up; the number of handlers it ran."""
        ran = 0
        for fd, _ in self.epoll.poll(timeout):
            handler = self.handlers.get(fd)
            if handler is not None:
                handler()
                ran += 1
        return ran


class FlakyListener(socket.socket):
    """A listening socket whose accept fails with `fail` while it is set."""

    fail: int | None = None

    def accept(self) -> tuple[socket.socket, object]:
        if self.fail is not None:
            raise OSError(self.fail, os.strerror(self.fail))
        return super().accept()


class Rig:
    def __init__(self, directory: Path) -> None:
        self.host = FakeHost()
        UapiSession(self.host).feed(set_req(*FULL_CONFIG))
        self.answer = UapiSession(self.host).feed(GET)
        real = open_listener("t0", str(directory))
        self.listener = FlakyListener(fileno=real.detach())
        self.path = socket_path("t0", str(directory))
        self.loop = Loop()
        self.clock = 1000.0
        self.log: list[str] = []
        self.server = UapiServer(
            self.listener,
            lambda: UapiSession(self.host),
            self.loop.watch,
            self.loop.modify,
            self.loop.unwatch,
            self.log.append,
            clock=lambda: self.clock,
        )
        self.server.start()
        self.clients: list[socket.socket] = []

    def connect(self) -> socket.socket:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(self.path)
        self.clients.append(c)
        return c

    def close(self) -> None:
        self.server.close()
        for c in self.clients:
            c.close()
        self.listener.close()
        self.loop.epoll.close()

    def ask(self, request: bytes, answers: int = 1, wakes: int = 1000) -> bytes:
        """A new client sends `request` and reads while the loop runs."""
        c = self.connect()
        c.setblocking(False)
        c.sendall(request)
        chunks: list[bytes] = []
        seen = 0
        for _ in range(wakes):
            self.loop.once(0.01)
            with contextlib.suppress(BlockingIOError):
                chunks.append(c.recv(1 << 16))
                seen += chunks[-1].count(b"errno=")
            if seen >= answers:
                break
        c.close()
        self.clients.remove(c)
        return b"".join(chunks)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_a_client_that_never_reads_holds_a_bounded_buffer_and_stalls_nothing(rig: Rig) -> None:
    stuck = rig.connect()
    stuck.sendall(GET * 9000)
    longest = 0.0
    for _ in range(300):
        start = time.perf_counter()
        rig.loop.once(0.0)
        longest = max(longest, time.perf_counter() - start)
    (client,) = rig.server.clients.values()
    # what its socket would not take waits here, bounded; the rest of its requests unread
    assert len(client.out) <= OUTPUT_MARK + len(rig.answer)
    assert client.session.more
    assert rig.loop.events[client.sock.fileno()] == select.EPOLLOUT
    # one wake-up never waited on it (the old code waited up to 2 s per answer)
    assert longest < 0.5, longest
    # and others are served meanwhile
    assert rig.ask(GET) == rig.answer
    # the clock passes STALL_TIMEOUT without it taking an answer: it is dropped
    rig.clock += STALL_TIMEOUT / 2
    rig.server.tick(rig.clock)
    assert client in rig.server.clients.values()
    rig.clock += STALL_TIMEOUT
    rig.server.tick(rig.clock)
    assert client not in rig.server.clients.values()
    stuck.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        while stuck.recv(1 << 20):
            pass


def test_a_reader_of_9000_pipelined_gets_gets_them_all_in_order(rig: Rig) -> None:
    got = rig.ask(GET * 9000, answers=9000, wakes=20_000)
    assert got == rig.answer * 9000


def test_a_client_taking_its_answers_slowly_is_not_dropped(rig: Rig) -> None:
    slow = rig.connect()
    slow.setblocking(False)
    slow.sendall(GET * 5000)
    chunks: list[bytes] = []
    size = 0
    for _ in range(20_000):
        rig.loop.once(0.0)
        rig.clock += 1.0  # a second per wake-up, each taking a little
        rig.server.tick(rig.clock)
        with contextlib.suppress(BlockingIOError):
            chunks.append(slow.recv(4096))
            size += len(chunks[-1])
        if size == len(rig.answer) * 5000:
            break
    assert b"".join(chunks) == rig.answer * 5000
    assert len(rig.server.clients) == 1


def test_a_half_closed_client_gets_every_answer_then_the_end(rig: Rig) -> None:
    c = rig.connect()
    c.sendall(GET * 500 + b"get=1\n")
    c.shutdown(socket.SHUT_WR)
    c.setblocking(False)
    got = b""
    for _ in range(5000):
        rig.loop.once(0.01)
        try:
            chunk = c.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            break
        got += chunk
    assert got == rig.answer * 500
    assert rig.server.clients == {}


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.EPERM])
def test_a_failing_accept_pauses_accepting_without_spinning_or_stopping(
    rig: Rig, code: int
) -> None:
    idle = rig.connect()
    rig.loop.once(0.0)
    assert len(rig.server.clients) == 1
    rig.listener.fail = code
    waiting = rig.connect()
    waiting.setblocking(False)
    waiting.sendall(GET)
    assert rig.loop.once(0.0) == 1
    assert not rig.server.accepting
    assert len(rig.log) == 1
    # the queued connection does not wake the loop again: no spinning
    assert rig.loop.once(0.05) == 0
    rig.server.tick(rig.clock)  # the next tick tries again, and fails again: quietly
    assert rig.loop.once(0.0) == 1 and not rig.server.accepting and len(rig.log) == 1
    rig.listener.fail = None
    # a client leaving frees a descriptor: accepting resumes at once
    idle.close()
    for _ in range(50):
        rig.loop.once(0.01)
        with contextlib.suppress(BlockingIOError):
            if waiting.recv(1 << 20) == rig.answer:
                break
    else:
        raise AssertionError("the queued client was never served")
    assert rig.server.accepting


def test_clients_never_take_the_descriptors_the_daemon_keeps_spare(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors, the daemon's own once failed (an ioctl socket each second) and
    it died: clients are held to the limit less SPARE_FDS, the rest wait in the backlog."""
    limit = rig.server._own_fds + uapiserver.SPARE_FDS + 2
    monkeypatch.setattr(uapiserver, "_fd_limit", lambda: limit)
    first, second, third = rig.connect(), rig.connect(), rig.connect()
    third.setblocking(False)
    third.sendall(GET)
    for _ in range(3):
        rig.loop.once(0.01)
    assert len(rig.server.clients) == 2 and not rig.server.accepting
    assert rig.loop.once(0.05) == 0  # the third does not wake the loop: no spinning
    first.close()
    for _ in range(50):
        rig.loop.once(0.01)
        with contextlib.suppress(BlockingIOError):
            if third.recv(1 << 16) == rig.answer:
                break
    else:
        raise AssertionError("the waiting client was never served")
    assert len(rig.server.clients) == 2
    second.close()
