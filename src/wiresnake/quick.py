"""`wiresnake up`, `down`, `save` and `strip`: what `wg-quick` does, without wg-quick.

The work is split in three so that what will happen can be read and tested without
running anything:

1. `load` finds the file (`CONF` is a path, or an interface name meaning
   /etc/wireguard/IFACE.conf), takes the interface name from its base name, warns when the
   file is world accessible, parses the whole file (wg and wg-quick keys), checks the
   wg-quick values and resolves endpoint names. Any error is `FILE:LINE: ...`; nothing on
   the system has changed yet. `preflight_up` / `preflight_down` then check the system
   (the interface must not / must exist, resolvconf and nft are installed when needed).
2. `gather_up_facts` / `gather_down_facts` read what the plan depends on (route MTUs
   towards the endpoints, a free routing table for a default route, the policy rules and
   nftables tables that are there) and `plan_up` / `plan_down` turn file + facts into a
   list of `Step`s, purely.
3. `execute` runs the steps, printing each as `[#] command` on stderr as wg-quick does.
   If a step of `up` fails (or SIGINT/SIGTERM arrives) the steps done so far are undone
   in reverse order (`undo_steps`): the interface is deleted, and policy rules, nftables
   tables and DNS are removed, as wg-quick's exit trap does.

The daemon is our own (`python -m wiresnake IFACE`): we are the implementation, so no
kernel module and no wireguard-go is tried. Its configuration is set over the
configuration socket in this process (the file without wg-quick's keys, as `setconf`).

The nftables tables and iptables comments carry wg-quick's names (`wg-quick-IFACE`,
`wg-quick(8) rule for IFACE`), so an interface brought up by one tool can be taken down
by the other.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv6Network, ip_address, ip_interface
from typing import Any, Final, TypeAlias

from wiresnake import config, wgctl
from wiresnake.config import Config, ConfigError, InterfaceAddress, WgQuickSettings

__all__ = [
    "ETC_DIR",
    "DownFacts",
    "Hook",
    "QuickError",
    "QuickFile",
    "Run",
    "SaveConfig",
    "SetDevice",
    "StartDaemon",
    "Step",
    "StepFailed",
    "UpFacts",
    "WriteSysctl",
    "compute_mtu",
    "down",
    "execute",
    "find",
    "first_free_table",
    "iptables_removal",
    "load",
    "locate",
    "main",
    "nft_removal",
    "plan_down",
    "plan_up",
    "route_mtu",
    "run_plan",
    "runtime_addresses",
    "save",
    "saved_config_text",
    "sort_prefixes",
    "strip",
    "substitute",
    "undo_steps",
    "up",
    "write_atomically",
]

PROG: Final = "wiresnake"
ETC_DIR: Final = "/etc/wireguard"
FIRST_POLICY_TABLE: Final = 51820
DEFAULT_LINK_MTU: Final = 1500
OVERHEAD: Final = 80  # IPv6 (40) + UDP (8) + WireGuard (32): the worst case, as wg-quick
MIN_MTU: Final = 68
MAX_MTU: Final = 65535

# An interface name as wg-quick accepts it, and the config file named after one.
_IFACE_NAME: Final = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")
_CONF_NAME: Final = re.compile(r"(?:^|/)([a-zA-Z0-9_=+.-]{1,15})\.conf$")
# A prefix as `wg show IFACE allowed-ips` prints it, the only kind wg-quick routes.
_PREFIX: Final = re.compile(r"[0-9a-z:.]+/[0-9]+")
_MTU_IN: Final = re.compile(r"mtu ([0-9]+)")
_DEV_IN: Final = re.compile(r"dev ([^ \n]+)")
_RESOLVCONF_ORDER: Final = "/etc/resolvconf/interface-order"
_RT_TABLES: Final = (
    "/etc/iproute2/rt_tables",
    "/usr/share/iproute2/rt_tables",
    "/usr/lib/iproute2/rt_tables",
)
_BUILTIN_TABLES: Final = frozenset({"unspec", "default", "main", "local"})
_IPTABLES_MARK: Final = "wg-quick(8) rule for {iface}"


class QuickError(Exception):
    """A refusal before anything changed; printed as `wiresnake: MESSAGE`."""


class StepFailed(Exception):
    """A step of the plan failed (its own output already explains why)."""


class _Interrupted(Exception):
    pass


def _err(text: str) -> None:
    stream = sys.stderr
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        stream.write(text)
        stream.flush()


# ---------------------------------------------------------------------------------------
# Steps: what `up` and `down` do, as data


@dataclass(frozen=True, slots=True)
class Run:
    """An external command. `skip_if_output`: a query run first; when it prints anything
    the command is skipped (wg-quick's "route already there" test). `check`: a failure
    aborts the plan (else it is ignored, as wg-quick's `|| true`)."""

    argv: tuple[str, ...]
    stdin: str | None = None
    skip_if_output: tuple[str, ...] | None = None
    check: bool = True
    undo: tuple[Run, ...] = ()

    @property
    def display(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True, slots=True)
class Hook:
    """A PreUp/PostUp/PreDown/PostDown snippet, `%i` already replaced, run by bash."""

    command: str
    undo: tuple[Run, ...] = ()

    @property
    def display(self) -> str:
        return self.command


@dataclass(frozen=True, slots=True)
class StartDaemon:
    """`wiresnake IFACE`: returns once the TUN and the configuration socket exist."""

    iface: str
    undo: tuple[Run, ...] = ()

    @property
    def display(self) -> str:
        return f"{PROG} {self.iface}"


@dataclass(frozen=True, slots=True)
class SetDevice:
    """One `set=1` request over the configuration socket (`setconf`, `set fwmark`)."""

    iface: str
    lines: tuple[str, ...]
    shown: str
    undo: tuple[Run, ...] = ()
    in_use: str | None = None  # said when the listen port is taken: port and file line

    @property
    def display(self) -> str:
        return self.shown


@dataclass(frozen=True, slots=True)
class WriteSysctl:
    key: str
    value: str
    undo: tuple[Run, ...] = ()

    @property
    def display(self) -> str:
        return f"sysctl -q {self.key}={self.value}"


@dataclass(frozen=True, slots=True)
class SaveConfig:
    """SaveConfig = true: the running configuration back into the file, atomically."""

    iface: str
    path: str
    quick: WgQuickSettings
    undo: tuple[Run, ...] = ()

    @property
    def display(self) -> str:
        return f"{PROG} showconf {self.iface}"


Step: TypeAlias = Run | Hook | StartDaemon | SetDevice | WriteSysctl | SaveConfig


# ---------------------------------------------------------------------------------------
# The file


@dataclass(frozen=True, slots=True)
class QuickFile:
    """A checked wg-quick file. `path` is where it really is (symlinks followed, where
    SaveConfig writes); `named` is how the user named it (in messages)."""

    iface: str
    path: str
    named: str
    config: Config


def locate(arg: str, etc_dir: str = ETC_DIR) -> tuple[str, str | None]:
    """(path, interface name or None when the base name is not one): an argument that is
    an interface name means ETC_DIR/NAME.conf, anything else is a path (so `wg0.conf`
    alone means /etc/wireguard/wg0.conf.conf, as for wg-quick: write `./wg0.conf`)."""
    path = f"{etc_dir}/{arg}.conf" if _IFACE_NAME.fullmatch(arg) else arg
    m = _CONF_NAME.search(path)
    return path, (m[1] if m else None)


def world_accessible(path: str) -> bool:
    """wg-quick's test: some "other" permission bit is set on both the file and its
    directory."""
    file_mode = os.stat(path).st_mode
    dir_mode = os.stat(os.path.dirname(path) or ".").st_mode
    return bool(file_mode & dir_mode & 0o007)


def _table_names() -> set[str]:
    names = set(_BUILTIN_TABLES)
    files: list[str] = []
    for base in _RT_TABLES:
        files.append(base)
        with contextlib.suppress(OSError):
            d = base + ".d"
            files += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".conf")]
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    words = line.split("#", 1)[0].split()
                    if len(words) >= 2:
                        names.add(words[1])
        except OSError:
            continue
    return names


