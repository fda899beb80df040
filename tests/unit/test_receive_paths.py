"""The bulk receive path and the general loop must agree on every batch: the same packets
delivered in the same order, the same drops by reason, the same peer state afterwards.

Two labs built alike (same keys, same seeded randomness) give two receivers in the same
state; one may take the bulk path, the other is held to the general loop. Transport
messages are sealed by hand with the sender's keys, so batches can hold any counter and
any inner packet."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from lab import Host, Lab, ipv4_packet, ipv6_packet

from wiresnake.crypto import NONCE
from wiresnake.protocol.constants import REJECT_AFTER_MESSAGES, REKEY_AFTER_TIME
from wiresnake.protocol.device import Device, Output, Run
from wiresnake.protocol.keypair import Keypair
from wiresnake.protocol.messages import TRANSPORT_HEADER, TYPE_INITIATION, TYPE_TRANSPORT
from wiresnake.protocol.peer import Endpoint, Peer

KEY_A = bytes(range(1, 33))
KEY_B = bytes(range(101, 133))
A_V6 = "fd00::1"
SCENARIOS = ("a_initiates", "b_initiates", "a_rekeys")

# the sources a batch may come from: a's own endpoint, an equal tuple that is another
# object (as a host's sticky source may be), and a roamed address
SOURCES: tuple[Endpoint, ...] = (("192.0.2.1", 51820), ("192.0.2.1", 51820), ("198.51.100.7", 40))

# inner packets: well formed, then each way the general loop refuses one
INNER_KINDS = (
    "v4",
    "v4_padded",
    "v4_overpadded",
    "v6",
    "keepalive",
    "v4_spoofed",
    "v6_spoofed",
    "v4_total_short",
    "v4_total_long",
    "short",
    "bad_version",
    "v6_short",
    "v6_total_long",
)
# what a whole run may carry: mostly what the bulk path takes, sometimes what it must not
CLEAN_INNER = ("v4",) * 6 + ("v4_padded", "v4_overpadded", "v4_spoofed", "v6", "keepalive")
COUNTER_KINDS = ("fresh", "replay", "ahead", "behind", "limit")
# "initiation" swaps in a copy of a handshake initiation seen on the wire during setup
OUTER_KINDS = (
    "none",
    "corrupt",
    "truncate",
    "unknown_index",
    "junk_type",
    "handshake_size",
    "initiation",
)


@dataclass(frozen=True)
class Clean:
    """A run of consecutive IPv4 packets of one kind from one source: what the bulk path
    takes when they are fresh and well formed; `back` starts it among counters used."""

    keypair: int
    count: int
    size: int
    source: int
    inner: str = "v4"
    back: int = 0


@dataclass(frozen=True)
class Odd:
    """One datagram, bent in the ways the plan names."""

    keypair: int
    counter: str
    pick: int
    inner: str
    size: int
    source: int
    outer: str


@dataclass(frozen=True)
class Batch:
    dt: float
    gro: bool
    items: tuple[Clean | Odd, ...]


clean = st.builds(
    Clean,
    keypair=st.integers(0, 1),
    count=st.integers(1, 20),
    size=st.sampled_from([0, 3, 40, 1380]),
    source=st.sampled_from([0, 0, 0, 1, 2]),
    inner=st.sampled_from(CLEAN_INNER),
    back=st.sampled_from([0] * 8 + [1, 2]),
)
odd = st.builds(
    Odd,
    keypair=st.sampled_from([0, 0, 0, 1]),
    counter=st.sampled_from(COUNTER_KINDS),
    pick=st.integers(0, 1 << 16),
    inner=st.sampled_from(INNER_KINDS),
    size=st.sampled_from([0, 3, 40, 1380]),
    source=st.sampled_from([0, 0, 1, 2]),
    outer=st.sampled_from(OUTER_KINDS),
)
batch = st.builds(
    Batch,
    dt=st.sampled_from([0.0, 0.0, 0.5, 5.0, 11.0, 30.0, 70.0]),
    gro=st.booleans(),
    items=st.lists(st.one_of(clean, clean, odd), min_size=1, max_size=5).map(tuple),
)
# a long clean run, alone or with one odd datagram somewhere in it: the bulk path takes
# the first whole, and must leave the second to the general loop untouched
bulkish = st.builds(
    lambda dt, gro, run, extra, where: Batch(
        dt, gro, (run,) if extra is None else ((run, extra) if where else (extra, run))
    ),
    dt=st.sampled_from([0.0, 0.5, 11.0]),
    gro=st.booleans(),
    run=st.builds(
        Clean,
        keypair=st.integers(0, 1),
        count=st.integers(8, 40),
        size=st.sampled_from([0, 40, 1380]),
        source=st.sampled_from([0, 0, 1, 2]),
        inner=st.sampled_from(CLEAN_INNER),
        back=st.sampled_from([0] * 8 + [1, 2]),
    ),
    extra=st.none() | odd | clean,
    where=st.booleans(),
)
plans = st.tuples(
    st.sampled_from(SCENARIOS), st.lists(st.one_of(bulkish, batch), min_size=1, max_size=4)
)


def build(scenario: str, *, general: bool) -> tuple[Lab, Host, Host]:
    """A live session between a and b; with a_rekeys, b also holds a's newer keypair,
    not yet confirmed by any packet on it."""
    lab = Lab(seed=7)
    a = lab.add_host("a", ("192.0.2.1", 51820), "10.0.0.1", key=KEY_A)
    b = lab.add_host("b", ("192.0.2.2", 51820), "10.0.0.2", key=KEY_B)
    lab.connect(a, b)
    b.device.allow(lab.peer(b, a), A_V6 + "/128")
    if general:
        b.device._bulk_min = 1 << 62
    first, second = (b, a) if scenario == "b_initiates" else (a, b)
    lab.send(first, second)
    lab.send(second, first)
    # b keeps a persistent keepalive, whose deadline each authenticated receipt moves
    b.device.set_persistent_keepalive(lab.peer(b, a), 25, lab.now)
    if scenario == "a_rekeys":
        lab.now += REKEY_AFTER_TIME + 1
        lab.filter = lambda s, d, data: data[0] != TYPE_TRANSPORT or d != b.endpoint
        lab.send(a, b)  # sends an initiation; the data on the old keys is lost
        lab.filter = None
        pb = lab.peer(b, a)
        assert pb.next is not None and pb.current is not None
    return lab, a, b


def inner_packet(kind: str, size: int) -> bytes:
    payload = bytes([size % 251]) * size
    if kind in ("v4", "v4_padded", "v4_overpadded", "v4_total_short", "v4_total_long"):
        pkt = bytearray(ipv4_packet("10.0.0.1", "10.0.0.2", payload))
        if kind == "v4_padded":
            pkt += bytes(-len(pkt) & 15)
        elif kind == "v4_overpadded":
            pkt += bytes(16 + (-len(pkt) & 15))
        elif kind == "v4_total_short":
            pkt[2:4] = (12).to_bytes(2, "big")
        elif kind == "v4_total_long":
            pkt[2:4] = (len(pkt) + 1).to_bytes(2, "big")
        return bytes(pkt)
    if kind == "v6":
        return ipv6_packet(A_V6, "fd00::2", payload)
    if kind == "v6_spoofed":
        return ipv6_packet("fd00::99", "fd00::2", payload)
    if kind == "v6_short":
        return ipv6_packet(A_V6, "fd00::2")[:39]
    if kind == "v6_total_long":
        pkt = bytearray(ipv6_packet(A_V6, "fd00::2", payload))
        pkt[4:6] = (len(payload) + 1).to_bytes(2, "big")
        return bytes(pkt)
    if kind == "v4_spoofed":
        return ipv4_packet("10.9.9.9", "10.0.0.2", payload)
    if kind == "short":
        return bytes([0x45]) * (size % 20)
    if kind == "bad_version":
        return b"\x55" + ipv4_packet("10.0.0.1", "10.0.0.2", payload)[1:]
    assert kind == "keepalive"
    return b""


def seal(kp: Keypair, counter: int, plaintext: bytes) -> bytes:
    header = TRANSPORT_HEADER.pack(TYPE_TRANSPORT, kp.remote_index, counter)
    return header + kp.send.encrypt(NONCE.pack(counter), plaintext, None)


class Sender:
    """Seals batches with a's keys, keeping track of the counters used on each keypair."""

    def __init__(self, lab: Lab, a: Host, b: Host) -> None:
        pa = lab.peer(a, b)
        self.initiation = next(w[3] for w in lab.wire if w[3][0] == TYPE_INITIATION)
        kps = [pa.previous, pa.current] if pa.previous is not None else [pa.current]
        self.keypairs = [k for k in kps if k is not None]
        # counters a sent already (some of them b saw while the session was set up)
        self.fresh = [k.send_counter for k in self.keypairs]
        self.used: list[list[int]] = [list(range(k.send_counter)) for k in self.keypairs]

    def _keypair(self, i: int) -> int:
        return min(i, len(self.keypairs) - 1)

    def _counter(self, k: int, kind: str, pick: int) -> int:
        fresh = self.fresh[k]
        if kind == "replay" and self.used[k]:
            return self.used[k][pick % len(self.used[k])]
        if kind == "ahead":
            counter = fresh + 1 + pick  # past the window for a large pick
        elif kind == "behind":
            counter = max(0, fresh - 8000 - pick % 400)  # around the window's far edge
        elif kind == "limit":
            counter = REJECT_AFTER_MESSAGES - 1 + pick % 2  # the last counter, and past it
        else:
            counter = fresh
        counter = min(counter, (1 << 64) - 1)  # what the header can carry
        if counter < REJECT_AFTER_MESSAGES:
            self.fresh[k] = max(fresh, counter + 1)
        self.used[k].append(counter)
        return counter

    def datagrams(self, b: Batch) -> list[tuple[Endpoint, bytes]]:
        out: list[tuple[Endpoint, bytes]] = []
        for item in b.items:
            k = self._keypair(item.keypair)
            kp = self.keypairs[k]
            src = SOURCES[item.source]
            if isinstance(item, Clean):
                self.fresh[k] = max(0, self.fresh[k] - item.back)
                for _ in range(item.count):
                    msg = seal(
                        kp, self._counter(k, "fresh", 0), inner_packet(item.inner, item.size)
                    )
                    out.append((src, msg))
                continue
            msg = seal(
                kp, self._counter(k, item.counter, item.pick), inner_packet(item.inner, item.size)
            )
            if item.outer == "corrupt":
                bent = bytearray(msg)
                bent[16 + item.pick % (len(msg) - 16)] ^= 1 << (item.pick % 8)
                msg = bytes(bent)
            elif item.outer == "truncate":
                msg = msg[: item.pick % len(msg)]
            elif item.outer == "unknown_index":
                msg = msg[:4] + struct.pack("<I", kp.remote_index ^ 0x5A5A) + msg[8:]
            elif item.outer == "junk_type":
                msg = bytes([9]) + msg[1:]
            elif item.outer == "handshake_size":
                msg = bytes([1 + item.pick % 3]) + msg[1:]  # a handshake type, wrong size
            elif item.outer == "initiation":
                msg = self.initiation
            out.append((src, msg))
        return out


