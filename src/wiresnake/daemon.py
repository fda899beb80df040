"""The Linux daemon: one epoll loop joining the engine to a TUN device, UDP sockets and
the configuration socket, with wireguard-go's command-line contract.

`wiresnake [-f|--foreground] IFACE`: the parent creates the TUN and the socket, hands both
to a re-executed child (WG_TUN_FD, WG_UAPI_FD, WG_PROCESS_FOREGROUND=1) and returns 0
once they exist, as `wg-quick` expects. The daemon exits on SIGINT/SIGTERM, when its
interface is deleted and when its socket file is removed.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from wiresnake.io.busypoll import DEFAULT_WINDOW_US, BusyPoll, window_from_env
from wiresnake.io.pump import Pump
from wiresnake.io.tun import Tun, TunGone, offload_mode
from wiresnake.io.uapiserver import UapiServer
from wiresnake.io.uapisock import SocketInUse, adopt_listener, open_listener, socket_path
from wiresnake.io.udp import UdpSockets
from wiresnake.protocol.device import Device
from wiresnake.reresolve import DaemonReresolve, stale_after_from_env
from wiresnake.uapi import UapiSession

__all__ = ["Daemon", "Logger", "main"]

_HOUSEKEEPING = 1.0


class Logger:
    """wireguard-go's LOG_LEVEL: verbose (or debug), error (the default), silent."""

    def __init__(self, iface: str, level: str | None = None) -> None:
        level = (level if level is not None else os.environ.get("LOG_LEVEL", "error")).lower()
        self.verbose_on = level in ("verbose", "debug")
        self.error_on = level != "silent"
        self.iface = iface

    def _write(self, tag: str, msg: str) -> None:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S")
        with contextlib.suppress(OSError, ValueError):
            print(f"{tag}: ({self.iface}) {stamp} {msg}", file=sys.stderr, flush=True)

    def verbose(self, msg: str) -> None:
        if self.verbose_on:
            self._write("DEBUG", msg)

    def error(self, msg: str) -> None:
        if self.error_on:
            self._write("ERROR", msg)


