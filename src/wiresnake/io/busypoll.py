"""A busy-poll window: after the loop has done work, poll without sleeping for a while.

A packet that arrives while the loop sleeps in epoll pays for waking the thread (on a VM, an
idle vCPU's exit and re-entry) and for running cold code. Traffic is bursty and replies come
soon after requests, so for a short window after each piece of work the loop polls with a
zero timeout and yields the CPU between polls instead of sleeping. An idle device never
spins: the window opens only when there was work. A budget bounds the cost: within each
period, once the time spent polling in vain passes a share of that period, no window opens
until the next period, so a steady trickle of packets (one every 200 us, say) does not keep
a core spinning. wireguard-go's runtime gets a similar effect from threads that spin
briefly before parking.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["BUDGET", "DEFAULT_WINDOW_US", "ENV", "PERIOD", "BusyPoll", "window_from_env"]

ENV = "WIRESNAKE_BUSY_POLL_US"
# long enough to cover a round trip through the peer on a LAN or between namespaces
DEFAULT_WINDOW_US = 300
# at most a tenth of each 100 ms spent polling for nothing
BUDGET = 0.1
PERIOD = 0.1
_MAX_WINDOW_US = 1_000_000


class BusyPoll:
    """The window's state; time is a parameter, as in the protocol core."""

    __slots__ = ("allowance", "period", "period_end", "spent", "until", "window")

    def __init__(self, window: float, budget: float = BUDGET, period: float = PERIOD) -> None:
        self.window = window
        self.period = period
        self.allowance = budget * period  # seconds of fruitless polling per period
        self.until = 0.0
        self.spent = 0.0
        self.period_end = 0.0

    def timeout(self, now: float, idle: float) -> float:
        """The poll timeout to use at `now`, given what the loop would wait when idle."""
        if now < self.until:
            if now >= self.period_end:
                self._new_period(now)
            if self.spent < self.allowance:
                return 0.0
        return max(idle, 0.0)

    def worked(self, now: float) -> None:
        """The loop handled events at `now`: keep polling for another window."""
        if self.window > 0.0:
            self.until = now + self.window

    def missed(self, now: float, seconds: float) -> None:
        """A zero-timeout poll found nothing; it and the yield after it took `seconds`."""
        if now >= self.period_end:
            self._new_period(now)
        self.spent += seconds

    def _new_period(self, now: float) -> None:
        self.period_end = now + self.period
        self.spent = 0.0


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
