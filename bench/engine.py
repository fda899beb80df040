"""Benchmark the sans-IO engine (protocol/device.py) against the raw primitives it is built on.

Run: .venv/bin/python bench/engine.py [--quick]

Everything in one process and one run, so the ratios compare like with like:

1. raw `cryptography` ChaCha20-Poly1305 encrypt and decrypt of 1420-byte packets;
2. transport through the engine API, two Devices with a completed handshake, batches of 64
   IPv4 packets of 1420 bytes: `from_tunnel` (encrypt) and `from_network` (decrypt), each as
   a ratio of the raw AEAD rate (the goal: the engine keeps at least 60% of it);
3. full 1-RTT handshakes per second between two Devices, beside the X25519 floor;
4. one Device with 10,000 peers and 100,000 allowed-IPs prefixes: build time, look-ups per
   second through `device.allowed_ips.lookup`, and tracemalloc memory per idle peer.

Every rate is measured several times; the table shows the median and the best of those
repeats.  Ratios are paired: each engine run is timed between two raw runs (raw, engine,
raw) and compared with their mean, and the median of those per-repeat ratios is printed,
so load from other processes that drifts during the run affects both sides alike.  The
garbage collector stays on (a daemon runs with it on) but is flushed before each timed
section.  Not a test: nothing is asserted, but a transport run that drops any packet is
reported.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import platform
import random
import statistics
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import cryptography
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wiresnake.crypto import generate_private_key
from wiresnake.protocol.constants import REJECT_AFTER_TIME
from wiresnake.protocol.device import Datagram, Device, Output
from wiresnake.protocol.peer import Endpoint, Peer

PACKET_SIZE = 1420  # the default MTU: a full-size tunnel packet, no padding needed
BATCH = 64
GOAL_TRANSPORT = 0.60  # the engine keeps at least 60% of raw AEAD throughput
GOAL_PEER_BYTES = 4096  # under 4 KiB per idle peer
PEERS = 10_000
PREFIXES_PER_PEER = 10  # 100,000 in all

EP_A: Endpoint = ("192.0.2.1", 51820)
EP_B: Endpoint = ("192.0.2.2", 51820)
IP_A, IP_B = "10.0.0.1", "10.0.0.2"
NONCE = struct.Struct("<4xQ")  # WireGuard's transport nonce, as the engine builds it


@dataclass(frozen=True)
class Sizes:
    repeats: int
    transport_batches: int  # batches of 64 per timed repeat, per direction
    handshakes: int  # full handshakes per timed repeat
    build_repeats: int
    lookups: int  # look-ups per timed repeat


FULL = Sizes(repeats=9, transport_batches=300, handshakes=250, build_repeats=3, lookups=200_000)
QUICK = Sizes(repeats=3, transport_batches=80, handshakes=50, build_repeats=1, lookups=50_000)


@dataclass
class Row:
    name: str
    samples: list[float]  # one rate (or size/time) per repeat
    unit: str
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return max(self.samples) if self.unit.endswith("/s") else min(self.samples)


def _timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ipv4_packet(src: str, dst: str, size: int, rng: random.Random) -> bytes:
    """An IPv4 packet of exactly `size` bytes (the engine does not check checksums)."""
    header = bytes([0x45, 0, size >> 8, size & 0xFF, 0, 0, 0x40, 0, 64, 17, 0, 0])
    addrs = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    return header + addrs + rng.randbytes(size - 20)


# ---------------------------------------------------------------------------- wiring


def make_pair() -> tuple[Device, Device]:
    """Two devices that are each other's peer, with /32 allowed IPs and endpoints, as the
    unit tests' lab connects them."""
    a, b = Device(generate_private_key()), Device(generate_private_key())
    for x, y, ep, ip in ((a, b, EP_B, IP_B), (b, a, EP_A, IP_A)):
        assert y.public_key is not None
        peer = x.add_peer(y.public_key)
        x.allow(peer, ip + "/32")
        x.set_endpoint(peer, ep)
    return a, b