def _valid_table(value: str) -> bool:
    if value in ("off", "auto"):
        return True
    try:
        number = int(value, 0)
    except ValueError:
        return value in _table_names()
    return 0 <= number <= 0xFFFFFFFF


def check_quick(cfg: Config, table_ok: Callable[[str], bool] = _valid_table) -> None:
    """What config.py accepts but `ip` would refuse halfway through `up`."""
    q = cfg.quick
    if q.mtu is not None and not MIN_MTU <= q.mtu <= MAX_MTU:
        raise cfg.error(-1, "MTU", f"`{q.mtu}' is not in {MIN_MTU}-{MAX_MTU}")
    if q.table is not None and not table_ok(q.table):
        raise cfg.error(
            -1, "Table", f"`{q.table}' is neither off, auto, a number nor a table name of ip"
        )
    seen: set[InterfaceAddress] = set()
    for a in q.addresses:
        if a in seen:
            raise cfg.error(-1, "Address", f"`{a}' is given twice")
        seen.add(a)


def find(arg: str, etc_dir: str = ETC_DIR) -> tuple[str, str, str]:
    """(path as named, real path, interface) of CONF-or-IFACE, checked as wg-quick checks
    it, with its warning for a world accessible file."""
    named, iface = locate(arg, etc_dir)
    if not os.path.exists(named):
        raise QuickError(f"`{named}' does not exist")
    if iface is None:
        raise QuickError("The config file must be a valid interface name, followed by .conf")
    real = os.path.realpath(named)
    with contextlib.suppress(OSError):
        if world_accessible(real):
            _err(f"Warning: `{real}' is world accessible\n")
    return named, real, iface


def load(arg: str, *, resolve: bool = True, etc_dir: str = ETC_DIR) -> QuickFile:
    """Find, read and check a wg-quick file (see the module's doc). Warnings go to stderr."""
    named, real, iface = find(arg, etc_dir)
    cfg = config.read_config(named, wg_quick=True)
    for warning in cfg.warnings:
        _err(warning + "\n")
    check_quick(cfg)
    if resolve:
        cfg = config.resolve_config(cfg)
    return QuickFile(iface=iface, path=real, named=named, config=cfg)


