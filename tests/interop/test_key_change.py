"""A private-key change takes effect at once, and keys read back clamped (netns.sh's
"change private keys and immediately handshake" and its private-key read-backs)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from netlab import NetLab, Pair, WgIface, genkey, require_root_and_tools

pytestmark = [pytest.mark.netns, pytest.mark.interop]


@pytest.fixture(params=["wireguard-go", "wiresnake"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    require_root_and_tools("wg", "wireguard-go", "ping")
    with NetLab() as lab:
        yield Pair(lab, impl_b=request.param)


def set_key(iface: WgIface, private: str) -> None:
    iface.host.wg("set", iface.name, "private-key", "/dev/stdin", input=private)


def swap_peer(iface: WgIface, old: str, new: str, allowed: str, *extra: str) -> None:
    """On the other side: the peer with key `old` becomes one with key `new`, in one set."""
    iface.host.wg(
        "set", iface.name, "peer", new, "allowed-ips", allowed, *extra, "peer", old, "remove"
    )


def ping_once(src: WgIface, dst: WgIface) -> bool:
    """One ping answered within 3 s: a new handshake has to complete in that time."""
    return src.host.ping(dst.tunnel_v4, count=1, wait=3)


def test_a_new_private_key_handshakes_at_once_and_so_does_the_old_one_again(pair: Pair) -> None:
    a, b = pair.a, pair.b
    allowed = f"{a.tunnel_v4}/32,{a.tunnel_v6}/128"
    pair.connect()
    assert ping_once(a, b)
    new_private, new_public = genkey()
    set_key(a, new_private)
    assert a.host.wg("show", a.name, "public-key").strip() == new_public
    swap_peer(b, a.public, new_public, allowed)
    # the session made with the old key is gone on both sides: the ping needs a fresh
    # handshake, which must leave at once (not after REKEY_TIMEOUT) and succeed
    assert ping_once(a, b), "no handshake with the new key"
    assert ping_once(b, a)
    # and back: the old key, the old peer, this time with the other side initiating
    set_key(a, a.private)
    swap_peer(b, new_public, a.public, allowed, "endpoint", "192.168.50.1:51820")
    assert ping_once(b, a), "no handshake after changing back"
    assert ping_once(a, b)
    assert [row[0] for row in b.dump()[1:]] == [a.public]


def test_setting_the_same_key_again_keeps_the_session(pair: Pair) -> None:
    a, b = pair.a, pair.b
    pair.connect()
    assert ping_once(a, b)
    before = a.peer_row(b.public)[4]
    rx = b.transfer(a.public)[0]
    set_key(a, a.private)
    assert ping_once(a, b)
    # no new handshake: the latest-handshake time stands, and wireguard-go received only
    # transport messages (no 148-byte initiation)
    assert a.peer_row(b.public)[4] == before
    assert (b.transfer(a.public)[0] - rx) % 16 == 0


def clamped(raw: bytes) -> bytes:
    k = bytearray(raw)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def test_an_unclamped_private_key_reads_back_clamped() -> None:
    require_root_and_tools("wg")
    with NetLab() as lab:
        host = lab.host("a")
        name = lab.iface("ws")
        lab.start_wiresnake(host, name)
        for raw in (bytes([0xFF] * 32), bytes([0x07] + [0x55] * 30 + [0x80])):
            text = base64.b64encode(raw).decode()
            host.wg("set", name, "private-key", "/dev/stdin", input=text)
            shown = host.wg("show", name, "private-key").strip()
            assert shown == base64.b64encode(clamped(raw)).decode()
            assert shown != text
            # the public key is that of the clamped key, as `wg pubkey` computes it
            want = host.run("wg", "pubkey", input=shown).stdout.strip()
            assert host.wg("show", name, "public-key").strip() == want
        # netns.sh: a key whose first character is '/' reads back with '+'
        key, _ = genkey()
        host.wg("set", name, "private-key", "/dev/stdin", input="/" + key[1:])
        assert host.wg("show", name, "private-key").strip() == "+" + key[1:]
