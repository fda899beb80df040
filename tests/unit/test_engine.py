"""Two (or more) engines against each other on a fake clock."""

from __future__ import annotations

import itertools

import pytest
from lab import Host, Lab, ipv4_packet, ipv6_packet

from wiresnake.protocol.constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    ZERO_KEYS_AFTER,
)
from wiresnake.protocol.messages import (
    TYPE_COOKIE_REPLY,
    TYPE_INITIATION,
    TYPE_RESPONSE,
    TYPE_TRANSPORT,
)

INIT, RESP, COOKIE, DATA = TYPE_INITIATION, TYPE_RESPONSE, TYPE_COOKIE_REPLY, TYPE_TRANSPORT


def pair(**kw: object) -> tuple[Lab, object, object]:
    lab = Lab()
    a = lab.add_host("a", ("192.0.2.1", 51820), "10.0.0.1", **kw)
    b = lab.add_host("b", ("192.0.2.2", 51820), "10.0.0.2", **kw)
    lab.connect(a, b)
    return lab, a, b


def test_first_packet_triggers_a_handshake_and_is_delivered_after_it() -> None:
    lab, a, b = pair()
    lab.send(a, b, b"hello")
    kinds = [w[3][0] for w in lab.wire]
    # initiation, response, then the staged packet (no extra keepalive: data confirms)
    assert kinds == [INIT, RESP, DATA]
    assert len(b.received) == 1 and b.received[0].endswith(b"hello")
    lab.send(b, a, b"back")
    assert a.received[0].endswith(b"back")
    pa, pb = lab.peer(a, b), lab.peer(b, a)
    assert pa.last_handshake == pb.last_handshake == lab.now
    assert pa.tx_bytes == pb.rx_bytes and pb.tx_bytes == pa.rx_bytes
    assert pa.tx_bytes == 148 + 16 + 32 + 16  # header, 25 bytes padded to 32, tag


def test_ipv6_inside_the_tunnel() -> None:
    lab, a, b = pair()
    lab.peer(a, b)
    a.device.allow(lab.peer(a, b), "fd00::2/128")
    b.device.allow(lab.peer(b, a), "fd00::1/128")
    lab.send_packets(a, [ipv6_packet("fd00::1", "fd00::2", b"six")])
    assert b.received and b.received[0].endswith(b"six")


def test_responder_waits_for_confirmation_before_sending_with_new_keys() -> None:
    lab, a, b = pair()
    # only a's initiation and b's response get through: not a's confirming packet, and
    # not the initiation b sends itself for its staged packet
    lab.filter = lambda s, d, data: (s, data[0]) in {(a.endpoint, INIT), (b.endpoint, RESP)}
    lab.send(a, b)
    pb = lab.peer(b, a)
    assert pb.next is not None and pb.current is None
    lab.send(b, a)  # staged, not sent: keys not yet confirmed
    assert not lab.datagrams(b, DATA)
    lab.filter = None
    lab.send(a, b)
    assert pb.current is not None and pb.next is None
    # b's staged packet left as soon as its keys were confirmed
    assert len(a.received) == 1


def test_initiation_retransmitted_after_rekey_timeout_and_not_before() -> None:
    lab, a, b = pair()
    lab.filter = lambda s, d, data: False
    lab.send(a, b)
    t0 = lab.now
    lab.run(REKEY_TIMEOUT - 0.001)
    assert len(lab.datagrams(a, INIT)) == 1
    lab.run(0.4)
    inits = lab.datagrams(a, INIT)
    assert len(inits) == 2
    assert t0 + REKEY_TIMEOUT <= inits[1][0] <= t0 + REKEY_TIMEOUT + 0.334


def test_gives_up_after_rekey_attempt_time_and_drops_staged_packets() -> None:
    lab, a, b = pair()
    lab.filter = lambda s, d, data: False
    lab.send(a, b)
    lab.run(300)
    inits = lab.datagrams(a, INIT)
    # the first attempt plus retries, about 5 s apart, for REKEY_ATTEMPT_TIME and a little
    assert len(inits) == 20
    assert 90 < inits[-1][0] - inits[0][0] < 100 + 20 * 0.334
    assert not lab.peer(a, b).staged
    lab.filter = None
    lab.run(60)
    assert not b.received  # the packet was dropped on giving up, never sent late


