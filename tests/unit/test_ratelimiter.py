"""The ratelimiter against the kernel's selftest/ratelimiter.c and a model of its algorithm."""

from __future__ import annotations

import ipaddress
import struct
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiresnake.protocol.ratelimiter import (
    DEFAULT_MAX_ENTRIES,
    PACKETS_BURSTABLE,
    PACKETS_PER_SECOND,
    Ratelimiter,
)

COST = 1 / PACKETS_PER_SECOND  # 50 ms

# selftest/ratelimiter.c expected_results: (allowed, seconds to sleep before the attempt).
EXPECTED: list[tuple[bool, float]] = [
    *[(True, 0.0)] * PACKETS_BURSTABLE,
    (False, 0.0),
    (True, COST),
    (False, 0.0),
    (True, COST * 2),
    (True, 0.0),
    (False, 0.0),
]


def v4(n: int) -> bytes:
    return struct.pack("!I", n & 0xFFFFFFFF)


def v6(w0: int, w1: int, w2: int, w3: int) -> bytes:
    return struct.pack("!4I", w0, w1, w2, w3)


def test_constants() -> None:
    assert PACKETS_PER_SECOND == 20
    assert PACKETS_BURSTABLE == 5
    assert DEFAULT_MAX_ENTRIES == 65536


# 66.172 and 596.853: t + 0.05 lands a hair below the exact nanosecond in binary floating
# point; the refill must still count as a whole packet cost.
@pytest.mark.parametrize("start", [0.0, 1.0, 66.172, 596.853, 12345.678, 987654.321])
def test_kernel_timings(start: float) -> None:
    """The kernel's timings_test: one IPv4 and one IPv6 source follow EXPECTED, while a fresh
    IPv4 address and a fresh IPv6 /64 are allowed at every step; the IPv6 source changes its
    low 64 bits at every step and still shares one bucket."""
    rl = Ratelimiter()
    saddr4 = 8182
    now = start
    for i, (result, sleep) in enumerate(EXPECTED):
        now += sleep
        assert rl.allow(v4(saddr4), now) is result, i
        assert rl.allow(v4(saddr4 + i + 1), now) is True, i
        assert rl.allow(v6(1212, 289188, i, i), now) is result, i
        assert rl.allow(v6(1212 + i + 1, 289188, i, i), now) is True, i


@pytest.mark.parametrize("max_entries", [0, 1, 7, 1000])
def test_kernel_capacity(max_entries: int) -> None:
    """The kernel's capacity_test: with an empty table, exactly max_entries new sources are
    allowed and the next one is refused."""
    rl = Ratelimiter(max_entries)
    assert len(rl) == 0
    results = [rl.allow(v4(i), 5.0) for i in range(max_entries + 1)]
    assert results == [True] * max_entries + [False]
    assert len(rl) == max_entries


def test_default_cap_holds_under_flood() -> None:
    rl = Ratelimiter()
    now = 100.0
    allowed = sum(rl.allow(v4(i), now) for i in range(DEFAULT_MAX_ENTRIES + 1000))
    assert allowed == DEFAULT_MAX_ENTRIES
    assert len(rl) == DEFAULT_MAX_ENTRIES
    # Known sources still get their buckets while the table is full.
    assert rl.allow(v4(0), now)
    # Once the flood has been idle for more than a second, the sweep frees the table.
    assert rl.allow(v4(0xDEADBEEF), now + 1.5)
    assert len(rl) == 1
    assert rl.allow(v6(1, 2, 3, 4), now + 1.5)


def test_ipv6_same_64_shares_a_bucket() -> None:
    rl = Ratelimiter()
    base = ipaddress.IPv6Address("2001:db8:1:2::")
    hosts = [(base + k).packed for k in (1, 2, 0xFFFF_FFFF_FFFF_FFFF, 12345)]
    results = [rl.allow(hosts[i % len(hosts)], 0.0) for i in range(PACKETS_BURSTABLE + 1)]
    assert results == [True] * PACKETS_BURSTABLE + [False]
    assert len(rl) == 1
    # Another /64, even the adjacent one, has its own bucket.
    other = ipaddress.IPv6Address("2001:db8:1:3::1").packed
    assert rl.allow(other, 0.0)
    assert len(rl) == 2