def gro_runs(datagrams: list[tuple[Endpoint, bytes]]) -> list[Run]:
    """Glue datagrams as UDP_GRO would: one source object, equal sizes, a last one
    no longer than the rest ends the run."""
    runs: list[Run] = []
    i = 0
    while i < len(datagrams):
        src, first = datagrams[i]
        parts = [first]
        i += 1
        while i < len(datagrams) and datagrams[i][0] is src and len(datagrams[i][1]) == len(first):
            parts.append(datagrams[i][1])
            i += 1
        if i < len(datagrams) and datagrams[i][0] is src and 0 < len(datagrams[i][1]) < len(first):
            parts.append(datagrams[i][1])
            i += 1
        runs.append((src, b"".join(parts), len(first) if len(parts) > 1 else 0))
    return runs


def keypair_state(kp: Keypair | None) -> tuple[Any, ...] | None:
    if kp is None:
        return None
    return (kp.local_index, kp.remote_index, kp.send_counter, kp.created, kp.initiator)


def peer_state(p: Peer) -> dict[str, Any]:
    return {
        "endpoint": p.endpoint,
        "rx_bytes": p.rx_bytes,
        "tx_bytes": p.tx_bytes,
        "keypairs": [keypair_state(k) for k in (p.previous, p.current, p.next)],
        "last_handshake": p.last_handshake,
        "last_sent_handshake": p.last_sent_handshake,
        "handshake_attempts": p.handshake_attempts,
        "need_another_keepalive": p.need_another_keepalive,
        "sent_last_minute_handshake": p.sent_last_minute_handshake,
        "retransmit_at": p.retransmit_at,
        "keepalive_at": p.keepalive_at,
        "new_handshake_at": p.new_handshake_at,
        "zero_keys_at": p.zero_keys_at,
        "persistent_keepalive_at": p.persistent_keepalive_at,
        "staged": list(p.staged),
        "next_deadline": p.next_deadline(),
    }


