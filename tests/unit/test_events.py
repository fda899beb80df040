"""The engine's events: each once, when it happens, in order, and nothing otherwise."""

from __future__ import annotations

from lab import Host, Lab, ipv4_packet

from wiresnake.protocol.constants import (
    KEEPALIVE_TIMEOUT,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    ZERO_KEYS_AFTER,
)
from wiresnake.protocol.events import (
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    KeysExpired,
    PeerIdle,
)
from wiresnake.protocol.messages import TYPE_TRANSPORT


def pair() -> tuple[Lab, Host, Host]:
    lab = Lab()
    a = lab.add_host("a", ("192.0.2.1", 51820), "10.0.0.1")
    b = lab.add_host("b", ("192.0.2.2", 51820), "10.0.0.2")
    lab.connect(a, b)
    return lab, a, b


def key(host: Host) -> bytes:
    assert host.device.public_key is not None
    return host.device.public_key


def of(host: Host, kind: type) -> list[Event]:
    return [e for _, e in host.events if isinstance(e, kind)]


def times(host: Host, kind: type) -> list[float]:
    return [t for t, e in host.events if isinstance(e, kind)]


def test_handshake_completed_on_the_initiator_then_on_the_responder_when_confirmed() -> None:
    lab, a, b = pair()
    lab.filter = lambda s, d, data: data[0] != TYPE_TRANSPORT  # b's keys stay unconfirmed
    lab.send(a, b)
    assert a.events == [(lab.now, HandshakeCompleted(key(b), b.endpoint))]
    assert b.events == []  # answering an initiation completes nothing yet
    lab.filter = None
    lab.run(1)
    lab.send(a, b)
    assert b.events == [(lab.now, HandshakeCompleted(key(a), a.endpoint))]
    # the session in use, more traffic either way reports nothing more
    for _ in range(3):
        lab.send(a, b)
        lab.send(b, a)
    lab.run(30)
    assert len(a.events) == 1 and len(b.events) == 1


def test_a_bulk_batch_that_confirms_the_responder_reports_it_once() -> None:
    lab, a, b = pair()
    lab.filter = lambda s, d, data: data[0] != TYPE_TRANSPORT
    lab.send(a, b)
    lab.filter = None
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes(1380)) for _ in range(16)]
    sealed = [d for _, d in a.device.from_tunnel(packets, lab.now).datagrams]
    out = b.device.from_network([(a.endpoint, d) for d in sealed], lab.now)
    assert b.device.counters["bulk_batches"] == 1
    assert out.events == [HandshakeCompleted(key(a), a.endpoint)]


def test_data_on_a_live_session_reports_nothing_on_either_path() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    lab.send(b, a)
    for n in (1, 32):  # the general loop and the bulk path
        packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes(100)) for _ in range(n)]
        sent = a.device.from_tunnel(packets, lab.now)
        assert len(sent.datagrams) == n and sent.events == []
        got = b.device.from_network([(a.endpoint, d) for _, d in sent.datagrams], lab.now)
        assert len(got.packets) == n and got.events == []
    assert b.device.counters["bulk_batches"] == 1


def test_endpoint_changed_on_roaming_and_not_from_the_same_endpoint() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    lab.send(b, a)
    # an equal source that is another object (a sticky source's copy) is no roam
    same = (a.endpoint[0], a.endpoint[1])
    sealed = a.device.from_tunnel([ipv4_packet("10.0.0.1", "10.0.0.2")], lab.now)
    out = b.device.from_network([(same, d) for _, d in sealed.datagrams], lab.now)
    assert len(out.packets) == 1 and out.events == []
    assert of(b, EndpointChanged) == []
    old = a.endpoint
    lab.move("a", ("198.51.100.7", 40000))
    lab.send(a, b)
    assert of(b, EndpointChanged) == [EndpointChanged(key(a), old, ("198.51.100.7", 40000))]
    lab.send(a, b)
    lab.send(b, a)
    assert len(of(b, EndpointChanged)) == 1
    assert of(a, EndpointChanged) == []  # b never moved


def test_a_responder_learning_the_endpoint_reports_it_before_the_handshake() -> None:
    lab = Lab()
    a = lab.add_host("a", ("192.0.2.1", 1), "10.0.0.1")
    b = lab.add_host("b", ("192.0.2.2", 2), "10.0.0.2")
    lab.connect(a, b, endpoints=False)
    a.device.set_endpoint(lab.peer(a, b), b.endpoint)  # configuration: no event
    lab.send(a, b)
    assert [e for _, e in b.events] == [
        EndpointChanged(key(a), None, a.endpoint),  # from the initiation
        HandshakeCompleted(key(a), a.endpoint),  # from the first data packet
    ]
    assert [e for _, e in a.events] == [HandshakeCompleted(key(b), b.endpoint)]


def test_handshake_gave_up_once_after_rekey_attempt_time_to_an_unreachable_peer() -> None:
    lab, a, b = pair()
    lab.filter = lambda s, d, data: False
    t0 = lab.now
    lab.send(a, b)
    lab.send(a, b)
    lab.run(REKEY_ATTEMPT_TIME - 0.5)
    assert a.events == []
    lab.run(ZERO_KEYS_AFTER + 100)  # long past the wipe of keys it never had
    assert [e for _, e in a.events] == [HandshakeGaveUp(key(b), 2)]
    (t,) = times(a, HandshakeGaveUp)
    # the first attempt and 19 retries (see test_engine), one REKEY_TIMEOUT after the last
    assert t0 + REKEY_ATTEMPT_TIME < t < t0 + 21 * REKEY_TIMEOUT + 20 * 0.334
    assert b.events == []


def test_keys_expired_on_both_sides_after_three_times_reject_after_time() -> None:
    lab, a, b = pair()
    t0 = lab.now
    lab.send(a, b)
    lab.run(ZERO_KEYS_AFTER - 1)
    assert of(a, KeysExpired) == [] and of(b, KeysExpired) == []
    lab.run(2)
    assert of(a, KeysExpired) == [KeysExpired(key(b))]
    assert of(b, KeysExpired) == [KeysExpired(key(a))]
    assert t0 + ZERO_KEYS_AFTER <= times(a, KeysExpired)[0] <= t0 + ZERO_KEYS_AFTER + 1
    lab.run(3 * ZERO_KEYS_AFTER)
    assert len(a.events) == 2 and len(b.events) == 2  # completed, expired: nothing more


def test_peer_idle_when_sent_data_gets_no_answer_once_until_heard_again() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    lab.send(b, a)
    lab.run(100)  # quiet both ways is not idle
    assert of(a, PeerIdle) == [] and of(b, PeerIdle) == []
    lab.filter = lambda s, d, data: s != b.endpoint  # b goes silent
    t0 = lab.now
    lab.send(a, b)
    lab.run(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT - 0.01)
    assert of(a, PeerIdle) == []
    lab.run(0.4)
    assert of(a, PeerIdle) == [PeerIdle(key(b))]
    (t,) = times(a, PeerIdle)
    assert t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT <= t <= t0 + 15.334
    for _ in range(6):  # still sending, still unanswered: the same occurrence
        lab.send(a, b)
        lab.run(5)
    assert len(of(a, PeerIdle)) == 1
    lab.filter = None
    lab.run(REKEY_TIMEOUT + 1)  # a retried handshake gets through: b is heard again
    assert len(of(a, HandshakeCompleted)) == 2
    lab.filter = lambda s, d, data: s != b.endpoint
    lab.send(a, b)
    lab.run(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 0.4)
    assert len(of(a, PeerIdle)) == 2
    assert of(b, PeerIdle) == []  # b only ever sent keepalives and handshakes
