"""Replay protection for transport counters: the RFC 6479 window of the kernel module.

The window is a ring of 128 words of 64 bits (8192 bits); one word is kept as slack so that
moving the window forward only ever clears whole words, which leaves 8192 - 64 = 8128
counters behind the greatest one that can still arrive late.  As in the kernel, the state
holds the greatest accepted counter plus one (zero before the first packet), which lets a
fresh window accept counter 0 without a special case.
"""

from __future__ import annotations

from wiresnake.protocol.constants import REJECT_AFTER_MESSAGES

__all__ = ["COUNTER_BITS_TOTAL", "WINDOW_SIZE", "ReplayWindow"]

_WORD_BITS = 64  # validate() spells log2 of it (6) and the bit mask (63) as literals
COUNTER_BITS_TOTAL = 8192
_WORDS = COUNTER_BITS_TOTAL // _WORD_BITS  # a power of two: validate() masks with 127
WINDOW_SIZE = COUNTER_BITS_TOTAL - _WORD_BITS
"""How far behind the greatest accepted counter a late counter may still be accepted."""


class ReplayWindow:
    """Sliding-window replay filter for one receiving keypair; not thread-safe."""

    __slots__ = ("_bitmap", "_next")

    def __init__(self) -> None:
        self._bitmap: list[int] = [0] * _WORDS
        self._next = 0  # greatest accepted counter + 1; 0 while nothing was accepted

    def reset(self) -> None:
        """Forget every counter seen, as for a fresh keypair."""
        bitmap = self._bitmap
        for i in range(_WORDS):
            bitmap[i] = 0
        self._next = 0

    def fresh_run(self, first: int, last: int) -> bool:
        """Whether counters first..last are all beyond every counter seen and within the
        limit, so `accept_run` may take them in one go without looking at the bitmap."""
        return self._next <= first <= last < REJECT_AFTER_MESSAGES

    def accept_run(self, first: int, last: int) -> None:
        """Mark the fresh run first..last (see `fresh_run`) as seen, a word at a time."""
        lo, hi = first + 1, last + 1  # stored shifted by one, as in validate()
        bitmap = self._bitmap
        current_index = self._next >> 6
        top_index = hi >> 6
        # words the window slides over start empty
        for i in range(current_index + 1, min(top_index, current_index + _WORDS) + 1):
            bitmap[i & 127] = 0
        lo = max(lo, (top_index - _WORDS + 1) << 6)  # older bits fall out of the ring
        word = lo >> 6
        while word <= top_index:
            start = max(lo, word << 6) & 63
            end = min(hi, (word << 6) + 63) & 63
            bitmap[word & 127] |= ((1 << (end - start + 1)) - 1) << start
            word += 1
        self._next = hi

    def validate(self, counter: int) -> bool:
        """Accept ``counter`` and mark it seen (True), or reject it (False).

        Rejected: counters at or above REJECT_AFTER_MESSAGES (or negative), counters already
        seen, and counters more than WINDOW_SIZE below the greatest accepted one.  Call it
        only after the packet authenticated, as the reference does.
        """
        # The word geometry is spelled as literals below (>> 6, & 127, & 63): module
        # constants would cost a global look-up each on this per-packet path.
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        counter += 1
        current = self._next
        if counter > current:
            # A new greatest counter: slide the window, zeroing every word it moves onto (at
            # most the whole ring).  Bits above the old greatest are all clear, so the new
            # one cannot have been seen: set it without testing.
            bitmap = self._bitmap
            index = counter >> 6
            current_index = current >> 6
            top = index - current_index
            if top == 1:
                bitmap[index & 127] = 0
            elif top:
                if top > _WORDS:
                    top = _WORDS
                for i in range(current_index + 1, current_index + top + 1):
                    bitmap[i & 127] = 0
            self._next = counter
            bitmap[index & 127] |= 1 << (counter & 63)
            return True
        if counter + WINDOW_SIZE < current or counter <= 0:  # too old, or negative
            return False
        bitmap = self._bitmap
        index = (counter >> 6) & 127
        bit = 1 << (counter & 63)
        word = bitmap[index]
        if word & bit:
            return False
        bitmap[index] = word | bit
        return True