def test_passive_keepalive_after_receiving_data_and_sending_nothing() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    t0 = lab.now
    lab.run(KEEPALIVE_TIMEOUT - 0.01)
    assert not [w for w in lab.datagrams(b, DATA) if len(w[3]) == 32]
    lab.run(0.02)
    keepalives = [w for w in lab.datagrams(b, DATA) if len(w[3]) == 32]
    assert len(keepalives) == 1 and keepalives[0][0] == pytest.approx(t0 + KEEPALIVE_TIMEOUT)
    lab.run(100)
    assert len([w for w in lab.datagrams(b, DATA) if len(w[3]) == 32]) == 1


def test_no_passive_keepalive_when_data_flows_back() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    lab.run(5)
    lab.send(b, a)
    lab.run(30)
    assert not [w for w in lab.datagrams(b, DATA) if len(w[3]) == 32]


def test_new_handshake_when_sent_data_gets_no_answer() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    lab.send(b, a)
    lab.run(1)
    lab.filter = lambda s, d, data: s != b.endpoint  # b goes silent
    t0 = lab.now
    lab.send(a, b)
    lab.run(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT - 0.01)
    assert len(lab.datagrams(a, INIT)) == 1
    lab.run(0.4)
    inits = lab.datagrams(a, INIT)
    assert len(inits) == 2
    assert t0 + 15 <= inits[1][0] <= t0 + 15 + 0.334


def test_persistent_keepalive_every_interval() -> None:
    lab, a, b = pair()
    a.device.set_persistent_keepalive(lab.peer(a, b), 25, lab.now)
    lab.run(0)
    # switching it on sends at once (which here means a handshake first)
    assert len(lab.datagrams(a, INIT)) == 1
    t0 = lab.now
    lab.run(100)
    times = [w[0] - t0 for w in lab.datagrams(a, DATA) if len(w[3]) == 32]
    assert times[:4] == pytest.approx([0, 25, 50, 75])


def test_rekey_after_time_with_no_packet_lost_either_way() -> None:
    lab, a, b = pair()
    sent = 0
    for _ in range(2 * 600):  # ten minutes, a packet each way every half second
        lab.send(a, b, b"a%d" % sent)
        lab.send(b, a, b"b%d" % sent)
        sent += 1
        lab.run(0.5)
    assert [p[20:] for p in b.received] == [b"a%d" % i for i in range(sent)]
    assert [p[20:] for p in a.received] == [b"b%d" % i for i in range(sent)]
    inits = lab.datagrams(kind=INIT)
    assert 4 <= len(inits) <= 6  # a rekey about every REKEY_AFTER_TIME
    gaps = [y[0] - x[0] for x, y in itertools.pairwise(inits)]
    assert all(REKEY_AFTER_TIME <= g <= REKEY_AFTER_TIME + 1 for g in gaps)


def test_initiator_rekeys_on_receive_before_keys_expire() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    t0 = lab.now
    # from now on only the responder sends, and only keepalives, so that the initiator never
    # sends (a passive keepalive would rekey on the sending path at REKEY_AFTER_TIME)
    b.device.set_persistent_keepalive(lab.peer(b, a), 1, lab.now)
    lab.run(170)
    inits = lab.datagrams(kind=INIT, since=t0 + 1)
    assert inits and inits[0][1] == a.endpoint
    assert REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT < inits[0][0] - t0 <= 167


def test_keys_rejected_after_reject_after_time() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    lab.run(REJECT_AFTER_TIME + 1)
    lab.filter = lambda s, d, data: data[0] == DATA  # no new handshake can complete
    lab.send(a, b)
    assert len(b.received) == 1
    assert len(lab.datagrams(a, INIT)) == 2


def test_rekey_and_reject_after_messages() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    lab.run(1)
    kp = lab.peer(a, b).current
    assert kp is not None
    kp.send_counter = REKEY_AFTER_MESSAGES + 1
    lab.run(REKEY_TIMEOUT)  # initiations are at most one per REKEY_TIMEOUT
    lab.filter = lambda s, d, data: data[0] != DATA  # replay window would refuse the jump
    lab.send(a, b)
    assert len(lab.datagrams(a, INIT)) == 2
    kp = lab.peer(a, b).current
    assert kp is not None
    kp.send_counter = REJECT_AFTER_MESSAGES
    inits = len(lab.datagrams(a, INIT))
    lab.run(10)
    lab.send(a, b)
    # never sent past the limit: the packet waited for a new handshake instead
    counters = [int.from_bytes(w[3][8:16], "little") for w in lab.datagrams(a, DATA)]
    assert max(counters) < REJECT_AFTER_MESSAGES
    assert len(lab.datagrams(a, INIT)) == inits + 1
    assert counters[-1] == 0 and lab.peer(a, b).current is not kp


