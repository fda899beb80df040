"""`wiresnake proxy` under a local flood: requests served while idle clients hold sockets.

Run as root: .venv/bin/python bench/proxy_flood.py [--idle N] [--seconds S] [--nofile N]

The lab of tests/interop/test_proxy_mode.py (namespaces `s` and `c`, the proxy in `c` as
user nobody, its server a wiresnake daemon in `s`), the proxy started under
`prlimit --nofile=N`. A client opens --idle SOCKS5 connections that send nothing and holds
them; meanwhile one SOCKS5 request (curl, 3 s limit) a second for --seconds. Printed: the
requests that worked and failed, when the first one worked, and the size of the proxy's log.
Everything is removed on exit (NetLab).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "interop"))

from netlab import NetLab
from test_proxy_mode import AUX, SOCKS, ProxyLab


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle", type=int, default=300)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--nofile", type=int, default=256)
    args = p.parse_args()
    with NetLab() as lab, tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        plab = ProxyLab(lab, "wiresnake", Path(tmp), ("prlimit", f"--nofile={args.nofile}"))
        flood = plab.c.popen(
            sys.executable, AUX, "flood", str(SOCKS), str(args.idle), str(args.seconds),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert flood.stdout is not None
        flood.stdout.readline()  # "open": all connected
        started = time.monotonic()
        worked = failed = 0
        first: float | None = None
        while time.monotonic() - started < args.seconds:
            t = time.monotonic()
            proxy = f"127.0.0.1:{SOCKS}"
            res = plab.c.run("curl", "-sS", "--fail", "--max-time", "3", "--socks5-hostname",
                             proxy, "http://web.test:8080/x", check=False)  # fmt: skip
            if res.returncode == 0:
                worked += 1
                first = first if first is not None else time.monotonic() - started
            else:
                failed += 1
            time.sleep(max(0.0, 1 - (time.monotonic() - t)))
        flood.communicate(timeout=60)
        log = plab.log.read_bytes()
        lines = log.count(b"\n")
        print(
            f"{args.idle} idle connections, --nofile={args.nofile}, {args.seconds:g} s: "
            f"{worked} requests worked, {failed} failed, first after "
            f"{'never' if first is None else f'{first:.1f} s'}; "
            f"proxy log {len(log)} bytes, {lines} lines"
        )


if __name__ == "__main__":
    main()
