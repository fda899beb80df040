"""Copy bytes both ways between two stream pairs until both directions end."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["pipe", "relay"]


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy `reader` into `writer`, then pass the end of stream on (half-close)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def relay(
    a_r: asyncio.StreamReader,
    a_w: asyncio.StreamWriter,
    b_r: asyncio.StreamReader,
    b_w: asyncio.StreamWriter,
) -> None:
    """Relay a <-> b; closes b's writer when done (the caller owns a's)."""
    try:
        await asyncio.gather(pipe(a_r, b_w), pipe(b_r, a_w))
    finally:
        b_w.close()
        with contextlib.suppress(Exception):
            await b_w.wait_closed()
