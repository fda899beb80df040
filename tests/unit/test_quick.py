"""`wiresnake up/down` without running anything: the file checks, the pure pieces of the
plan (route order, MTU, policy routing, firewall scripts), the whole command plan for
given system facts, the rollback, and SaveConfig's text and atomic write.

The expected commands are the ones wg-quick (wireguard-tools v1.0.20210914) runs for the
same file, read from its source and its `[#]` log lines; the route order is checked
against GNU `sort` itself whenever it is installed.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from wiresnake import cli, config, quick, wgctl
from wiresnake.config import ConfigError
from wiresnake.quick import (
    DownFacts,
    Hook,
    QuickFile,
    Run,
    SaveConfig,
    SetDevice,
    StartDaemon,
    Step,
    StepFailed,
    UpFacts,
    WriteSysctl,
)

PRIV = base64.b64encode(bytes(range(1, 33))).decode()
PEER = base64.b64encode(bytes(range(33, 65))).decode()
PEER2 = base64.b64encode(bytes(range(65, 97))).decode()


def quick_file(text: str, iface: str = "wg0", path: str = "/etc/wireguard/wg0.conf") -> QuickFile:
    cfg = config.parse_config(text, path, wg_quick=True)
    quick.check_quick(cfg, table_ok=lambda t: t in ("off", "auto", "main", "1234", "vpn"))
    return QuickFile(iface=iface, path=path, named=path, config=cfg)


def displays(plan: list[Step]) -> list[str]:
    return [s.display for s in plan]


BASIC = f"""\
[Interface]
PrivateKey = {PRIV}
Address = 10.0.0.1/24, fd00::1/64
Address = 10.9.9.9
ListenPort = 51820
PreUp = echo pre %i
PostUp = echo post %i > /tmp/%i.log
DNS = 192.0.2.53, 2001:db8::53, example.com

[Peer]
PublicKey = {PEER}
Endpoint = 192.0.2.1:51820
AllowedIPs = 10.0.0.2/32, 10.10.0.0/16, fd10::/64

