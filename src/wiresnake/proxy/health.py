"""Proxy mode's health: CheckAlive pings and the info endpoint (`wiresnake proxy -i ADDR`).

As wireproxy does it: every `CheckAliveInterval` seconds each `CheckAlive` address is
pinged through the tunnel and the wall-clock second of its last answer recorded (0 until
one comes). `GET /readyz` answers that record as JSON, with 503 once any address has been
silent for longer than the interval plus 2 seconds (200 with no CheckAlive at all).
`GET /metrics` answers the device's configuration-protocol dump (peers, endpoints,
handshake times, byte counters) with the keys redacted. Anything else is 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import posixpath
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from urllib.parse import urlsplit

from wiresnake.proxy.tunnel import Tunnel
from wiresnake.uapi import get_response

__all__ = ["AliveChecker", "InfoServer", "metrics_text"]

log = logging.getLogger("wiresnake.proxy")

_GRACE = 2  # seconds past the interval before an address counts as down (wireproxy's)
_REDACTED = ("private_key", "preshared_key")
_HEAD_LIMIT = 16 * 1024


class AliveChecker:
    """Pings `targets` through `tunnel` every `interval` seconds; `record` holds, per
    address, the Unix second of its last echo reply."""

    def __init__(
        self,
        tunnel: Tunnel,
        targets: Sequence[str],
        interval: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tunnel = tunnel
        self.targets = list(targets)
        self.interval = interval
        self.clock = clock
        self.record: dict[str, int] = dict.fromkeys(self.targets, 0)

    async def _ping(self, target: str) -> None:
        try:
            await self.tunnel.ping(target, timeout=self.interval)
        except (TimeoutError, OSError, ValueError) as e:
            log.debug("CheckAlive %s: %s", target, e or "no reply")
            return
        self.record[target] = int(self.clock())

    async def round(self) -> None:
        await asyncio.gather(*(self._ping(t) for t in self.targets))

    async def run(self) -> None:
        while True:
            started = self.clock()
            await self.round()
            await asyncio.sleep(max(0.0, self.interval - (self.clock() - started)))

    def healthy(self) -> bool:
        now = self.clock()
        return all(now - last <= self.interval + _GRACE for last in self.record.values())


def metrics_text(tunnel: Tunnel) -> str:
    """The `get=1` dump without secrets, as wireproxy serves it."""
    lines = []
    for line in get_response(tunnel.device).split("\n"):
        key, sep, _value = line.partition("=")
        if sep and key in _REDACTED:
            line = f"{key}=REDACTED"
        lines.append(line)
    return "\n".join(lines)


class InfoServer:
    """A tiny HTTP/1.1 server for /readyz and /metrics (one request per connection)."""

    def __init__(self, tunnel: Tunnel, checker: AliveChecker) -> None:
        self.tunnel = tunnel
        self.checker = checker

    def answer(self, method: str, target: str) -> tuple[int, str]:
        if method not in ("GET", "HEAD"):
            return 405, "method not allowed\n"
        path = posixpath.normpath(urlsplit(target).path or "/")
        if path == "/readyz":
            status = 200 if self.checker.healthy() else 503
            return status, json.dumps(self.checker.record) + "\n"
        if path == "/metrics":
            return 200, metrics_text(self.tunnel)
        return 404, "not found\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if len(head) > _HEAD_LIMIT:
                raise ValueError
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, body = 400, "bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, body = self.answer(method, parts[1])
            data = body.encode()
            writer.write(
                (
                    f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                    f"Content-Type: {'application/json' if body.startswith('{') else 'text/plain'}"
                    f"\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
                ).encode()
                + (data if method != "HEAD" else b"")
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # a request that never completes, or too big: no answer
        except OSError:
            pass  # the client went away
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port, limit=_HEAD_LIMIT)
