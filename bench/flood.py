"""A new peer's way through a handshake flood: wiresnake against two wireguard-go builds.

Run as root: .venv/bin/python bench/flood.py [--rate N] [--rounds N] [--limit S]
                                             [--victims ...] [--go-new PATH] [--no-append]

The scenario of tests/interop/test_attack.py's LanFlood, with each implementation in turn
as the victim V: an attacker X on V's LAN floods it with MAC1-valid initiations (it knows
V's public key) from 100 addresses of its own, in UDP_SEGMENT super-packets, at `--rate`
a second (default 584,000: gigabit Ethernet's line rate for initiations). 5 s into the
flood a wireguard-go peer N is brought up; we time its first handshake (its
`latest-handshakes`, polled every 0.1 s), up to `--limit` seconds. Meanwhile L, a
wireguard-go peer whose session predates the flood, pings V every 0.2 s. The flood stops
once N is through or the limit has passed.

Victims: wiresnake, Debian's wireguard-go (`wireguard-go` on PATH) and the current
upstream build (`--go-new`, by default ../shared/tools/wireguard-go next to the checkout).
Rounds are interleaved (every victim once per round, order rotating); the table shows
the median over rounds (a run that never got through counts as the limit, and is marked),
and the ratio of wiresnake's time to each one's (lower is better for wiresnake). Also
shown: the flood rate that reached V's link, datagrams its kernel dropped for a full
socket queue (wiresnake and the current build read GRO super-packets, which the kernel
counts and drops whole), the victim's CPU seconds, L's pings answered, and the victim's
RSS growth. Everything runs in namespaces (tests/interop/netlab.py), torn down on exit.

The run is appended to bench/RESULTS.md unless --no-append is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "interop"))
from netlab import NetLab  # bench and tests/interop are no packages: found through sys.path
from test_attack import LAN_FLOOD_RATE, LAN_SOURCES, LATE_START, LanFlood
from throughput import ROOT, first_line, loadavg, machine, publish

GO_NEW = str(ROOT.parent / "shared" / "tools" / "wireguard-go")
WS, GO_OLD = "wiresnake", "wireguard-go"


def label(victim: str) -> str:
    if victim == WS:
        return "wiresnake"
    if victim == GO_OLD:
        return "wireguard-go (Debian)"
    return "wireguard-go (current)"


def one_run(victim: str, rate: int, limit: float) -> dict[str, Any]:
    with NetLab() as lab:
        return LanFlood(lab, victim).run(rate, limit)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(victims: list[str], runs: dict[str, list[dict[str, Any]]], limit: float) -> str:
    times = {
        v: [r["through"] if r["through"] is not None else limit for r in runs[v]] for v in victims
    }
    ws = median(times[WS]) if WS in times else None
    rows = [
        (
            "victim",
            "N through (s)",
            "ws / this",
            "reached/s",
            "queue drops",
            "victim CPU s",
            "L pings",
            "RSS +MiB",
        )
    ]
    for v in victims:
        rs = runs[v]
        t = median(times[v])
        never = sum(r["through"] is None for r in rs)
        shown = f"{t:.1f}" + (f" ({never} never)" if never else "")
        answered = sum(r["l_pings"][0] for r in rs)
        sent = sum(r["l_pings"][1] for r in rs)
        rss = max(r["rss_peak_kb"] - r["rss_before_kb"] for r in rs) / 1024
        rows.append(
            (
                label(v),
                shown,
                f"{ws / t:.2f}" if ws is not None and t else "-",
                f"{median([r['reached_per_second'] for r in rs]):,.0f}",
                f"{median([r['rcvbuf_errors'] for r in rs]):,.0f}",
                f"{median([r['victim_cpu_seconds'] for r in rs]):.1f}",
                f"{answered}/{sent}",
                f"{rss:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    per_run = [
        f"  {label(v)}: " + ", ".join("never" if x is None else f"{x:.2f}" for x in
                                      (r["through"] for r in runs[v]))
        for v in victims
    ]  # fmt: skip
    return "\n".join(lines) + "\n\nN through, each round (s):\n" + "\n".join(per_run) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=LAN_FLOOD_RATE, help="initiations a second")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=float, default=20.0, help="seconds N may take")
    ap.add_argument("--victims", nargs="+", default=[WS, GO_OLD, "go-new"])
    ap.add_argument("--go-new", default=GO_NEW, help="the current wireguard-go build")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    victims = [args.go_new if v == "go-new" else v for v in args.victims]
    if not Path(args.go_new).exists() and args.go_new in victims:
        print(f"no wireguard-go build at {args.go_new}: pass --go-new PATH", file=sys.stderr)
        return 2
    started, t0, load_before = dt.datetime.now(dt.UTC), time.monotonic(), loadavg()
    info = machine()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in victims}
    try:
        for k in range(args.rounds):
            order = victims[k % len(victims) :] + victims[: k % len(victims)]
            for v in order:
                res = one_run(v, args.rate, args.limit)
                runs[v].append(res)
                print(f"round {k + 1}, {label(v)}: {res}", flush=True)
    except KeyboardInterrupt:
        interrupted: str | None = "Ctrl-C"
    else:
        interrupted = None
    done = [v for v in victims if runs[v]]
    body = (
        f"flood: {args.rate:,} initiations/s from {LAN_SOURCES} addresses of X (GSO, 64 a "
        f"send); N brought up {LATE_START:.0f} s in; limit {args.limit:.0f} s; "
        f"{args.rounds} round(s), medians\n\n" + table(done, runs, args.limit)
    )
    tools = f"current build `{first_line([args.go_new, '--version'])}` ({args.go_new}); "
    return publish(
        body,
        "Handshake flood, a new peer's time through (bench/flood.py)",
        tools,
        info,
        started,
        time.monotonic() - t0,
        load_before,
        interrupted=interrupted,
        append=not args.no_append,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