[Peer]
PublicKey = {PEER2}
AllowedIPs = 10.20.0.0/16, 10.3.0.0/16
"""


# ---------------------------------------------------------------------------------------
# Finding and checking the file


def test_locate_follows_wg_quick() -> None:
    assert quick.locate("wg0") == ("/etc/wireguard/wg0.conf", "wg0")
    assert quick.locate("a_b=c+d.e-f") == ("/etc/wireguard/a_b=c+d.e-f.conf", "a_b=c+d.e-f")
    assert quick.locate("/tmp/x/my.vpn.conf") == ("/tmp/x/my.vpn.conf", "my.vpn")
    assert quick.locate("./wg1.conf") == ("./wg1.conf", "wg1")
    # a bare file name is an interface name, as for wg-quick
    assert quick.locate("wg0.conf") == ("/etc/wireguard/wg0.conf.conf", "wg0.conf")
    assert quick.locate("/tmp/a23456789012345.conf")[1] == "a23456789012345"  # 15 bytes
    assert quick.locate("/tmp/a234567890123456.conf")[1] is None  # 16
    assert quick.locate("/tmp/wg 0.conf")[1] is None
    assert quick.locate("/tmp/wg0.cfg")[1] is None
    assert quick.locate("x", etc_dir="/e") == ("/e/x.conf", "x")


def write(tmp_path: Path, name: str, text: str, mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_load_reads_checks_and_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path.chmod(0o700)
    path = write(tmp_path, "wgt0.conf", BASIC)
    qf = quick.load(path)
    assert (qf.iface, qf.path, qf.named) == ("wgt0", path, path)
    assert qf.config.quick.dns == ("192.0.2.53", "2001:db8::53")
    assert qf.config.quick.dns_search == ("example.com",)
    assert capsys.readouterr().err == ""


def test_world_accessible_warning_needs_file_and_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # wg-quick warns when file and directory share an "other" permission bit
    path = write(tmp_path, "wgt0.conf", BASIC, 0o644)
    tmp_path.chmod(0o700)
    quick.load(path)
    assert capsys.readouterr().err == ""
    tmp_path.chmod(0o755)
    quick.load(path)
    assert capsys.readouterr().err == f"Warning: `{path}' is world accessible\n"
    os.chmod(path, 0o600)
    quick.load(path)
    assert capsys.readouterr().err == ""


def test_symlinked_file_is_named_by_the_link_and_saved_to_its_target(tmp_path: Path) -> None:
    target = write(tmp_path, "real.conf", BASIC)
    link = tmp_path / "wgl0.conf"
    link.symlink_to(target)
    qf = quick.load(str(link))
    assert (qf.iface, qf.path, qf.named) == ("wgl0", target, str(link))


@pytest.mark.parametrize(
    ("extra", "line", "message"),
    [
        ("MTU = 1x", 2, "MTU: `1x' is not a number"),
        ("MTU = 20", 2, "MTU: `20' is not in 68-65535"),
        ("MTU = 70000", 2, "MTU: `70000' is not in 68-65535"),
        ("Table = no such table", 2, "Table: `no such table' is neither off, auto, a number"),
        ("Address = 10.0.0.300/24", 2, "Address: `10.0.0.300/24' is not an IP address"),
        ("SaveConfig = yes", 2, "SaveConfig: `yes' is neither true nor false"),
        ("Address = 10.0.0.1/24\nAddress = 10.0.0.1/24", 3, "Address: `10.0.0.1/24' is given"),
        ("ListenPort = 65536", 2, "ListenPort: Port is not in 0-65535"),
    ],
)
def test_a_bad_file_is_reported_by_line(
    tmp_path: Path, extra: str, line: int, message: str
) -> None:
    path = write(tmp_path, "wgt0.conf", f"[Interface]\n{extra}\nPrivateKey = {PRIV}\n")
    with pytest.raises(ConfigError) as e:
        quick.load(path)
    assert str(e.value).startswith(f"{path}:{line}: {message}"), str(e.value)


def test_missing_and_misnamed_files(tmp_path: Path) -> None:
    with pytest.raises(quick.QuickError, match="does not exist"):
        quick.load(str(tmp_path / "nope.conf"))
    path = write(tmp_path, "not-an-interface-name.conf", BASIC)
    with pytest.raises(quick.QuickError, match="must be a valid interface name"):
        quick.load(path)


def test_up_and_down_with_a_bad_file_touch_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "wgt0.conf", BASIC.replace("10.20.0.0/16", "10.20.0.0/40"))

    def never(step: Step) -> None:
        raise AssertionError(f"ran {step}")

    for verb in (quick.up, quick.down):
        assert verb(path, never) == 1
        err = capsys.readouterr().err
        assert (
            err == f"{path}:17: AllowedIPs: AllowedIP is not in the correct format: "
            "`10.20.0.0/40'\n"
        )


def test_cli_dispatch_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["up"]) == 1
    assert capsys.readouterr().err.startswith("Usage: wiresnake [ up | down | save | strip ]")
    assert cli.main(["down", "a", "b"]) == 1
    assert cli.main(["up", "--help"]) == 0
    assert "CONFIG_FILE" in capsys.readouterr().err
    for verb in ("down", "save", "strip"):
        assert cli.main([verb, "/nonexistent/wgz.conf"]) == 1
        assert capsys.readouterr().err == "wiresnake: `/nonexistent/wgz.conf' does not exist\n"
    names = [c.name for c in cli.SUBCOMMANDS]
    assert {"up", "down", "save", "strip"} <= set(names)


def test_strip_prints_the_wg_part(
    tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    conf = tmp_path / "wgs0.conf"
    conf.write_bytes(b"[Interface]\nAddress = 10.0.0.1/24\nPrivateKey = k\n\xff\0x\n")
    conf.chmod(0o600)
    assert cli.main(["strip", str(conf)]) == 0
    # the bytes stay as they are (but NUL, which bash's `read` drops), plus echo's newline
    assert capfdbinary.readouterr().out == b"[Interface]\nPrivateKey = k\n\xffx\n\n"
    conf.write_text("[Interface]\nSaveConfig = yes\n")
    assert cli.main(["strip", str(conf)]) == 1
    assert capfdbinary.readouterr().err == b"wiresnake: `yes' is neither true nor false\n"
    (tmp_path / "not-an-interface-name.conf").write_text("")
    assert cli.main(["strip", str(tmp_path / "not-an-interface-name.conf")]) == 1
    assert b"must be a valid interface name" in capfdbinary.readouterr().err


def test_save_refuses_an_interface_that_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WG_SOCKET_DIR", str(tmp_path))  # no daemon there
    conf = tmp_path / "wgs0.conf"
    conf.write_text("[Interface]\nAddress = 10.0.0.1/24\n")
    conf.chmod(0o600)
    assert cli.main(["save", str(conf)]) == 1
    assert capsys.readouterr().err == "wiresnake: `wgs0' is not a WireGuard interface\n"
    assert conf.read_text() == "[Interface]\nAddress = 10.0.0.1/24\n"


# ---------------------------------------------------------------------------------------
# Pure pieces


def test_substitute_replaces_every_percent_i() -> None:
    assert quick.substitute("a %i b %i c %%i %I", "wg0") == "a wg0 b wg0 c %wg0 %I"
    assert quick.substitute("no marker", "wg0") == "no marker"


SORT_INPUT = [
    "10.0.0.0/8",
    "fd00::/64",
    "0.0.0.0/0",
    "10.1.0.0/16",
    "::/0",
    "192.168.0.1/32",
    "10.0.0.2/32",
    "10.0.0.10/32",
    "fd00::1/128",
    "::ffff:10.0.0.0/104",
]
# `printf ... | LC_ALL=C sort -nr -k 2 -t /` on GNU coreutils 9.1
SORT_EXPECTED = [
    "fd00::1/128",
    "::ffff:10.0.0.0/104",
    "fd00::/64",
    "192.168.0.1/32",
    "10.0.0.2/32",
    "10.0.0.10/32",
    "10.1.0.0/16",
    "10.0.0.0/8",
    "::/0",
    "0.0.0.0/0",
]


def test_routes_are_sorted_as_wg_quick_sorts_them() -> None:
    assert quick.sort_prefixes(SORT_INPUT) == SORT_EXPECTED
    assert quick.sort_prefixes([*SORT_INPUT, "10.0.0.0/8", "fe80::1%lo/64"]) == SORT_EXPECTED


def test_route_order_matches_gnu_sort() -> None:
    if shutil.which("sort") is None:
        pytest.skip("no sort(1)")
    rnd = random.Random(7)
    prefixes = set()
    for _ in range(300):
        if rnd.random() < 0.5:
            a, b, c = rnd.randrange(256), rnd.randrange(256), rnd.randrange(4)
            net = f"{a}.{b}.{c}.0/{rnd.randrange(33)}"
        else:
            net = f"fd{rnd.randrange(256):02x}::{rnd.randrange(16):x}/{rnd.randrange(129)}"
        prefixes.add(net)
    out = subprocess.run(
        ["sort", "-nr", "-k", "2", "-t", "/"],
        input="".join(p + "\n" for p in prefixes),
        capture_output=True,
        text=True,
        env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")},
        check=True,
    ).stdout.split()
    assert quick.sort_prefixes(prefixes) == out


def test_route_mtu_from_ip_route_output() -> None:
    links = {"eth0": 1500, "jumbo": 9000}.get
    assert quick.route_mtu("192.0.2.1 dev eth0 src 192.0.2.9 uid 0 \n    cache ", links) == 1500
    assert quick.route_mtu("192.0.2.1 via 10.0.0.1 dev jumbo src 10.0.0.2", links) == 9000
    assert quick.route_mtu("192.0.2.1 dev eth0 src 10.0.0.2 \n    cache mtu 1280", links) == 1280
    assert quick.route_mtu("default via 10.0.0.1 dev gone proto dhcp", links) is None
    assert quick.route_mtu("", links) is None


@pytest.mark.parametrize(
    ("endpoints", "default", "expected"),
    [
        ((1500,), None, 1420),
        ((1500, 9000, None), 1400, 8920),  # the largest endpoint route wins
        ((None, 0), 1492, 1412),  # no endpoint route: the default route's
        ((), 1280, 1200),
        ((), None, 1420),  # nothing found: 1500
        ((None,), None, 1420),
    ],
)
def test_mtu_is_computed_as_wg_quick_does(
    endpoints: tuple[int | None, ...], default: int | None, expected: int
) -> None:
    assert quick.compute_mtu(endpoints, default) == expected


def test_first_free_table() -> None:
    used = {51820, 51821}
    assert quick.first_free_table(lambda n: n in used) == 51822
    assert quick.first_free_table(lambda n: False) == 51820


RULES = """\
0:\tfrom all lookup local
32763:\tfrom all lookup main suppress_prefixlength 0
32764:\tfrom all lookup main suppress_prefixlength 0
32765:\tnot from all fwmark 0xca6c lookup 51820
32765:\tfrom all fwmark 0x1 lookup 518201
32766:\tfrom all lookup main
32767:\tfrom all lookup default
"""


def test_rules_to_delete_are_counted() -> None:
    assert quick.count_rules(RULES, 51820) == (1, 2)
    assert quick.count_rules(RULES, 518201) == (1, 2)
    assert quick.count_rules("0:\tfrom all lookup local\n", 51820) == (0, 0)


def test_firewall_removal_scripts() -> None:
    tables = (
        "table inet filter\ntable ip wg-quick-wg0\ntable ip6 wg-quick-wg0\ntable ip wg-quick-wg01\n"
    )
    assert quick.nft_removal(tables, "wg0") == (
        "delete table ip wg-quick-wg0\ndelete table ip6 wg-quick-wg0\n"
    )
    assert quick.nft_removal(tables, "wg9") == ""
    save = (
        "# Generated by iptables-save\n*raw\n:PREROUTING ACCEPT [0:0]\n"
        "-A PREROUTING -d 10.0.0.1/32 ! -i wg0 -m addrtype ! --src-type LOCAL -m comment "
        '--comment "wg-quick(8) rule for wg0" -j DROP\n'
        '-A PREROUTING -d 10.0.0.7/32 -m comment --comment "wg-quick(8) rule for wg1" -j DROP\n'
        "COMMIT\n*filter\n-A INPUT -j ACCEPT\nCOMMIT\n"
    )
    assert quick.iptables_removal(save, "wg0") == (
        "*raw\n"
        "-D PREROUTING -d 10.0.0.1/32 ! -i wg0 -m addrtype ! --src-type LOCAL -m comment "
        '--comment "wg-quick(8) rule for wg0" -j DROP\n'
        "COMMIT\n*filter\nCOMMIT\n"
    )
    assert quick.iptables_removal(save, "wg2") is None


def test_resolvconf_prefix_from_interface_order() -> None:
    assert quick.resolvconf_prefix(None) == ""
    assert quick.resolvconf_prefix("lo.inet6\nlo.inet\ntun*\ntap*\nhso*\n") == "tun."
    assert quick.resolvconf_prefix("lo\neth*\n") == "eth."
    assert quick.resolvconf_prefix("lo\n# tun*\n") == ""


def test_nft_script() -> None:
    assert quick.nft_script("ip", "wg0", 51820, ["10.0.0.1", "10.9.9.9"]) == (
        "add table ip wg-quick-wg0\n"
        "add chain ip wg-quick-wg0 preraw { type filter hook prerouting priority -300; }\n"
        "add chain ip wg-quick-wg0 premangle { type filter hook prerouting priority -150; }\n"
        "add chain ip wg-quick-wg0 postmangle { type filter hook postrouting priority -150; }\n"
        'add rule ip wg-quick-wg0 preraw iifname != "wg0" ip daddr 10.0.0.1 '
        "fib saddr type != local drop\n"
        'add rule ip wg-quick-wg0 preraw iifname != "wg0" ip daddr 10.9.9.9 '
        "fib saddr type != local drop\n"
        "add rule ip wg-quick-wg0 postmangle meta l4proto udp mark 51820 ct mark set mark\n"
        "add rule ip wg-quick-wg0 premangle meta l4proto udp meta mark set ct mark\n"
    )


# ---------------------------------------------------------------------------------------
# Whole plans


FACTS = UpFacts(endpoint_mtus=(1500,), default_route_mtu=None, resolvconf_prefix="tun.")


def test_plan_up_for_a_plain_config() -> None:
    qf = quick_file(BASIC)
    plan = quick.plan_up(qf, FACTS)
    assert displays(plan) == [
        "echo pre wg0",
        "wiresnake wg0",
        "wiresnake setconf wg0 /etc/wireguard/wg0.conf (without its wg-quick keys)",
        "ip -4 address add 10.0.0.1/24 dev wg0",
        "ip -6 address add fd00::1/64 dev wg0",
        "ip -4 address add 10.9.9.9/32 dev wg0",
        "ip link set mtu 1420 up dev wg0",
        "resolvconf -a tun.wg0 -m 0 -x",
        "ip -6 route add fd10::/64 dev wg0",
        "ip -4 route add 10.0.0.2/32 dev wg0",
        "ip -4 route add 10.3.0.0/16 dev wg0",  # descending bytes: "10.3" > "10.20"
        "ip -4 route add 10.20.0.0/16 dev wg0",
        "ip -4 route add 10.10.0.0/16 dev wg0",
        "echo post wg0 > /tmp/wg0.log",
    ]
    assert isinstance(plan[0], Hook) and isinstance(plan[1], StartDaemon)
    assert plan[1].undo == (Run(("ip", "link", "delete", "dev", "wg0"), check=False),)
    setconf = plan[2]
    assert isinstance(setconf, SetDevice)
    assert setconf.lines == tuple(
        wgctl.set_lines(qf.config.strip(), whole_device=True, replace_peers=True)
    )
    assert setconf.lines[:4] == (
        f"private_key={bytes(range(1, 33)).hex()}",
        "listen_port=51820",
        "fwmark=0",
        "replace_peers=true",
    )
    dns = plan[7]
    assert isinstance(dns, Run)
    assert dns.stdin == "nameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch example.com\n"
    assert dns.undo == (Run(("resolvconf", "-d", "tun.wg0", "-f"), check=False),)
    # each route is skipped when a route on the interface already covers it
    route = plan[9]
    assert isinstance(route, Run)
    assert route.skip_if_output == (
        "ip",
        "-4",
        "route",
        "show",
        "dev",
        "wg0",
        "match",
        "10.0.0.2/32",
    )
    assert all(not s.undo for s in plan[2:7] + plan[8:])


def test_plan_up_mtu_given_and_no_dns() -> None:
    text = BASIC.replace("DNS = 192.0.2.53, 2001:db8::53, example.com\n", "MTU = 1380\n")
    plan = displays(quick.plan_up(quick_file(text), UpFacts(endpoint_mtus=(9000,))))
    assert "ip link set mtu 1380 up dev wg0" in plan
    assert not any(line.startswith("resolvconf") for line in plan)


def test_plan_up_mtu_from_the_default_route() -> None:
    plan = quick.plan_up(quick_file(BASIC), UpFacts(endpoint_mtus=(None,), default_route_mtu=1492))
    assert "ip link set mtu 1412 up dev wg0" in displays(plan)


def test_only_search_domains_set_no_dns() -> None:
    text = BASIC.replace("192.0.2.53, 2001:db8::53, example.com", "example.com")
    assert not any(
        d.startswith("resolvconf") for d in displays(quick.plan_up(quick_file(text), FACTS))
    )


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("off", []),
        (
            "1234",
            [
                "ip -6 route add fd10::/64 dev wg0 table 1234",
                "ip -4 route add 10.0.0.2/32 dev wg0 table 1234",
                "ip -4 route add 10.3.0.0/16 dev wg0 table 1234",
                "ip -4 route add 10.20.0.0/16 dev wg0 table 1234",
                "ip -4 route add 10.10.0.0/16 dev wg0 table 1234",
            ],
        ),
    ],
)
def test_table_off_and_custom(table: str, expected: list[str]) -> None:
    qf = quick_file(BASIC.replace("ListenPort", f"Table = {table}\nListenPort"))
    plan = quick.route_steps(qf, FACTS)
    assert displays(plan) == expected
    assert all(isinstance(s, Run) and s.skip_if_output is None for s in plan)


DEFAULT_ROUTE = f"""\
[Interface]
PrivateKey = {PRIV}
Address = 10.0.0.1/24, fd00::1/64
PostUp = true

