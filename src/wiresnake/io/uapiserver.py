"""The configuration socket's clients, served from the daemon's epoll loop without ever
waiting on one: the loop also carries the tunnel.

Answers go out by non-blocking sends as the socket takes them. A client's requests are
read and answered a few at a time, and not at all while more than OUTPUT_MARK bytes of
its answers wait, so a client that does not read costs a bounded buffer, never the loop's
time; one that takes nothing for STALL_TIMEOUT seconds is dropped. Clients never take the
last SPARE_FDS descriptors the daemon may open (the loop needs some: a socket for an ioctl,
new UDP sockets for a new port), and when `accept` fails all the same, accepting pauses
until a client leaves or the next tick; it never ends the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import resource
import select
import socket
import time
from collections.abc import Callable

from wiresnake.uapi import UapiSession

__all__ = [
    "ACCEPT_BATCH",
    "OUTPUT_MARK",
    "REQUESTS_PER_WAKE",
    "SPARE_FDS",
    "STALL_TIMEOUT",
    "UapiServer",
]

OUTPUT_MARK = 256 << 10
REQUESTS_PER_WAKE = 16
STALL_TIMEOUT = 5.0
ACCEPT_BATCH = 64
SPARE_FDS = 16
_READ = 65536


def _fd_limit() -> int:
    """The soft RLIMIT_NOFILE, read at each accept: it may be changed under us (prlimit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


Handler = Callable[[], None]


class _Client:
    __slots__ = ("eof", "events", "out", "serve", "session", "since", "sock")

    def __init__(self, sock: socket.socket, session: UapiSession) -> None:
        self.sock = sock
        self.session = session
        self.out = bytearray()
        self.eof = False
        self.since = 0.0  # when answers last went out (or began to wait)
        self.events = select.EPOLLIN
        self.serve: Handler = lambda: None


class UapiServer:
    """Accepts on `listener` and serves each client a `new_session()`.

    The loop's epoll is reached through `watch(fd, handler, events)` (register),
    `modify(fd, events)` and `unwatch(fd)`.
    """

    def __init__(
        self,
        listener: socket.socket,
        new_session: Callable[[], UapiSession],
        watch: Callable[[int, Handler, int], None],
        modify: Callable[[int, int], None],
        unwatch: Callable[[int], None],
        log_error: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self._new_session = new_session
        self._watch = watch
        self._modify = modify
        self._unwatch = unwatch
        self._log = log_error
        self._clock = clock
        self.clients: dict[int, _Client] = {}
        self.accepting = False
        self._last_failure: int | None = None
        self._own_fds = 0  # the daemon's descriptors other than its clients'

    def start(self) -> None:
        self._own_fds = _open_fds()
        self.accepting = True
        self._watch(self.listener.fileno(), self.on_accept, select.EPOLLIN)

    def on_accept(self) -> None:
        room = _fd_limit() - self._own_fds - SPARE_FDS - len(self.clients)
        if room <= 0:
            self._pause(
                OSError(errno.EMFILE, f"{len(self.clients)} clients, no descriptor to spare")
            )
            return
        for _ in range(min(room, ACCEPT_BATCH)):
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                self._pause(e)
                return
            self._last_failure = None
            conn.setblocking(False)
            client = _Client(conn, self._new_session())
            client.serve = functools.partial(self._serve, client)
            fd = conn.fileno()
            self.clients[fd] = client
            self._watch(fd, client.serve, client.events)

    def tick(self, now: float) -> None:
        """Drop clients that took none of their answers for STALL_TIMEOUT, resume accepting."""
        for client in list(self.clients.values()):
            waiting = client.out or client.session.more
            if waiting and now - client.since > STALL_TIMEOUT:
                self._log("UAPI: a client took no answers for too long: dropped")
                self._drop(client)
        self._resume()

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client, resume=False)

    def _pause(self, e: OSError) -> None:
        """Stop watching the listener: the connections stay queued in its backlog until a
        client leaves or the next tick, and a failing accept is not retried in a spin."""
        if e.errno != self._last_failure:
            self._log(f"UAPI accept failed, pausing: {e}")
            self._last_failure = e.errno
        self.accepting = False
        self._unwatch(self.listener.fileno())

    def _resume(self) -> None:
        if not self.accepting:
            self.accepting = True
            self._watch(self.listener.fileno(), self.on_accept, select.EPOLLIN)

    def _drop(self, client: _Client, resume: bool = True) -> None:
        fd = client.sock.fileno()
        self.clients.pop(fd, None)
        self._unwatch(fd)
        client.sock.close()
        if resume:
            self._resume()  # a descriptor is free again

    def _send(self, client: _Client) -> bool:
        """Send what the socket takes now; False if the client is gone."""
        try:
            sent = client.sock.send(client.out, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if sent:
            del client.out[:sent]
            client.since = self._clock()
        return True

    def _serve(self, client: _Client) -> None:
        session = client.session
        if client.out and not self._send(client):
            self._drop(client)
            return
        if len(client.out) < OUTPUT_MARK:
            if not session.more and not client.eof:
                try:
                    data = client.sock.recv(_READ)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data is not None:
                    client.eof = not data
                    session.receive(data)
            try:
                answer = session.answers(REQUESTS_PER_WAKE, OUTPUT_MARK - len(client.out))
            except Exception as e:  # a bug here must not end the daemon and the tunnel
                self._log(f"UAPI: request failed ({type(e).__name__}): connection dropped")
                self._drop(client)
                return
            if answer:
                if not client.out:
                    client.since = self._clock()
                client.out += answer
                if not self._send(client):
                    self._drop(client)
                    return
        finished = client.eof or session.closed
        if finished and not client.out and not session.more:
            self._drop(client)
            return
        # waiting requests are taken up when the socket is writable: at once if the client
        # reads, never if it does not
        events = select.EPOLLOUT if client.out or session.more else 0
        if not finished and not session.more and len(client.out) < OUTPUT_MARK:
            events |= select.EPOLLIN
        if events != client.events:
            client.events = events
            with contextlib.suppress(OSError):
                self._modify(client.sock.fileno(), events)
