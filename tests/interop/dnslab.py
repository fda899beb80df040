"""A host's own DNS: dnsmasq inside its namespace, and `ip netns exec`'s resolv.conf for it.

`ip netns exec NS` bind-mounts every file of /etc/netns/NS/ over /etc, so programs started
in the namespace ask the server its resolv.conf names. `NameServer` serves names from a
hosts file (nothing else: no upstream, no /etc/hosts) on the host's loopback, and `move`
rewrites that file and makes dnsmasq read it again (SIGHUP). `resolv_conf` removes
/etc/netns/NS when its block ends, even on failure; the lab ends dnsmasq with the host.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from netlab import Host

NETNS_ETC = Path("/etc/netns")


@contextlib.contextmanager
def resolv_conf(ns: str, text: str) -> Iterator[Path]:
    """/etc/netns/NS/resolv.conf with `text`, for processes `ip netns exec` starts later."""
    directory = NETNS_ETC / ns
    directory.mkdir(parents=True, exist_ok=False)
    try:
        (directory / "resolv.conf").write_text(text)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class NameServer:
    """dnsmasq in `host` on 127.0.0.1:53, answering `names` (name -> IPv4) only."""

    def __init__(self, host: Host, workdir: Path, names: dict[str, str]) -> None:
        self.host = host
        self.hosts_file = workdir / "dns-hosts"
        self._write(names)
        self.proc = host.popen(
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", f"--addn-hosts={self.hosts_file}", "--listen-address=127.0.0.1",
            "--bind-interfaces", "--pid-file=", "--user=root", "--local-ttl=0",
            "--log-facility=-", stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.wait_answer(next(iter(names)), next(iter(names.values())))

    def _write(self, names: dict[str, str]) -> None:
        self.hosts_file.write_text("".join(f"{ip} {name}\n" for name, ip in names.items()))
        self.hosts_file.chmod(0o644)

    def lookup(self, name: str) -> str:
        res = self.host.run("getent", "ahostsv4", name, check=False)
        return res.stdout.split()[0] if res.returncode == 0 and res.stdout else ""

    def wait_answer(self, name: str, ip: str, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while self.lookup(name) != ip:
            assert self.proc.poll() is None, f"dnsmasq exited with {self.proc.returncode}"
            assert time.monotonic() < end, f"dnsmasq does not answer {name} with {ip}"
            time.sleep(0.05)

    def move(self, name: str, ip: str) -> None:
        """`name` now has the address `ip`, as a dynamic DNS update would do."""
        self._write({name: ip})
        self.proc.send_signal(signal.SIGHUP)
        self.wait_answer(name, ip)