[Peer]
PublicKey = {PEER}
Endpoint = [2001:db8::1]:51820
AllowedIPs = 0.0.0.0/0, ::/0, 10.0.0.2/32
"""


def test_plan_up_default_route_uses_fwmark_policy_routing_and_nft() -> None:
    qf = quick_file(DEFAULT_ROUTE)
    plan = quick.plan_up(qf, UpFacts(endpoint_mtus=(1500,), policy_table=51821))
    assert displays(plan)[5:] == [
        "ip -4 route add 10.0.0.2/32 dev wg0",
        "wiresnake set wg0 fwmark 51821",
        "ip -6 route add ::/0 dev wg0 table 51821",
        "ip -6 rule add not fwmark 51821 table 51821",
        "ip -6 rule add table main suppress_prefixlength 0",
        "nft -f /dev/stdin",
        "ip -4 route add 0.0.0.0/0 dev wg0 table 51821",
        "ip -4 rule add not fwmark 51821 table 51821",
        "ip -4 rule add table main suppress_prefixlength 0",
        "sysctl -q net.ipv4.conf.all.src_valid_mark=1",
        "nft -f /dev/stdin",
        "true",
    ]
    fwmark = plan[6]
    assert isinstance(fwmark, SetDevice) and fwmark.lines == ("fwmark=51821",)
    nft6, nft4 = plan[10], plan[15]
    assert isinstance(nft6, Run) and isinstance(nft4, Run)
    assert nft6.stdin == quick.nft_script("ip6", "wg0", 51821, ["fd00::1"])
    assert nft4.stdin == quick.nft_script("ip", "wg0", 51821, ["10.0.0.1"])
    assert nft4.undo == (Run(("nft", "delete", "table", "ip", "wg-quick-wg0"), check=False),)
    assert isinstance(plan[14], WriteSysctl)
    rule = plan[8]
    assert isinstance(rule, Run)
    assert rule.undo == (
        Run(
            ("ip", "-6", "rule", "delete", "not", "fwmark", "51821", "table", "51821"), check=False
        ),
    )


def test_default_route_with_a_fwmark_in_the_file_uses_it_as_table() -> None:
    qf = quick_file(DEFAULT_ROUTE.replace("PostUp = true", "FwMark = 0x1234"))
    plan = displays(quick.plan_up(qf, UpFacts(endpoint_mtus=(1500,))))
    assert not any("fwmark 4660" in d and d.startswith("wiresnake set") for d in plan)
    assert "ip -4 rule add not fwmark 4660 table 4660" in plan


def test_default_route_without_nft_uses_iptables_restore() -> None:
    qf = quick_file(DEFAULT_ROUTE)
    plan = quick.plan_up(qf, UpFacts(endpoint_mtus=(1500,), nft=False))
    restores = [s for s in plan if isinstance(s, Run) and s.argv[0].endswith("tables-restore")]
    assert [s.display for s in restores] == ["ip6tables-restore -n", "iptables-restore -n"]
    tag = '-m comment --comment "wg-quick(8) rule for wg0"'
    assert restores[1].stdin == (
        "*raw\n"
        f"-I PREROUTING ! -i wg0 -d 10.0.0.1 -m addrtype ! --src-type LOCAL -j DROP {tag}\n"
        "COMMIT\n*mangle\n"
        f"-I POSTROUTING -m mark --mark 51820 -p udp -j CONNMARK --save-mark {tag}\n"
        f"-I PREROUTING -p udp -j CONNMARK --restore-mark {tag}\n"
        "COMMIT\n"
    )
    (undo,) = restores[1].undo
    assert undo.stdin is not None and undo.stdin.count("-D ") == 3


def test_default_route_in_a_custom_table_has_no_policy_routing() -> None:
    qf = quick_file(DEFAULT_ROUTE.replace("PostUp = true", "Table = 1234"))
    plan = displays(quick.plan_up(qf, UpFacts(endpoint_mtus=(1500,))))
    assert "ip -4 route add 0.0.0.0/0 dev wg0 table 1234" in plan
    assert not any("rule" in d or "nft" in d or "fwmark" in d for d in plan)


HOOKED = f"""\
[Interface]
PrivateKey = {PRIV}
Address = 10.0.0.1/24
DNS = 192.0.2.53
SaveConfig = true
PreDown = echo predown %i
PostDown = echo postdown %i