class Daemon:
    """Implements `uapi.UapiHost` for the sessions it serves."""

    def __init__(
        self,
        tun: Tun,
        listener: socket.socket,
        sock_path: str,
        log: Logger,
        busy_poll: float = DEFAULT_WINDOW_US / 1e6,
        reresolve: DaemonReresolve | None = None,
    ) -> None:
        self.tun = tun
        self.listener = listener
        self.sock_path = sock_path
        self.log = log
        self.device = Device(mtu=tun.mtu(), wall_offset=time.time() - time.monotonic())
        if tun.vnet and offload_mode() == "tso":
            tun.negotiate_offloads()  # here, not at creation: the parent may have made it
        self.udp = UdpSockets(0, steer=True)  # transport data apart from handshakes
        self.device.listen_port = self.udp.port
        self.pump = Pump(self.device, self.udp.send_batch, self._deliver)
        # fd -> handler; plain epoll, since selectors costs more per wake-up than the work
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[], None]] = {}
        self.uapi = UapiServer(
            listener,
            lambda: UapiSession(self, self.log.error),
            self._watch,
            self._modify,
            self._unwatch,
            self.log.error,
        )
        self.busy = BusyPoll(busy_poll)
        self.reresolve = reresolve
        self.stopping = False
        self.exit_reason = ""
        self._sock_inode = os.stat(sock_path).st_ino if os.path.exists(sock_path) else None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # ---------------------------------------------------------------- UapiHost

    def now(self) -> float:
        return time.monotonic()

    def set_listen_port(self, port: int) -> None:
        for s in self.udp.sockets():
            self._unwatch(s.fileno())
        try:
            self.udp.bind(port)
        finally:
            for s in self.udp.sockets():
                self._watch(s.fileno(), self._udp_reader(s))
        self.device.listen_port = self.udp.port
        self.log.verbose(f"UDP bind has been updated: port {self.udp.port}")

    def set_fwmark(self, mark: int) -> None:
        self.udp.set_fwmark(mark)
        self.device.fwmark = mark
        # marked packets may route elsewhere: sources learned so far may no longer fit
        for peer in self.device.peers:
            self.udp.forget_source(peer.endpoint)

    # ---------------------------------------------------------------- loop

    def stop(self, reason: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.exit_reason = reason

    def _deliver(self, packets: list[bytes], _now: float) -> None:
        self.device.counters["tunnel_packets_out"] += len(packets)
        refused = self.tun.write_batch(packets)
        if refused:
            self.device.counters["tunnel_write_failed"] += refused

    def _watch(self, fd: int, handler: Callable[[], None], events: int = select.EPOLLIN) -> None:
        self.handlers[fd] = handler
        self.epoll.register(fd, events)

    def _modify(self, fd: int, events: int) -> None:
        self.epoll.modify(fd, events)

    def _unwatch(self, fd: int) -> None:
        self.handlers.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(fd)

    def _on_tun(self) -> None:
        try:
            packets = self.tun.read_batch()
        except TunGone:
            self.stop("interface deleted")
            return
        if packets:
            if max(map(len, packets)) > self.device.mtu and not self._follow_mtu():
                return  # the kernel let it through: the MTU was raised since we last looked
            self.pump.from_tunnel(packets, time.monotonic())

    def _udp_reader(self, sock: socket.socket) -> Callable[[], None]:
        pump_read = self.pump.read

        def read() -> None:
            try:
                pump_read(sock)
            except TunGone:
                self.stop("interface deleted")

        return read

    def _on_wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)

    def _follow_mtu(self) -> bool:
        """The interface's MTU into the engine; False if the interface is gone."""
        try:
            self.device.mtu = self.tun.mtu()
        except TunGone:
            self.stop("interface deleted")
            return False
        return True

    def _housekeeping(self) -> None:
        # first: dropping stalled configuration clients and resuming a paused accept must
        # not wait on anything below
        self.uapi.tick(time.monotonic())
        if not self._follow_mtu():
            return
        try:
            inode = os.stat(self.sock_path).st_ino
        except FileNotFoundError:
            inode = None
        if inode != self._sock_inode:
            self.stop("configuration socket removed")
        if self.reresolve is not None:  # WIRESNAKE_RERESOLVE: look-ups run off the loop
            self.reresolve.tick(self.device, time.monotonic())

    def run(self) -> int:
        self._watch(self.tun.fd, self._on_tun)
        self.uapi.start()
        self._watch(self._wake_r.fileno(), self._on_wake)
        for s in self.udp.sockets():
            self._watch(s.fileno(), self._udp_reader(s))
        poll = self.epoll.poll
        handlers = self.handlers

        def on_signal(signum: int, _frame: object) -> None:
            self.stop(f"signal {signal.Signals(signum).name}")

        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno())
        old_term = signal.signal(signal.SIGTERM, on_signal)
        old_int = signal.signal(signal.SIGINT, on_signal)
        self.log.verbose(f"Device started (TUN offloads {self.tun.offloads:#x})")
        _signal_ready()
        next_housekeeping = time.monotonic() + _HOUSEKEEPING
        busy = self.busy
        pump = self.pump
        monotonic = time.monotonic
        try:
            while not self.stopping:
                now = monotonic()
                deadline = pump.next_deadline()
                idle = next_housekeeping - now
                if deadline is not None:
                    idle = min(idle, deadline - now)
                timeout = busy.timeout(now, idle)
                events = poll(timeout)
                for fd, _events in events:
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler()
                    if self.stopping:
                        break
                polled = now
                now = monotonic()
                if events:
                    busy.worked(now)
                elif timeout == 0.0:
                    # spinning: let whatever else wants this CPU (the peer, the app) run
                    os.sched_yield()
                    busy.missed(now, monotonic() - polled)
                pump.due(now)
                if now >= next_housekeeping:
                    next_housekeeping = now + _HOUSEKEEPING
                    self._housekeeping()
        except TunGone:
            self.stop("interface deleted")
        finally:
            signal.set_wakeup_fd(old_wakeup)
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
            self.log.verbose(f"Shutting down: {self.exit_reason}")
            counted = ", ".join(f"{k}={v}" for k, v in sorted(self.device.counters.items()))
            self.log.verbose(
                f"Counters: {counted or 'none'}; TUN writes {self.tun.writes}, "
                f"offload reads {self.tun.offload_reads} (malformed {self.tun.malformed})"
            )
            self.close()
        return 0

    def close(self) -> None:
        self.uapi.close()
        self.handlers.clear()
        self.epoll.close()
        self.udp.close()
        self.listener.close()
        # remove our socket file, but never one a newer process put in its place
        with contextlib.suppress(OSError):
            if os.stat(self.sock_path).st_ino == self._sock_inode:
                os.unlink(self.sock_path)
        self.tun.close()
        self._wake_r.close()
        self._wake_w.close()


