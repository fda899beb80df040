"""`wiresnake proxy` as user nobody, against a wiresnake daemon and against wireguard-go.

Host `s` runs the WireGuard server (10.51.0.1), an HTTP server and a DNS server bound to
its tunnel address, so they are reachable only through the tunnel. Host `c` runs the
rootless proxy (tunnel address 10.51.0.2, no TUN, no privilege) with SOCKS5, HTTP, a client
and a server port forward and the info endpoint; clients in `c` use them over loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import (
    GO_BUILDS,
    Host,
    NetLab,
    WgIface,
    genkey,
    require_go_build,
    require_root_and_tools,
)

pytestmark = [pytest.mark.netns, pytest.mark.interop]

AUX = str(Path(__file__).with_name("proxyaux.py"))
SOCKS, HTTP, FORWARD, INFO, SERVER_TUNNEL, LOCAL_WEB = 1080, 3128, 2080, 9080, 8022, 9000


def impair(host: Host, dev: str, percent: int = 2) -> None:
    """Drop `percent`% of what arrives on `dev` and hold back another `percent`% of what
    leaves it behind a slow HTB class, so it arrives after packets sent later."""
    host.run("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
    host.run("tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
             "rate", "10gbit")  # fmt: skip
    host.run("tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb",
             "rate", "20mbit", "ceil", "20mbit")  # fmt: skip
    modulus = 100 // percent
    rules = f"""
table inet impair {{
  chain pre {{
    type filter hook prerouting priority 0; policy accept;
    iifname "{dev}" numgen random mod {modulus} == 0 counter drop
  }}
  chain post {{
    type filter hook postrouting priority 0; policy accept;
    oifname "{dev}" numgen random mod {modulus} == 0 counter meta priority set 1:20
  }}
}}
"""
    host.run("nft", "-f", "-", input=rules)


def impaired_counts(host: Host) -> tuple[int, int]:
    """(dropped, held back) packets so far."""
    out = host.run("nft", "list", "table", "inet", "impair").stdout
    counts = [
        int(line.split("packets")[1].split()[0]) for line in out.splitlines() if "packets" in line
    ]
    return counts[0], counts[1]


class ProxyLab:
    def __init__(self, lab: NetLab, impl: str, workdir: Path, limit: tuple[str, ...] = ()) -> None:
        """`limit`: a prefix for the proxy's command (`prlimit --nofile=256`, say)."""
        self.lab = lab
        self.s, self.c = lab.host("s"), lab.host("c")
        self.veth_c, self.veth_s = lab.link(self.c, self.s, "192.168.51.1", "192.168.51.2")
        self.server = WgIface(lab, self.s, impl, "10.51.0.1", "fd51::1")
        self.private, self.public = genkey()
        self.s.wg("set", self.server.name, "peer", self.public, "allowed-ips", "10.51.0.2/32")
        self._ready(self.s.popen(sys.executable, AUX, "http", "10.51.0.1", "8080",
                                 stdout=subprocess.PIPE))  # fmt: skip
        self._ready(self.s.popen(sys.executable, AUX, "dns", "10.51.0.1", "53",
                                 "web.test=10.51.0.1", stdout=subprocess.PIPE))  # fmt: skip
        self._ready(self.c.popen(sys.executable, AUX, "http", "127.0.0.1", str(LOCAL_WEB),
                                 stdout=subprocess.PIPE))  # fmt: skip
        self.conf = workdir / "proxy.conf"
        self.conf.write_text(
            f"""\
[Interface]
Address = 10.51.0.2/32
PrivateKey = {self.private}
DNS = 10.51.0.1
CheckAlive = 10.51.0.1
CheckAliveInterval = 1

[Peer]
PublicKey = {self.server.public}
Endpoint = 192.168.51.2:51820
AllowedIPs = 10.51.0.0/24

[Socks5]
BindAddress = 127.0.0.1:{SOCKS}

[http]
BindAddress = 127.0.0.1:{HTTP}

[TCPClientTunnel]
BindAddress = 127.0.0.1:{FORWARD}
Target = web.test:8080

[TCPServerTunnel]
ListenPort = {SERVER_TUNNEL}
Target = 127.0.0.1:{LOCAL_WEB}
"""
        )
        self.conf.chmod(0o644)
        self.log = workdir / "proxy.log"
        self.proxy = self.c.popen(
            *limit, "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            sys.executable, "-m", "wiresnake", "proxy", str(self.conf), "-i", f"127.0.0.1:{INFO}",
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )  # fmt: skip
        self.wait_listening(INFO)

    @staticmethod
    def _ready(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"

    def wait_listening(self, port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proxy.poll() is None, self.log.read_text()
            res = self.c.run("python3", "-c", _CONNECT_PROBE, str(port), check=False)
            if res.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"proxy never listened on {port}\n{self.log.read_text()}")

    def curl(self, *args: str, timeout: float = 30) -> str:
        return self.c.run("curl", "-sS", "--fail", "--max-time", str(timeout), *args,
                          timeout=timeout + 10).stdout  # fmt: skip

    def info(self, path: str) -> tuple[int, str]:
        res = self.c.run("python3", "-c", _INFO_GET, f"http://127.0.0.1:{INFO}{path}")
        status, _, body = res.stdout.partition("\n")
        return int(status), body

    def aux(self, *args: str, timeout: float = 300) -> str:
        return self.c.run(sys.executable, AUX, *args, timeout=timeout).stdout


_CONNECT_PROBE = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)"
_INFO_GET = """
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=5)
    print(r.status); print(r.read().decode(), end="")
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode(), end="")
"""


