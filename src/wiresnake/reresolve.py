"""Endpoint names looked up again when a peer's handshakes go stale.

WireGuard resolves an `Endpoint = name:port` once, when the configuration is set, and the
engine only ever holds the address. When the name moves (dynamic DNS, a replaced server),
the peer is lost until someone sets the endpoint again; wireguard-tools' contrib
`reresolve-dns` does that from a timer, for every peer whose latest handshake is older
than 135 s, and this module does the same from inside the process:

- `Reresolver` (no I/O) decides which named peers are due for a look-up and applies an
  answer: a different address becomes the peer's endpoint, through `Device.set_endpoint`
  as a `set=1` request would, and the change is one log line.
- `FileNames` reads the names from a wg-quick file (the daemon only ever sees addresses),
  again whenever the file changes.
- `DaemonReresolve` runs the look-ups in threads for the epoll daemon, which must never
  wait on DNS; the proxy awaits them (`wiresnake.proxy.tunnel`).

WIRESNAKE_RERESOLVE: in the daemon `1` (read /etc/wireguard/IFACE.conf) or a file's path
turns it on; in proxy mode it is on unless `0`. WIRESNAKE_RERESOLVE_STALE (seconds) is for
tests: it replaces the 135 s.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from wiresnake.config import ConfigError, EndpointSpec, read_config, resolve_endpoint
from wiresnake.crypto import key_to_base64
from wiresnake.protocol.device import Device
from wiresnake.protocol.peer import Endpoint
from wiresnake.uapi import format_endpoint

__all__ = [
    "ENV",
    "RECHECK",
    "STALE_AFTER",
    "DaemonReresolve",
    "FileNames",
    "Reresolver",
    "daemon_file",
    "endpoint_names",
    "peer_label",
    "proxy_enabled",
    "stale_after_from_env",
]

ENV: Final = "WIRESNAKE_RERESOLVE"
STALE_ENV: Final = "WIRESNAKE_RERESOLVE_STALE"
# contrib's threshold: REKEY_AFTER_TIME (120 s) and three REKEY_TIMEOUTs (5 s) of retrying
STALE_AFTER: Final = 135.0
# how often a peer that stays stale is looked up again (contrib's timer runs every 30 s)
RECHECK: Final = 30.0
_OFF: Final = ("", "0", "no", "off", "false")


def stale_after_from_env(env: Mapping[str, str]) -> float:
    """WIRESNAKE_RERESOLVE_STALE seconds (for tests), else 135; ValueError when malformed."""
    text = env.get(STALE_ENV)
    if text is None:
        return STALE_AFTER
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        raise ValueError(f"{STALE_ENV}={text!r}: expected a number of seconds above 0")
    return value


def daemon_file(env: Mapping[str, str], iface: str) -> str | None:
    """The wg-quick file the daemon takes names from, or None when re-resolving is off."""
    value = env.get(ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value.lower() in ("1", "yes", "on", "true"):
        return f"/etc/wireguard/{iface}.conf"
    return value


def proxy_enabled(env: Mapping[str, str]) -> bool:
    """Proxy mode re-resolves unless WIRESNAKE_RERESOLVE says no (it is unset by default)."""
    value = env.get(ENV)
    return value is None or value.strip().lower() not in _OFF


def peer_label(public_key: bytes) -> str:
    """wireguard-go's short form of a peer in logs, `peer(AbCd…WxYz)`."""
    text = key_to_base64(public_key)
    return f"peer({text[:4]}…{text[-5:-1]})"


def endpoint_names(
    peers: Iterable[tuple[bytes, EndpointSpec | None]],
) -> dict[bytes, EndpointSpec]:
    """The peers whose endpoint is a name (a later entry for a key wins, as in a file)."""
    names: dict[bytes, EndpointSpec] = {}
    for key, spec in peers:
        if spec is not None:
            names.pop(key, None)
            if not spec.is_numeric:
                names[key] = spec
    return names


