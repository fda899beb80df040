"""The daemon's busy-poll window (when it spins, when it sleeps, how it is configured), and
the daemon refusing bad tuning variables."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wiresnake.io.busypoll import DEFAULT_WINDOW_US, ENV, BusyPoll, window_from_env


def test_idle_loop_sleeps_for_its_whole_timeout() -> None:
    busy = BusyPoll(300e-6)
    # no work yet: an idle device must block in epoll, never spin
    assert busy.timeout(100.0, 0.75) == 0.75
    assert busy.timeout(100.0, -0.1) == 0.0  # an overdue timer is due now


def test_window_opens_after_work_and_closes_after_it() -> None:
    busy = BusyPoll(300e-6)
    busy.worked(100.0)
    assert busy.timeout(100.0001, 0.75) == 0.0
    assert busy.timeout(100.000299, 0.75) == 0.0
    assert busy.timeout(100.0003, 0.75) == 0.75
    # more work in the window extends it from the time of that work
    busy.worked(100.0002)
    assert busy.timeout(100.00045, 0.75) == 0.0
    assert busy.timeout(100.0006, 0.75) == 0.75


def test_zero_window_never_spins() -> None:
    busy = BusyPoll(0.0)
    busy.worked(100.0)
    assert busy.timeout(100.0, 0.5) == 0.5


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(None, DEFAULT_WINDOW_US / 1e6), ("", DEFAULT_WINDOW_US / 1e6), ("0", 0.0), (" 50 ", 50e-6)],
)
def test_window_from_env(raw: str | None, seconds: float) -> None:
    env = {} if raw is None else {ENV: raw}
    assert window_from_env(env) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["abc", "1.5", "-1", "1000001"])
def test_bad_window_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match=ENV):
        window_from_env({ENV: raw})


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        (ENV, "soon", f"{ENV}='soon': not a whole number of microseconds"),
        ("WIRESNAKE_OFFLOAD", "gso", "WIRESNAKE_OFFLOAD='gso': must be one of 0, 1, tso"),
    ],
)
def test_daemon_refuses_bad_settings_before_touching_the_system(
    var: str, value: str, message: str
) -> None:
    # the checks come before the TUN is created, so this needs no privileges
    env = dict(os.environ, LOG_LEVEL="error")
    env[var] = value
    res = subprocess.run(
        [sys.executable, "-m", "wiresnake", "-f", "wsbusy0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 1
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_fruitless_polling_is_capped_per_period() -> None:
    # a packet every 200 us would keep a 300 us window open for ever: the budget stops it
    busy = BusyPoll(300e-6, budget=0.1, period=0.1)
    now, spun = 10.0, 0.0
    while now < 10.09:  # inside the first period
        busy.worked(now)
        t = now + 1e-6
        while busy.timeout(t, 1.0) == 0.0 and t < now + 200e-6:
            busy.missed(t, 10e-6)
            spun += 10e-6
            t += 10e-6
        now += 200e-6
    assert 0.009 <= spun <= 0.0101  # a tenth of the period, then no more spinning
    busy.worked(now)
    assert busy.timeout(now + 1e-6, 0.5) == 0.5


def test_budget_comes_back_with_the_next_period() -> None:
    busy = BusyPoll(300e-6, budget=0.1, period=0.1)
    busy.worked(10.0)
    busy.missed(10.0, 0.02)  # one long miss uses the whole allowance
    busy.worked(10.05)
    assert busy.timeout(10.05, 0.5) == 0.5
    busy.worked(10.2)  # next period: windows open again
    assert busy.timeout(10.2001, 0.5) == 0.0


def test_sparse_replies_stay_within_budget() -> None:
    # a ping every 10 ms: a window or two of waiting per ping is well under a tenth
    busy = BusyPoll(300e-6, budget=0.1, period=0.1)
    for k in range(100):
        now = 10.0 + k * 0.01
        busy.worked(now)
        assert busy.timeout(now + 1e-6, 0.5) == 0.0
        busy.missed(now + 300e-6, 300e-6)
