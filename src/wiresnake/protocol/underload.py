"""Handshake messages under load: cheap checks for all, Diffie-Hellman only for the proven.

Under load, as in the kernel's receive.c, a handshake message earns the Diffie-Hellman work
only with a valid MAC2, which proves that its source received our cookie, and then only
within the ratelimit of its address; one with a valid MAC1 and no valid MAC2 earns a cookie
reply. The kernel looks at every message that fits in its handshake queue. Here one batch
of received datagrams holds thousands when a flood arrives in GRO super-packets, so the
work per batch is bounded per source and in total, in a way that never costs an honest
peer its turn:

- At most `READ_PER_SOURCE` messages of each source (address and port) are read per batch;
  the rest of a GRO run is never even sliced out. An honest peer sends one handshake
  message at a time, so only a source flooding by itself has messages left unread.
- MAC2 is checked only where it can be valid: the source was sent a cookie under the
  current secret, and the MAC2 is not all zero.
- Every MAC2-valid message is set aside before any budget is spent; at most
  `UNDER_LOAD_HANDSHAKES_PER_BATCH` of them get Diffie-Hellman, in the batch's order, each
  within its address's ratelimit. An unproven message never takes a proven one's place.
- A cookie reply (an XChaCha20-Poly1305 seal) goes out within a token bucket per source, and
  at most `COOKIE_REPLIES_PER_BATCH` per batch, from a budget of their own. A quiet source,
  such as a peer that just started, has a full bucket and is answered; a source flooding
  us has spent its tokens and costs no MAC1 check.

The price of bounds per source: an attacker who spoofs an honest peer's exact address and
port (not just its address) can crowd that peer's messages out of a batch or spend its
cookie tokens; one who can do that can usually drop its packets as well.
"""

from __future__ import annotations

import socket
from collections import Counter

from wiresnake.protocol.constants import (
    COOKIE_REPLIES_PER_BATCH,
    READ_PER_SOURCE,
    UNDER_LOAD_HANDSHAKES_PER_BATCH,
)
from wiresnake.protocol.cookie import CookieChecker, mac2_matches
from wiresnake.protocol.messages import (
    INITIATION_MAC1_OFFSET,
    RESPONSE_MAC1_OFFSET,
    TYPE_INITIATION,
    TYPE_RESPONSE,
)
from wiresnake.protocol.peer import Endpoint
from wiresnake.protocol.ratelimiter import Ratelimiter

__all__ = ["MAX_ISSUED", "UnderLoad", "address_bytes"]

_ZERO16 = bytes(16)
# past this many sources sent a cookie under one secret, they are no longer told apart
MAX_ISSUED = 1 << 16
_MAC1_OFFSETS = {TYPE_INITIATION: INITIATION_MAC1_OFFSET, TYPE_RESPONSE: RESPONSE_MAC1_OFFSET}
_UNSET = b"unset"


def address_bytes(endpoint: Endpoint) -> bytes:
    host = endpoint[0]
    return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)


class UnderLoad:
    """The sorting of handshake batches under load, and the cookie replies' buckets."""

    __slots__ = ("_issued", "_issued_by", "cookie_replies")

    def __init__(self) -> None:
        # keyed by address and port; full, it lets new sources through, since the cap per
        # batch bounds the work anyway and a new source must not be refused its cookie
        self.cookie_replies = Ratelimiter(admit_when_full=True)
        # the sources sent a cookie under the checker's current secret: only they can hold
        # a valid MAC2 (past MAX_ISSUED of them, any source may)
        self._issued: set[Endpoint] = set()
        self._issued_by: tuple[CookieChecker, float] | None = None

    def sort(
        self,
        runs: list[tuple[Endpoint, bytes, int]],
        checker: CookieChecker,
        ratelimiter: Ratelimiter,
        now: float,
        replies: list[tuple[Endpoint, bytes]],
        counters: Counter[str],
    ) -> list[tuple[Endpoint, bytes]]:
        """The messages of `runs` that get Diffie-Hellman, in their order; cookie replies
        are appended to `replies`. A run is (source, data, size): well-framed initiations or
        responses of that size glued together, read only as far as its source is allowed."""
        reads: dict[Endpoint, int] = {}
        proven: list[tuple[Endpoint, bytes, bytes]] = []
        buckets = self.cookie_replies
        issued = self._issued
        if self._issued_by != (checker, checker.secret_born):
            issued.clear()  # a new key, or a new secret: every cookie sent is void
        everyone = len(issued) >= MAX_ISSUED
        sent = unread = withheld = 0
        for src, run, size in runs:
            count = len(run) // size
            read = reads.get(src, 0)
            allowed = min(count, READ_PER_SOURCE - read)
            if allowed <= 0:
                unread += count
                continue
            reads[src] = read + allowed
            unread += count - allowed
            mac1_offset = _MAC1_OFFSETS[run[0]]
            mac2_at = mac1_offset + 16
            source = b""  # address and port, as the cookie binds them; made when needed
            cookie: bytes | None = _UNSET
            for at in range(0, allowed * size, size):
                data = run if size == len(run) else run[at : at + size]
                maybe_mac2 = data[mac2_at : mac2_at + 16] != _ZERO16 and (everyone or src in issued)
                if not maybe_mac2 and sent >= COOKIE_REPLIES_PER_BATCH:
                    withheld += 1
                    continue
                if not source:
                    try:
                        source = address_bytes(src) + src[1].to_bytes(2, "big")
                    except (OSError, ValueError, OverflowError):
                        counters["malformed"] += allowed
                        break
                if maybe_mac2:
                    if cookie is _UNSET:
                        cookie = checker.cookie_for(source, now)
                    if cookie is not None and mac2_matches(cookie, data, mac1_offset):
                        if checker.check_mac1(data, mac1_offset):
                            proven.append((src, data, source[:-2]))
                        else:
                            counters["bad_mac1"] += 1
                        continue
                if sent >= COOKIE_REPLIES_PER_BATCH or not buckets.ready(source, now):
                    withheld += 1
                elif not checker.check_mac1(data, mac1_offset):
                    counters["bad_mac1"] += 1
                else:
                    buckets.take(source, now)
                    sender = int.from_bytes(data[4:8], "little")
                    born = checker.secret_born
                    reply = checker.create_reply(data, mac1_offset, sender, source, now)
                    if checker.secret_born != born:
                        issued.clear()
                    if len(issued) < MAX_ISSUED:
                        issued.add(src)
                    replies.append((src, reply))
                    sent += 1
        self._issued_by = (checker, checker.secret_born)
        admitted: list[tuple[Endpoint, bytes]] = []
        for src, data, address in proven:
            if len(admitted) >= UNDER_LOAD_HANDSHAKES_PER_BATCH:
                unread += 1  # only ever for another proven message
            elif ratelimiter.allow(address, now):
                admitted.append((src, data))
            else:
                counters["ratelimited"] += 1
        if sent:
            counters["cookie_reply_sent"] += sent
        if withheld:
            counters["cookie_withheld"] += withheld
        if unread:
            counters["handshake_dropped"] += unread
        return admitted