def drops(dev: Device) -> dict[str, int]:
    return {k: v for k, v in dev.counters.items() if k != "bulk_batches" and v}


def probes(p: Peer, sender: Sender) -> list[bool]:
    """Which later counters each keypair still accepts: every one used, its neighbours,
    the window's edge behind the newest, and beyond it."""
    seen = {c for used in sender.used for c in used}
    top = max(sender.fresh)
    candidates = sorted(
        {c + d for c in seen for d in (-1, 0, 1)} | {top + 9000, max(0, top - 8129), top - 8127}
    )
    candidates = [c for c in candidates if 0 <= c < 1 << 64]
    return [kp.replay.validate(c) for kp in p.keypairs() for c in candidates]


def same_output(x: Output, y: Output) -> None:
    assert x.packets == y.packets
    assert x.datagrams == y.datagrams


def run_both(scenario: str, batches: list[Batch]) -> tuple[Device, Device]:
    lab1, a1, b1 = build(scenario, general=False)
    lab2, a2, b2 = build(scenario, general=True)
    p1, p2 = lab1.peer(b1, a1), lab2.peer(b2, a2)
    assert peer_state(p1) == peer_state(p2)  # the two labs really are alike
    sender = Sender(lab1, a1, b1)
    now = lab1.now
    for b in batches:
        now += b.dt
        t1, t2 = b1.device.tick(now), b2.device.tick(now)
        same_output(t1, t2)
        datagrams = sender.datagrams(b)
        if b.gro:
            runs = gro_runs(datagrams)
            o1, o2 = b1.device.from_network_runs(runs, now), b2.device.from_network_runs(runs, now)
        else:
            o1, o2 = b1.device.from_network(datagrams, now), b2.device.from_network(datagrams, now)
        same_output(o1, o2)
        assert drops(b1.device) == drops(b2.device)
        assert peer_state(p1) == peer_state(p2)
        assert type(p1.endpoint) is type(p2.endpoint)
    assert b2.device.counters["bulk_batches"] == 0  # the seam holds the general loop
    assert probes(p1, sender) == probes(p2, sender)
    now += 1.0
    same_output(b1.device.tick(now), b2.device.tick(now))
    assert peer_state(p1) == peer_state(p2)
    return b1.device, b2.device


# RECEIVE_PATHS_EXAMPLES=20000 searches deeper by hand (about 3 minutes)
@settings(max_examples=int(os.environ.get("RECEIVE_PATHS_EXAMPLES", 400)), deadline=None)
@given(plans)
def test_bulk_and_general_paths_agree(plan: tuple[str, list[Batch]]) -> None:
    scenario, batches = plan
    bulk, _ = run_both(scenario, batches)
    event(f"batches the bulk path took: {min(bulk.counters['bulk_batches'], 2)}")


def test_a_clean_batch_takes_the_bulk_path_only_where_allowed() -> None:
    # the property above compares something only if the bulk path really runs
    clean_batch = Batch(0.0, False, (Clean(0, 16, 1380, 0),))
    bulk, general = run_both("a_initiates", [clean_batch])
    assert bulk.counters["bulk_batches"] == 1 and general.counters["bulk_batches"] == 0
