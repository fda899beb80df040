"""Changing the interface's private key: what it drops, what it recomputes, what it keeps."""

from __future__ import annotations

from lab import Host, Lab
from test_uapi import get, session, set_req

from wiresnake.crypto import PrivateKey, generate_private_key, public_key
from wiresnake.protocol.cookie import CookieGenerator
from wiresnake.protocol.device import Device
from wiresnake.protocol.messages import (
    TYPE_COOKIE_REPLY,
    TYPE_INITIATION,
    TYPE_RESPONSE,
    TYPE_TRANSPORT,
    parse_cookie_reply,
)

INIT, RESP, COOKIE, DATA = TYPE_INITIATION, TYPE_RESPONSE, TYPE_COOKIE_REPLY, TYPE_TRANSPORT


def connected(**kw_b: object) -> tuple[Lab, Host, Host]:
    lab = Lab()
    a = lab.add_host("a", ("192.0.2.1", 1), "10.0.0.1")
    b = lab.add_host("b", ("192.0.2.2", 2), "10.0.0.2", **kw_b)
    lab.connect(a, b)
    return lab, a, b


def swap_identity(a: Host, b: Host, new_private: bytes) -> bytes:
    """`a` takes a new key; `b` replaces its peer entry for `a`, as an admin would."""
    old_public = a.device.public_key
    assert old_public is not None
    a.device.set_private_key(new_private)
    new_public = a.device.public_key
    assert new_public is not None and new_public != old_public
    b.device.remove_peer(old_public)
    peer = b.device.add_peer(new_public)
    b.device.allow(peer, a.tunnel_ip + "/32")
    b.device.set_endpoint(peer, a.endpoint)
    return new_public


def kinds(lab: Lab, start: int) -> list[int]:
    """Message types on the wire since `lab.wire` was `start` long."""
    return [w[3][0] for w in lab.wire[start:]]


def test_a_new_key_drops_the_sessions_and_the_next_packet_handshakes_at_once() -> None:
    lab, a, b = connected()
    lab.send(a, b)
    pa = lab.peer(a, b)
    old = pa.current
    assert old is not None
    lab.run(1.0)  # well inside REKEY_TIMEOUT of the first initiation
    swap_identity(a, b, generate_private_key())
    assert pa.current is None and pa.previous is None and pa.next is None
    assert old.local_index not in a.device._keypairs
    start = len(lab.wire)
    lab.send(a, b, b"after")
    # a fresh handshake, under the new key, right away; the packet follows it
    assert kinds(lab, start) == [INIT, RESP, DATA]
    assert b.received[-1].endswith(b"after")
    assert pa.current is not None and pa.current is not old
    # and the way back works the same, the other side initiating this time
    lab.run(1.0)
    start = len(lab.wire)
    swap_identity(a, b, generate_private_key())
    lab.send(b, a, b"back")
    assert kinds(lab, start) == [INIT, RESP, DATA]
    assert a.received[-1].endswith(b"back")


def test_the_static_static_value_is_recomputed_for_every_peer() -> None:
    lab, a, b = connected()
    new = generate_private_key()
    a.device.set_private_key(new)
    pa = lab.peer(a, b)
    assert b.device.public_key is not None
    assert pa.handshake.static_static == PrivateKey(new).exchange(b.device.public_key)


def test_mac1_is_checked_against_the_new_public_key() -> None:
    lab, a, b = connected()
    lab.filter = lambda s, d, data: False  # capture b's initiation, deliver nothing
    lab.send(b, a)
    stale = lab.wire[-1][3]
    assert stale[0] == INIT
    swap_identity(a, b, generate_private_key())
    # an initiation stamped for the old key fails MAC1 and is not answered
    out = a.device.from_network([(b.endpoint, stale)], lab.now)
    assert not out.datagrams and a.device.counters["bad_mac1"] == 1
    # one for the new key passes
    lab.filter = None
    lab.send(b, a, b"ok")
    assert a.received and a.received[-1].endswith(b"ok")


def test_cookie_replies_are_sealed_under_the_new_public_key() -> None:
    lab = Lab()
    a = lab.add_host("a", ("192.0.2.1", 1), "10.0.0.1", under_load_handshakes=1)
    b = lab.add_host("b", ("192.0.2.2", 2), "10.0.0.2")
    lab.connect(a, b)
    old_public = a.device.public_key
    assert old_public is not None
    new_public = swap_identity(a, b, generate_private_key())
    lab.filter = lambda s, d, data: False
    lab.send(b, a)
    init = lab.wire[-1][3]
    out = a.device.from_network([(b.endpoint, init)], lab.now)
    assert [d[0] for _, d in out.datagrams] == [COOKIE]
    reply = parse_cookie_reply(out.datagrams[0][1])
    # the cookie key is derived from the public key: only the new one opens the reply
    fresh, stale = CookieGenerator(new_public), CookieGenerator(old_public)
    for gen in (fresh, stale):
        msg = bytearray(init)
        gen.stamp(msg, 116, lab.now)
    assert fresh.consume_reply(reply, lab.now)
    assert not stale.consume_reply(reply, lab.now)


def test_setting_the_same_key_keeps_the_sessions() -> None:
    lab, a, b = connected()
    lab.send(a, b)
    pa = lab.peer(a, b)
    kp = pa.current
    key = a.device.private_key
    assert kp is not None and key is not None
    a.device.set_private_key(key)
    # unclamped spellings of the same key are the same key
    a.device.set_private_key(bytes([key[0] | 7]) + key[1:31] + bytes([key[31] | 0x80]))
    assert pa.current is kp and a.device._keypairs[kp.local_index] is kp
    start = len(lab.wire)
    lab.send(a, b, b"same")
    assert kinds(lab, start) == [DATA]
    assert b.received[-1].endswith(b"same")


def test_a_private_key_is_clamped_when_set() -> None:
    raw = bytes([0xFF] * 32)
    dev = Device(raw)
    want = bytes([0xF8]) + bytes([0xFF] * 30) + bytes([0x7F])
    assert dev.private_key == want
    assert dev.public_key == public_key(want)
    dev.set_private_key(bytes(32))
    assert dev.private_key == bytes([0] * 31 + [0x40])
    dev.set_private_key(None)
    assert dev.private_key is None


def test_an_unclamped_key_set_over_the_configuration_protocol_reads_back_clamped() -> None:
    s, host = session()
    assert s.feed(set_req("private_key=" + "ff" * 32)) == b"errno=0\n\n"
    assert f"private_key=f8{'ff' * 30}7f\n" in get(s)
    assert host.device.public_key == public_key(bytes([0xF8] + [0xFF] * 30 + [0x7F]))