def shuttle(devices: dict[Endpoint, Device], src: Endpoint, out: Output, now: float) -> None:
    """Deliver `out`'s datagrams, and everything they cause, on a lossless zero-latency
    network at a fixed time; each device gets one from_network batch per sender round."""
    pending: list[tuple[Endpoint, list[Datagram]]] = [(src, out.datagrams)]
    while pending:
        s, datagrams = pending.pop()
        by_dst: dict[Endpoint, list[Datagram]] = {}
        for dst, data in datagrams:
            by_dst.setdefault(dst, []).append((s, data))
        for dst, items in by_dst.items():
            res = devices[dst].from_network(items, now)
            if res.datagrams:
                pending.append((dst, res.datagrams))


def handshake(a: Device, b: Device, now: float, packet: bytes) -> None:
    """One packet from a to b: starts a handshake if a has no usable session, and is
    delivered (confirming the session to b) once the handshake completes."""
    shuttle({EP_A: a, EP_B: b}, EP_A, a.from_tunnel([packet], now), now)


# ---------------------------------------------------------------------------- 1 + 2


def bench_transport(sizes: Sizes) -> tuple[list[Row], list[str]]:
    rng = random.Random(1)
    now = 1000.0
    a, b = make_pair()
    batch = [ipv4_packet(IP_A, IP_B, PACKET_SIZE, rng) for _ in range(BATCH)]
    handshake(a, b, now, batch[0])
    peer_b = b.peer(a.public_key or b"")
    assert peer_b is not None and peer_b.current is not None, "handshake did not complete"
    b.counters.clear()

    n_batches = sizes.transport_batches
    n = n_batches * BATCH
    aead = ChaCha20Poly1305(os.urandom(32))
    seal, open_ = aead.encrypt, aead.decrypt
    payload = batch[1]
    nonces = [NONCE.pack(i) for i in range(n)]
    sealed = [seal(nonce, payload, None) for nonce in nonces]
    # for comparison: encrypt_into a preallocated slot after a 16-byte header, the
    # alternative to the engine's header + ciphertext concatenation
    seal_into = getattr(aead, "encrypt_into", None)
    slot = bytearray(16 + PACKET_SIZE + 16)
    slot_view = memoryview(slot)[16:]

    def raw_encrypt() -> None:
        for nonce in nonces:
            seal(nonce, payload, None)

    def raw_encrypt_into() -> None:
        assert seal_into is not None
        for nonce in nonces:
            seal_into(nonce, payload, None, slot_view)

    def raw_decrypt() -> None:
        for nonce, ct in zip(nonces, sealed, strict=True):
            open_(nonce, ct, None)

    from_tunnel = a.from_tunnel
    from_network = b.from_network

    def engine_encrypt() -> None:
        for _ in range(n_batches):
            from_tunnel(batch, now)

    samples: dict[str, list[float]] = {
        k: [] for k in ("raw_enc", "raw_enc_into", "raw_dec", "eng_enc", "eng_dec")
    }
    # paired ratios: each engine run against the mean time of the raw runs just before and
    # just after it (raw, engine, raw), which cancels load that drifts during the run
    ratios: dict[str, list[float]] = {"enc": [], "dec": []}
    problems: list[str] = []
    delivered = 0
    for _ in range(sizes.repeats):
        # fresh datagrams from the sender (new counters, so b's replay window takes them
        # all), generated outside the timed sections
        inbound = [
            [(EP_A, data) for _, data in from_tunnel(batch, now).datagrams]
            for _ in range(n_batches)
        ]
        got = [0]

        def engine_decrypt(inbound: list[list[Datagram]] = inbound, got: list[int] = got) -> None:
            k = 0
            for datagrams in inbound:
                k += len(from_network(datagrams, now).packets)
            got[0] += k

        for key, raw, engine in (
            ("enc", raw_encrypt, engine_encrypt),
            ("dec", raw_decrypt, engine_decrypt),
        ):
            before, t, after = _timed(raw), _timed(engine), _timed(raw)
            samples[f"raw_{key}"] += [n / before, n / after]
            samples[f"eng_{key}"].append(n / t)
            ratios[key].append((before + after) / 2 / t)
        if seal_into is not None:
            samples["raw_enc_into"].append(n / _timed(raw_encrypt_into))
        delivered += got[0]
        del inbound
    expected = sizes.repeats * n
    if delivered != expected or b.counters:
        problems.append(
            f"from_network delivered {delivered} of {expected} packets; drops: {dict(b.counters)}"
        )
    if a.counters:
        problems.append(f"from_tunnel drops: {dict(a.counters)}")

    raw_enc = Row("raw AEAD encrypt, 1420 B", samples["raw_enc"], "pkt/s")
    raw_dec = Row("raw AEAD decrypt, 1420 B", samples["raw_dec"], "pkt/s")
    eng_enc = Row("engine from_tunnel, 64/batch", samples["eng_enc"], "pkt/s")
    eng_dec = Row("engine from_network, 64/batch", samples["eng_dec"], "pkt/s")
    rows = [raw_enc]
    if samples["raw_enc_into"]:
        rows.append(Row("raw AEAD encrypt_into slot", samples["raw_enc_into"], "pkt/s"))
    rows += [raw_dec, eng_enc, eng_dec]
    for eng, raw, key in ((eng_enc, raw_enc, "enc"), (eng_dec, raw_dec, "dec")):
        ratio = statistics.median(ratios[key])
        overhead = 1e6 / eng.median - 1e6 / raw.median
        met = "MET" if ratio >= GOAL_TRANSPORT else "NOT MET"
        eng.note = (
            f"{ratio:.2f} of raw (paired median, range {min(ratios[key]):.2f}-"
            f"{max(ratios[key]):.2f}); +{overhead:.2f} us/pkt; goal >= {GOAL_TRANSPORT:.2f}: {met}"
        )
    return rows, problems