[Peer]
PublicKey = {PEER}
AllowedIPs = 0.0.0.0/0
"""


def test_plan_down() -> None:
    qf = quick_file(HOOKED)
    facts = DownFacts(
        fwmark=51820,
        allowed_ips=("0.0.0.0/0",),
        rules4=RULES,
        rules6="",
        nft_tables="table ip wg-quick-wg0\ntable ip6 other\n",
        iptables_save=(("iptables-restore", ""),),
        resolvconf_prefix="tun.",
    )
    plan = quick.plan_down(qf, facts)
    assert displays(plan) == [
        "echo predown wg0",
        "wiresnake showconf wg0",
        "ip -4 rule delete table 51820",
        "ip -4 rule delete table main suppress_prefixlength 0",
        "ip -4 rule delete table main suppress_prefixlength 0",
        "ip link delete dev wg0",
        "resolvconf -d tun.wg0 -f",
        "nft -f /dev/stdin",
        "echo postdown wg0",
    ]
    save = plan[1]
    assert isinstance(save, SaveConfig) and save.path == "/etc/wireguard/wg0.conf"
    nft = plan[7]
    assert isinstance(nft, Run) and nft.stdin == "delete table ip wg-quick-wg0\n"
    # a failure of these is ignored, as wg-quick's `|| true`; the link deletion counts
    assert [s.check for s in plan if isinstance(s, Run)] == [
        False,
        False,
        False,
        True,
        False,
        False,
    ]


def test_plan_down_without_fwmark_or_default_route_deletes_no_rule() -> None:
    qf = quick_file(HOOKED)
    for facts in (
        DownFacts(fwmark=0, allowed_ips=("0.0.0.0/0",), rules4=RULES),
        DownFacts(fwmark=51820, allowed_ips=("10.0.0.0/8",), rules4=RULES),
    ):
        assert not any("rule" in d for d in displays(quick.plan_down(qf, facts)))
    qf = quick_file(HOOKED.replace("SaveConfig = true", "Table = main"))
    facts = DownFacts(fwmark=51820, allowed_ips=("0.0.0.0/0",), rules4=RULES)
    plan = displays(quick.plan_down(qf, facts))
    assert not any("rule" in d for d in plan) and "wiresnake showconf wg0" not in plan


# ---------------------------------------------------------------------------------------
# Running a plan, and undoing it


def recorder(fail_at: str | None) -> tuple[list[str], Callable[[Step], None]]:
    ran: list[str] = []

    def execute(step: Step) -> None:
        ran.append(step.display)
        if step.display == fail_at:
            raise StepFailed(step.display)

    return ran, execute


def test_a_failed_up_is_undone_in_reverse_order() -> None:
    qf = quick_file(
        DEFAULT_ROUTE.replace(
            "Address = 10.0.0.1/24, fd00::1/64", "Address = 10.0.0.1/24\nDNS = 192.0.2.53"
        )
    )
    plan = quick.plan_up(qf, UpFacts(endpoint_mtus=(1500,)))
    ran, execute = recorder("sysctl -q net.ipv4.conf.all.src_valid_mark=1")
    assert not quick.run_plan(plan, execute, rollback=True)
    failed = ran.index("sysctl -q net.ipv4.conf.all.src_valid_mark=1")
    assert ran[failed + 1 :] == [
        "ip -4 rule delete table main suppress_prefixlength 0",
        "ip -4 rule delete not fwmark 51820 table 51820",
        "nft delete table ip6 wg-quick-wg0",
        "ip -6 rule delete table main suppress_prefixlength 0",
        "ip -6 rule delete not fwmark 51820 table 51820",
        "resolvconf -d wg0 -f",
        "ip link delete dev wg0",
    ]


def test_a_failed_pre_up_hook_leaves_nothing_to_undo() -> None:
    qf = quick_file(BASIC)
    ran, execute = recorder("echo pre wg0")
    assert not quick.run_plan(quick.plan_up(qf, FACTS), execute, rollback=True)
    assert ran == ["echo pre wg0"]


def test_a_failed_post_up_hook_takes_the_interface_down() -> None:
    qf = quick_file(BASIC)
    ran, execute = recorder("echo post wg0 > /tmp/wg0.log")
    assert not quick.run_plan(quick.plan_up(qf, FACTS), execute, rollback=True)
    assert ran[-2:] == ["resolvconf -d tun.wg0 -f", "ip link delete dev wg0"]


def test_undo_tolerates_failures_and_down_never_rolls_back() -> None:
    qf = quick_file(BASIC)
    plan = quick.plan_up(qf, FACTS)
    ran: list[str] = []

    def execute(step: Step) -> None:
        ran.append(step.display)
        if step.display in ("ip link set mtu 1420 up dev wg0", "ip link delete dev wg0"):
            raise StepFailed(step.display)

    assert not quick.run_plan(plan, execute, rollback=True)
    assert ran[-1] == "ip link delete dev wg0"
    ran.clear()
    down = quick.plan_down(quick_file(HOOKED), DownFacts())
    assert not quick.run_plan(down, execute, rollback=False)
    assert ran == ["echo predown wg0", "wiresnake showconf wg0", "ip link delete dev wg0"]


def test_an_interrupt_during_up_is_undone() -> None:
    qf = quick_file(BASIC)
    ran: list[str] = []

    def execute(step: Step) -> None:
        ran.append(step.display)
        if step.display.startswith("ip link set mtu"):
            raise KeyboardInterrupt

    assert not quick.run_plan(quick.plan_up(qf, FACTS), execute, rollback=True)
    assert ran[-1] == "ip link delete dev wg0"


# ---------------------------------------------------------------------------------------
# SaveConfig


IP_JSON = (
    '[{"ifindex":2,"ifname":"wg0","mtu":1380,"addr_info":['
    '{"family":"inet","local":"10.0.0.1","prefixlen":24,"scope":"global"},'
    '{"family":"inet","local":"10.7.0.1","prefixlen":32,"scope":"global"},'
    '{"family":"inet6","local":"fd00::1","prefixlen":64,"scope":"global"},'
    '{"family":"inet6","local":"fe80::5d2b:9443:5330:e58d","prefixlen":64,"scope":"link"}]}]'
)


def test_runtime_addresses_keep_file_order_and_drop_the_kernels_link_local() -> None:
    configured = config.parse_config(
        "[Interface]\nAddress = fd00::1/64, 10.0.0.1/24, 10.5.0.1/24\n", wg_quick=True
    ).quick.addresses
    got = quick.runtime_addresses(IP_JSON, configured)
    assert [str(a) for a in got] == ["fd00::1/64", "10.0.0.1/24", "10.7.0.1/32"]
    own_link_local = config.parse_config(
        "[Interface]\nAddress = fe80::5d2b:9443:5330:e58d/64\n", wg_quick=True
    ).quick.addresses
    assert "fe80::5d2b:9443:5330:e58d/64" in [
        str(a) for a in quick.runtime_addresses(IP_JSON, own_link_local)
    ]
    assert quick.runtime_addresses("", ()) == ()


SAVED_FROM = f"""\
[Interface]
PrivateKey = {PRIV}
Address = 10.0.0.1/24
MTU = 1400
DNS = 192.0.2.53, example.com
Table = 1234
SaveConfig = true
PreUp = echo %i
PostDown = echo bye %i
"""


def test_saved_config_text() -> None:
    qf = quick_file(SAVED_FROM)
    state = wgctl.DeviceState(
        name="wg0",
        private_key=bytes(range(1, 33)),
        listen_port=51820,
        peers=(
            wgctl.PeerState(
                public_key=bytes(range(33, 65)),
                endpoint=("192.0.2.1", 51820),
                persistent_keepalive=25,
                allowed_ips=tuple(config.parse_allowed_ips("10.0.0.2/32,fd00::/64").add),
            ),
        ),
    )
    addresses = quick.runtime_addresses(IP_JSON, qf.config.quick.addresses)
    text = quick.saved_config_text(state, qf.config.quick, addresses, 1380)
    assert text == (
        "[Interface]\n"
        "Address = 10.0.0.1/24\n"
        "Address = 10.7.0.1/32\n"
        "Address = fd00::1/64\n"
        "DNS = 192.0.2.53, example.com\n"
        "MTU = 1380\n"
        "Table = 1234\n"
        "SaveConfig = true\n"
        "PreUp = echo %i\n"
        "PostDown = echo bye %i\n"
        "ListenPort = 51820\n"
        f"PrivateKey = {PRIV}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {PEER}\n"
        "AllowedIPs = 10.0.0.2/32, fd00::/64\n"
        "Endpoint = 192.0.2.1:51820\n"
        "PersistentKeepalive = 25\n"
    )
    again = config.parse_config(text, wg_quick=True)
    assert again.quick.save_config and again.quick.pre_up == ("echo %i",)
    # without MTU in the file, none is saved; without peers, one newline ends the file
    no_mtu = config.parse_config(SAVED_FROM.replace("MTU = 1400\n", ""), wg_quick=True).quick
    bare = wgctl.DeviceState(name="wg0", private_key=bytes(range(1, 33)))
    text = quick.saved_config_text(bare, no_mtu, (), 1380)
    assert "MTU" not in text and text.endswith(f"PrivateKey = {PRIV}\n")


def test_write_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text("old\n")
    path.chmod(0o644)
    quick.write_atomically(str(path), "new\n")
    assert path.read_text() == "new\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["wg0.conf"]

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        quick.write_atomically(str(path), "newer\n")
    assert path.read_text() == "new\n"  # untouched, and no temporary file left
    assert os.listdir(tmp_path) == ["wg0.conf"]