def _raise_fd_limit() -> None:
    """The soft RLIMIT_NOFILE up to the hard one, as Go programs (wireguard-go) start: each
    configuration client holds a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


USAGE = "Usage: wiresnake [-f/--foreground] INTERFACE-NAME\n"
# our own addition to wireguard-go's contract: the child writes a byte here once its
# signal handlers are in place, so the parent returns only when a SIGTERM is handled
_READY_FD = "WIRESNAKE_READY_FD"


def _signal_ready() -> None:
    fd = os.environ.pop(_READY_FD, None)
    if fd is not None:
        with contextlib.suppress(OSError, ValueError):
            os.write(int(fd), b"1")
            os.close(int(fd))


def _wait_ready(fd: int, timeout: float = 10.0) -> bool:
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return False
        return os.read(fd, 1) == b"1"
    finally:
        sel.close()
        os.close(fd)


def main(argv: list[str], *, announce: bool = False) -> int:
    """`wiresnake [-f|--foreground] IFACE`, the wireguard-go contract. With `announce`,
    say on stderr that a daemon starts, once its TUN and socket exist."""
    foreground = False
    args = list(argv)
    if args and args[0] in ("-f", "--foreground"):
        foreground = True
        args = args[1:]
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write(USAGE)
        return 1
    name = args[0]
    if os.environ.get("WG_PROCESS_FOREGROUND") == "1":
        foreground = True
    log = Logger(name)
    _raise_fd_limit()
    try:
        busy_poll = window_from_env(os.environ)
        offload_mode()
        stale_after_from_env(os.environ)  # WIRESNAKE_RERESOLVE_STALE, checked before any work
    except ValueError as e:
        log.error(str(e))
        return 1
    try:
        tun_fd = os.environ.get("WG_TUN_FD")
        tun = Tun(int(tun_fd)) if tun_fd else Tun.create(name)
    except (OSError, ValueError) as e:
        log.error(f"Failed to create TUN device: {e}")
        return 1
    name = tun.name
    log.iface = name
    try:
        uapi_fd = os.environ.get("WG_UAPI_FD")
        listener = adopt_listener(int(uapi_fd)) if uapi_fd else open_listener(name)
    except (OSError, ValueError, SocketInUse) as e:
        log.error(f"UAPI listen error: {e}")
        tun.close()
        return 1
    if announce:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(
                f"wiresnake: starting daemon for {name}; `ip link del {name}' stops it\n"
            )
    if not foreground:
        ready_r, ready_w = os.pipe()
        env = dict(os.environ)
        env.update(
            WG_TUN_FD=str(tun.fd),
            WG_UAPI_FD=str(listener.fileno()),
            WG_PROCESS_FOREGROUND="1",
        )
        env[_READY_FD] = str(ready_w)
        quiet = not log.error_on or "LOG_LEVEL" not in os.environ
        out = subprocess.DEVNULL if quiet else None
        try:
            subprocess.Popen(
                [sys.executable, "-m", "wiresnake", name],
                env=env,
                pass_fds=(tun.fd, listener.fileno(), ready_w),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        except OSError as e:
            log.error(f"Failed to daemonize: {e}")
            return 1
        finally:
            os.close(ready_w)
        if not _wait_ready(ready_r):
            log.error("The daemon did not start")
            return 1
        return 0
    try:
        reresolve = DaemonReresolve.from_env(os.environ, name, log.verbose, log.error)
        daemon = Daemon(tun, listener, socket_path(name), log, busy_poll, reresolve)
    except OSError as e:
        log.error(f"Failed to start: {e}")
        return 1
    return daemon.run()
