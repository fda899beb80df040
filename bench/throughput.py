"""Throughput, loss, latency and CPU cost of wiresnake against wireguard-go, between namespaces.

Run as root: .venv/bin/python bench/throughput.py [--quick] [--rounds N] [--impls ...]
                                                 [--taskset CPUS] [--tests ...] [--no-append]

Two network namespaces, A and B, joined by one veth pair; nothing is configured in the root
namespace. Inside them, one tunnel per implementation pair, all up at once on their own
ports and subnets:

    veth    no tunnel: iperf3 straight over the veth (the ceiling)
    go-go   wireguard-go in A, wireguard-go in B
    ws-ws   wiresnake in A, wiresnake in B
    ws-go   wiresnake in A, wireguard-go in B
    go-ws   wireguard-go in A, wiresnake in B

The iperf3 client runs in A and the server in B, so "A->B" rows carry data from the daemon
in A to the one in B and "B->A (-R)" rows the other way; the two mixed pairs therefore
cover wiresnake->wireguard-go and wireguard-go->wiresnake in both TCP directions.

Measured per pair: TCP throughput with 1 and 4 streams in both directions, UDP received
rate and loss at a fixed offered rate (A->B), the median round trip of many quick pings,
and for each TCP test the CPU seconds the pair's two daemons spent (utime+stime from
/proc/PID/stat before and after) per GiB carried. Rounds are interleaved: each round runs
every test on every pair before the next test (pair order rotates per round), so load that
drifts during the run hits all pairs alike; the table shows the median over rounds and the
ratios wiresnake / wireguard-go. A failure (a daemon exiting, iperf3 timing out or
erroring) is recorded in the table and its footnotes; a dead pair is restarted for its
next test. Everything (daemons, iperf3 server, namespaces, sockets) is torn down on exit,
also on errors and Ctrl-C; processes are ended by the PIDs this script started.

The run is appended to bench/RESULTS.md (machine, versions, date, exact command) unless
--no-append is given or the run was interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
SOCKET_DIR = Path("/var/run/wireguard")
_VENV_PY = ROOT / ".venv" / "bin" / "python"
WS_PYTHON = str(_VENV_PY) if _VENV_PY.exists() else sys.executable

WS, GO = "wiresnake", "wireguard-go"
# pair key -> (implementation in namespace A, in namespace B); None: no tunnel
PAIRS: dict[str, tuple[str | None, str | None]] = {
    "veth": (None, None),
    "go-go": (GO, GO),
    "ws-ws": (WS, WS),
    "ws-go": (WS, GO),
    "go-ws": (GO, WS),
}
LABELS = {
    "veth": "veth",
    "go-go": "go<>go",
    "ws-ws": "ws<>ws",
    "ws-go": "ws->go",
    "go-ws": "go->ws",
}

VETH_A, VETH_B = "192.168.77.1", "192.168.77.2"
TUNNEL_NET = "10.77.{}.{}"  # pair index, host (1 in A, 2 in B)
WG_PORT = 51820  # + pair index, in both namespaces
IPERF_PORT = 5201
TUNNEL_MTU = 1420
UDP_LEN = 1300  # UDP payload: fits the tunnel MTU (1420 - 28) unfragmented
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30


class Failure(Exception):
    """A measurement (or a pair's set-up) failed; recorded in the table, not fatal."""


# ---------------------------------------------------------------------------- the lab


class Lab:
    """Namespaces A and B joined by a veth pair, and the processes started inside them.

    `close` ends every process it started (by PID: SIGTERM, then SIGKILL), deletes the
    namespaces (which removes the veth pair and any TUN left) and the socket files of our
    interfaces in /var/run/wireguard, which all namespaces share."""

    def __init__(self, workdir: Path) -> None:
        while True:
            self.prefix = "tp" + secrets.token_hex(2)  # interface names are <= 15 bytes
            if not Path(f"/run/netns/{self.prefix}a").exists():
                break
        self.ns_a, self.ns_b = self.prefix + "a", self.prefix + "b"
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sockets: list[Path] = []
        self.server: subprocess.Popen[bytes] | None = None

    def setup(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self.namespaces.append(ns)
            self.run(ns, "ip", "link", "set", "lo", "up")
        va, vb = self.prefix + "va", self.prefix + "vb"
        # both ends are created directly inside their namespaces
        subprocess.run(
            ["ip", "link", "add", va, "netns", self.ns_a, "type", "veth",
             "peer", "name", vb, "netns", self.ns_b],
            check=True,
            capture_output=True,
        )  # fmt: skip
        for ns, dev, addr in ((self.ns_a, va, VETH_A), (self.ns_b, vb, VETH_B)):
            self.run(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            self.run(ns, "ip", "link", "set", dev, "up")
        self.ping_ready(VETH_B, "veth")

    def run(
        self, ns: str, *args: str, input: str | None = None, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise Failure(f"{' '.join(args[:3])}... -> {res.returncode}: {tail(res.stderr)}")
        return res

    def spawn(
        self,
        ns: str,
        argv: Sequence[str],
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A long-running process in `ns`, in its own session (Ctrl-C reaches only us; we
        end it by PID). `ip netns exec` and `taskset` exec in place: its PID is the
        program's."""
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=dict(os.environ, **(env or {})),
                start_new_session=True,
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self.procs.append(proc)
        return proc

    @staticmethod
    def end(proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)

    def ping_ready(self, dst: str, what: str, deadline: int = 10) -> None:
        res = self.run(
            self.ns_a, "ping", "-c", "1", "-i", "0.2", "-w", str(deadline), dst,
            check=False, timeout=deadline + 5,
        )  # fmt: skip
        if res.returncode != 0:
            raise Failure(f"{what}: no ping reply from {dst} within {deadline} s")

    # ------------------------------------------------------------ the iperf3 server in B

    def ensure_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            return
        self.server = self.spawn(self.ns_b, ["iperf3", "-s", "-p", str(IPERF_PORT)])
        end = time.monotonic() + 10
        while time.monotonic() < end:
            out = self.run(self.ns_b, "ss", "-Hltn", "sport", "=", f":{IPERF_PORT}").stdout
            if out.strip():
                return
            if self.server.poll() is not None:
                break
            time.sleep(0.05)
        raise Failure("the iperf3 server did not start")

    def restart_server(self) -> None:
        if self.server is not None:
            self.end(self.server)
            self.server = None

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: finish cleanup
        try:
            for proc in reversed(self.procs):
                with contextlib.suppress(Exception):
                    self.end(proc)
            for ns in self.namespaces:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            for path in self.sockets:
                with contextlib.suppress(OSError):
                    path.unlink()
            left = [p.pid for p in self.procs if p.poll() is None]
            if left:
                print(f"WARNING: processes still running: {left}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, old)


def tail(text: str, n: int = 160) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][-n:] if lines else ""


# ---------------------------------------------------------------------------- tunnels


@dataclass
class Tunnel:
    """One pair: a WireGuard interface in A and one in B (or the bare veth)."""

    key: str
    index: int
    impl_a: str | None
    impl_b: str | None
    gen: int = 0
    daemons: list[tuple[str, str, subprocess.Popen[bytes], Path]] = field(default_factory=list)
    error: str | None = None  # why it is down (set-up failed or a daemon exited)
    restarts: int = 0
    deaths: list[str] = field(default_factory=list)

    @property
    def dst(self) -> str:
        return VETH_B if self.impl_a is None else TUNNEL_NET.format(self.index, 2)

    def pids(self) -> list[int]:
        return [proc.pid for _, _, proc, _ in self.daemons]

    def check(self) -> str | None:
        """Why the pair is down, or None. Notices a daemon that has exited."""
        if self.error:
            return self.error
        for side, impl, proc, log in self.daemons:
            rc = proc.poll()
            if rc is not None:
                last = tail(log.read_text(errors="replace")) if log.exists() else ""
                self.error = f"{impl} in {side} exited with {rc}" + (f": {last}" if last else "")
                self.deaths.append(self.error)
                return self.error
        return None


def genkey() -> tuple[str, str]:
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    pub = subprocess.run(
        ["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True
    ).stdout
    return priv.strip(), pub.strip()


def start_daemon(
    lab: Lab, ns: str, impl: str, name: str, taskset: str | None
) -> tuple[subprocess.Popen[bytes], Path]:
    if impl == WS:
        argv = [WS_PYTHON, "-m", "wiresnake", "-f", name]
    else:
        argv = ["wireguard-go", "-f", name]
    if taskset:
        argv = ["taskset", "-c", taskset, *argv]
    sock = SOCKET_DIR / f"{name}.sock"
    lab.sockets.append(sock)
    log = lab.workdir / f"{name}.log"
    proc = lab.spawn(ns, argv, log=log, env={"LOG_LEVEL": "error"})
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if sock.exists():
            return proc, log
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    lab.end(proc)
    last = tail(log.read_text(errors="replace")) if log.exists() else ""
    raise Failure(f"{impl} for {name} did not start (rc {proc.returncode}): {last}")


def side_cpus(taskset: str | None, side: str) -> str | None:
    """The CPUs for side A's or B's daemon: "CPUS" pins both sides alike, "A/B" apart."""
    if taskset is None or "/" not in taskset:
        return taskset
    a, b = taskset.split("/", 1)
    return a if side == "A" else b


def pinning(taskset: str | None) -> str:
    if taskset is None:
        return "no"
    a, b = side_cpus(taskset, "A"), side_cpus(taskset, "B")
    return f"taskset -c {a}" if a == b else f"A's taskset -c {a}, B's taskset -c {b}"


def setup_tunnel(lab: Lab, t: Tunnel, taskset: str | None) -> None:
    """(Re)create the pair's two interfaces and complete a handshake."""
    t.error = None
    if t.impl_a is None or t.impl_b is None:
        return
    teardown_tunnel(lab, t)
    t.gen += 1
    port = WG_PORT + t.index
    sides = [
        ("A", lab.ns_a, t.impl_a, f"{lab.prefix}w{t.index}{t.gen}a", VETH_A, 1),
        ("B", lab.ns_b, t.impl_b, f"{lab.prefix}w{t.index}{t.gen}b", VETH_B, 2),
    ]
    keys = [genkey(), genkey()]
    try:
        for (side, ns, impl, name, _, host), (priv, _) in zip(sides, keys, strict=True):
            proc, log = start_daemon(lab, ns, impl, name, side_cpus(taskset, side))
            t.daemons.append((side, impl, proc, log))
            lab.run(ns, "wg", "set", name, "private-key", "/dev/stdin", "listen-port", str(port),
                    input=priv)  # fmt: skip
            lab.run(ns, "ip", "addr", "add", f"{TUNNEL_NET.format(t.index, host)}/24", "dev", name)
            lab.run(ns, "ip", "link", "set", name, "mtu", str(TUNNEL_MTU), "up")
        for i, (_, ns, _, name, _, _) in enumerate(sides):
            _, _, _, _, other_veth, other_host = sides[1 - i]
            lab.run(
                ns, "wg", "set", name, "peer", keys[1 - i][1],
                "allowed-ips", f"{TUNNEL_NET.format(t.index, other_host)}/32",
                "endpoint", f"{other_veth}:{port}",
            )  # fmt: skip
        lab.ping_ready(t.dst, f"{LABELS[t.key]} handshake")
    except (Failure, subprocess.SubprocessError, OSError) as e:
        died = t.check()
        t.error = f"set-up failed: {died or e}"
        raise Failure(t.error) from e


def teardown_tunnel(lab: Lab, t: Tunnel) -> None:
    for _, _, proc, _ in t.daemons:
        lab.end(proc)
    t.daemons.clear()


# ---------------------------------------------------------------------------- measurements


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError as e:
            raise Failure(f"daemon {pid} is gone") from e
        fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def iperf(
    lab: Lab,
    t: Tunnel,
    duration: float,
    *,
    streams: int = 1,
    reverse: bool = False,
    udp_rate: str | None = None,
) -> tuple[dict[str, Any], float | None]:
    """One iperf3 run from A to the pair's address in B: (its JSON, daemon CPU seconds)."""
    lab.ensure_server()
    pids = t.pids()
    args = ["iperf3", "-c", t.dst, "-p", str(IPERF_PORT), "-t", f"{duration:g}", "-J"]
    args += ["--connect-timeout", "3000"]
    if streams > 1:
        args += ["-P", str(streams)]
    if reverse:
        args.append("-R")
    if udp_rate:
        args += ["-u", "-b", udp_rate, "-l", str(UDP_LEN)]
    limit = duration + 20
    for attempt in range(6):
        before = cpu_seconds(pids) if pids else 0.0
        try:
            res = lab.run(lab.ns_a, *args, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            lab.restart_server()
            raise Failure(t.check() or f"iperf3 timed out ({limit:g} s)") from None
        died = t.check()
        if died:
            lab.restart_server()
            raise Failure(died)
        after = cpu_seconds(pids) if pids else 0.0
        try:
            data = json.loads(res.stdout)
        except ValueError:
            lab.restart_server()
            raise Failure(f"iperf3 exited {res.returncode}: {tail(res.stderr)}") from None
        error = data.get("error")
        # the server may still be closing the previous test when the next client comes
        if error and "busy" in str(error) and attempt < 5:
            time.sleep(0.5)
            continue
        if error or res.returncode != 0:
            lab.restart_server()
            raise Failure(f"iperf3: {error or res.returncode}")
        break
    return data, (after - before if pids else None)


def measure_tcp(
    lab: Lab, t: Tunnel, duration: float, streams: int, reverse: bool
) -> dict[str, float | None]:
    data, cpu = iperf(lab, t, duration, streams=streams, reverse=reverse)
    received = data["end"]["sum_received"]
    nbytes = float(received["bytes"])
    if nbytes <= 0:
        raise Failure("no bytes carried")
    return {
        "rate": received["bits_per_second"] / 1e6,
        "cpu": None if cpu is None else cpu / (nbytes / GIB),
    }


def measure_udp(lab: Lab, t: Tunnel, duration: float, rate: str) -> dict[str, float | None]:
    data, _ = iperf(lab, t, duration, udp_rate=rate)
    received = data["end"]["sum_received"]  # the server's side, as iperf3 3.12 reports it
    if not received.get("packets"):
        raise Failure("no UDP packets sent")
    return {"rx": received["bits_per_second"] / 1e6, "loss": float(received["lost_percent"])}


def measure_ping(
    lab: Lab, t: Tunnel, count: int, interval: float = 0.01
) -> dict[str, float | None]:
    deadline = int(count * interval + 10)
    pids = t.pids()
    before = cpu_seconds(pids) if pids else 0.0
    res = lab.run(
        lab.ns_a, "ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1",
        "-w", str(deadline),
        t.dst, check=False, timeout=deadline + 10,
    )  # fmt: skip
    died = t.check()
    if died:
        raise Failure(died)
    times = [float(x) for x in re.findall(r"time=([\d.]+) ms", res.stdout)]
    if not times:
        raise Failure(f"no ping replies ({tail(res.stdout + res.stderr)})")
    # what the daemons burn around sparse packets (a busy-poll window shows up here)
    cpu = (cpu_seconds(pids) - before) / count * 1e6 if pids else None
    return {
        "rtt": statistics.median(times) * 1000,
        "cpu": cpu,
        "ping_loss": 100.0 * (1 - len(times) / count),
    }


# ---------------------------------------------------------------------------- metrics, tests


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_better: bool
    tunnel_only: bool = False  # no value for the bare veth


@dataclass(frozen=True)
class Test:
    key: str
    label: str
    outputs: dict[str, str]  # measurement field -> metric key


def build_metrics(udp_rate: str) -> list[Metric]:
    rows = [
        ("tcp1", "TCP 1 stream  A->B      Mbit/s"),
        ("tcp1r", "TCP 1 stream  B->A (-R) Mbit/s"),
        ("tcp4", "TCP 4 streams A->B      Mbit/s"),
        ("tcp4r", "TCP 4 streams B->A (-R) Mbit/s"),
    ]
    metrics = [Metric(k, label, True) for k, label in rows]
    metrics += [
        Metric("udp_rx", f"UDP {udp_rate} A->B: recv Mbit/s", True),
        Metric("udp_loss", f"UDP {udp_rate} A->B: loss %", False),
        Metric("rtt", "ping RTT, median       us", False),
        Metric("ping_cpu", "CPU us per ping (both daemons)", False, True),
    ]
    metrics += [
        Metric("cpu_" + k, f"CPU s/GiB, {label.split(' Mbit')[0].strip()}", False, True)
        for k, label in rows
    ]
    return metrics


def build_tests() -> list[Test]:
    tests = []
    for streams in (1, 4):
        for reverse in (False, True):
            key = f"tcp{streams}" + ("r" if reverse else "")
            label = f"TCP {streams} {'B->A' if reverse else 'A->B'}"
            tests.append(Test(key, label, {"rate": key, "cpu": "cpu_" + key}))
    tests.append(Test("udp", "UDP A->B", {"rx": "udp_rx", "loss": "udp_loss"}))
    tests.append(Test("ping", "ping", {"rtt": "rtt", "cpu": "ping_cpu"}))
    return tests


TEST_KEYS = tuple(t.key for t in build_tests())


def run_test(lab: Lab, t: Tunnel, test: Test, args: argparse.Namespace) -> dict[str, float | None]:
    if test.key.startswith("tcp"):
        return measure_tcp(lab, t, args.duration, int(test.key[3]), test.key.endswith("r"))
    if test.key == "udp":
        return measure_udp(lab, t, args.duration, args.udp_rate)
    return measure_ping(lab, t, args.pings, args.ping_interval)


Cell = float | str  # a value, or why it failed


def run_all(
    lab: Lab, tunnels: list[Tunnel], args: argparse.Namespace, tests: list[Test]
) -> dict[tuple[str, str], list[Cell]]:
    results: dict[tuple[str, str], list[Cell]] = {}
    start = time.monotonic()
    for rnd in range(args.rounds):
        shift = rnd % len(tunnels)
        order = tunnels[shift:] + tunnels[:shift]
        for test in tests:
            for t in order:
                if t.check() and t.restarts < args.max_restarts:
                    t.restarts += 1
                    try:
                        setup_tunnel(lab, t, args.taskset)
                        note(f"restarted {LABELS[t.key]} (restart {t.restarts})")
                    except Failure as e:
                        note(f"restart of {LABELS[t.key]} failed: {e}")
                outcome: dict[str, float | None] | str
                try:
                    down = t.check()
                    if down:
                        raise Failure(down)
                    outcome = run_test(lab, t, test, args)
                except Failure as e:
                    outcome = str(e)
                except (subprocess.SubprocessError, OSError, KeyError, ValueError) as e:
                    outcome = f"{type(e).__name__}: {e}"
                for fld, metric in test.outputs.items():
                    if isinstance(outcome, str):
                        cell: Cell | None = outcome
                    else:
                        value = outcome.get(fld)
                        cell = value
                    if cell is not None:
                        results.setdefault((metric, t.key), []).append(cell)
                shown = outcome if isinstance(outcome, str) else _show(outcome)
                elapsed = time.monotonic() - start
                note(
                    f"[{elapsed:4.0f} s] round {rnd + 1}/{args.rounds} "
                    f"{test.label:<10} {LABELS[t.key]:<7} {shown}"
                )
    return results


def _show(outcome: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in outcome.items() if v is not None)


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the table


def fmt(v: float) -> str:
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def median_of(cells: Sequence[Cell]) -> float | None:
    values = [c for c in cells if isinstance(c, float | int)]
    return statistics.median(values) if values else None


def render(
    metrics: list[Metric],
    pairs: list[str],
    results: dict[tuple[str, str], list[Cell]],
    rounds: int,
) -> tuple[str, list[str]]:
    ratios = [
        ("ws/go", "ws-ws", "go-go"),
        ("ws->go/go", "ws-go", "go-go"),
        ("go->ws/go", "go-ws", "go-go"),
    ]
    ratios = [r for r in ratios if r[1] in pairs and r[2] in pairs]
    head = f"{'metric':<34}" + "".join(f"{LABELS[p]:>10}" for p in pairs)
    if ratios:
        head += "  |" + "".join(f"{name:>11}" for name, _, _ in ratios)
    lines = [head, "-" * len(head)]
    footnotes: list[str] = []
    for m in metrics:
        row = f"{m.label:<34}"
        meds: dict[str, float | None] = {}
        for p in pairs:
            cells = results.get((m.key, p), [])
            if m.tunnel_only and p == "veth":
                row += f"{'-':>10}"
                continue
            med = median_of(cells)
            meds[p] = med
            failed = [c for c in cells if isinstance(c, str)]
            text = ("FAIL" if failed else "-") if med is None else fmt(med)
            if cells and (failed or len(cells) < rounds):
                text += "*"
                if failed:
                    for err in dict.fromkeys(failed):
                        footnotes.append(
                            f"{LABELS[p]}, {' '.join(m.label.split())}: "
                            f"{failed.count(err)} of {rounds} rounds failed: {err}"
                        )
            row += f"{text:>10}"
        if ratios:
            row += "  |"
            for _, num, den in ratios:
                a, b = meds.get(num), meds.get(den)
                row += f"{(fmt(a / b) if a is not None and b else '-'):>11}"
        lines.append(row)
    return "\n".join(lines), footnotes


def render_spread(
    metrics: list[Metric], pairs: list[str], results: dict[tuple[str, str], list[Cell]]
) -> str:
    """The lowest and highest value over the rounds, to judge the noise of the medians."""
    head = f"{'min-max over rounds':<34}" + "".join(f"{LABELS[p]:>16}" for p in pairs)
    lines = [head, "-" * len(head)]
    for m in metrics:
        row = f"{m.label:<34}"
        for p in pairs:
            values = [c for c in results.get((m.key, p), []) if isinstance(c, float | int)]
            text = f"{fmt(min(values))}-{fmt(max(values))}" if values else "-"
            row += f"{text:>16}"
        lines.append(row)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the record


def first_line(argv: Sequence[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"
    out = (res.stdout or res.stderr).strip().splitlines()
    return out[0].strip() if out else "unknown"


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    script = (
        "import sys, platform, cryptography; print(platform.python_version(), "
        "sys.executable, 'cryptography', cryptography.__version__)"
    )
    py = first_line([WS_PYTHON, "-c", script])
    return {
        "nproc": first_line(["nproc"]),
        "cpu": model,
        "kernel": platform.release(),
        "python": py,
        "wireguard-go": first_line(["wireguard-go", "--version"]),
        "iperf3": first_line(["iperf3", "--version"]),
        "wg": first_line(["wg", "--version"]),
        "commit": first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def command_line() -> str:
    exe = sys.executable
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(exe)
        if not rel.startswith(".."):
            exe = rel
    return shlex.join([exe, *sys.argv])


def append_results(text: str) -> None:
    existing = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    sep = "" if existing.endswith("\n\n") else ("\n" if existing.endswith("\n") else "\n\n")
    with RESULTS_MD.open("a") as f:
        f.write(sep + text)


def report_tail(
    footnotes: Sequence[str],
    deaths: Sequence[tuple[str, str]],
    restarts: Sequence[str],
    elapsed: float,
    load_before: str,
) -> str:
    """The lines after a results table: failures, daemon deaths and restarts, totals."""
    text = ""
    if footnotes:
        text += "\nfailures:\n" + "".join(f"  {f}\n" for f in footnotes)
    for label, d in deaths:
        text += f"  {label} exit: {d}\n"
    if restarts:
        text += f"restarts: {', '.join(restarts)}\n"
    return (
        text + f"\n(total {elapsed:.0f} s; load average {load_before} before, {loadavg()} after)\n"
    )


def publish(
    body: str,
    title: str,
    tools: str,
    info: dict[str, str],
    started: dt.datetime,
    elapsed: float,
    load_before: str,
    *,
    interrupted: str | None,
    append: bool,
) -> int:
    """Print a run's report and append it to RESULTS.md with the machine and the command;
    the exit status (130 for an interrupted run, which is never appended)."""
    print()
    print(body)
    if interrupted:
        print(f"interrupted ({interrupted}); cleaned up; not appended to RESULTS.md")
        return 130
    if not append:
        return 0
    stamp = started.strftime("%Y-%m-%d %H:%M UTC")
    record = (
        f"## {title}, {stamp}\n\n"
        f"- Machine: `nproc` {info['nproc']}, CPU `{info['cpu']}`, kernel {info['kernel']}; "
        f"load average {load_before} before, {loadavg()} after (a shared VM).\n"
        f"- Python {info['python']}.\n"
        f"- wireguard-go `{info['wireguard-go']}`; {tools}`{info['wg']}`.\n"
        f"- wiresnake at commit {info['commit']} (src/ as it stood in the working tree).\n"
        f"- Date: {stamp} (system clock); took {elapsed:.0f} s.\n"
        f"- Command: `{command_line()}`\n\n"
        f"```\n{body}```\n"
    )
    append_results(record)
    print(f"appended to {RESULTS_MD.relative_to(ROOT)}")
    return 0


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 s tests, 1 round, 50 pings")
    p.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    p.add_argument(
        "--impls",
        nargs="+",
        choices=list(PAIRS),
        default=list(PAIRS),
        metavar="PAIR",
        help=f"pairs to measure, of {', '.join(PAIRS)} (default: all)",
    )
    p.add_argument(
        "--taskset",
        metavar="CPUS",
        help="pin the daemons with taskset -c CPUS; A_CPUS/B_CPUS pins each side apart",
    )
    p.add_argument("--duration", type=float, help="seconds per iperf3 test (5; 2 with --quick)")
    p.add_argument("--udp-rate", default="200M", help="offered UDP rate for iperf3 -b (200M)")
    p.add_argument("--pings", type=int, help="pings per RTT measurement (100; 50 with --quick)")
    p.add_argument(
        "--ping-interval",
        type=float,
        default=0.01,
        metavar="S",
        help="seconds between pings (0.01); shorter keeps the CPUs awake and caches warm",
    )
    p.add_argument(
        "--tests",
        nargs="+",
        choices=TEST_KEYS,
        default=list(TEST_KEYS),
        metavar="TEST",
        help=f"tests to run, of {', '.join(TEST_KEYS)} (default: all)",
    )
    p.add_argument("--max-restarts", type=int, default=3, help="restarts of a dead pair (3)")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.pings = args.pings or (50 if args.quick else 100)
    args.impls = [k for k in PAIRS if k in args.impls]  # table order
    if args.taskset is not None and not all(args.taskset.split("/")):
        p.error(f"--taskset {args.taskset!r}: empty CPU list")
    if args.rounds < 1 or args.duration <= 0 or args.pings < 1 or args.ping_interval <= 0:
        p.error("--rounds, --duration, --pings and --ping-interval must be positive")
    return args


def preflight(args: argparse.Namespace) -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    tools = ["ip", "iperf3", "ping", "ss", "wg"]
    if any(PAIRS[k][0] == GO or PAIRS[k][1] == GO for k in args.impls):
        tools.append("wireguard-go")
    if args.taskset:
        tools.append("taskset")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    return f"missing tools: {', '.join(missing)}" if missing else None


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def catch_interrupts() -> None:
    """Ctrl-C, SIGTERM and SIGHUP raise KeyboardInterrupt, so the lab is cleaned up."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight(args)
    if problem:
        print(f"throughput.py: {problem}", file=sys.stderr)
        return 2
    catch_interrupts()

    info = machine()
    load_before = loadavg()
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    tests = [t for t in build_tests() if t.key in args.tests]
    wanted = {m for t in tests for m in t.outputs.values()}
    metrics = [m for m in build_metrics(args.udp_rate) if m.key in wanted]
    tunnels = [Tunnel(k, i, *PAIRS[k]) for i, k in enumerate(args.impls)]
    workdir = Path(tempfile.mkdtemp(prefix="wiresnake-throughput-"))
    lab = Lab(workdir)
    results: dict[tuple[str, str], list[Cell]] = {}
    interrupted: str | None = None
    setup_error: str | None = None
    try:
        lab.setup()
        for t in tunnels:
            try:
                setup_tunnel(lab, t, args.taskset)
            except Failure as e:
                note(f"{LABELS[t.key]}: {e}")
        results = run_all(lab, tunnels, args, tests)
    except KeyboardInterrupt as e:
        interrupted = str(e) or "Ctrl-C"
    except (Failure, subprocess.SubprocessError, OSError) as e:
        setup_error = f"{type(e).__name__}: {e}"
    finally:
        lab.close()
    elapsed = time.monotonic() - t0
    deaths = [(t, d) for t in tunnels for d in t.deaths]
    if deaths:
        note(f"daemon logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if setup_error:
        print(f"throughput.py: the lab could not be built: {setup_error}", file=sys.stderr)
        return 1

    table, footnotes = render(metrics, args.impls, results, args.rounds)
    header = (
        f"mode: {'quick' if args.quick else 'default'}; {args.rounds} round(s), interleaved; "
        f"{args.duration:g} s per iperf3 test; UDP offered {args.udp_rate} "
        f"({UDP_LEN} B payloads); {args.pings} pings at {args.ping_interval * 1000:g} ms\n"
        f"daemons pinned: {pinning(args.taskset)}; "
        f"tunnel MTU {TUNNEL_MTU}; medians over rounds; * = some rounds failed or missing\n"
        "columns: A<>B implementations (iperf3 client and ping in A); ratios = the column's "
        "median / go<>go's\n(throughput: higher is better; loss, RTT and CPU s/GiB: lower "
        "is better; CPU = both daemons' utime+stime)\n"
    )
    body = header + "\n" + table + "\n"
    if args.rounds > 1:
        body += "\n" + render_spread(metrics, args.impls, results) + "\n"
    body += report_tail(
        footnotes,
        [(f"{LABELS[t.key]} daemon", d) for t, d in deaths],
        [f"{LABELS[t.key]} x{t.restarts}" for t in tunnels if t.restarts],
        elapsed,
        load_before,
    )
    mode = "quick" if args.quick else "default"
    pin = f", daemons pinned to CPUs {args.taskset}" if args.taskset else ""
    return publish(
        body,
        f"Tunnel throughput (bench/throughput.py), {mode}{pin}",
        f"`{info['iperf3']}`; ",
        info,
        started,
        elapsed,
        load_before,
        interrupted=interrupted,
        append=not args.no_append,
    )


if __name__ == "__main__":
    sys.exit(main())
