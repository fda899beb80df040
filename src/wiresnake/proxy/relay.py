"""Copy bytes both ways between two stream pairs until both directions end."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["pipe", "relay"]

_CLOSE_GRACE = 5.0  # seconds a closing side may take to flush before it is cut


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy `reader` into `writer`, then pass the end of stream on: a half-close where the
    transport has one (TCP), else a close (TLS cannot half-close). Errors propagate."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    else:
        writer.close()


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


def _watch(writer: asyncio.StreamWriter) -> asyncio.Future[None]:
    """Done when `writer`'s connection is lost (with its error, if any). Never cancelled
    here: that would cancel the stream's own close waiter; it ends with the connection."""
    watcher = asyncio.ensure_future(writer.wait_closed())
    watcher.add_done_callback(_consume)
    return watcher


def _consume(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # seen: a lost connection is not an error to log


def _failed(task: asyncio.Future[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


async def relay(
    a_r: asyncio.StreamReader,
    a_w: asyncio.StreamWriter,
    b_r: asyncio.StreamReader,
    b_w: asyncio.StreamWriter,
) -> None:
    """Relay a <-> b until both directions have ended; closes b's writer (the caller owns
    a's). A clean end of stream is passed on and the other direction carries on; a failure
    on either side (a reset, say) cuts both, as nothing more can be delivered. Each side's
    connection is watched too: a pipe stuck waiting for the other side to drain would not
    notice its own side reset."""
    pipes = {asyncio.ensure_future(pipe(a_r, b_w)), asyncio.ensure_future(pipe(b_r, a_w))}
    watchers = {_watch(a_w), _watch(b_w)}
    try:
        while not all(p.done() for p in pipes):
            pending = {t for t in pipes | watchers if not t.done()}
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(_failed(t) for t in done):
                _abort(a_w)
                _abort(b_w)
                break
            watchers -= done  # a side closed cleanly (by a pipe): nothing more to watch
    finally:
        for t in pipes:
            if not t.done():
                t.cancel()
        for t in pipes:
            with contextlib.suppress(BaseException):
                await t  # collected here, so no task is left with an unseen exception
        b_w.close()
        try:
            await asyncio.wait_for(b_w.wait_closed(), _CLOSE_GRACE)
        except BaseException:
            _abort(b_w)