# ---------------------------------------------------------------------------- 3


def bench_handshakes(sizes: Sizes) -> list[Row]:
    """Full handshakes between two Devices, through the public API only.

    To force a new handshake each round without touching engine internals, the fake clock
    jumps past REJECT_AFTER_TIME (180 s) before each one: the session has expired, so a's
    next packet is staged and a fresh initiation goes out, exactly as in a real expiry.  The
    jump also keeps each round in a new one-second load window (so b never turns "under
    load" and asks for cookies, which a one-second burst of many handshakes would cause) and
    gives strictly increasing TAI64N timestamps and a quiet flood limiter.  No timers are
    ticked.  One round, all timed: a.from_tunnel (stage the packet, create the initiation),
    b.from_network (consume it, respond), a.from_network (consume the response, send the
    staged packet) and b.from_network (decrypt it, confirming the session): the 1-RTT plus
    the one transport packet that completes it on the responder.
    """
    rng = random.Random(2)
    a, b = make_pair()
    packet = ipv4_packet(IP_A, IP_B, 100, rng)
    clock = [1000.0]
    step = REJECT_AFTER_TIME + 1.0
    handshake(a, b, clock[0], packet)  # warm-up
    peer_a = a.peer(b.public_key or b"")
    assert peer_a is not None
    rounds = sizes.handshakes

    def run() -> None:
        for _ in range(rounds):
            clock[0] += step
            handshake(a, b, clock[0], packet)

    # the X25519 floor: a handshake makes two ephemeral keys (fixed-base multiplications)
    # and six Diffie-Hellman exchanges (static-static is precomputed per peer)
    priv = X25519PrivateKey.generate()
    pubs = [X25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(64)]
    raws = [os.urandom(32) for _ in range(64)]

    def dh() -> None:
        for pub in pubs:
            priv.exchange(X25519PublicKey.from_public_bytes(pub))

    def keygen() -> None:
        for raw in raws:
            X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()

    hs, floor, ratios = [], [], []
    for _ in range(sizes.repeats):
        before = peer_a.last_handshake
        hs.append(rounds / _timed(run))
        assert peer_a.last_handshake != before and a.counters == b.counters == {}
        per_dh = _timed(dh) / len(pubs)
        per_keygen = _timed(keygen) / len(raws)
        floor.append(1 / (6 * per_dh + 2 * per_keygen))
        ratios.append(hs[-1] / floor[-1])
    row = Row("handshakes, full 1-RTT", hs, "hs/s")
    floor_row = Row("X25519 floor (2 keygen + 6 DH)", floor, "hs/s")
    row.note = (
        f"{statistics.median(ratios):.2f} of the X25519 floor (paired median); "
        f"{1e6 / row.median:.0f} us each"
    )
    return [row, floor_row]