@pytest.fixture(params=["wiresnake", *GO_BUILDS])
def plab(request: pytest.FixtureRequest) -> Iterator[ProxyLab]:
    require_root_and_tools("wg", "curl", "nft", "tc", "setpriv")
    if request.param != "wiresnake":
        require_go_build(request.param)
    with NetLab() as lab, tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        yield ProxyLab(lab, request.param, Path(tmp))


def test_curl_through_socks5_and_http_proxy_with_names_from_the_tunnel_dns(plab: ProxyLab) -> None:
    via_socks = plab.curl("--socks5-hostname", f"127.0.0.1:{SOCKS}", "http://web.test:8080/a")
    assert via_socks.startswith("hello from") and "path=/a" in via_socks
    via_http = plab.curl("-x", f"http://127.0.0.1:{HTTP}", "http://web.test:8080/b")
    assert "path=/b" in via_http
    tunneled = plab.curl("-p", "-x", f"http://127.0.0.1:{HTTP}", "http://10.51.0.1:8080/c")
    assert "path=/c" in tunneled  # CONNECT, then the request inside it
    forwarded = plab.curl(f"http://127.0.0.1:{FORWARD}/d")
    assert "path=/d" in forwarded


def test_proxy_runs_as_nobody_and_reports_health(plab: ProxyLab) -> None:
    # `ip netns exec` and setpriv both exec, so the pid is the proxy's own
    status = Path(f"/proc/{plab.proxy.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["65534"] * 4
    plab.curl("--socks5-hostname", f"127.0.0.1:{SOCKS}", "http://web.test:8080/")
    deadline = time.monotonic() + 10
    while True:
        code, body = plab.info("/readyz")
        if (code == 200 and json.loads(body)["10.51.0.1"] > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 200, body
    code, metrics = plab.info("/metrics")
    assert code == 200
    assert f"public_key={_hex(plab.server.public)}" in metrics
    assert "private_key=REDACTED" in metrics and plab.private not in metrics
    handshake = next(
        int(x.split("=")[1]) for x in metrics.split() if x.startswith("last_handshake_time_sec")
    )
    assert abs(time.time() - handshake) < 60
    # the server goes away: CheckAlive stops answering and /readyz says so
    plab.lab.stop(plab.server.proc)
    deadline = time.monotonic() + 15
    while plab.info("/readyz")[0] != 503:
        assert time.monotonic() < deadline, "readyz never turned 503"
        time.sleep(0.5)


def test_server_tunnel_exposes_a_local_service_to_the_peer(plab: ProxyLab) -> None:
    # the proxy must have a session before the peer can reach it (no endpoint on the server)
    plab.curl("--socks5-hostname", f"127.0.0.1:{SOCKS}", "http://web.test:8080/")
    res = plab.s.run("curl", "-sS", "--fail", "--max-time", "20",
                     f"http://10.51.0.2:{SERVER_TUNNEL}/exposed")  # fmt: skip
    assert "path=/exposed" in res.stdout and plab.c.ns.endswith("c")


def test_dns_query_through_udp_associate(plab: ProxyLab) -> None:
    assert (
        plab.aux("udpdns", str(SOCKS), "10.51.0.1", "web.test", timeout=60).strip() == "10.51.0.1"
    )


def test_200_concurrent_connections(plab: ProxyLab) -> None:
    out = plab.aux("many", str(SOCKS), "web.test", "8080", "200", "20000", timeout=240)
    assert out.strip() == "ok 200"


def test_200_mb_down_and_up_under_loss_and_reordering(plab: ProxyLab) -> None:
    impair(plab.c, plab.veth_c)
    impair(plab.s, plab.veth_s)
    n = 200 * 1000 * 1000
    down = plab.aux("get", str(SOCKS), "web.test", "8080", str(n), "7", timeout=900)
    up = plab.aux("put", str(SOCKS), "web.test", "8080", str(n), "8", timeout=900)
    assert down.split()[:2] == ["ok", str(n)] and up.split()[:2] == ["ok", str(n)]
    for host in (plab.c, plab.s):
        dropped, held = impaired_counts(host)
        assert dropped > 100 and held > 100, (dropped, held)
    print(f"200 MB down {down.split()[2]} s, up {up.split()[2]} s under 2% loss + reordering")


@pytest.fixture
def flab() -> Iterator[ProxyLab]:
    """The proxy as nobody with 256 descriptors (soft and hard: nothing to raise)."""
    require_root_and_tools("wg", "curl", "setpriv", "prlimit")
    with NetLab() as lab, tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        yield ProxyLab(lab, "wiresnake", Path(tmp), ("prlimit", "--nofile=256"))


def test_a_flood_of_idle_connections_under_256_descriptors_leaves_room_for_requests(
    flab: ProxyLab,
) -> None:
    limits = Path(f"/proc/{flab.proxy.pid}/limits").read_text()
    assert any(
        line.startswith("Max open files") and " 256 " in line for line in limits.splitlines()
    )
    socks = f"127.0.0.1:{SOCKS}"
    assert "path=/before" in flab.curl("--socks5-hostname", socks, "http://web.test:8080/before")
    # 300 connections to SOCKS5 that say nothing: more than the proxy has descriptors
    flood = flab.c.popen(sys.executable, AUX, "flood", str(SOCKS), "300", "20",
                         stdout=subprocess.PIPE)  # fmt: skip
    assert flood.stdout is not None
    assert flood.stdout.readline().strip() == b"open"
    started = time.monotonic()
    try:
        for i in range(6):
            out = flab.curl("--socks5-hostname", socks, f"http://web.test:8080/s{i}", timeout=15)
            assert f"path=/s{i}" in out
            out = flab.curl("-x", f"http://127.0.0.1:{HTTP}", f"http://web.test:8080/h{i}")
            assert f"path=/h{i}" in out
            time.sleep(0.5)
        elapsed = time.monotonic() - started
    finally:
        out, _ = flood.communicate(timeout=60)
    words = out.split()
    # every idle one was closed by the proxy: pushed out for a newer one, or timed out
    assert words == [b"opened", b"300", b"closed", b"300"], out
    assert flab.proxy.poll() is None
    text = flab.log.read_text()
    assert len(text) < 10_000 and text.count("\n") < 50, text[-3000:]
    assert "out of system resource" not in text and "Traceback" not in text, text[-3000:]
    print(f"12 requests in {elapsed:.1f} s while 300 idle connections were open")


def test_a_silent_client_is_closed_after_a_few_seconds(flab: ProxyLab) -> None:
    out = flab.aux("silent", str(SOCKS), str(HTTP), timeout=60).split()
    assert out[0] == "closed" and all(float(t) < 10 for t in out[1:]), out


def test_an_unroutable_destination_fails_at_once_through_socks5_and_http(
    flab: ProxyLab,
) -> None:
    for args, want in (
        (("--socks5", f"127.0.0.1:{SOCKS}", "http://10.99.0.1/"), "(3)"),
        (("-x", f"http://127.0.0.1:{HTTP}", "http://10.99.0.1/"), "502"),
        (("-p", "-x", f"http://127.0.0.1:{HTTP}", "http://10.99.0.1/"), "502"),
    ):
        started = time.monotonic()
        res = flab.c.run("curl", "-sS", "--fail", "--max-time", "20", *args, check=False)
        assert res.returncode != 0 and want in res.stderr, (args, res.stderr)
        assert time.monotonic() - started < 5, args
    body = flab.c.run("curl", "-sS", "-x", f"http://127.0.0.1:{HTTP}", "http://10.99.0.1/")
    assert "AllowedIPs contain 10.99.0.1" in body.stdout
    log = flab.log.read_text()
    assert log.count("10.99.0.1") >= 4 and "AllowedIPs" in log, log  # at the default level


def _hex(b64: str) -> str:
    import base64

    return base64.b64decode(b64).hex()
