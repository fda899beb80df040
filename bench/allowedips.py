"""Benchmark the allowed-IPs table: 10,000 peers, 100,000 prefixes, mixed IPv4 and IPv6.

Run: .venv/bin/python bench/allowedips.py [--seed N]

Prints the build time, look-ups per second (cache hits and misses separately, per family)
and the memory held by the table (tracemalloc).  Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import random
import time
import tracemalloc
from collections.abc import Callable, Sequence

from wiresnake.protocol.allowedips import DEFAULT_CACHE_SIZE, AllowedIPs

PEERS = 10_000
PREFIXES_PER_PEER = 10  # 100,000 in all
LOOKUPS = 200_000

# Prefix lengths as they show up in real configurations: mostly hosts and LANs.
V4_LENGTHS = [(32, 30), (24, 35), (28, 5), (29, 3), (30, 2), (16, 8), (20, 7), (22, 5), (8, 5)]
V6_LENGTHS = [(128, 30), (64, 40), (48, 15), (56, 10), (32, 3), (40, 2)]


class Peer:
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _pick(rng: random.Random, weighted: list[tuple[int, int]]) -> int:
    lengths = [x for x, _ in weighted]
    weights = [w for _, w in weighted]
    return rng.choices(lengths, weights)[0]


def _v4(rng: random.Random, plen: int) -> str:
    x = rng.getrandbits(32) & (((1 << plen) - 1) << (32 - plen))
    return f"{x >> 24}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x & 255}/{plen}"


def _v6(rng: random.Random, plen: int) -> str:
    x = (0x2 << 124 | rng.getrandbits(124)) & (((1 << plen) - 1) << (128 - plen))
    groups = ":".join(f"{(x >> (112 - 16 * i)) & 0xFFFF:x}" for i in range(8))
    return f"{groups}/{plen}"


def make_config(rng: random.Random) -> list[tuple[str, Peer]]:
    """Each peer: a /32 and a /128 tunnel address, then 8 routed prefixes of either family;
    peer 0 is also the default gateway (0.0.0.0/0 and ::/0)."""
    items: list[tuple[str, Peer]] = []
    for i in range(PEERS):
        peer = Peer(i)
        cidrs = [
            f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/32",
            f"fd00::{i >> 16:x}:{i & 0xFFFF:x}/128",
        ]
        if i == 0:
            cidrs += ["0.0.0.0/0", "::/0"]
        while len(cidrs) < PREFIXES_PER_PEER:
            if rng.random() < 0.5:
                cidrs.append(_v4(rng, _pick(rng, V4_LENGTHS)))
            else:
                cidrs.append(_v6(rng, _pick(rng, V6_LENGTHS)))
        items += [(c, peer) for c in cidrs]
    return items


def build(items: Sequence[tuple[str, Peer]]) -> AllowedIPs[Peer]:
    table: AllowedIPs[Peer] = AllowedIPs()
    insert = table.insert
    for cidr, peer in items:
        insert(cidr, peer)
    return table


def inside(rng: random.Random, cidr: str) -> bytes:
    """A random address inside ``cidr``."""
    text, plen_s = cidr.split("/")
    plen = int(plen_s)
    if ":" in text:
        base = int(ipaddress.IPv6Address(text))
        return (base | rng.getrandbits(128 - plen)).to_bytes(16)
    parts = [int(p) for p in text.split(".")]
    base = parts[0] << 24 | parts[1] << 16 | parts[2] << 8 | parts[3]
    return (base | rng.getrandbits(32 - plen)).to_bytes(4)


def rate(fn: Callable[[bytes], object], addrs: Sequence[bytes], repeat: int = 3) -> float:
    """Look-ups per second over ``addrs`` (best of ``repeat``), the bare loop subtracted."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        for addr in addrs:
            fn(addr)
        t1 = time.perf_counter()
        for _addr in addrs:
            pass
        t2 = time.perf_counter()
        best = min(best, (t1 - t0) - (t2 - t1))
    return len(addrs) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    items = make_config(rng)
    gc.collect()
    t0 = time.perf_counter()
    table = build(items)
    build_s = time.perf_counter() - t0
    v4_lens = {int(c.rsplit("/", 1)[1]) for c, _ in items if ":" not in c}
    v6_lens = {int(c.rsplit("/", 1)[1]) for c, _ in items if ":" in c}

    # Memory: build again under tracemalloc (it slows the build, so not the timed one).
    del table
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = build(items)
    gc.collect()
    table_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    # Addresses: inside a random inserted prefix (they match early), and random ones (in
    # IPv4 mostly only the /0 matches, so they scan every prefix length present).
    def batch(v6: bool, in_prefix: bool, n: int) -> list[bytes]:
        pool = [c for c, _ in items if (":" in c) == v6 and not c.startswith(("0.", "::/"))]
        if in_prefix:
            return [inside(rng, rng.choice(pool)) for _ in range(n)]
        return [rng.getrandbits(128 if v6 else 32).to_bytes(16 if v6 else 4) for _ in range(n)]

    lookup = table.lookup

    class Noop:
        def lookup(self, addr: bytes) -> None:
            return None

    rows: list[tuple[str, float]] = [
        ("(a no-op method, for scale)", rate(Noop().lookup, batch(False, False, LOOKUPS)))
    ]
    for family, v6 in (("IPv4", False), ("IPv6", True)):
        for where, in_prefix in (("in a prefix", True), ("random", False)):
            # Cache hits: a working set that fits in the cache, warmed, looked up many times.
            working = batch(v6, in_prefix, 4096)
            for addr in working:
                lookup(addr)
            hits = working * (LOOKUPS // len(working))
            rows.append((f"{family} hit, {where}", rate(lookup, hits)))
            # Cache misses: all distinct, so every one takes the slow path.
            fresh = batch(v6, in_prefix, LOOKUPS)
            rows.append((f"{family} miss, {where}", rate(lookup, fresh)))

    # Memory of a full cache, its IPv6 keys (the larger ones) included, as when they are
    # sliced from packets and kept only by the cache.
    table.insert("192.0.2.0/24", Peer(-1))  # any change empties the cache
    getrandbits = rng.getrandbits
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(DEFAULT_CACHE_SIZE):
        lookup(getrandbits(128).to_bytes(16))
    cache_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    print(
        f"allowed IPs: {PEERS:,} peers, {len(table):,} prefixes "
        f"({len(items):,} inserted; duplicates moved), "
        f"{len(v4_lens)} IPv4 and {len(v6_lens)} IPv6 prefix lengths present"
    )
    print()
    print(f"{'measure':<28}{'value':>16}")
    print("-" * 44)
    print(f"{'build from CIDR strings':<28}{build_s:>14.3f} s")
    print(f"{'  per insert':<28}{build_s / len(items) * 1e6:>13.2f} µs")
    print(f"{'table memory':<28}{table_bytes / 2**20:>13.1f} MiB")
    print(f"{'  per prefix':<28}{table_bytes / len(table):>15.0f} B")
    print(f"{'full cache memory':<28}{cache_bytes / 2**20:>13.1f} MiB")
    print(f"{'  (entries)':<28}{DEFAULT_CACHE_SIZE:>16,}")
    print()
    print(f"{'look-up':<28}{'per second':>16}{'ns each':>10}")
    print("-" * 54)
    for name, per_s in rows:
        print(f"{name:<28}{per_s:>16,.0f}{1e9 / per_s:>10.0f}")


if __name__ == "__main__":
    main()
