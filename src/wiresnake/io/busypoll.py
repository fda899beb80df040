"""A busy-poll window: after the loop has done work, poll without sleeping for a while.

A packet that arrives while the loop sleeps in epoll pays for waking the thread (on a VM, an
idle vCPU's exit and re-entry) and for running cold code. Traffic is bursty and replies come
soon after requests, so for a short window after each piece of work the loop polls with a
zero timeout and yields the CPU between polls instead of sleeping. An idle device never
spins: the window opens only when there was work, so an idle tunnel costs nothing, and a
busy one has work on every poll anyway. wireguard-go gets the same effect from its runtime,
whose threads spin briefly before parking.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["DEFAULT_WINDOW_US", "ENV", "BusyPoll", "window_from_env"]

ENV = "WIRESNAKE_BUSY_POLL_US"
# long enough to cover a round trip through the peer on a LAN or between namespaces
DEFAULT_WINDOW_US = 300
_MAX_WINDOW_US = 1_000_000


class BusyPoll:
    """The window's state; time is a parameter, as in the protocol core."""

    __slots__ = ("until", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.until = 0.0

    def timeout(self, now: float, idle: float) -> float:
        """The poll timeout to use at `now`, given what the loop would wait when idle."""
        return 0.0 if now < self.until else max(idle, 0.0)

    def worked(self, now: float) -> None:
        """The loop handled events at `now`: keep polling for another window."""
        if self.window > 0.0:
            self.until = now + self.window


def window_from_env(env: Mapping[str, str]) -> float:
    """The window in seconds from WIRESNAKE_BUSY_POLL_US (microseconds; 0 turns it off)."""
    raw = env.get(ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_WINDOW_US / 1e6
    try:
        us = int(raw.strip())
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: not a whole number of microseconds") from None
    if not 0 <= us <= _MAX_WINDOW_US:
        raise ValueError(f"{ENV}={raw!r}: must be between 0 and {_MAX_WINDOW_US}")
    return us / 1e6