# ---------------------------------------------------------------------------------------
# Pure pieces of the plan


def substitute(hook: str, iface: str) -> str:
    """`%i` becomes the interface name (every occurrence; nothing else is expanded)."""
    return hook.replace("%i", iface)


def sort_prefixes(prefixes: Iterable[str]) -> list[str]:
    """The route order of wg-quick (`sort -nr -k 2 -t /` in the C locale): longest prefix
    first; equal lengths in descending byte order of the whole text. Duplicates and
    anything but `address/length` are dropped."""
    unique = {p for p in prefixes if _PREFIX.fullmatch(p)}
    return sorted(unique, key=lambda p: (int(p.rsplit("/", 1)[1]), p.encode()), reverse=True)


def route_mtu(route_text: str, link_mtu: Callable[[str], int | None]) -> int | None:
    """The MTU an `ip route get` (or `ip route show default`) answer implies: its own
    `mtu N`, else the MTU of its `dev`."""
    m = _MTU_IN.search(route_text)
    if m:
        return int(m[1])
    d = _DEV_IN.search(route_text)
    return link_mtu(d[1]) if d else None


def compute_mtu(endpoint_mtus: Iterable[int | None], default_route_mtu: int | None) -> int:
    """wg-quick's automatic MTU: the largest route MTU towards a peer's endpoint, else that
    of the default route, else 1500; minus 80."""
    mtu = max((m for m in endpoint_mtus if m and m > 0), default=0)
    if mtu == 0 and default_route_mtu and default_route_mtu > 0:
        mtu = default_route_mtu
    return (mtu or DEFAULT_LINK_MTU) - OVERHEAD


def first_free_table(has_routes: Callable[[int], bool], start: int = FIRST_POLICY_TABLE) -> int:
    table = start
    while has_routes(table):
        table += 1
    return table


def endpoint_hosts(cfg: Config) -> list[str]:
    """The numeric endpoint addresses as `wg show endpoints` prints them (a scoped IPv6
    address is skipped, as wg-quick's pattern skips it)."""
    hosts: list[str] = []
    for p in cfg.merged_peers():
        if p.endpoint is None or "%" in p.endpoint.host:
            continue
        try:
            hosts.append(str(ip_address(p.endpoint.host)))
        except ValueError:
            continue
    return hosts


def allowed_prefixes(cfg: Config) -> list[str]:
    return [config.format_allowed_ip(n) for p in cfg.merged_peers() for n in p.allowed_ips]


def _family(text: str) -> str:
    return "-6" if ":" in text else "-4"


def nft_script(pf: str, iface: str, mark: int, addresses: Sequence[str]) -> str:
    """The nftables table a default route needs (family `ip` or `ip6`): packets to our
    own addresses may arrive only through the tunnel, and the fwmark of the daemon's UDP
    packets is kept in conntrack so replies are routed outside the tunnel too."""
    t = f"{pf} wg-quick-{iface}"
    lines = [
        f"add table {t}",
        f"add chain {t} preraw {{ type filter hook prerouting priority -300; }}",
        f"add chain {t} premangle {{ type filter hook prerouting priority -150; }}",
        f"add chain {t} postmangle {{ type filter hook postrouting priority -150; }}",
    ]
    lines += [
        f'add rule {t} preraw iifname != "{iface}" {pf} daddr {a} fib saddr type != local drop'
        for a in addresses
    ]
    lines += [
        f"add rule {t} postmangle meta l4proto udp mark {mark} ct mark set mark",
        f"add rule {t} premangle meta l4proto udp meta mark set ct mark",
    ]
    return "\n".join(lines) + "\n"


def iptables_script(iface: str, mark: int, addresses: Sequence[str], verb: str = "-I") -> str:
    """The same as `nft_script` for iptables-restore (`verb` -D removes it again)."""
    tag = f'-m comment --comment "{_IPTABLES_MARK.format(iface=iface)}"'
    raw = [
        f"{verb} PREROUTING ! -i {iface} -d {a} -m addrtype ! --src-type LOCAL -j DROP {tag}"
        for a in addresses
    ]
    mangle = [
        f"{verb} POSTROUTING -m mark --mark {mark} -p udp -j CONNMARK --save-mark {tag}",
        f"{verb} PREROUTING -p udp -j CONNMARK --restore-mark {tag}",
    ]
    return "\n".join(["*raw", *raw, "COMMIT", "*mangle", *mangle, "COMMIT"]) + "\n"


def nft_removal(tables_text: str, iface: str) -> str:
    """`delete table ...` lines for every `wg-quick-IFACE` table in `nft list tables`."""
    out = []
    for line in tables_text.splitlines():
        line = line.strip()
        if line.startswith("table ") and line.endswith(f" wg-quick-{iface}"):
            out.append(f"delete {line}\n")
    return "".join(out)