def test_keys_wiped_after_three_times_reject_after_time() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    lab.run(ZERO_KEYS_AFTER - 1)
    pa = lab.peer(a, b)
    assert pa.current is not None
    lab.run(2)
    assert pa.current is None and pa.previous is None and pa.next is None
    assert not a.device._keypairs and not lab.peer(b, a).keypairs()


def test_restarted_side_reconnects() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    lab.send(b, a)
    lab.run(30)
    key = b.device.private_key
    assert key is not None
    from wiresnake.protocol.device import Device

    fresh = Device(key, rng=lab.rng)
    lab.replace_device("b", fresh)
    lab.connect(a, b)
    lab.send(b, a, b"after restart")
    assert a.received[-1].endswith(b"after restart")
    lab.send(a, b, b"and back")
    assert b.received[-1].endswith(b"and back")


def test_restarted_initiator_from_the_past_is_refused() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    # an initiation carrying an older timestamp than one already seen is a replay
    first_init = lab.datagrams(a, INIT)[0][3]
    lab.run(10)
    out = b.device.from_network([(a.endpoint, first_init)], lab.now)
    assert not out.datagrams
    assert b.device.counters["replayed_initiation"] == 1


def test_roaming_follows_the_latest_authenticated_source() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    lab.move("a", ("198.51.100.7", 40000))
    lab.send(a, b)
    assert lab.peer(b, a).endpoint == ("198.51.100.7", 40000)
    lab.send(b, a, b"found you")
    assert a.received[-1].endswith(b"found you")


def test_responder_learns_endpoint_of_peer_configured_without_one() -> None:
    lab = Lab()
    a = lab.add_host("a", ("192.0.2.1", 1), "10.0.0.1")
    b = lab.add_host("b", ("192.0.2.2", 2), "10.0.0.2")
    lab.connect(a, b, endpoints=False)
    a.device.set_endpoint(lab.peer(a, b), b.endpoint)
    lab.send(a, b)
    assert lab.peer(b, a).endpoint == a.endpoint
    lab.send(b, a)
    assert len(a.received) == 1


def test_preshared_key_both_sides() -> None:
    lab = Lab()
    a = lab.add_host("a", ("192.0.2.1", 1), "10.0.0.1")
    b = lab.add_host("b", ("192.0.2.2", 2), "10.0.0.2")
    lab.connect(a, b, psk=b"k" * 32)
    lab.send(a, b)
    assert len(b.received) == 1


def test_preshared_key_mismatch_fails_cleanly() -> None:
    lab, a, b = pair()
    b.device.set_preshared_key(lab.peer(b, a), b"k" * 32)
    lab.send(a, b)
    lab.run(20)
    assert not b.received
    assert a.device.counters["handshake_failed"] >= 1
    assert lab.peer(a, b).current is None


def test_cookie_round_trip_under_load() -> None:
    lab = Lab()
    a = lab.add_host("a", ("192.0.2.1", 1), "10.0.0.1")
    b = lab.add_host("b", ("192.0.2.2", 2), "10.0.0.2", under_load_handshakes=1)
    lab.connect(a, b)
    lab.send(a, b)
    kinds = [w[3][0] for w in lab.wire]
    assert kinds == [INIT, COOKIE]  # no handshake answer without a valid MAC2
    assert a.device.counters["cookie_received"] == 1
    lab.run(REKEY_TIMEOUT + 0.4)  # the retransmission now carries MAC2
    kinds = [w[3][0] for w in lab.wire]
    assert kinds == [INIT, COOKIE, INIT, RESP, DATA]
    assert len(b.received) == 1


def test_cookie_reply_is_not_sent_for_bad_mac1() -> None:
    lab = Lab()
    a = lab.add_host("a", ("192.0.2.1", 1), "10.0.0.1")
    b = lab.add_host("b", ("192.0.2.2", 2), "10.0.0.2", under_load_handshakes=1)
    lab.connect(a, b)
    lab.filter = lambda s, d, data: False
    lab.send(a, b)
    init = bytearray(lab.wire[0][3])
    init[120] ^= 1
    out = b.device.from_network([(a.endpoint, bytes(init))], lab.now)
    assert not out.datagrams and b.device.counters["bad_mac1"] == 1


