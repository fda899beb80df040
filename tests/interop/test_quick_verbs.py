"""As root: a mistyped subcommand starts nothing, a daemon started from a terminal says
so (and stays quiet for wg-quick), `wiresnake strip` is byte for byte `wg-quick strip`,
and `wiresnake save` writes a running interface back to its file as `wg-quick save` does.

Namespaces, daemons and files are the lab's and the test's own; the root namespace is
only read.
"""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import (
    SOCKET_DIR,
    VENV_BIN,
    Host,
    NetLab,
    genkey,
    quick_hosts,
    require_root_and_tools,
    root_ns_has,
    socket_owners,
    wiresnake_cmd,
    wiresnake_pids,
    write_private,
)
from test_up_down import Up

from wiresnake import config
from wiresnake.crypto import key_to_base64

pytestmark = [pytest.mark.netns, pytest.mark.interop]


def links(host: Host) -> list[str]:
    out = host.run("ip", "-o", "link", "show").stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


@pytest.mark.parametrize("word", ["shwo", "syncconfig", "stop"])
def test_a_mistyped_subcommand_starts_nothing(word: str) -> None:
    require_root_and_tools()
    sock = SOCKET_DIR / f"{word}.sock"
    assert not sock.exists(), f"{sock} exists already: is something else running?"
    with NetLab() as lab:
        lab.sockets.append(sock)  # removed even if the refusal fails
        host = lab.host("a")
        res = host.run(*wiresnake_cmd(), word, check=False)
        for pid in socket_owners(host, word):  # only if the refusal failed: end it
            lab.adopt(pid)
        assert res.returncode == 1, res.stderr
        assert res.stderr.startswith(f"Invalid subcommand: `{word}'")
        assert res.stdout == ""
        assert links(host) == ["lo"]
        assert not sock.exists()
        assert wiresnake_pids(word) == []
    assert not root_ns_has(word)


