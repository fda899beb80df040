"""The replay window against the kernel's selftest/counter.c and a naive model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wiresnake.protocol.constants import REJECT_AFTER_MESSAGES
from wiresnake.protocol.replay import COUNTER_BITS_TOTAL, WINDOW_SIZE, ReplayWindow

T_LIM = WINDOW_SIZE + 1
R = REJECT_AFTER_MESSAGES

# The 34 cases of the kernel's selftest/counter.c (also wireguard-go's replay_test.go),
# all against one window, in order.
KERNEL_TABLE: list[tuple[int, bool]] = [
    (0, True),  # 1
    (1, True),  # 2
    (1, False),  # 3
    (9, True),  # 4
    (8, True),  # 5
    (7, True),  # 6
    (7, False),  # 7
    (T_LIM, True),  # 8
    (T_LIM - 1, True),  # 9
    (T_LIM - 1, False),  # 10
    (T_LIM - 2, True),  # 11
    (2, True),  # 12
    (2, False),  # 13
    (T_LIM + 16, True),  # 14
    (3, False),  # 15
    (T_LIM + 16, False),  # 16
    (T_LIM * 4, True),  # 17
    (T_LIM * 4 - (T_LIM - 1), True),  # 18
    (10, False),  # 19
    (T_LIM * 4 - T_LIM, False),  # 20
    (T_LIM * 4 - (T_LIM + 1), False),  # 21
    (T_LIM * 4 - (T_LIM - 2), True),  # 22
    (T_LIM * 4 + 1 - T_LIM, False),  # 23
    (0, False),  # 24
    (R, False),  # 25
    (R - 1, True),  # 26
    (R, False),  # 27
    (R - 1, False),  # 28
    (R - 2, True),  # 29
    (R + 1, False),  # 30
    (R + 2, False),  # 31
    (R - 2, False),  # 32
    (R - 3, True),  # 33
    (0, False),  # 34
]


def test_constants() -> None:
    assert COUNTER_BITS_TOTAL == 8192
    assert WINDOW_SIZE == 8192 - 64
    assert REJECT_AFTER_MESSAGES == 2**64 - 2**13 - 1


def test_kernel_table() -> None:
    assert len(KERNEL_TABLE) == 34
    w = ReplayWindow()
    results = [(i, n, w.validate(n)) for i, (n, _) in enumerate(KERNEL_TABLE, 1)]
    expected = [(i, n, v) for i, (n, v) in enumerate(KERNEL_TABLE, 1)]
    assert results == expected


def _run(w: ReplayWindow, counters: range | list[int]) -> list[int]:
    """Feed counters; return those that were rejected."""
    return [n for n in counters if not w.validate(n)]


def test_bulk_1_ascending_then_zero() -> None:
    w = ReplayWindow()
    assert _run(w, range(1, WINDOW_SIZE + 1)) == []
    assert w.validate(0)
    assert not w.validate(0)


def test_bulk_2_ascending_from_two_then_one_and_zero() -> None:
    w = ReplayWindow()
    assert _run(w, range(2, WINDOW_SIZE + 2)) == []
    assert w.validate(1)
    assert not w.validate(0)


def test_bulk_3_descending_whole_window() -> None:
    w = ReplayWindow()
    assert _run(w, range(WINDOW_SIZE, -1, -1)) == []


def test_bulk_4_descending_one_past_then_zero() -> None:
    w = ReplayWindow()
    assert _run(w, range(WINDOW_SIZE + 1, 0, -1)) == []
    assert not w.validate(0)


def test_bulk_5_descending_then_top_then_zero() -> None:
    w = ReplayWindow()
    assert _run(w, range(WINDOW_SIZE, 0, -1)) == []
    assert w.validate(WINDOW_SIZE + 1)
    assert not w.validate(0)


def test_bulk_6_descending_then_zero_then_top() -> None:
    w = ReplayWindow()
    assert _run(w, range(WINDOW_SIZE, 0, -1)) == []
    assert w.validate(0)
    assert w.validate(WINDOW_SIZE + 1)


def test_reset_forgets_everything() -> None:
    w = ReplayWindow()
    for n in (0, 5, 100_000, 100_001):
        assert w.validate(n)
    w.reset()
    for n in (0, 5, 100_000, 100_001):
        assert w.validate(n)
    assert not w.validate(5)


def test_negative_counter_rejected() -> None:
    w = ReplayWindow()
    assert not w.validate(-1)
    assert w.validate(0)


def test_far_jump_clears_stale_words() -> None:
    w = ReplayWindow()
    assert _run(w, range(COUNTER_BITS_TOTAL)) == []
    # Jump exactly one ring ahead: every slot of the ring now stands for a new counter.
    top = 2 * COUNTER_BITS_TOTAL - 1
    assert w.validate(top)
    assert _run(w, range(top - WINDOW_SIZE, top)) == []
    assert not w.validate(top - WINDOW_SIZE - 1)


def test_in_order_stream_across_many_ring_wraps() -> None:
    w = ReplayWindow()
    n = 3 * COUNTER_BITS_TOTAL + 77
    assert _run(w, range(n)) == []
    assert _run(w, range(n - WINDOW_SIZE, n)) == list(range(n - WINDOW_SIZE, n))


class NaiveWindow:
    """The kernel's rule without the bitmap.

    The kernel keeps c = greatest accepted + 1 and rejects n when WINDOW_SIZE + (n + 1) < c,
    i.e. when n + WINDOW_SIZE < greatest.  The ring holds 128 words and a window spans at
    most 128 of them, so inside the window the bitmap is exact: acceptance is "below the
    limit, not seen, and not more than WINDOW_SIZE behind the greatest accepted counter".
    """

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.greatest: int | None = None

    def validate(self, n: int) -> bool:
        if n >= REJECT_AFTER_MESSAGES or n in self.seen:
            return False
        if self.greatest is not None and n + WINDOW_SIZE < self.greatest:
            return False
        self.seen.add(n)
        if self.greatest is None or n > self.greatest:
            self.greatest = n
        return True


# Offsets relative to the greatest counter so far: repeats, small reorderings, the window
# edges, word and ring boundaries, and far jumps.
_edges = [
    0,
    -1,
    1,
    -WINDOW_SIZE,
    -WINDOW_SIZE - 1,
    -WINDOW_SIZE + 1,
    -COUNTER_BITS_TOTAL,
    -COUNTER_BITS_TOTAL + 1,
    64,
    63,
    65,
    WINDOW_SIZE,
    WINDOW_SIZE + 1,
    COUNTER_BITS_TOTAL,
    COUNTER_BITS_TOTAL + 1,
    2 * COUNTER_BITS_TOTAL,
]
_offset = st.one_of(
    st.integers(-100, 100),
    st.sampled_from(_edges),
    st.integers(-COUNTER_BITS_TOTAL - 200, -WINDOW_SIZE + 200),
    st.integers(-3 * COUNTER_BITS_TOTAL, 3 * COUNTER_BITS_TOTAL),
    st.integers(0, 2**40),
)
_start = st.one_of(
    st.just(0),
    st.integers(0, 2**64),
    st.integers(REJECT_AFTER_MESSAGES - 3 * COUNTER_BITS_TOTAL, REJECT_AFTER_MESSAGES + 3),
)


@settings(max_examples=400, deadline=None)
@given(start=_start, ops=st.lists(st.tuples(st.booleans(), _offset), max_size=200))
def test_matches_naive_model(start: int, ops: list[tuple[bool, int]]) -> None:
    w = ReplayWindow()
    model = NaiveWindow()
    base = start
    for absolute, off in ops:
        # Either relative to the model's greatest counter or to the fixed start.
        ref = base if absolute or model.greatest is None else model.greatest
        n = max(0, ref + off)
        assert w.validate(n) == model.validate(n), (n, model.greatest)


@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(st.integers(0, 3 * COUNTER_BITS_TOTAL), max_size=40),
    gap=st.integers(0, 2 * COUNTER_BITS_TOTAL),
    length=st.integers(1, 200),
)
def test_a_fresh_run_accepted_at_once_equals_validating_each_counter(
    before: list[int], gap: int, length: int
) -> None:
    one, bulk = ReplayWindow(), ReplayWindow()
    for c in before:
        one.validate(c)
        bulk.validate(c)
    first = bulk._next + gap
    last = first + length - 1
    assert bulk.fresh_run(first, last)
    bulk.accept_run(first, last)
    for c in range(first, last + 1):
        assert one.validate(c)
    assert (bulk._next, bulk._bitmap) == (one._next, one._bitmap)
    # and afterwards both refuse and accept alike
    for c in (first, last, last + 1, first - 1, last + COUNTER_BITS_TOTAL):
        assert bulk.validate(c) == one.validate(c)


def test_a_run_that_is_not_fresh_is_refused() -> None:
    w = ReplayWindow()
    w.validate(10)
    assert not w.fresh_run(10, 20)  # 10 was seen
    assert not w.fresh_run(5, 20)
    assert w.fresh_run(11, 20)
    assert not w.fresh_run(REJECT_AFTER_MESSAGES - 5, REJECT_AFTER_MESSAGES)