def iptables_removal(save_text: str, iface: str) -> str | None:
    """An iptables-restore text deleting every rule marked for IFACE in an
    `iptables-save` dump, or None when there is none."""
    tag = f'-m comment --comment "{_IPTABLES_MARK.format(iface=iface)}"'
    out: list[str] = []
    found = False
    for line in save_text.splitlines():
        if line.startswith("*") or line == "COMMIT":
            out.append(line)
        elif line.startswith("-A ") and tag in line:
            out.append("-D" + line[2:])
            found = True
    return "\n".join(out) + "\n" if found else None


def count_rules(rules_text: str, table: int) -> tuple[int, int]:
    """In `ip rule show`: (rules looking up `table`, `from all lookup main
    suppress_prefixlength 0` rules) — how many deletes wg-quick's loops would make."""
    lookup = re.compile(rf"\blookup {table}(?:\s|$)")
    ours = sum(1 for line in rules_text.splitlines() if lookup.search(line))
    suppress = sum(
        1
        for line in rules_text.splitlines()
        if "from all lookup main suppress_prefixlength 0" in line
    )
    return ours, suppress


def _resolvconf_name(prefix: str, iface: str) -> str:
    return f"{prefix}{iface}"


def resolvconf_prefix(order_text: str | None) -> str:
    """The prefix resolvconf's interface-order wants for tunnels (Debian: `tun.`): the
    first `NAME*` entry, as `NAME.`; none without the file."""
    if order_text is None:
        return ""
    for line in order_text.splitlines():
        m = re.fullmatch(r"([A-Za-z0-9-]+)\*", line.strip())
        if m:
            return f"{m[1]}."
    return ""


# ---------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True, slots=True)
class UpFacts:
    """What `plan_up` needs to know about the system, read before anything changes."""

    endpoint_mtus: tuple[int | None, ...] = ()
    default_route_mtu: int | None = None
    policy_table: int = FIRST_POLICY_TABLE
    resolvconf_prefix: str = ""
    nft: bool = True  # else iptables-restore


def _needs_policy_routing(q: WgQuickSettings, prefixes: Iterable[str]) -> bool:
    return q.table in (None, "auto") and any(p.endswith("/0") for p in prefixes)


def _default_route_steps(
    iface: str, prefix: str, mark: int, addresses: Sequence[str], nft: bool
) -> list[Step]:
    fam = _family(prefix)
    pf = "ip6" if fam == "-6" else "ip"
    steps: list[Step] = [
        Run(("ip", fam, "route", "add", prefix, "dev", iface, "table", str(mark))),
        Run(
            ("ip", fam, "rule", "add", "not", "fwmark", str(mark), "table", str(mark)),
            undo=(
                Run(
                    ("ip", fam, "rule", "delete", "not", "fwmark", str(mark), "table", str(mark)),
                    check=False,
                ),
            ),
        ),
        Run(
            ("ip", fam, "rule", "add", "table", "main", "suppress_prefixlength", "0"),
            undo=(
                Run(
                    ("ip", fam, "rule", "delete", "table", "main", "suppress_prefixlength", "0"),
                    check=False,
                ),
            ),
        ),
    ]
    if fam == "-4":
        steps.append(WriteSysctl("net.ipv4.conf.all.src_valid_mark", "1"))
    if nft:
        steps.append(
            Run(
                ("nft", "-f", "/dev/stdin"),
                stdin=nft_script(pf, iface, mark, addresses),
                undo=(Run(("nft", "delete", "table", pf, f"wg-quick-{iface}"), check=False),),
            )
        )
    else:
        tool = "ip6tables-restore" if fam == "-6" else "iptables-restore"
        steps.append(
            Run(
                (tool, "-n"),
                stdin=iptables_script(iface, mark, addresses),
                undo=(
                    Run(
                        (tool, "-n"),
                        stdin=iptables_script(iface, mark, addresses, "-D"),
                        check=False,
                    ),
                ),
            )
        )
    return steps


def route_steps(qf: QuickFile, facts: UpFacts) -> list[Step]:
    """Routes for every allowed prefix, in wg-quick's order, to the Table of the file."""
    iface, cfg = qf.iface, qf.config
    table = cfg.quick.table
    if table == "off":
        return []
    custom = table not in (None, "auto")
    mark = cfg.interface.fwmark or 0
    steps: list[Step] = []
    for prefix in sort_prefixes(allowed_prefixes(cfg)):
        fam = _family(prefix)
        if custom:
            assert table is not None
            steps.append(Run(("ip", fam, "route", "add", prefix, "dev", iface, "table", table)))
        elif prefix.endswith("/0"):
            if not mark:
                mark = facts.policy_table
                steps.append(
                    SetDevice(iface, (f"fwmark={mark}",), f"{PROG} set {iface} fwmark {mark}")
                )
            own = [str(a.ip) for a in cfg.quick.addresses if _family(str(a.ip)) == fam]
            steps += _default_route_steps(iface, prefix, mark, own, facts.nft)
        else:
            steps.append(
                Run(
                    ("ip", fam, "route", "add", prefix, "dev", iface),
                    skip_if_output=("ip", fam, "route", "show", "dev", iface, "match", prefix),
                )
            )
    return steps