def hub(port: int = 51820) -> tuple[Lab, Host, Host, Host]:
    """a, a peer of both b and c (who are not peers of each other)."""
    lab = Lab()
    a = lab.add_host("a", ("192.0.2.1", port), "10.0.0.1")
    b = lab.add_host("b", ("192.0.2.2", port), "10.0.0.2")
    c = lab.add_host("c", ("192.0.2.3", port), "10.0.0.3")
    lab.connect(a, b)
    lab.connect(a, c)
    return lab, a, b, c


def test_removed_peer_passes_no_traffic_and_others_keep_their_session() -> None:
    lab, a, b, c = hub()
    lab.send(a, b)
    lab.send(a, c)
    kp_c = lab.peer(a, c).current
    assert b.device.public_key is not None
    a.device.remove_peer(b.device.public_key)
    lab.send(b, a)
    lab.send(a, b)
    assert not a.received
    assert len(b.received) == 1
    assert lab.peer(a, c).current is kp_c
    lab.send(c, a)
    assert len(a.received) == 1


def test_hub_with_many_peers_routes_by_allowed_ips() -> None:
    lab = Lab()
    hub = lab.add_host("hub", ("192.0.2.1", 1), "10.0.0.1")
    spokes = [lab.add_host(f"s{i}", (f"192.0.2.{10 + i}", 1), f"10.0.0.{10 + i}") for i in range(5)]
    for s in spokes:
        lab.connect(hub, s)
    for s in spokes:
        lab.send(hub, s, s.name.encode())
    for s in spokes:
        assert [p[20:] for p in s.received] == [s.name.encode()]


def test_inner_source_outside_allowed_ips_is_dropped() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    lab.send_packets(a, [ipv4_packet("10.9.9.9", "10.0.0.2", b"spoof")])
    assert len(b.received) == 1
    assert b.device.counters["inner_source_not_allowed"] == 1