# ---------------------------------------------------------------------------- 4

V4_LENGTHS = [(32, 30), (24, 35), (28, 5), (29, 3), (30, 2), (16, 8), (20, 7), (22, 5)]
V6_LENGTHS = [(128, 30), (64, 40), (48, 15), (56, 10), (32, 3)]


def make_prefixes(rng: random.Random, peers: int) -> list[list[str]]:
    """Per peer: a /32 and a /128 tunnel address, then 8 routed prefixes of either family
    with lengths weighted as real configurations have them (random, so a few collide and
    move to a later peer, as `wg set` would)."""
    v4_lens, v4_w = zip(*V4_LENGTHS, strict=True)
    v6_lens, v6_w = zip(*V6_LENGTHS, strict=True)
    out = []
    for i in range(peers):
        cidrs = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32", f"fd00::{i:x}/128"]
        while len(cidrs) < PREFIXES_PER_PEER:
            if rng.random() < 0.5:
                plen = rng.choices(v4_lens, v4_w)[0]
                x = rng.getrandbits(32) >> (32 - plen) << (32 - plen)
                cidrs.append(f"{ipaddress.IPv4Address(x)}/{plen}")
            else:
                plen = rng.choices(v6_lens, v6_w)[0]
                x = (0x2 << 124 | rng.getrandbits(124)) >> (128 - plen) << (128 - plen)
                cidrs.append(f"{ipaddress.IPv6Address(x)}/{plen}")
        out.append(cidrs)
    return out


def parse(cidr: str) -> tuple[int, int, int]:
    """(network as an int, host bits, address bytes) of a CIDR string."""
    net = ipaddress.ip_network(cidr)
    return int(net.network_address), net.max_prefixlen - net.prefixlen, net.max_prefixlen // 8


def inside(rng: random.Random, net: tuple[int, int, int]) -> bytes:
    """A random address inside a parsed network."""
    base, host_bits, size = net
    return (base | rng.getrandbits(host_bits)).to_bytes(size, "big")


