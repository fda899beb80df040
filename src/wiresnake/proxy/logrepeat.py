"""Log a repeated message once per interval, with a count of the repeats left out.

A flood (EMFILE on every accept(), thousands of failing requests) must not fill the disk
with identical lines. `RepeatFilter` goes on a handler, so it also sees asyncio's own
records ("socket.accept() out of system resource", logged by the event loop's exception
handler through the 'asyncio' logger, once per failed accept()).

Two keys are counted per record: its text (first line, as asyncio's records carry a
traceback), which passes once per interval, and its format string, which passes
`per_format` times per interval, so that many different failures of one kind (one line
per client) are also bounded. The first record let through after a quiet spell says how
many like it were left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RepeatFilter", "install"]

INTERVAL = 10.0
PER_FORMAT = 20
_MAX_KEYS = 4096


@dataclass(slots=True)
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    def __init__(
        self,
        interval: float = INTERVAL,
        per_format: int = PER_FORMAT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.per_format = per_format
        self.clock = clock
        self._windows: dict[tuple[object, ...], _Window] = {}

    def _window(self, key: tuple[object, ...], now: float) -> tuple[_Window, int]:
        """The key's window, and the count suppressed in the one it replaced."""
        window = self._windows.get(key)
        if window is not None and now - window.start < self.interval:
            return window, 0
        if len(self._windows) >= _MAX_KEYS:
            self._expire(now)
        fresh = self._windows[key] = _Window(now)
        return fresh, window.suppressed if window is not None else 0

    def _expire(self, now: float) -> None:
        # reported counts are lost for expired keys; bounded memory matters more
        self._windows = {k: w for k, w in self._windows.items() if now - w.start < self.interval}
        if len(self._windows) >= _MAX_KEYS:
            self._windows.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        try:
            text = record.getMessage()
        except Exception:
            return True  # a broken record: let logging report it as it does
        first = text.split("\n", 1)[0]
        fmt = str(record.msg).split("\n", 1)[0] if record.args else first
        by_text, text_before = self._window((record.name, record.levelno, first), now)
        by_format, format_before = self._window((record.name, record.levelno, fmt, None), now)
        if by_text.passed >= 1 or by_format.passed >= self.per_format:
            by_text.suppressed += 1
            if by_format is not by_text:
                by_format.suppressed += 1
            return False
        by_text.passed += 1
        by_format.passed += 1
        before = max(text_before, format_before)
        if before:
            # the count goes into the text, so every handler and formatter shows it
            lines = text.split("\n", 1)
            lines[0] += f" ({before} like it left out in {self.interval:g} s)"
            record.msg = "\n".join(lines)
            record.args = None
        return True


def install(handlers: list[logging.Handler]) -> RepeatFilter:
    """Put one RepeatFilter on each of `handlers`."""
    repeat = RepeatFilter()
    for handler in handlers:
        handler.addFilter(repeat)
    return repeat
