"""What the link's demultiplexer (io/demux.py) costs the WireGuard receive path.

Run: .venv/bin/python bench/demux.py [--rounds N]

Two Devices complete a handshake in memory; then GRO runs of 44 transport datagrams
(1452 bytes each, a full 64 KB read) are decrypted by `from_network_runs`, alternately
alone and after `Demux.split` with a STUN handler and a probe prefix registered (as the
mesh will run). Each timed batch is fresh ciphertext, so replay checks never short-cut
the work. Prints the median time per datagram of each and their ratio. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections import Counter

from wiresnake.crypto import generate_private_key
from wiresnake.io.demux import Demux
from wiresnake.protocol.device import Device, Run
from wiresnake.protocol.peer import Endpoint

EP_A: Endpoint = ("192.0.2.1", 51820)
EP_B: Endpoint = ("192.0.2.2", 51820)
PER_RUN = 44
RUNS = 8  # per timed batch


def _packet(n: int) -> bytes:
    payload = bytes(n - 28)
    total = n
    head = bytes([0x45, 0, total >> 8, total & 0xFF, 0, 0, 0, 0, 64, 17, 0, 0])
    return head + bytes([10, 0, 0, 1]) + bytes([10, 0, 0, 2]) + bytes(8) + payload


def _pair() -> tuple[Device, Device]:
    a, b = Device(generate_private_key()), Device(generate_private_key())
    for x, y, ip, ep in ((a, b, "10.0.0.2/32", EP_B), (b, a, "10.0.0.1/32", EP_A)):
        assert y.public_key is not None
        peer = x.add_peer(y.public_key)
        x.allow(peer, ip)
        x.set_endpoint(peer, ep)
    now = 1000.0
    out = a.from_tunnel([_packet(100)], now)
    out = b.from_network([(EP_A, d) for _, d in out.datagrams], now)
    out = a.from_network([(EP_B, d) for _, d in out.datagrams], now)
    b.from_network([(EP_A, d) for _, d in out.datagrams], now)
    return a, b


def _batch(a: Device, now: float) -> list[Run]:
    datagrams = a.from_tunnel([_packet(1420)] * (PER_RUN * RUNS), now).datagrams
    size = len(datagrams[0][1])
    runs: list[Run] = []
    for i in range(0, len(datagrams), PER_RUN):
        runs.append((EP_A, b"".join(d for _, d in datagrams[i : i + PER_RUN]), size))
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    a, b = _pair()
    demux = Demux()
    demux.register_stun(lambda src, data, send: None)
    demux.register_prefix(b"PROBE", lambda src, data, send: None)
    counters: Counter[str] = Counter()
    plain: list[float] = []
    split: list[float] = []
    now = 1001.0
    received = 0
    for _ in range(args.rounds):
        for times, with_demux in ((plain, False), (split, True)):
            runs = _batch(a, now)
            gc.collect()
            t0 = time.perf_counter()
            if with_demux:
                runs = demux.split(runs, lambda ep, data: True, counters)
            received += len(b.from_network_runs(runs, now).packets)
            times.append((time.perf_counter() - t0) / (PER_RUN * RUNS))
    expected = 2 * args.rounds * PER_RUN * RUNS
    engine, linked = statistics.median(plain), statistics.median(split)
    print(f"from_network_runs alone        {engine * 1e6:8.3f} us per datagram")
    print(f"Demux.split, then the same     {linked * 1e6:8.3f} us per datagram")
    print(f"ratio (with / without)         {linked / engine:8.3f}")
    print(f"packets delivered {received} of {expected}; demux dropped {counters['malformed']}")


if __name__ == "__main__":
    main()