def test_hours_of_traffic_with_loss_keep_the_session_alive() -> None:
    lab, a, b = pair()
    rnd = lab.random
    lab.filter = lambda s, d, data: rnd.random() > 0.1  # 10% loss, both ways
    for _ in range(3 * 3600 // 7):  # three hours, some traffic every 7 s
        lab.send(a, b)
        if rnd.random() < 0.5:
            lab.send(b, a)
        lab.run(7)
    lab.filter = None
    before_a, before_b = len(a.received), len(b.received)
    lab.send(a, b, b"still there")
    lab.run(1)
    lab.send(b, a, b"yes")
    assert len(b.received) == before_b + 1 and len(a.received) == before_a + 1
    assert before_b > 0.8 * (3 * 3600 // 7)  # lost packets are not retransmitted, most arrive
    # handshakes stay near one per REKEY_AFTER_TIME, not a storm
    assert len(lab.datagrams(kind=INIT)) < 3 * 3600 / REKEY_AFTER_TIME * 2


def test_reconfiguring_a_peer_keeps_its_session_and_others_untouched() -> None:
    from wiresnake.protocol.settings import DeviceConfig, PeerConfig, parse_network

    lab = Lab()
    a = lab.add_host("a", ("192.0.2.1", 1), "10.0.0.1")
    b = lab.add_host("b", ("192.0.2.2", 2), "10.0.0.2")
    c = lab.add_host("c", ("192.0.2.3", 3), "10.0.0.3")
    lab.connect(a, b)
    lab.connect(a, c)
    lab.send(a, b)
    lab.send(a, c)
    kp_b, kp_c = lab.peer(a, b).current, lab.peer(a, c).current
    assert b.device.public_key and c.device.public_key
    conf = DeviceConfig(
        private_key=a.device.private_key,
        listen_port=51820,
        peers=(
            PeerConfig(b.device.public_key, None, b.endpoint, (parse_network("10.0.0.2/32"),)),
            PeerConfig(
                c.device.public_key,
                None,
                c.endpoint,
                (parse_network("10.0.0.3/32"), parse_network("10.9.0.0/16")),
                persistent_keepalive=25,
            ),
        ),
    )
    a.device.configure(conf, lab.now)
    assert lab.peer(a, b).current is kp_b and lab.peer(a, c).current is kp_c
    assert a.device.allowed_ips.lookup(bytes([10, 9, 1, 1])) is lab.peer(a, c)
    assert a.device.listen_port == 51820
    # dropping c from the configuration removes it, b stays
    a.device.configure(DeviceConfig(a.device.private_key, 51820, 0, conf.peers[:1]), lab.now)
    assert a.device.peer(c.device.public_key) is None
    assert lab.peer(a, b).current is kp_b
    lab.send(a, b)
    assert len(b.received) == 2


def test_new_private_key_drops_sessions_and_a_peer_with_our_new_key() -> None:
    lab, a, b = pair()
    lab.send(a, b)
    assert b.device.private_key is not None
    pa = lab.peer(a, b)
    assert pa.current is not None
    a.device.set_private_key(b.device.private_key)  # now a claims b's identity
    assert b.device.public_key is not None
    assert a.device.peer(b.device.public_key) is None
    assert not a.device._keypairs and not a.device._handshakes


def test_staged_packets_are_bounded_oldest_dropped_first() -> None:
    from wiresnake.protocol.constants import MAX_STAGED_PACKETS

    lab, a, b = pair()
    lab.filter = lambda s, d, data: False
    for i in range(MAX_STAGED_PACKETS + 10):
        lab.send(a, b, b"%d" % i)
    staged = lab.peer(a, b).staged
    assert len(staged) == MAX_STAGED_PACKETS
    assert staged[0].endswith(b"10") and staged[-1].endswith(b"%d" % (MAX_STAGED_PACKETS + 9))
    assert a.device.counters["staged_dropped"] == 10
    lab.filter = None
    lab.run(REKEY_TIMEOUT + 1)
    assert len(b.received) == MAX_STAGED_PACKETS


def _bulk_pair(n: int = 64) -> tuple[Lab, object, object, list[bytes]]:
    """A live session and n full-size IPv4 packets from a, sealed, not yet delivered."""
    lab, a, b = pair()
    lab.send(a, b)
    lab.send(b, a)
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i % 256]) * 1380) for i in range(n)]
    sealed = [d for _, d in a.device.from_tunnel(packets, lab.now).datagrams]
    return lab, a, b, sealed


def test_a_bulk_batch_is_delivered_whole_and_in_order() -> None:
    lab, a, b, sealed = _bulk_pair()
    rx = lab.peer(b, a).rx_bytes
    out = b.device.from_network([(a.endpoint, d) for d in sealed], lab.now)
    assert [p[20] for p in out.packets] == [i % 256 for i in range(64)]
    assert lab.peer(b, a).rx_bytes == rx + sum(map(len, sealed))
    assert b.device.counters == {"bulk_batches": 1}  # all in one go
    # the same batch again is all replay
    again = b.device.from_network([(a.endpoint, d) for d in sealed], lab.now)
    assert not again.packets and b.device.counters["replayed"] == 64


def test_a_bulk_batch_with_a_forgery_delivers_the_rest() -> None:
    lab, a, b, sealed = _bulk_pair()
    forged = bytearray(sealed[10])
    forged[40] ^= 1
    sealed[10] = bytes(forged)
    out = b.device.from_network([(a.endpoint, d) for d in sealed], lab.now)
    assert len(out.packets) == 63 and b.device.counters["decrypt_failed"] == 1


def test_a_bulk_batch_with_a_spoofed_inner_source_drops_only_that_packet() -> None:
    lab, a, b, _ = _bulk_pair(0)
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes(1380)) for _ in range(20)]
    packets[7] = ipv4_packet("10.9.9.9", "10.0.0.2", bytes(1380))
    sealed = [d for _, d in a.device.from_tunnel(packets, lab.now).datagrams]
    out = b.device.from_network([(a.endpoint, d) for d in sealed], lab.now)
    assert len(out.packets) == 19 and b.device.counters["inner_source_not_allowed"] == 1


def test_a_bulk_batch_out_of_order_or_with_gaps_is_still_all_delivered() -> None:
    lab, a, b, sealed = _bulk_pair()
    order = list(range(64))
    lab.random.shuffle(order)
    first = [sealed[i] for i in order[:40]]
    rest = [sealed[i] for i in order[40:]]
    out1 = b.device.from_network([(a.endpoint, d) for d in first], lab.now)
    out2 = b.device.from_network([(a.endpoint, d) for d in rest], lab.now)
    got = sorted(p[20] for p in out1.packets + out2.packets)
    assert got == sorted(i % 256 for i in range(64))


