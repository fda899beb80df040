"""Proxy-mode (`wiresnake proxy`, SOCKS5) throughput and connection rate beside TUN mode.

Run as root: .venv/bin/python bench/proxy.py [--size MB] [--rounds N] [--conns N]
                 [--concurrency N] [--server wiresnake|wireguard-go] [--modes ...] [--no-append]

Two network namespaces, A and B, joined by one veth pair (the `Lab` of bench/throughput.py);
nothing is configured in the root namespace. B runs one WireGuard server interface (the
wiresnake daemon, or wireguard-go with --server) and an HTTP server bound to its tunnel
addresses only. A runs the clients of the server, each its own peer with its own tunnel
subnet, all up at once:

    tun      a wiresnake daemon (TUN) in A; the HTTP client connects over the kernel route
    proxy    `wiresnake proxy` in A as user nobody (no TUN, no privilege); the same HTTP
             client connects through its SOCKS5 listener on 127.0.0.1
    go-tun   wireguard-go (TUN) in A, a reference row

The HTTP client is this script (`_get`, `_conns`), the same program for every mode, so only
the path differs: direct over the tunnel, or through SOCKS5 (CONNECT to the IPv4 address).
Measured per mode: one download of --size MB (checked for length), its rate, and the CPU
seconds (utime+stime from /proc/PID/stat) the client-side WireGuard process (daemon or
proxy) and the server spent per GiB; then --conns short GETs (a 100-byte body, one
connection each, --concurrency at once): connections per second, client-side CPU ms per
connection and the p50/p99/max time of one GET (connect, SOCKS5, request, body, EOF).
Rounds are interleaved (every mode per test, mode order rotating per round); the table
shows medians and the ratios proxy / tun (the goal: proxy download >= 0.5 of tun).
A dead client or server is recorded and restarted. Everything is torn down on exit, also on
errors and Ctrl-C; processes are ended by the PIDs this script started.

The run is appended to bench/RESULTS.md unless --no-append is given or it was interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (  # bench is not a package: found through sys.path
    GIB,
    GO,
    VETH_B,
    WS,
    WS_PYTHON,
    Failure,
    Lab,
    catch_interrupts,
    cpu_seconds,
    fmt,
    genkey,
    loadavg,
    machine,
    median_of,
    note,
    publish,
    report_tail,
    start_daemon,
    tail,
)

SCRIPT = str(Path(__file__).resolve())
WG_PORT = 51820  # the server's, in B; clients in A listen on WG_PORT + index
HTTP_PORT = 8080
SOCKS_PORT = 1080
MTU = 1420
SUBNET = "10.78.{}.{}"  # client index; .1 the server's address for that client, .2 the client's
SMALL_BODY = 100
MB = 1_000_000

# mode key -> (label, implementation in A, via SOCKS5)
MODES: dict[str, tuple[str, str, bool]] = {
    "tun": ("ws TUN", WS, False),
    "proxy": ("ws proxy", WS, True),
    "go-tun": ("go TUN", GO, False),
}


# ---------------------------------------------------------------------------- HTTP (helpers)
# These run inside the namespaces: `proxy.py _serve ...`, `proxy.py _get ...`, `_conns ...`.


def _serve(port: int, addrs: Sequence[str]) -> None:
    """GET /bytes/N: N bytes (a fixed random MiB repeated), then close. One thread per
    connection, one listener per address."""
    pattern = memoryview(os.urandom(1 << 20))

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(120)
            req = b""
            while b"\r\n\r\n" not in req:
                data = conn.recv(4096)
                if not data:
                    return
                req += data
            path = req.split(b" ", 2)[1].decode()
            n = int(path.rsplit("/", 1)[1]) if path.startswith("/bytes/") else 0
            conn.sendall(
                f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n".encode()
            )
            while n > 0:
                k = min(n, len(pattern))
                conn.sendall(pattern[:k])
                n -= k
            conn.shutdown(socket.SHUT_WR)

    def accept(lsock: socket.socket) -> None:
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    listeners = []
    for addr in addrs:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(1024)
        listeners.append(s)
    for s in listeners:
        threading.Thread(target=accept, args=(s,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = s.recv(n - len(buf))
        if not data:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return buf


def _connect(host: str, port: int, socks: int | None) -> socket.socket:
    if socks is None:
        return socket.create_connection((host, port), timeout=60)
    s = socket.create_connection(("127.0.0.1", socks), timeout=60)
    try:
        s.sendall(b"\x05\x01\x00")
        if _recv_exact(s, 2) != b"\x05\x00":
            raise ConnectionError("SOCKS5: no-auth refused")
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big"))
        reply = _recv_exact(s, 4)
        if reply[1] != 0:
            raise ConnectionError(f"SOCKS5 reply {reply[1]}")
        _recv_exact(s, {1: 4, 4: 16}[reply[3]] + 2)
    except BaseException:
        s.close()
        raise
    return s


def _fetch(host: str, port: int, socks: int | None, n: int, buf: bytearray) -> int:
    """GET n bytes over one connection; returns the body length (checked against n)."""
    with _connect(host, port, socks) as s:
        s.sendall(f"GET /bytes/{n} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = s.recv(4096)
            if not data:
                raise ConnectionError("EOF in the response header")
            head += data
        head, _, got_body = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"response {head[:40]!r}")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        got = len(got_body)
        view = memoryview(buf)
        while True:
            k = s.recv_into(view)
            if not k:
                break
            got += k
    if not got == length == n:
        raise ConnectionError(f"body {got} bytes, Content-Length {length}, wanted {n}")
    return got


def _client(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(prog="proxy.py _get|_conns")
    p.add_argument("what", choices=["_get", "_conns"])
    p.add_argument("--socks", type=int)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("n", type=int, help="bytes (_get) or connections (_conns)")
    p.add_argument("--concurrency", type=int, default=20)
    a = p.parse_args(argv)
    buf = bytearray(1 << 20)
    if a.what == "_get":
        t0 = time.perf_counter()
        got = _fetch(a.host, a.port, a.socks, a.n, buf)
        print(f"ok {got} {time.perf_counter() - t0:.4f}", flush=True)
        return
    lock = threading.Lock()
    left = [a.n]
    errors: list[str] = []
    latencies: list[float] = []

    def worker() -> None:
        mine = bytearray(4096)
        while True:
            with lock:
                if left[0] <= 0 or errors:
                    return
                left[0] -= 1
            t = time.perf_counter()
            try:
                _fetch(a.host, a.port, a.socks, SMALL_BODY, mine)
                latencies.append(time.perf_counter() - t)
            except (OSError, ValueError, StopIteration) as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                return

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(min(a.concurrency, a.n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} connection(s) failed, first: {errors[0]}")
    lat = sorted(latencies)
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, len(lat) * 99 // 100)]
    print(f"ok {a.n} {elapsed:.4f} {p50 * 1000:.2f} {p99 * 1000:.2f} {lat[-1] * 1000:.2f}")


# ---------------------------------------------------------------------------- the WireGuard set-up


@dataclass
class Node:
    """The server in B or one client in A: a WireGuard process (and its keys)."""

    key: str  # "server" or a mode
    impl: str
    index: int  # client subnet (0 for the server)
    keys: tuple[str, str] = field(default_factory=genkey)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    name: str = ""
    gen: int = 0
    error: str | None = None
    restarts: int = 0
    deaths: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return MODES[self.key][0] if self.key in MODES else f"server ({self.impl})"

    @property
    def socks(self) -> int | None:
        return SOCKS_PORT if self.key == "proxy" else None

    @property
    def dst(self) -> str:
        return SUBNET.format(self.index, 1)

    def check(self) -> str | None:
        if self.error:
            return self.error
        if self.proc is not None and (rc := self.proc.poll()) is not None:
            last = (
                tail(self.log.read_text(errors="replace")) if self.log and self.log.exists() else ""
            )
            self.error = f"{self.label} exited with {rc}" + (f": {last}" if last else "")
            self.deaths.append(self.error)
        return self.error


class Bench:
    def __init__(self, lab: Lab, server_impl: str, modes: Sequence[str]) -> None:
        self.lab = lab
        self.server = Node("server", server_impl, 0)
        self.clients = [Node(m, MODES[m][1], i + 1) for i, m in enumerate(modes)]
        self.http: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ B

    def setup_server(self) -> None:
        lab, s = self.lab, self.server
        self.stop(s)
        if self.http is not None:
            lab.end(self.http)
        s.error, s.gen = None, s.gen + 1
        s.name = f"{lab.prefix}s{s.gen}"
        s.proc, s.log = start_daemon(lab, lab.ns_b, s.impl, s.name, None)
        ns = lab.ns_b
        lab.run(ns, "wg", "set", s.name, "private-key", "/dev/stdin", "listen-port", str(WG_PORT),
                input=s.keys[0])  # fmt: skip
        lab.run(ns, "ip", "addr", "add", SUBNET.format(0, 1) + "/16", "dev", s.name)
        for c in self.clients:
            lab.run(ns, "ip", "addr", "add", c.dst + "/32", "dev", s.name)
            lab.run(ns, "wg", "set", s.name, "peer", c.keys[1],
                    "allowed-ips", SUBNET.format(c.index, 2) + "/32")  # fmt: skip
        lab.run(ns, "ip", "link", "set", s.name, "mtu", str(MTU), "up")
        self.http = lab.spawn(
            ns,
            [WS_PYTHON, SCRIPT, "_serve", str(HTTP_PORT), *(c.dst for c in self.clients)],
            log=lab.workdir / "http.log",
        )
        self.wait_listening(ns, HTTP_PORT, len(self.clients), self.http, "the HTTP server")

    def wait_listening(
        self, ns: str, port: int, count: int, proc: subprocess.Popen[bytes], what: str
    ) -> None:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            out = self.lab.run(ns, "ss", "-Hltn", "sport", "=", f":{port}").stdout
            if len(out.strip().splitlines()) >= count:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise Failure(f"{what} did not listen on port {port} (rc {proc.poll()})")

    # ------------------------------------------------------------ A

    def setup_client(self, c: Node) -> None:
        lab = self.lab
        self.stop(c)
        c.error, c.gen = None, c.gen + 1
        c.name = f"{lab.prefix}{c.key[0]}{c.gen}"
        spub = self.server.keys[1]
        endpoint = f"{VETH_B}:{WG_PORT}"
        try:
            if c.socks is None:
                ns = lab.ns_a
                c.proc, c.log = start_daemon(lab, ns, c.impl, c.name, None)
                lab.run(ns, "wg", "set", c.name, "private-key", "/dev/stdin",
                        "listen-port", str(WG_PORT + c.index), input=c.keys[0])  # fmt: skip
                lab.run(ns, "wg", "set", c.name, "peer", spub, "allowed-ips", c.dst + "/32",
                        "endpoint", endpoint)  # fmt: skip
                lab.run(ns, "ip", "addr", "add", SUBNET.format(c.index, 2) + "/32", "dev", c.name)
                lab.run(ns, "ip", "link", "set", c.name, "mtu", str(MTU), "up")
                lab.run(ns, "ip", "route", "add", c.dst + "/32", "dev", c.name)
            else:
                conf = lab.workdir / f"{c.name}.conf"
                conf.write_text(
                    "[Interface]\n"
                    f"Address = {SUBNET.format(c.index, 2)}/32\n"
                    f"PrivateKey = {c.keys[0]}\n"
                    f"ListenPort = {WG_PORT + c.index}\n"
                    f"MTU = {MTU}\n\n"
                    "[Peer]\n"
                    f"PublicKey = {spub}\n"
                    f"Endpoint = {endpoint}\n"
                    f"AllowedIPs = {c.dst}/32\n\n"
                    "[Socks5]\n"
                    f"BindAddress = 127.0.0.1:{SOCKS_PORT}\n"
                )
                conf.chmod(0o644)
                c.log = lab.workdir / f"{c.name}.log"
                # `ip netns exec` and setpriv exec in place: the PID is the proxy's
                c.proc = lab.spawn(
                    lab.ns_a,
                    ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                     WS_PYTHON, "-m", "wiresnake", "proxy", "-s", str(conf)],
                    log=c.log,
                )  # fmt: skip
                self.wait_listening(lab.ns_a, SOCKS_PORT, 1, c.proc, "the proxy")
            self.client_run(c, "_get", "1000", timeout=30)  # handshake, and a first GET
        except (Failure, subprocess.SubprocessError, OSError) as e:
            c.error = f"set-up failed: {c.check() or e}"
            raise Failure(c.error) from e

    def stop(self, node: Node) -> None:
        if node.proc is not None:
            self.lab.end(node.proc)
            node.proc = None

    def client_run(
        self, c: Node, what: str, *args: str, timeout: float
    ) -> tuple[int, float, list[float]]:
        """The client's (count, seconds, extras): `_conns` adds per-connection p50, p99 and
        max milliseconds."""
        argv = [WS_PYTHON, SCRIPT, what, c.dst, str(HTTP_PORT), *args]
        if c.socks is not None:
            argv += ["--socks", str(c.socks)]
        res = self.lab.run(self.lab.ns_a, *argv, check=False, timeout=timeout)
        words = res.stdout.split()
        if res.returncode != 0 or len(words) < 3 or words[0] != "ok":
            raise Failure(f"{what} failed ({res.returncode}): {tail(res.stderr + res.stdout)}")
        return int(words[1]), float(words[2]), [float(w) for w in words[3:]]

    # ------------------------------------------------------------ measurements

    def ensure(self, c: Node, max_restarts: int) -> None:
        for node, setup in ((self.server, self.setup_server), (c, lambda: self.setup_client(c))):
            if node.check() is None:
                continue
            if node.restarts >= max_restarts:
                raise Failure(node.error or "down")
            node.restarts += 1
            try:
                setup()
                note(f"restarted {node.label} (restart {node.restarts})")
            except (Failure, subprocess.SubprocessError, OSError) as e:
                node.error = f"restart failed: {e}"
                raise Failure(node.error) from e

    def measured(
        self, c: Node, fn: Callable[[], tuple[int, float, list[float]]]
    ) -> tuple[int, float, list[float], float, float]:
        """fn's (count, seconds, extras), and the CPU seconds of the client and the server."""
        assert c.proc is not None and self.server.proc is not None
        pids = [c.proc.pid, self.server.proc.pid]
        before = [cpu_seconds([p]) for p in pids]
        try:
            count, secs, extras = fn()
        finally:
            for node in (c, self.server):
                if node.check():
                    raise Failure(node.error or "down")
        after = [cpu_seconds([p]) for p in pids]
        return count, secs, extras, after[0] - before[0], after[1] - before[1]

    def download(self, c: Node, size: int) -> dict[str, float]:
        n, secs, _, cpu_c, cpu_s = self.measured(
            c, lambda: self.client_run(c, "_get", str(size), timeout=60 + size / MB * 2)
        )
        return {
            "mbps": n / secs / MB,
            "cpu_gib": cpu_c / (n / GIB),
            "srv_cpu_gib": cpu_s / (n / GIB),
        }

    def connections(self, c: Node, count: int, concurrency: int) -> dict[str, float]:
        n, secs, lat, cpu_c, _ = self.measured(
            c,
            lambda: self.client_run(
                c, "_conns", str(count), "--concurrency", str(concurrency),
                timeout=60 + count * 0.5,
            ),
        )  # fmt: skip
        return {
            "cps": n / secs,
            "cpu_conn": cpu_c / n * 1000,
            "lat50": lat[0],
            "lat99": lat[1],
            "latmax": lat[2],
        }