def test_ipv4_whole_address_and_families_are_independent() -> None:
    rl = Ratelimiter()
    a, b = v4(0x0A000001), v4(0x0A000002)
    for _ in range(PACKETS_BURSTABLE):
        assert rl.allow(a, 0.0)
    assert not rl.allow(a, 0.0)
    for _ in range(PACKETS_BURSTABLE):
        assert rl.allow(b, 0.0)
    assert not rl.allow(b, 0.0)
    # An IPv6 /64 whose first 4 bytes equal an IPv4 address is another source.
    assert rl.allow(a + bytes(12), 0.0)
    assert len(rl) == 3


def test_buffers_other_than_bytes() -> None:
    """A slice of a receive buffer works too; the table keeps copies, never the buffer."""
    rl = Ratelimiter()
    packet = bytearray(v6(7, 7, 7, 7))
    for _ in range(PACKETS_BURSTABLE):
        assert rl.allow(memoryview(packet), 0.0)  # type: ignore[arg-type]
    assert not rl.allow(bytes(packet), 0.0)
    assert not rl.allow(packet, 0.0)  # type: ignore[arg-type]
    packet[:] = bytes(16)  # reusing the buffer must not change the key already stored
    assert rl.allow(v6(7, 7, 7, 7), 0.0) is False
    assert len(rl) == 1


@pytest.mark.parametrize("size", [0, 3, 5, 8, 15, 17])
def test_bad_address_length(size: int) -> None:
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        Ratelimiter().allow(bytes(size), 0.0)


def test_negative_max_entries() -> None:
    with pytest.raises(ValueError):
        Ratelimiter(-1)


def test_refill_is_capped_at_the_burst() -> None:
    rl = Ratelimiter()
    ip = v4(1)
    for _ in range(PACKETS_BURSTABLE):
        assert rl.allow(ip, 0.0)
    assert not rl.allow(ip, 0.0)
    # 0.9 s would be 18 packets' worth; the bucket holds only the burst.
    results = [rl.allow(ip, 0.9) for _ in range(PACKETS_BURSTABLE + 1)]
    assert results == [True] * PACKETS_BURSTABLE + [False]


def test_partial_refill_is_capped_at_the_burst() -> None:
    rl = Ratelimiter()
    ip = v4(3)
    for _ in range(3):
        assert rl.allow(ip, 0.0)  # two packets' worth left
    # 0.2 s adds four packets' worth: six, capped at five.
    results = [rl.allow(ip, 0.2) for _ in range(PACKETS_BURSTABLE + 1)]
    assert results == [True] * PACKETS_BURSTABLE + [False]


def test_sustained_rate() -> None:
    rl = Ratelimiter()
    ip = v4(2)
    # Exactly 20/s forever is fine.
    assert all(rl.allow(ip, 3.0 + k * COST) for k in range(200))
    # Slightly faster drains the burst and then denies.
    rl2 = Ratelimiter()
    results = [rl2.allow(ip, 3.0 + k * 0.04) for k in range(200)]
    assert not all(results)
    assert sum(results) <= PACKETS_BURSTABLE + 200 * 0.04 * PACKETS_PER_SECOND


def test_explicit_gc_removes_idle_entries() -> None:
    rl = Ratelimiter()
    rl.allow(v4(1), 10.0)
    rl.allow(v4(2), 10.5)
    rl.allow(v6(1, 1, 1, 1), 10.9)
    assert len(rl) == 3
    rl.gc(11.0)  # v4(1) idle for exactly one second: kept, as the kernel (> 1 s)
    assert len(rl) == 3
    rl.gc(11.25)
    assert len(rl) == 2
    rl.gc(11.5)
    assert len(rl) == 2
    rl.gc(11.5001)
    assert len(rl) == 1
    rl.gc(100.0)
    assert len(rl) == 0