def test_a_bulk_batch_confirms_the_responders_new_session() -> None:
    lab, a, b = pair()
    lab.filter = lambda s, d, data: data[0] != DATA  # keep b's next keypair unconfirmed
    lab.send(a, b)
    lab.filter = None
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes(1380)) for _ in range(16)]
    sealed = [d for _, d in a.device.from_tunnel(packets, lab.now).datagrams]
    pb = lab.peer(b, a)
    assert pb.next is not None and pb.current is None
    out = b.device.from_network([(a.endpoint, d) for d in sealed], lab.now)
    assert len(out.packets) == 16 and pb.current is not None and pb.next is None
    assert b.device.counters["bulk_batches"] == 1


def test_a_forged_packet_on_the_unconfirmed_index_confirms_nothing() -> None:
    import struct

    lab, a, b = pair()
    lab.filter = lambda s, d, data: data[0] != DATA  # a's confirming packet is lost
    lab.send(a, b)
    pb = lab.peer(b, a)
    assert pb.next is not None
    forged = struct.pack("<IIQ", DATA, pb.next.local_index, 0) + bytes(32)
    out = b.device.from_network([(("203.0.113.9", 9), forged)], lab.now)
    assert not out and b.device.counters["decrypt_failed"] == 1
    assert pb.next is not None and pb.current is None and pb.last_handshake is None
    assert pb.endpoint == a.endpoint


def test_crossing_initiations_leave_no_stale_handshake_index() -> None:
    lab, a, b = pair()
    for _ in range(20):
        # both sides start a handshake at once; each answers the other's
        lab.filter = lambda s, d, data: False
        lab.send(a, b)
        lab.send(b, a)
        lab.filter = None
        lab.run(REKEY_TIMEOUT + 1)
        lab.run(ZERO_KEYS_AFTER + 1)  # sessions wiped, so the next round starts afresh
    for host, other in ((a, b), (b, a)):
        assert set(host.device._handshakes.values()) <= {lab.peer(host, other)}
        assert len(host.device._handshakes) <= 1


def test_the_responder_sends_no_initiation_of_its_own_right_after_answering() -> None:
    lab, a, b = pair()
    lab.filter = lambda s, d, data: not (s == a.endpoint and data[0] == DATA)
    lab.send(a, b)  # b answers; a's confirming packet is lost
    lab.run(0.1)
    lab.send(b, a)  # b has data but no confirmed session: it waits, as the reference
    assert [w[3][0] for w in lab.datagrams(b)] == [RESP]


def test_unsent_bytes_come_off_the_peer_whose_endpoint_refused_them() -> None:
    lab, a, b, c = hub()
    lab.send(a, b, b"hello")
    lab.send(a, c, b"hello")
    pb, pc = lab.peer(a, b), lab.peer(a, c)
    sent_b, sent_c = pb.tx_bytes, pc.tx_bytes
    assert sent_b > 0 and sent_c > 0
    to_c = ("192.0.2.3", 51820)
    data = bytes([DATA, 0, 0, 0]) + bytes(60)
    a.device.unsent([(to_c, data), (to_c, data)])
    assert (pb.tx_bytes, pc.tx_bytes) == (sent_b, sent_c - 128)
    a.device.unsent([(to_c, data)] * 10)  # never below zero
    assert pc.tx_bytes == 0 and pb.tx_bytes == sent_b
    a.device.unsent([(("192.0.2.99", 1), data)])  # nobody's endpoint: only counted
    assert pb.tx_bytes == sent_b
    assert a.device.counters["send_failed"] == 2 + 10 + 1


def test_a_refused_cookie_reply_is_not_taken_off_any_peer() -> None:
    # cookie replies go out for no peer and are never charged to one (as in WireGuard)
    lab, a, b, _c = hub()
    lab.send(a, b, b"hello")
    pb = lab.peer(a, b)
    sent = pb.tx_bytes
    cookie = bytes([COOKIE, 0, 0, 0]) + bytes(60)
    a.device.unsent([(("192.0.2.2", 51820), cookie)])
    assert pb.tx_bytes == sent
    assert a.device.counters["send_failed"] == 1