def plan_up(qf: QuickFile, facts: UpFacts) -> list[Step]:
    """Every step of `up`, in wg-quick's order, each with what undoes it on failure."""
    iface, cfg = qf.iface, qf.config
    q = cfg.quick
    steps: list[Step] = [Hook(substitute(h, iface)) for h in q.pre_up]
    steps.append(
        StartDaemon(iface, undo=(Run(("ip", "link", "delete", "dev", iface), check=False),))
    )
    steps.append(
        SetDevice(
            iface,
            tuple(wgctl.set_lines(cfg.strip(), whole_device=True, replace_peers=True)),
            f"{PROG} setconf {iface} {qf.named} (without its wg-quick keys)",
            in_use=cfg.port_in_use(),
        )
    )
    for a in q.addresses:
        steps.append(Run(("ip", _family(str(a)), "address", "add", str(a), "dev", iface)))
    mtu = q.mtu if q.mtu is not None else compute_mtu(facts.endpoint_mtus, facts.default_route_mtu)
    steps.append(Run(("ip", "link", "set", "mtu", str(mtu), "up", "dev", iface)))
    if q.dns:
        name = _resolvconf_name(facts.resolvconf_prefix, iface)
        text = "".join(f"nameserver {s}\n" for s in q.dns)
        if q.dns_search:
            text += f"search {' '.join(q.dns_search)}\n"
        steps.append(
            Run(
                ("resolvconf", "-a", name, "-m", "0", "-x"),
                stdin=text,
                undo=(Run(("resolvconf", "-d", name, "-f"), check=False),),
            )
        )
    steps += route_steps(qf, facts)
    steps += [Hook(substitute(h, iface)) for h in q.post_up]
    return steps


@dataclass(frozen=True, slots=True)
class DownFacts:
    """What `plan_down` needs, read from the running device and the system."""

    fwmark: int = 0
    allowed_ips: tuple[str, ...] = ()
    rules4: str = ""
    rules6: str = ""
    nft_tables: str | None = None  # `nft list tables`; None when nft is not installed
    iptables_save: tuple[tuple[str, str], ...] = ()  # (restore tool, `*-save` output)
    resolvconf_prefix: str = ""


def plan_down(qf: QuickFile, facts: DownFacts) -> list[Step]:
    """Every step of `down`, in wg-quick's order."""
    iface, q = qf.iface, qf.config.quick
    steps: list[Step] = [Hook(substitute(h, iface)) for h in q.pre_down]
    if q.save_config:
        steps.append(SaveConfig(iface, qf.path, q))
    if facts.fwmark and _needs_policy_routing(q, facts.allowed_ips):
        mark = str(facts.fwmark)
        for fam, text in (("-4", facts.rules4), ("-6", facts.rules6)):
            ours, suppress = count_rules(text, facts.fwmark)
            steps += [Run(("ip", fam, "rule", "delete", "table", mark), check=False)] * ours
            steps += [
                Run(
                    ("ip", fam, "rule", "delete", "table", "main", "suppress_prefixlength", "0"),
                    check=False,
                )
            ] * suppress
    steps.append(Run(("ip", "link", "delete", "dev", iface)))
    if q.dns:
        name = _resolvconf_name(facts.resolvconf_prefix, iface)
        steps.append(Run(("resolvconf", "-d", name, "-f"), check=False))
    if facts.nft_tables is not None:
        script = nft_removal(facts.nft_tables, iface)
        if script:
            steps.append(Run(("nft", "-f", "/dev/stdin"), stdin=script, check=False))
    for tool, dump in facts.iptables_save:
        restore = iptables_removal(dump, iface)
        if restore is not None:
            steps.append(Run((tool, "-n"), stdin=restore, check=False))
    steps += [Hook(substitute(h, iface)) for h in q.post_down]
    return steps


def undo_steps(done: Sequence[Step]) -> list[Run]:
    """What takes back the steps done, latest first."""
    return [u for step in reversed(done) for u in step.undo]


def run_plan(plan: Sequence[Step], execute: Callable[[Step], None], *, rollback: bool) -> bool:
    """Run the steps in order; True when all went. On a failure (or SIGINT/SIGTERM turned
    into an exception) stop, and with `rollback` undo what was done."""
    done: list[Step] = []
    try:
        for step in plan:
            execute(step)
            done.append(step)
    except (StepFailed, _Interrupted, KeyboardInterrupt):
        if rollback:
            with _signals_ignored():
                for u in undo_steps(done):
                    with contextlib.suppress(StepFailed):
                        execute(u)
        return False
    return True


# ---------------------------------------------------------------------------------------
# SaveConfig