class Reresolver:
    """Which named peers need a look-up, and what an answer changes. Times are monotonic
    seconds, as the engine's."""

    def __init__(self, stale_after: float = STALE_AFTER, recheck: float | None = None) -> None:
        self.stale_after = stale_after
        self.recheck = min(RECHECK, stale_after) if recheck is None else recheck
        self.names: dict[bytes, EndpointSpec] = {}
        self._watched_since: dict[bytes, float] = {}  # for peers that never had a handshake
        self._next: dict[bytes, float] = {}
        self._busy: set[bytes] = set()

    def set_names(self, names: Mapping[bytes, EndpointSpec]) -> None:
        self.names = dict(names)
        for table in (self._watched_since, self._next):
            for key in [k for k in table if k not in names]:
                del table[key]

    def due(self, device: Device, now: float) -> list[tuple[bytes, EndpointSpec]]:
        """The look-ups to start now; each is then in flight until `answered`."""
        out: list[tuple[bytes, EndpointSpec]] = []
        for key, spec in self.names.items():
            peer = device.peer(key)
            if peer is None or key in self._busy or now < self._next.get(key, 0.0):
                continue
            since = self._watched_since.setdefault(key, now)
            if peer.last_handshake is not None:
                since = max(since, peer.last_handshake - device.wall_offset)
            if now - since <= self.stale_after:
                continue
            self._busy.add(key)
            out.append((key, spec))
        return out

    def answered(
        self,
        device: Device,
        key: bytes,
        spec: EndpointSpec,
        answer: Endpoint | Exception,
        now: float,
    ) -> str | None:
        """Apply one look-up's result; the line to log, if any."""
        self._busy.discard(key)
        self._next[key] = now + self.recheck
        peer = device.peer(key)
        if peer is None or self.names.get(key) != spec:
            return None  # removed or renamed meanwhile: the answer is for nothing
        if isinstance(answer, Exception):
            return f"{peer_label(key)}: cannot resolve endpoint {spec}: {answer}"
        if peer.endpoint == answer:
            return None
        was = format_endpoint(peer.endpoint) if peer.endpoint is not None else "none"
        device.set_endpoint(peer, answer, now)
        return f"{peer_label(key)}: endpoint {spec} now {format_endpoint(answer)} (was {was})"


class FileNames:
    """The endpoint names of a wg-quick file, read again whenever it changes."""

    def __init__(self, path: str, log_error: Callable[[str], None]) -> None:
        self.path = path
        self.log_error = log_error
        self.names: dict[bytes, EndpointSpec] = {}
        self._stamp: tuple[int, ...] | None = None

    def refresh(self) -> bool:
        """Read the file if it changed; True when `names` may have changed."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, ...] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError as e:
            stamp = (-1, e.errno or 0)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            cfg = read_config(self.path, wg_quick=True)
        except ConfigError as e:  # keep the names we had: the file may be half-written
            # for a line, where and which key but not the message: it may quote a mistyped
            # PrivateKey; a whole-file error (missing, unreadable) quotes nothing
            why = str(e) if e.line is None else f"{e.path}:{e.line}: {e.key or 'a line'} is invalid"
            self.log_error(f"Cannot read endpoint names to re-resolve: {why}")
            return False
        self.names = endpoint_names((p.public_key, p.endpoint) for p in cfg.peers)
        return True


def _lookup_once(spec: EndpointSpec) -> Endpoint:
    # one try: a peer that stays stale is simply looked up again `recheck` later
    return resolve_endpoint(spec, retries=0, log=lambda _line: None)


class DaemonReresolve:
    """The daemon's side: call `tick` now and then from the loop; look-ups run in daemon
    threads (never blocking the loop, never holding up exit) and are applied on a later
    tick."""

    def __init__(
        self,
        names: FileNames,
        reresolver: Reresolver,
        log: Callable[[str], None],
        lookup: Callable[[EndpointSpec], Endpoint] = _lookup_once,
    ) -> None:
        self.file = names
        self.reresolver = reresolver
        self.log = log
        self.lookup = lookup
        self._answers: queue.SimpleQueue[tuple[bytes, EndpointSpec, Endpoint | Exception]] = (
            queue.SimpleQueue()
        )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        iface: str,
        log: Callable[[str], None],
        log_error: Callable[[str], None],
    ) -> DaemonReresolve | None:
        """None when WIRESNAKE_RERESOLVE does not ask for it; ValueError when malformed."""
        path = daemon_file(env, iface)
        if path is None:
            return None
        reresolver = Reresolver(stale_after_from_env(env))
        log(
            f"Endpoint names from {path} are looked up again after "
            f"{reresolver.stale_after:g} s without a handshake"
        )
        return cls(FileNames(path, log_error), reresolver, log)

    def _work(self, key: bytes, spec: EndpointSpec) -> None:
        try:
            answer: Endpoint | Exception = self.lookup(spec)
        except Exception as e:
            answer = e
        self._answers.put((key, spec, answer))

    def tick(self, device: Device, now: float) -> None:
        if self.file.refresh():
            self.reresolver.set_names(self.file.names)
        while True:
            try:
                key, spec, answer = self._answers.get_nowait()
            except queue.Empty:
                break
            line = self.reresolver.answered(device, key, spec, answer, now)
            if line is not None:
                self.log(line)
        for key, spec in self.reresolver.due(device, now):
            worker = threading.Thread(
                target=self._work, args=(key, spec), name="reresolve", daemon=True
            )
            try:
                worker.start()
            except RuntimeError as e:  # no thread to be had now: try again at the recheck
                line = self.reresolver.answered(device, key, spec, e, now)
                if line is not None:
                    self.log(line)
