"""A device under a handshake flood, on the fake clock: proven messages first, cookie replies
bounded per source and per batch, GRO runs read only as deep as a source is allowed."""

from __future__ import annotations

import os
import random

from lab import Host, Lab

from wiresnake.crypto import hash, mac
from wiresnake.protocol.constants import (
    COOKIE_REFRESH_TIME,
    COOKIE_REPLIES_PER_BATCH,
    LABEL_MAC1,
    READ_PER_SOURCE,
    REKEY_TIMEOUT,
    UNDER_LOAD_HANDSHAKES_PER_BATCH,
)
from wiresnake.protocol.device import Datagram, Run
from wiresnake.protocol.messages import (
    INITIATION_MAC1_OFFSET,
    TYPE_COOKIE_REPLY,
    TYPE_INITIATION,
    TYPE_RESPONSE,
)
from wiresnake.protocol.peer import Endpoint
from wiresnake.protocol.ratelimiter import PACKETS_BURSTABLE, PACKETS_PER_SECOND

INIT, RESP, COOKIE = TYPE_INITIATION, TYPE_RESPONSE, TYPE_COOKIE_REPLY
V_ENDPOINT = ("192.0.2.100", 51820)


def victim(lab: Lab) -> Host:
    """A host that is under load from its first handshake message on."""
    return lab.add_host("v", V_ENDPOINT, "10.0.0.100", under_load_handshakes=1)


def flood_initiation(v: Host, rnd: random.Random, mac2: bytes | None = None) -> bytes:
    """What an attacker who knows V's public key sends: a valid MAC1 on random bytes, and a
    zero or random MAC2 (none that a cookie of V's made)."""
    assert v.device.public_key is not None
    body = bytes([INIT, 0, 0, 0]) + rnd.randbytes(INITIATION_MAC1_OFFSET - 4)
    body += mac(hash(LABEL_MAC1, v.device.public_key), body)
    if mac2 is None:
        mac2 = rnd.randbytes(16) if rnd.random() < 0.5 else bytes(16)
    return body + mac2


def flood_source(i: int) -> Endpoint:
    return (f"198.51.{100 + i // 250}.{1 + i % 250}", 1024 + i)


def proven_initiation(lab: Lab, v: Host, name: str, index: int) -> tuple[Host, bytes]:
    """A peer of V that got V's cookie, and its next initiation, which carries MAC2 (held
    back from V, for the test to deliver, as is all it sends later)."""
    held: set[Endpoint] = getattr(lab, "held", set())
    lab.held = held  # type: ignore[attr-defined]
    a = lab.add_host(name, (f"192.0.2.{index}", 51820), f"10.0.0.{index}")
    lab.connect(a, v)
    lab.filter = lambda s, d, data: s not in held
    lab.send(a, v)
    assert [w[3][0] for w in lab.datagrams(a)] == [INIT]
    assert [w[3][0] for w in lab.datagrams(v)][-1] == COOKIE
    assert a.device.counters["cookie_received"] == 1
    held.add(a.endpoint)
    lab.run(REKEY_TIMEOUT + 0.4)  # the retransmission, now with MAC2, caught on the wire
    init = lab.datagrams(a, INIT)[-1][3]
    assert init[132:148] != bytes(16)
    return a, init


def answers(out: list[Datagram], kind: int, to: Endpoint | None = None) -> list[bytes]:
    return [d for ep, d in out if d[0] == kind and (to is None or ep == to)]


def test_a_mac2_valid_initiation_behind_thousands_of_unproven_ones_gets_its_response() -> None:
    lab = Lab()
    v = victim(lab)
    a, init = proven_initiation(lab, v, "a", 1)
    rnd = random.Random(1)
    batch = [(flood_source(i), flood_initiation(v, rnd)) for i in range(3000)]
    batch.append((a.endpoint, init))
    out = v.device.from_network(batch, lab.now).datagrams
    assert len(answers(out, RESP, a.endpoint)) == 1
    assert len(answers(out, COOKIE)) <= COOKIE_REPLIES_PER_BATCH


def test_the_proven_come_first_and_only_they_compete_for_diffie_hellman() -> None:
    lab = Lab()
    v = victim(lab)
    count = UNDER_LOAD_HANDSHAKES_PER_BATCH + 2
    peers = [proven_initiation(lab, v, f"p{i}", 10 + i) for i in range(count)]
    rnd = random.Random(2)
    batch: list[Datagram] = []
    for i, (p, init) in enumerate(peers):
        batch += [(flood_source(100 * i + k), flood_initiation(v, rnd)) for k in range(100)]
        batch.append((p.endpoint, init))
    out = v.device.from_network(batch, lab.now).datagrams
    # the budget goes to the first proven messages in arrival order, none to the flood's
    answered = [ep for ep, d in out if d[0] == RESP]
    assert answered == [p.endpoint for p, _ in peers[:UNDER_LOAD_HANDSHAKES_PER_BATCH]]
    # the proven past the budget are dropped, not the flood's messages in their stead:
    # their peers retry and are answered in a later batch
    late = peers[UNDER_LOAD_HANDSHAKES_PER_BATCH:]
    out = v.device.from_network([(p.endpoint, init) for p, init in late], lab.now + 0.1)
    assert [ep for ep, d in out.datagrams if d[0] == RESP] == [p.endpoint for p, _ in late]