def bench_allowed_ips(sizes: Sizes) -> list[Row]:
    rng = random.Random(3)
    keys = [rng.randbytes(32) for _ in range(PEERS)]  # any 32 bytes is an X25519 public key
    prefixes = make_prefixes(rng, PEERS)
    private = generate_private_key()

    peers_s, prefixes_s = [], []
    device = Device(private)
    for _ in range(sizes.build_repeats):
        device = Device(private)
        add_peer, allow = device.add_peer, device.allow
        peers: list[Peer] = []

        def add_peers(add_peer: Callable = add_peer, peers: list[Peer] = peers) -> None:
            for key in keys:
                peers.append(add_peer(key))

        def add_prefixes(allow: Callable = allow, peers: list[Peer] = peers) -> None:
            for peer, cidrs in zip(peers, prefixes, strict=True):
                for cidr in cidrs:
                    allow(peer, cidr)

        peers_s.append(_timed(add_peers))
        prefixes_s.append(_timed(add_prefixes))
    count = len(device.allowed_ips)
    build = [p + q for p, q in zip(peers_s, prefixes_s, strict=True)]
    rows = [
        Row(
            f"build: {PEERS:,} add_peer", peers_s, "s", f"{min(peers_s) / PEERS * 1e6:.0f} us each"
        ),
        Row(
            f"build: {PEERS * PREFIXES_PER_PEER:,} allow (CIDR str)",
            prefixes_s,
            "s",
            f"{min(prefixes_s) / (PEERS * PREFIXES_PER_PEER) * 1e6:.1f} us each; {count:,} kept",
        ),
        Row("build: total", build, "s"),
    ]

    # look-ups: half IPv4, half IPv6, each inside a random inserted prefix
    lookup = device.allowed_ips.lookup
    flat = [parse(c) for cidrs in prefixes for c in cidrs]

    def addresses(k: int) -> list[bytes]:
        return [inside(rng, rng.choice(flat)) for _ in range(k)]

    working = addresses(4096)  # fits the look-up cache
    hits = working * (sizes.lookups // len(working))
    random_v4 = [rng.randbytes(4) for _ in range(sizes.lookups)]

    def rate(addrs: list[bytes]) -> float:
        def run() -> None:
            for addr in addrs:
                lookup(addr)

        return len(addrs) / _timed(run)

    hit_r, miss_r, rand_r = [], [], []
    for _ in range(sizes.repeats):
        for addr in working:
            lookup(addr)
        hit_r.append(rate(hits))
        # distinct, never seen: every one takes the slow path (and refills the cache)
        miss_r.append(rate(addresses(sizes.lookups)))
        rand_r.append(rate(random_v4))
        random_v4 = [rng.randbytes(4) for _ in range(sizes.lookups)]
    rows += [
        Row("lookup: cache hit", hit_r, "lookup/s", "4,096 warm addresses, v4+v6"),
        Row("lookup: miss, in a prefix", miss_r, "lookup/s", "all distinct, v4+v6"),
        Row("lookup: miss, random IPv4", rand_r, "lookup/s", "mostly no match: every level"),
    ]

    # memory per idle peer: a device with PEERS peers and no prefixes, minus the empty
    # device; the public keys are allocated inside the traced region (a peer holds its own)
    del device, peers, hits, working
    gc.collect()
    tracemalloc.start()
    device = Device(private)
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    fresh = [rng.randbytes(32) for _ in range(PEERS)]
    for key in fresh:
        device.add_peer(key)
    del fresh
    gc.collect()
    per_peer = (tracemalloc.get_traced_memory()[0] - base) / PEERS
    tracemalloc.stop()
    met = "MET" if per_peer < GOAL_PEER_BYTES else "NOT MET"
    rows.append(
        Row(
            "memory per idle peer",
            [per_peer],
            "B",
            f"{PEERS:,} peers, no prefixes; goal < {GOAL_PEER_BYTES} B: {met}",
        )
    )
    return rows


# ---------------------------------------------------------------------------- report


def machine() -> list[str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}",
        f"python {platform.python_version()} ({sys.executable}), "
        f"cryptography {cryptography.__version__}",
    ]


def fmt(value: float, unit: str) -> str:
    return f"{value:.3f}" if unit == "s" else f"{value:,.0f}"


def print_table(sections: list[tuple[str, list[Row]]]) -> None:
    print(f"{'measure':<38}{'median':>13}{'best':>13}  {'unit':<9}  note")
    print("-" * 110)
    for title, rows in sections:
        print(title)
        for r in rows:
            print(
                f"  {r.name:<36}{fmt(r.median, r.unit):>13}{fmt(r.best, r.unit):>13}"
                f"  {r.unit:<9}  {r.note}".rstrip()
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats (~10 s)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    for line in machine():
        print(line)
    print(
        f"mode: {'quick' if args.quick else 'full'}; {sizes.repeats} repeats per rate "
        "(median and best shown; ratios are medians of paired runs)"
    )
    print()
    transport, problems = bench_transport(sizes)
    sections = [
        ("1+2. transport (packets of 1420 B; batches of 64)", transport),
        ("3. handshakes (two Devices, one process)", bench_handshakes(sizes)),
        (
            f"4. {PEERS:,} peers, {PEERS * PREFIXES_PER_PEER:,} allowed-IPs prefixes, one Device",
            bench_allowed_ips(sizes),
        ),
    ]
    print_table(sections)
    for p in problems:
        print(f"WARNING: {p}")
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