# ---------------------------------------------------------------------------- the table

Cell = float | str

METRICS = [
    ("mbps", "download MB/s", True),
    ("cps", "connections/s", True),
    ("cpu_gib", "client WG CPU s/GiB", False),
    ("srv_cpu_gib", "server WG CPU s/GiB", False),
    ("cpu_conn", "client WG CPU ms/conn", False),
    ("lat50", "conn time p50 ms", False),
    ("lat99", "conn time p99 ms", False),
    ("latmax", "conn time max ms", False),
]


def run_all(bench: Bench, args: argparse.Namespace) -> dict[tuple[str, str], list[Cell]]:
    results: dict[tuple[str, str], list[Cell]] = {}
    size = int(args.size * MB)
    tests: list[tuple[str, Callable[[Node], dict[str, float]]]] = [
        ("download", lambda c: bench.download(c, size)),
        ("conns", lambda c: bench.connections(c, args.conns, args.concurrency)),
    ]
    start = time.monotonic()
    clients = bench.clients
    for rnd in range(args.rounds):
        shift = rnd % len(clients)
        order = clients[shift:] + clients[:shift]
        for name, fn in tests:
            for c in order:
                try:
                    bench.ensure(c, args.max_restarts)
                    outcome: dict[str, float] | str = fn(c)
                except Failure as e:
                    outcome = str(e)
                except (subprocess.SubprocessError, OSError, ValueError) as e:
                    outcome = f"{type(e).__name__}: {e}"
                keys = (
                    ["mbps", "cpu_gib", "srv_cpu_gib"]
                    if name == "download"
                    else ["cps", "cpu_conn", "lat50", "lat99", "latmax"]
                )
                for k in keys:
                    cell = outcome if isinstance(outcome, str) else outcome[k]
                    results.setdefault((k, c.key), []).append(cell)
                shown = (
                    outcome
                    if isinstance(outcome, str)
                    else "  ".join(f"{k} {v:.4g}" for k, v in outcome.items())
                )
                note(
                    f"[{time.monotonic() - start:4.0f} s] round {rnd + 1}/{args.rounds} "
                    f"{name:<8} {c.label:<8} {shown}"
                )
    return results