def _on_a_terminal(host: Host, lab: NetLab, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `args` in `host` with stderr on a pseudo-terminal: (exit status, what it said)."""
    master, slave = pty.openpty()
    try:
        proc = host.popen(*args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        slave = -1
        said = b""
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer closed its end
                break
            if not chunk:
                break
            said += chunk
        return proc.wait(30), said.decode(errors="replace").replace("\r\n", "\n")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_a_daemon_started_from_a_terminal_says_so() -> None:
    require_root_and_tools("ss")
    with NetLab() as lab:
        host = lab.host("a")
        for name, env, expected in (
            (lab.iface("t"), {}, "wiresnake: starting daemon for {name}; "),
            # wg-quick prints `[#] wiresnake IFACE` itself: nothing more
            (lab.iface("t"), {"WG_QUICK_USERSPACE_IMPLEMENTATION": "wiresnake"}, ""),
        ):
            lab.sockets.append(SOCKET_DIR / f"{name}.sock")
            status, said = _on_a_terminal(host, lab, *wiresnake_cmd(), name, env=env)
            for pid in socket_owners(host, name):
                lab.adopt(pid)
            assert status == 0, said
            assert said.startswith(expected.format(name=name)) and (said == "") == (not expected)
            assert name in links(host)
            host.run("ip", "link", "del", name)


# --- strip -------------------------------------------------------------------------------

PRIV, PUB = (
    "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
    "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
)

STRIP_CASES = {
    "full": (
        "[Interface]\n"
        f"PrivateKey = {PRIV}\n"
        "Address = 10.0.0.1/24, fd00::1/64\n"
        "Address=10.1.0.1/32\n"
        "DNS = 192.0.2.53, example.com\n"
        "MTU = 1380\n"
        "Table = off\n"
        "ListenPort = 51820\n"
        "PreUp = echo 'a = b' # not a comment to bash\n"
        "PostUp = ip rule add table 7 %i\n"
        "PreDown = true\n"
        "PostDown = logger -t wg 'down %i'\n"
        "SaveConfig = true\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {PUB}\n"
        "AllowedIPs = 10.0.0.2/32\n"
        "Endpoint = vpn.example.com:51820\n"
    ),
    "odd": (
        "  [interface]  # comment\r\n"
        "\taddress = 10.0.0.1/24\t\n"
        "# Address = kept, a comment\n"
        "PrivateKey=k\n"
        "Post Up = kept: not a key of wg-quick's\n"
        "MTU\n"
        "[Peer]\n"
        "DNS = 1.1.1.1\n"
        "Table = 5 # kept: [Peer]\n"
        "[Interface]x\n"
        "MTU = 9\n"
        "   \n"
        "[INTERFACE]\n"
        "savecONFIG = FALSE\n"
        "last line without newline"
    ),
    "empty": "",
    "bytes": "[Interface]\nAddress = 10.0.0.1/24\nPrivateKey = \udcff\udcfe\0k\n",
}


def _wg_quick_strip(path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["wg-quick", "strip", str(path)], capture_output=True, timeout=60, check=False
    )


def _wiresnake_strip(path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(VENV_BIN / "wiresnake"), "strip", str(path)],
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("case", sorted(STRIP_CASES))
def test_strip_is_wg_quick_strip(case: str, tmp_path: Path) -> None:
    require_root_and_tools("wg-quick")  # as root: wg-quick strip re-runs itself with sudo
    path = tmp_path / "wgstrip0.conf"
    write_private(path, "")
    path.write_bytes(STRIP_CASES[case].encode("utf-8", "surrogateescape"))
    theirs, ours = _wg_quick_strip(path), _wiresnake_strip(path)
    assert (ours.returncode, ours.stdout, ours.stderr) == (0, theirs.stdout, b"")
    assert theirs.returncode == 0
    # and the result is what syncconf takes (but for the deliberately odd files)
    if case == "full":
        stripped = tmp_path / "stripped.conf"
        stripped.write_bytes(ours.stdout)
        assert config.read_config(str(stripped)).peers[0].endpoint is not None


def test_strip_refuses_as_wg_quick_does(tmp_path: Path) -> None:
    require_root_and_tools("wg-quick")
    bad = tmp_path / "wgstrip1.conf"
    write_private(bad, "[Interface]\nSaveConfig = maybe\n")
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    loose = open_dir / "wgstrip2.conf"
    loose.write_text("[Interface]\nPrivateKey = k\n")
    loose.chmod(0o644)
    for path in (bad, tmp_path / "wgstrip3.conf", tmp_path / "no-such-iface-name.conf", loose):
        if path.name.startswith("no-such"):
            path.write_text("")
        theirs, ours = _wg_quick_strip(path), _wiresnake_strip(path)
        assert ours.returncode == theirs.returncode, path
        assert ours.stdout == theirs.stdout
        assert ours.stderr == theirs.stderr.replace(b"wg-quick: ", b"wiresnake: "), path


# --- save ---------------------------------------------------------------------------------


@pytest.fixture
def up_env(tmp_path: Path) -> Iterator[Up]:
    require_root_and_tools("wg", "wg-quick", "wireguard-go", "ping", "ss", "nft", "bash")
    yield from quick_hosts(Up, tmp_path, "go-debian")  # save is wiresnake-side only


def _without_addresses(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("Address = ")]


def _addresses(text: str) -> set[str]:
    return {
        line.removeprefix("Address = ")
        for line in text.splitlines()
        if line.startswith("Address = ") and not line.startswith("Address = fe80:")
    }


def test_save_writes_the_running_configuration_back(up_env: Up) -> None:
    env = up_env
    original = env.write("10.80.0.2/32, fd80::2/128", extra="MTU = 1380\nPostUp = true %i\n")
    env.up()
    _, new_peer = genkey()
    env.ha.run(*wiresnake_cmd(), "set", env.name, "peer", new_peer, "allowed-ips", "10.99.0.0/24")
    env.ha.run("ip", "addr", "add", "10.80.9.1/24", "dev", env.name)

    res = env.ws("save")
    assert res.returncode == 0, res.stderr
    assert res.stderr == f"[#] wiresnake showconf {env.name}\n"
    saved = env.conf.read_text()
    assert stat.S_IMODE(env.conf.stat().st_mode) == 0o600
    assert sorted(os.listdir(env.dir)) == [env.conf.name], "a temporary file was left"
    after = config.parse_config(saved, wg_quick=True)
    before = config.parse_config(original, wg_quick=True)
    assert after.interface == before.interface
    assert {key_to_base64(p.public_key) for p in after.peers} == {env.b.public, new_peer}
    assert [str(a) for a in after.quick.addresses] == ["10.80.0.1/24", "fd80::1/64", "10.80.9.1/24"]
    assert after.quick.mtu == 1380 and after.quick.post_up == ("true %i",)
    assert not after.quick.save_config  # the file has no SaveConfig: none is added

    # what wg-quick save writes from the same interface, but for the link-local address
    # it saves too (wiresnake leaves that to the kernel) and the addresses' order
    theirs = env.dir / "theirs" / env.conf.name
    theirs.parent.mkdir(mode=0o700)
    write_private(theirs, original)
    res = env.ha.run("wg-quick", "save", str(theirs), check=False)
    assert res.returncode == 0, res.stderr
    theirs_text = theirs.read_text()
    assert _without_addresses(saved) == _without_addresses(theirs_text)
    assert _addresses(saved) == _addresses(theirs_text)

    # the saved file brings the same interface up again, with both peers
    env.down()
    env.check_nothing_left()
    env.up()
    assert new_peer in env.ha.wg("show", env.name, "peers")
    assert "10.80.9.1/24" in env.addresses()
    env.down()
    env.check_nothing_left()