def test_a_gro_run_is_read_only_as_deep_as_its_source_is_allowed() -> None:
    lab = Lab()
    v = victim(lab)
    a, init = proven_initiation(lab, v, "a", 1)
    rnd = random.Random(3)
    dropped = v.device.counters["handshake_dropped"]
    runs: list[Run] = [
        (flood_source(i), b"".join(flood_initiation(v, rnd) for _ in range(64)), 148)
        for i in range(100)
    ]
    runs.append((a.endpoint, init, 0))
    out = v.device.from_network_runs(runs, lab.now).datagrams
    assert len(answers(out, RESP, a.endpoint)) == 1
    assert v.device.counters["handshake_dropped"] - dropped == 100 * (64 - READ_PER_SOURCE)


def test_a_run_mixing_message_types_is_taken_apart() -> None:
    lab = Lab()
    v = victim(lab)
    a, init = proven_initiation(lab, v, "a", 1)
    rnd = random.Random(4)
    # 148 bytes that are not an initiation, in the middle of a run of them from a's source
    junk = bytes([4, 0, 0, 0]) + rnd.randbytes(144)
    run = flood_initiation(v, rnd) + junk + init
    out = v.device.from_network_runs([(a.endpoint, run, 148)], lab.now).datagrams
    assert len(answers(out, RESP, a.endpoint)) == 1
    assert v.device.counters["unknown_index"] >= 1


def test_cookie_replies_are_ratelimited_per_source() -> None:
    lab = Lab()
    v = victim(lab)
    rnd = random.Random(5)
    noisy, quiet = ("203.0.113.1", 4000), ("203.0.113.2", 4000)
    replies = 0
    seconds, step = 2.0, 0.001
    for k in range(int(seconds / step)):
        msgs = [(noisy, flood_initiation(v, rnd, bytes(16))) for _ in range(4)]
        out = v.device.from_network(msgs, lab.now + k * step)
        replies += len(answers(out.datagrams, COOKIE, noisy))
    # 8000 initiations, a token bucket's worth of replies
    assert (
        PACKETS_PER_SECOND * seconds
        <= replies
        <= PACKETS_BURSTABLE + PACKETS_PER_SECOND * (seconds + step)
    )
    # another source is answered at once, even behind the noisy one in the same batch
    batch = [(noisy, flood_initiation(v, rnd, bytes(16))) for _ in range(4)]
    batch.append((quiet, flood_initiation(v, rnd, bytes(16))))
    out = v.device.from_network(batch, lab.now + seconds + step)
    assert len(answers(out.datagrams, COOKIE, quiet)) == 1


def test_a_new_peer_gets_its_cookie_while_a_hundred_sources_flood() -> None:
    lab = Lab()
    v = victim(lab)
    rnd = random.Random(6)
    sources = [flood_source(i) for i in range(100)]
    t = lab.now
    for _ in range(200):  # 20 ms of a 100-source flood, in GRO runs
        t += 0.0001
        runs: list[Run] = [
            (s, b"".join(flood_initiation(v, rnd) for _ in range(8)), 148) for s in sources
        ]
        out = v.device.from_network_runs(runs, t).datagrams
        assert len(answers(out, COOKIE)) <= COOKIE_REPLIES_PER_BATCH
    # a peer's first initiation (no cookie yet) arrives last in a batch of the flood
    a = lab.add_host("a", ("192.0.2.1", 51820), "10.0.0.1")
    lab.connect(a, v)
    lab.filter = lambda s, d, data: False
    lab.send(a, v)
    init = lab.datagrams(a, INIT)[-1][3]
    runs = [(s, b"".join(flood_initiation(v, rnd) for _ in range(8)), 148) for s in sources]
    runs.append((a.endpoint, init, 0))
    out = v.device.from_network_runs(runs, t + 0.0001).datagrams
    assert len(answers(out, COOKIE, a.endpoint)) == 1
    assert not answers(out, RESP)


def test_cookie_replies_per_batch_are_capped_across_many_new_sources() -> None:
    lab = Lab()
    v = victim(lab)
    rnd = random.Random(7)
    batch = [(flood_source(i), flood_initiation(v, rnd, bytes(16))) for i in range(500)]
    out = v.device.from_network(batch, lab.now).datagrams
    assert len(answers(out, COOKIE)) == COOKIE_REPLIES_PER_BATCH
    assert v.device.counters["cookie_withheld"] == 500 - COOKIE_REPLIES_PER_BATCH


def test_a_flood_with_bad_mac1_costs_no_cookie_and_no_token() -> None:
    lab = Lab()
    v = victim(lab)
    src = ("203.0.113.9", 4000)
    junk = [(src, bytes([INIT, 0, 0, 0]) + os.urandom(144)) for _ in range(50)]
    out = v.device.from_network(junk, lab.now).datagrams
    assert not out
    # the source's bucket is untouched: its next genuine-looking message is answered
    rnd = random.Random(8)
    out = v.device.from_network([(src, flood_initiation(v, rnd, bytes(16)))], lab.now).datagrams
    assert len(answers(out, COOKIE, src)) == 1


def test_a_cookie_outlives_neither_its_secret_nor_a_new_one() -> None:
    lab = Lab()
    v = victim(lab)
    a, init = proven_initiation(lab, v, "a", 1)
    rnd = random.Random(9)
    later = lab.now + COOKIE_REFRESH_TIME + 1
    # the secret has expired: the MAC2 proves nothing, and a's message earns a new cookie
    out = v.device.from_network([(a.endpoint, init)], later).datagrams
    assert not answers(out, RESP) and len(answers(out, COOKIE, a.endpoint)) == 1
    # that reply drew a new secret; a MAC2 made with the old cookie is still refused
    other = ("203.0.113.7", 4000)
    out = v.device.from_network([(other, flood_initiation(v, rnd, bytes(16)))], later)
    assert len(answers(out.datagrams, COOKIE, other)) == 1
    out = v.device.from_network([(a.endpoint, init)], later + 1).datagrams
    assert not answers(out, RESP)