def runtime_addresses(
    ip_json: str, configured: Sequence[InterfaceAddress]
) -> tuple[InterfaceAddress, ...]:
    """The addresses to save from `ip -j address show dev IFACE`: those of the file still
    there, in file order, then the others in the kernel's order, without the IPv6
    link-local address the kernel gives the link by itself (a kernel WireGuard interface
    has none, so wg-quick never saves one there)."""
    found: list[InterfaceAddress] = []
    for link in json.loads(ip_json or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") not in ("inet", "inet6"):
                continue
            found.append(ip_interface(f"{info['local']}/{info['prefixlen']}"))
    link_local = IPv6Network("fe80::/10")
    kept = [a for a in configured if a in found]
    extra = [a for a in found if a not in kept and not (a.version == 6 and a.ip in link_local)]
    return (*kept, *extra)


def saved_config_text(
    state: wgctl.DeviceState,
    quick: WgQuickSettings,
    addresses: Sequence[InterfaceAddress],
    link_mtu: int | None,
) -> str:
    """The file SaveConfig and `save` write: wg-quick's keys (addresses and MTU as running,
    MTU only when the file has one; DNS, Table, SaveConfig and hooks from the file), then
    `showconf`."""
    settings = replace(
        quick,
        addresses=tuple(addresses),
        mtu=link_mtu if quick.mtu is not None else None,
    )
    text = config.format_config(replace(state.to_config(), quick=settings))
    return text.rstrip("\n") + "\n"


def write_atomically(path: str, text: str) -> None:
    """Replace `path` by a file holding `text`: written to a temporary file (mode 0600) in
    the same directory, flushed to disk, renamed over `path`; the directory is synced.
    A reader sees the old file or the new one, never a part."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------------------
# The system: queries and the executor


def _env() -> dict[str, str]:
    return dict(os.environ, LC_ALL="C")


def _query(*argv: str) -> str:
    """stdout of a read-only command; "" when it fails or is missing."""
    try:
        res = subprocess.run(
            argv, capture_output=True, text=True, env=_env(), stdin=subprocess.DEVNULL
        )
    except OSError:
        return ""
    return res.stdout if res.returncode == 0 else ""


def _link_mtu(dev: str) -> int | None:
    m = _MTU_IN.search(_query("ip", "link", "show", "dev", dev))
    return int(m[1]) if m else None


def _interface_exists(iface: str) -> bool:
    try:
        socket.if_nametoindex(iface)
    except OSError:
        return False
    return True


def _socket_in_use(iface: str) -> bool:
    path = wgctl.socket_path(iface)
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def preflight_up(qf: QuickFile) -> None:
    """Everything `up` needs from the system, checked before anything changes."""
    cfg, iface, q = qf.config, qf.iface, qf.config.quick
    if shutil.which("ip") is None:
        raise QuickError("ip (iproute2) is not installed")
    if _interface_exists(iface):
        raise QuickError(f"`{iface}' already exists")
    if _socket_in_use(iface):
        raise QuickError(
            f"`{iface}' already exists: {wgctl.socket_path(iface)} is served by another "
            "process (an interface of that name in another network namespace?)"
        )
    if (q.pre_up or q.post_up or q.pre_down or q.post_down) and shutil.which("bash") is None:
        raise QuickError("bash is not installed, and the file has PreUp/PostUp/... hooks")
    if q.dns and shutil.which("resolvconf") is None:
        raise cfg.error(
            -1,
            "DNS",
            "resolvconf is not installed, so DNS cannot be set (install "
            "resolvconf or openresolv, or remove DNS from the file)",
        )
    if _needs_policy_routing(q, allowed_prefixes(cfg)):
        have = shutil.which("nft") or (
            shutil.which("iptables-restore") and shutil.which("ip6tables-restore")
        )
        if not have:
            peer = next(
                i for i, p in enumerate(cfg.peers) if any(n.prefixlen == 0 for n in p.allowed_ips)
            )
            raise cfg.error(
                peer,
                "AllowedIPs",
                "a default route (/0) needs nft or iptables-restore, and neither is installed",
            )


def gather_up_facts(qf: QuickFile) -> UpFacts:
    cfg, q = qf.config, qf.config.quick
    mtus: tuple[int | None, ...] = ()
    default_mtu: int | None = None
    if q.mtu is None:
        mtus = tuple(
            route_mtu(_query("ip", "route", "get", host), _link_mtu) for host in endpoint_hosts(cfg)
        )
        if not any(mtus):
            first = _query("ip", "route", "show", "default").split("\n", 1)[0]
            default_mtu = route_mtu(first, _link_mtu)
    table = FIRST_POLICY_TABLE
    if _needs_policy_routing(q, allowed_prefixes(cfg)) and not cfg.interface.fwmark:
        table = first_free_table(
            lambda n: bool(
                _query("ip", "-4", "route", "show", "table", str(n)).strip()
                or _query("ip", "-6", "route", "show", "table", str(n)).strip()
            )
        )
    prefix = resolvconf_prefix(_read_text(_RESOLVCONF_ORDER)) if q.dns else ""
    return UpFacts(
        endpoint_mtus=mtus,
        default_route_mtu=default_mtu,
        policy_table=table,
        resolvconf_prefix=prefix,
        nft=shutil.which("nft") is not None,
    )


def preflight_down(qf: QuickFile) -> None:
    if shutil.which("ip") is None:
        raise QuickError("ip (iproute2) is not installed")
    # a link of that name here, served by a live configuration socket (only ours is
    # tried: the directory is shared with other namespaces, whose sockets we leave alone)
    if not (_interface_exists(qf.iface) and _socket_in_use(qf.iface)):
        raise QuickError(f"`{qf.iface}' is not a WireGuard interface")
    hooks = qf.config.quick
    if (hooks.pre_down or hooks.post_down) and shutil.which("bash") is None:
        raise QuickError("bash is not installed, and the file has PreDown/PostDown hooks")


def gather_down_facts(qf: QuickFile) -> DownFacts:
    try:
        state = wgctl.get(qf.iface, timeout=10)
    except wgctl.WgctlError as e:
        raise QuickError(f"Unable to access interface {qf.iface}: {e.strerror}") from None
    prefixes = tuple(config.format_allowed_ip(n) for p in state.peers for n in p.allowed_ips)
    policy = bool(state.fwmark) and _needs_policy_routing(qf.config.quick, prefixes)
    ipt: list[tuple[str, str]] = []
    if shutil.which("iptables") is not None:
        ipt = [(f"{tool}-restore", _query(f"{tool}-save")) for tool in ("iptables", "ip6tables")]
    return DownFacts(
        fwmark=state.fwmark,
        allowed_ips=prefixes,
        rules4=_query("ip", "-4", "rule", "show") if policy else "",
        rules6=_query("ip", "-6", "rule", "show") if policy else "",
        nft_tables=_query("nft", "list", "tables") if shutil.which("nft") else None,
        iptables_save=tuple(ipt),
        resolvconf_prefix=(
            resolvconf_prefix(_read_text(_RESOLVCONF_ORDER)) if qf.config.quick.dns else ""
        ),
    )


def _run_command(step: Run) -> None:
    if step.skip_if_output is not None and _query(*step.skip_if_output).strip():
        return
    _err(f"[#] {step.display}\n")
    try:
        res = subprocess.run(
            step.argv,
            input=step.stdin,
            text=True,
            env=_env(),
            stdin=None if step.stdin is not None else subprocess.DEVNULL,
        )
        rc = res.returncode
    except OSError as e:
        _err(f"{PROG}: {step.argv[0]}: {e.strerror or e}\n")
        rc = 127
    if rc != 0 and step.check:
        raise StepFailed(step.display)


def _save(step: SaveConfig) -> None:
    try:
        state = wgctl.get(step.iface, timeout=10)
    except wgctl.WgctlError as e:
        _err(f"Unable to access interface: {e.strerror}\n")
        raise StepFailed(step.display) from None
    addresses = runtime_addresses(
        _query("ip", "-j", "address", "show", "dev", step.iface), step.quick.addresses
    )
    mtu = _link_mtu(step.iface) if step.quick.mtu is not None else None
    try:
        write_atomically(step.path, saved_config_text(state, step.quick, addresses, mtu))
    except OSError as e:
        _err(f"{PROG}: Could not write configuration file {step.path}: {e.strerror or e}\n")
        raise StepFailed(step.display) from None


def execute(step: Step) -> None:
    """Run one step on this system, printed first as wg-quick prints its commands.
    StepFailed when it failed and its failure counts."""
    if isinstance(step, Run):
        _run_command(step)
        return
    _err(f"[#] {step.display}\n")
    if isinstance(step, Hook):
        try:
            rc = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", step.command], env=_env()
            ).returncode
        except OSError as e:
            _err(f"{PROG}: bash: {e.strerror or e}\n")
            rc = 127
        if rc != 0:
            raise StepFailed(step.display)
    elif isinstance(step, StartDaemon):
        try:
            rc = subprocess.run([sys.executable, "-m", "wiresnake", step.iface]).returncode
        except OSError as e:
            _err(f"{PROG}: {e.strerror or e}\n")
            rc = 1
        if rc != 0:
            raise StepFailed(step.display)
    elif isinstance(step, SetDevice):
        try:
            wgctl.set(step.iface, step.lines, timeout=30)
        except wgctl.WgctlError as e:
            _err(f"Unable to modify interface: {e.strerror}\n")
            if e.errno == errno.EADDRINUSE and step.in_use:
                _err(step.in_use + "\n")
            raise StepFailed(step.display) from None
    elif isinstance(step, WriteSysctl):
        try:
            with open(f"/proc/sys/{step.key.replace('.', '/')}", "w") as f:
                f.write(step.value)
        except OSError as e:
            _err(f"sysctl: {step.key}: {e.strerror or e}\n")
            raise StepFailed(step.display) from None
    elif isinstance(step, SaveConfig):
        _save(step)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM become an exception, so a half-done `up` is undone."""

    def handler(signum: int, _frame: object) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    with _signal_handlers(handler):
        yield


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    with _signal_handlers(signal.SIG_IGN):
        yield


@contextlib.contextmanager
def _signal_handlers(handler: Any) -> Iterator[None]:
    """SIGINT and SIGTERM handled by `handler` inside the block (outside the main thread
    signals cannot be changed: they are left alone)."""
    old: list[tuple[signal.Signals, Any]] = []
    with contextlib.suppress(ValueError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            old.append((sig, signal.signal(sig, handler)))
    try:
        yield
    finally:
        for sig, previous in old:
            signal.signal(sig, previous)


# ---------------------------------------------------------------------------------------
# The commands


def up(arg: str, execute_step: Callable[[Step], None] = execute) -> int:
    """`wiresnake up CONF-or-IFACE`: 0 when the interface is up, 1 otherwise (then
    nothing is left of the attempt)."""
    try:
        qf = load(arg)
        preflight_up(qf)
        facts = gather_up_facts(qf)
    except (QuickError, ConfigError) as e:
        _err(f"{PROG}: {e}\n" if isinstance(e, QuickError) else f"{e}\n")
        return 1
    plan = plan_up(qf, facts)
    with _signals_raise():
        ok = run_plan(plan, execute_step, rollback=True)
    return 0 if ok else 1


def down(arg: str, execute_step: Callable[[Step], None] = execute) -> int:
    """`wiresnake down CONF-or-IFACE`."""
    try:
        qf = load(arg, resolve=False)
        preflight_down(qf)
        facts = gather_down_facts(qf)
    except (QuickError, ConfigError) as e:
        _err(f"{PROG}: {e}\n" if isinstance(e, QuickError) else f"{e}\n")
        return 1
    return 0 if run_plan(plan_down(qf, facts), execute_step, rollback=False) else 1


def save(arg: str, execute_step: Callable[[Step], None] = execute) -> int:
    """`wiresnake save CONF-or-IFACE`: the running configuration written back to the file
    (atomically), as `wg-quick save` and SaveConfig on `down` do."""
    try:
        qf = load(arg, resolve=False)
        running = wgctl.list_interfaces()
    except (QuickError, ConfigError) as e:
        _err(f"{PROG}: {e}\n" if isinstance(e, QuickError) else f"{e}\n")
        return 1
    except wgctl.WgctlError as e:
        _err(f"Unable to list interfaces: {e.strerror}\n")
        return 1
    if qf.iface not in running:
        _err(f"{PROG}: `{qf.iface}' is not a WireGuard interface\n")
        return 1
    step = SaveConfig(qf.iface, qf.path, qf.config.quick)
    return 0 if run_plan([step], execute_step, rollback=False) else 1


def strip(arg: str) -> int:
    """`wiresnake strip CONF-or-IFACE`: the file without wg-quick's keys, byte for byte as
    `wg-quick strip` prints it: what `syncconf` and `setconf` take."""
    try:
        named = find(arg)[0]
        with open(named, "rb") as f:
            data = f.read()
        # bash's `read` drops NUL bytes; surrogateescape keeps any other byte as it is
        text = config.strip_wg_quick(data.replace(b"\0", b"").decode("utf-8", "surrogateescape"))
    except QuickError as e:
        _err(f"{PROG}: {e}\n")
        return 1
    except OSError as e:
        _err(f"{PROG}: {arg}: {e.strerror or e}\n")
        return 1
    except ValueError as e:  # SaveConfig neither true nor false, as wg-quick dies on it
        _err(f"{PROG}: {e}\n")
        return 1
    try:
        sys.stdout.flush()
        out = text.encode("utf-8", "surrogateescape")
        while out:
            out = out[os.write(sys.stdout.fileno(), out) :]
    except (AttributeError, ValueError):  # no descriptor (captured in a test)
        sys.stdout.write(out.decode("utf-8", "replace"))
    except OSError as e:
        _err(f"{PROG}: write error: {e.strerror or e}\n")
        return 1
    return 0


USAGE: Final = (
    f"Usage: {PROG} [ up | down | save | strip ] [ CONFIG_FILE | INTERFACE ]\n"
    "\n"
    "  CONFIG_FILE is a configuration file, whose filename is the interface name\n"
    "  followed by `.conf'. Otherwise, INTERFACE is an interface name, with\n"
    f"  configuration found at {ETC_DIR}/INTERFACE.conf. It is a wg-quick(8) file:\n"
    "  the [Interface] section may also carry Address, DNS, MTU, Table, PreUp,\n"
    "  PostUp, PreDown, PostDown and SaveConfig.\n"
    "\n"
    "  `save' writes the running configuration of the interface to the file;\n"
    f"  `strip' prints the file without wg-quick's keys, for `{PROG} syncconf'.\n"
)

_VERBS: Final[dict[str, Callable[[str], int]]] = {
    "up": up,
    "down": down,
    "save": save,
    "strip": strip,
}


def main(argv: Sequence[str]) -> int:
    """`up`, `down`, `save` or `strip` with one argument (argv starts at the verb)."""
    if len(argv) == 2 and argv[1] in ("-h", "--help", "help"):
        _err(USAGE)
        return 0
    verb = _VERBS.get(argv[0]) if argv else None
    if len(argv) != 2 or verb is None:
        _err(USAGE)
        return 1
    return verb(argv[1])