def render(
    modes: Sequence[str], results: dict[tuple[str, str], list[Cell]], rounds: int
) -> tuple[str, list[str], float | None]:
    ratios = [
        (num, den)
        for num, den in (("proxy", "tun"), ("go-tun", "tun"))
        if num in modes and den in modes
    ]
    head = f"{'metric':<24}" + "".join(f"{MODES[m][0]:>11}" for m in modes)
    if ratios:
        head += "  |" + "".join(f"{f'{n}/{d}':>13}" for n, d in ratios)
    lines = [head, "-" * len(head)]
    footnotes: list[str] = []
    goal: float | None = None
    for key, label, _ in METRICS:
        row = f"{label:<24}"
        meds: dict[str, float | None] = {}
        for m in modes:
            cells = results.get((key, m), [])
            med = median_of(cells)
            meds[m] = med
            failed = [c for c in cells if isinstance(c, str)]
            text = ("FAIL" if failed else "-") if med is None else fmt(med)
            if failed:
                text += "*"
                for err in dict.fromkeys(failed):
                    footnotes.append(
                        f"{MODES[m][0]}, {label}: {failed.count(err)} of {rounds} rounds "
                        f"failed: {err}"
                    )
            row += f"{text:>11}"
        if ratios:
            row += "  |"
            for num, den in ratios:
                a, b = meds.get(num), meds.get(den)
                ratio = a / b if a is not None and b else None
                if key == "mbps" and (num, den) == ("proxy", "tun"):
                    goal = ratio
                row += f"{(fmt(ratio) if ratio is not None else '-'):>13}"
        lines.append(row)
    if rounds > 1:
        lines += ["", f"{'min-max over rounds':<24}" + "".join(f"{MODES[m][0]:>15}" for m in modes)]
        for key, label, _ in METRICS:
            row = f"{label:<24}"
            for m in modes:
                values = [c for c in results.get((key, m), []) if isinstance(c, float | int)]
                text = f"{fmt(min(values))}-{fmt(max(values))}" if values else "-"
                row += f"{text:>15}"
            lines.append(row)
    return "\n".join(lines), footnotes, goal


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--size", type=float, default=200, help="download size in MB (200)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    p.add_argument("--conns", type=int, default=500, help="short GETs per conn/s test (500)")
    p.add_argument("--concurrency", type=int, default=20, help="GETs at once (20)")
    p.add_argument("--server", choices=[WS, GO], default=WS, help="the server in B (wiresnake)")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=list(MODES),
        metavar="MODE",
        help=f"clients in A, of {', '.join(MODES)} (default: all)",
    )
    p.add_argument("--max-restarts", type=int, default=3, help="restarts of a dead process (3)")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args(argv)
    args.modes = [m for m in MODES if m in args.modes]
    if args.rounds < 1 or args.size <= 0 or args.conns < 1 or args.concurrency < 1:
        p.error("--rounds, --size, --conns and --concurrency must be positive")
    return args