def test_allow_sweeps_at_most_once_a_second() -> None:
    rl = Ratelimiter()
    for i in range(10):
        rl.allow(v4(i), 0.0)  # the first call starts the sweep clock
    rl.allow(v4(100), 0.9)
    rl.allow(v4(101), 0.99)
    assert len(rl) == 12
    rl.allow(v4(102), 1.0)  # sweeps; the first ten are idle for exactly 1 s: kept
    assert len(rl) == 13
    rl.allow(v4(103), 1.5)  # idle for 1.5 s now, but the next sweep is due only at 2.0
    assert len(rl) == 14
    rl.allow(v4(104), 2.0)  # sweeps everything idle for more than a second
    assert len(rl) == 3
    rl.clear()
    assert len(rl) == 0


class KernelModel:
    """The kernel's algorithm in exact arithmetic, with no garbage collection and no cap."""

    cost = Fraction(1, PACKETS_PER_SECOND)
    token_max = cost * PACKETS_BURSTABLE

    def __init__(self) -> None:
        self.table: dict[bytes, tuple[Fraction, Fraction]] = {}

    def allow(self, ip: bytes, now: Fraction) -> bool:
        key = ip if len(ip) == 4 else ip[:8]
        if key not in self.table:
            self.table[key] = (now, self.token_max - self.cost)
            return True
        last, tokens = self.table[key]
        tokens = min(self.token_max, tokens + now - last)
        ok = tokens >= self.cost
        self.table[key] = (now, tokens - self.cost if ok else tokens)
        return ok


_sources = [v4(1), v4(2), v6(9, 9, 1, 1), v6(9, 9, 2, 2), v6(9, 8, 1, 1)]


@settings(max_examples=300, deadline=None)
@given(
    start_ms=st.integers(0, 10**9),
    steps=st.lists(
        st.tuples(
            st.integers(0, len(_sources) - 1),
            st.one_of(
                st.integers(0, 60),
                st.sampled_from([0, 50, 100, 150, 200, 300, 999, 1000, 1001, 2500]),
            ),
        ),
        max_size=120,
    ),
)
def test_matches_kernel_model(start_ms: int, steps: list[tuple[int, int]]) -> None:
    """Garbage collection is invisible: a bucket idle for over a second is full anyway."""
    rl = Ratelimiter()
    model = KernelModel()
    now_ms = start_ms
    for src, dt_ms in steps:
        now_ms += dt_ms
        ip = _sources[src]
        assert rl.allow(ip, now_ms / 1000) == model.allow(ip, Fraction(now_ms, 1000))


def test_ready_says_what_take_would_do_and_charges_nothing() -> None:
    rl = Ratelimiter()
    key = b"\x0a\x00\x00\x01\x13\x88"  # an address and a port: any key is used as it is
    for _ in range(100):
        assert rl.ready(key, 0.0)
    for _ in range(PACKETS_BURSTABLE):
        assert rl.take(key, 0.0)
    assert not rl.ready(key, 0.0) and not rl.take(key, 0.0)
    assert rl.ready(key, COST) and rl.take(key, COST)
    # keys are not folded: the same address with another port has a bucket of its own
    assert rl.take(key[:4] + b"\x00\x01", COST)


def test_a_full_table_refuses_new_keys_unless_told_to_admit_them() -> None:
    strict, lenient = Ratelimiter(2), Ratelimiter(2, admit_when_full=True)
    for rl in (strict, lenient):
        assert rl.take(b"a", 0.0) and rl.take(b"b", 0.0)
    assert not strict.ready(b"c", 0.0) and not strict.take(b"c", 0.0)
    assert lenient.ready(b"c", 0.0)
    for _ in range(10):
        assert lenient.take(b"c", 0.0)  # let through, and not tracked
    assert len(lenient) == 2