def preflight(args: argparse.Namespace) -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    tools = ["ip", "ping", "ss", "wg", "setpriv"]
    if args.server == GO or "go-tun" in args.modes:
        tools.append("wireguard-go")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    return f"missing tools: {', '.join(missing)}" if missing else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight(args)
    if problem:
        print(f"proxy.py: {problem}", file=sys.stderr)
        return 2
    catch_interrupts()

    info = machine()
    load_before = loadavg()
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="wiresnake-proxybench-"))
    workdir.chmod(0o755)  # the proxy runs as nobody and reads its config from here
    lab = Lab(workdir)
    bench = Bench(lab, args.server, args.modes)
    results: dict[tuple[str, str], list[Cell]] = {}
    interrupted: str | None = None
    setup_error: str | None = None
    try:
        lab.setup()
        bench.setup_server()
        for c in bench.clients:
            try:
                bench.setup_client(c)
            except Failure as e:
                note(f"{c.label}: {e}")
        results = run_all(bench, args)
    except KeyboardInterrupt as e:
        interrupted = str(e) or "Ctrl-C"
    except (Failure, subprocess.SubprocessError, OSError) as e:
        setup_error = f"{type(e).__name__}: {e}"
    finally:
        lab.close()
    elapsed = time.monotonic() - t0
    nodes = [bench.server, *bench.clients]
    deaths = [(n, d) for n in nodes for d in n.deaths]
    if deaths or setup_error:
        note(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if setup_error:
        print(f"proxy.py: the lab could not be built: {setup_error}", file=sys.stderr)
        return 1

    table, footnotes, goal = render(args.modes, results, args.rounds)
    size = f"{args.size:g} MB"
    header = (
        f"{args.rounds} round(s), interleaved, medians; server in B: {args.server}; "
        f"tunnel MTU {MTU}\n"
        f"download: one HTTP GET of {size} (10^6 B; MB/s = 10^6 B/s), length checked; "
        f"conn/s: {args.conns} GETs of {SMALL_BODY} B, one connection each, "
        f"{args.concurrency} at once; conn time = one such GET (connect, SOCKS5, request, EOF)\n"
        "same client program for every mode: direct to the server's tunnel address (TUN) or "
        "through SOCKS5 on 127.0.0.1 (proxy, run as nobody)\n"
        "CPU = utime+stime of the WireGuard process in A (daemon or proxy) / in B (server); "
        "* = some rounds failed\n"
    )
    body = header + "\n" + table + "\n"
    if goal is not None:
        verdict = "MET" if goal >= 0.5 else "NOT MET"
        body += f"\nproxy/TUN download throughput: {goal:.2f} (goal >= 0.5: {verdict})\n"
    body += report_tail(
        footnotes,
        [(n.label, d) for n, d in deaths],
        [f"{n.label} x{n.restarts}" for n in nodes if n.restarts],
        elapsed,
        load_before,
    )
    return publish(
        body,
        f"Proxy mode vs TUN mode (bench/proxy.py), {size}, server {args.server}",
        "",
        info,
        started,
        elapsed,
        load_before,
        interrupted=interrupted,
        append=not args.no_append,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        _serve(int(sys.argv[2]), sys.argv[3:])
    elif len(sys.argv) > 1 and sys.argv[1] in ("_get", "_conns"):
        _client(sys.argv[1:])
    else:
        sys.exit(main())
