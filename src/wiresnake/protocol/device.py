"""The engine: a whole WireGuard device as a sans-IO state machine.

Three inputs drive it, each with the current monotonic time and each answering with an
`Output` of effects: `from_tunnel(packets, now)` (plaintext IP packets to send),
`from_network(datagrams, now)` (UDP payloads with their source) and `tick(now)` (timers).
`next_deadline()` says when `tick` is next needed; `from_network_runs` is `from_network`
for UDP_GRO reads, taken whole. Configuration changes take effect at once; any traffic
they cause (a persistent keepalive switched on) leaves on the next tick. `Output.events`
reports what happened to peers (see events.py); on the data path it stays an empty list
(nothing is appended per packet).

Nothing here touches a socket, a file or a clock. Randomness comes from `rng` and wall
time (TAI64N timestamps, last-handshake times) is `now + wall_offset`, so two engines can
run against each other on a fake clock, deterministically.
"""

from __future__ import annotations

import heapq
import itertools
import operator
import os
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from wiresnake.crypto import (
    NONCE,
    ChaCha20Poly1305,
    CryptoError,
    InvalidTag,
    PrivateKey,
    clamp_private_key,
    hash,
    tai64n,
)
from wiresnake.protocol import noise
from wiresnake.protocol.allowedips import AllowedIPs
from wiresnake.protocol.constants import (
    DEFAULT_MTU,
    HANDSHAKES_PER_BATCH,
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    MAX_TIMER_HANDSHAKES,
    PADDING_MULTIPLE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    UNDER_LOAD_AFTER_TIME,
    UNDER_LOAD_HANDSHAKES,
    ZERO_KEYS_AFTER,
)
from wiresnake.protocol.cookie import CookieChecker
from wiresnake.protocol.events import (
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    KeysExpired,
    PeerIdle,
)
from wiresnake.protocol.handshake import open_initiation
from wiresnake.protocol.keypair import Keypair
from wiresnake.protocol.messages import (
    COOKIE_REPLY_SIZE,
    INITIATION_MAC1_OFFSET,
    INITIATION_SIZE,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_SIZE,
    TRANSPORT_HEADER,
    TYPE_COOKIE_REPLY,
    TYPE_INITIATION,
    TYPE_RESPONSE,
    TYPE_TRANSPORT,
    MessageError,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
)
from wiresnake.protocol.peer import Endpoint, Peer
from wiresnake.protocol.ratelimiter import Ratelimiter
from wiresnake.protocol.replay import ReplayWindow
from wiresnake.protocol.settings import DeviceConfig, Network, PeerConfig
from wiresnake.protocol.underload import UnderLoad

__all__ = ["Datagram", "Device", "Output", "Run"]

Datagram = tuple[Endpoint, bytes]
# datagrams of one source, all of one size, glued together: (source, data, size)
Run = tuple[Endpoint, bytes, int]
_COOKIE_TYPE = bytes([TYPE_COOKIE_REPLY])

_PAD = bytes(PADDING_MULTIPLE)
_PACK_HEADER = TRANSPORT_HEADER.pack
_UNPACK_HEADER = TRANSPORT_HEADER.unpack_from
_PACK_NONCE = NONCE.pack
_AFTER_HEADER = operator.itemgetter(slice(16, None))
_VERSION_AND_SOURCE = operator.itemgetter(0, 2)
_TOTAL = operator.itemgetter(1)
# batches this large try the bulk path first
_BULK_MIN = 8
# the parts of inner IP headers the receive path checks: (first byte, total length, source)
# for IPv4 and (payload length, source) for IPv6
_UNPACK_V4 = struct.Struct("!BxH8x4s").unpack_from
_UNPACK_V6 = struct.Struct("!4xH2x16s").unpack_from
_NO_PEER = Peer(bytes(32))
_NO_AEAD = ChaCha20Poly1305(bytes(32))
_NO_PEER_REPLAY = ReplayWindow()
_MAC1_OFFSETS = {TYPE_INITIATION: INITIATION_MAC1_OFFSET, TYPE_RESPONSE: RESPONSE_MAC1_OFFSET}
_HANDSHAKE_SIZES = {
    TYPE_INITIATION.to_bytes(4, "little"): INITIATION_SIZE,
    TYPE_RESPONSE.to_bytes(4, "little"): RESPONSE_SIZE,
    TYPE_COOKIE_REPLY.to_bytes(4, "little"): COOKIE_REPLY_SIZE,
}
# after this long without new keys, an initiator refreshes them on receive so the session
# does not expire while only the responder is sending (section 6.2)
_REKEY_ON_RECEIVE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT


def _uniform(data: bytes, size: int) -> bool:
    """Whether every `size`-byte segment of `data` starts with the same handshake type
    as the first (a type is one byte and three zeros)."""
    count = len(data) // size
    zeros = bytes(count)
    return (
        data[0::size] == data[:1] * count
        and data[1::size] == zeros
        and data[2::size] == zeros
        and data[3::size] == zeros
    )


def _first_messages(runs: list[Run], limit: int) -> list[Datagram]:
    """The first `limit` messages of `runs`, sliced out."""
    out: list[Datagram] = []
    for src, data, size in runs:
        for k in range(0, len(data), size):
            if len(out) >= limit:
                return out
            out.append((src, data[k : k + size]))
    return out


@dataclass(slots=True)
class Output:
    """Effects of one call: datagrams to send, IP packets to deliver to the tunnel, and
    what happened to peers (see events.py), in order; empty when nothing did."""

    datagrams: list[Datagram] = field(default_factory=list)
    packets: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.datagrams or self.packets or self.events)


class Device:
    def __init__(
        self,
        private_key: bytes | None = None,
        *,
        mtu: int = DEFAULT_MTU,
        rng: Callable[[int], bytes] = os.urandom,
        wall_offset: float = 0.0,
        under_load_handshakes: int = UNDER_LOAD_HANDSHAKES,
    ) -> None:
        self.mtu = mtu
        self.wall_offset = wall_offset
        self.listen_port = 0
        self.fwmark = 0
        self.under_load_handshakes = under_load_handshakes
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.ratelimiter = Ratelimiter()
        self._under_load = UnderLoad()
        # why datagrams and packets were dropped, and other events worth counting
        self.counters: Counter[str] = Counter()
        # batches this large try the bulk path; a test sets it out of reach to hold the
        # general loop to the same results (tests/unit/test_receive_paths.py)
        self._bulk_min = _BULK_MIN
        self._rng = rng
        # timer jitter needs no secrecy: a PRNG seeded once spares a getrandom per packet
        self._jitter_rng = random.Random(rng(16))
        self._peers: dict[bytes, Peer] = {}
        self._keypairs: dict[int, Keypair] = {}
        self._handshakes: dict[int, Peer] = {}
        self._heap: list[tuple[float, int, Peer]] = []
        self._seq = itertools.count()
        self._load_window_start = float("-inf")
        self._load_count = 0
        self._under_load_until = float("-inf")
        self._static: PrivateKey | None = None
        self._checker: CookieChecker | None = None
        self._own_hash = b""
        self.set_private_key(private_key)

    # ------------------------------------------------------------------ configuration

    @property
    def public_key(self) -> bytes | None:
        return self._static.public if self._static else None

    @property
    def private_key(self) -> bytes | None:
        return self._static.raw() if self._static else None

    def set_private_key(self, private_key: bytes | None) -> None:
        """Change identity: every session is invalid after this, so all are dropped, and a
        peer whose key is our new public key is removed, as the reference does. The key is
        clamped first (and reads back clamped); the same key again changes nothing."""
        if private_key is not None:
            private_key = clamp_private_key(private_key)
        current = self._static.raw() if self._static is not None else None
        if private_key == current:
            return
        self._static = PrivateKey(private_key) if private_key is not None else None
        if self._static is None:
            self._checker = None
            self._own_hash = b""
        else:
            # MAC1 and cookie keys are derived from our public key, the cookie secret
            # starts afresh
            self._checker = CookieChecker(self._static.public, self._rng)
            self._own_hash = hash(noise.INITIAL_HASH, self._static.public)
            self.remove_peer(self._static.public)
        for peer in self._peers.values():
            self._clear_sessions(peer)
            self._precompute(peer)
            # the next packet handshakes at once: a handshake sent under the old key
            # must not hold the new one back for REKEY_TIMEOUT
            peer.last_sent_handshake = float("-inf")
            peer.handshake_attempts = 0
            peer.retransmit_at = None

    def _precompute(self, peer: Peer) -> None:
        hs = peer.handshake
        hs.static_static = None
        if self._static is not None:
            try:
                hs.static_static = self._static.exchange(peer.public_key)
            except CryptoError:
                hs.static_static = None

    @property
    def peers(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))

    def peer(self, public_key: bytes) -> Peer | None:
        return self._peers.get(public_key)

    def add_peer(self, public_key: bytes) -> Peer:
        """The peer with this key, created if new (existing sessions are untouched)."""
        if len(public_key) != 32:
            raise ValueError("public key must be 32 bytes")
        if self._static is not None and public_key == self._static.public:
            raise ValueError("a peer cannot have the interface's own public key")
        peer = self._peers.get(public_key)
        if peer is None:
            peer = Peer(public_key)
            self._precompute(peer)
            self._peers[public_key] = peer
        return peer

    def remove_peer(self, public_key: bytes) -> bool:
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return False
        peer.removed = True
        self._clear_sessions(peer)
        self.allowed_ips.remove_by_value(peer)
        peer.staged.clear()
        return True

    def remove_all_peers(self) -> None:
        for key in list(self._peers):
            self.remove_peer(key)

    def set_preshared_key(self, peer: Peer, psk: bytes | None) -> None:
        if psk is not None and len(psk) != 32:
            raise ValueError("preshared key must be 32 bytes")
        peer.handshake.preshared_key = psk if psk is not None else bytes(32)

    def set_endpoint(self, peer: Peer, endpoint: Endpoint | None, now: float | None = None) -> None:
        """With a persistent keepalive configured, a first endpoint sends one at once (on
        the next tick), as switching the keepalive on does."""
        first = peer.endpoint is None
        peer.endpoint = endpoint
        if first and endpoint is not None and peer.persistent_keepalive and now is not None:
            peer.persistent_keepalive_at = now
            self._reschedule(peer)

    def set_persistent_keepalive(self, peer: Peer, seconds: int, now: float) -> None:
        """Switching it on sends a keepalive at once (on the next tick), as the reference."""
        if not 0 <= seconds <= 65535:
            raise ValueError("persistent keepalive must be 0..65535 seconds")
        was = peer.persistent_keepalive
        peer.persistent_keepalive = seconds
        if seconds == 0:
            peer.persistent_keepalive_at = None
        elif was == 0 and peer.endpoint is not None:
            peer.persistent_keepalive_at = now
            self._reschedule(peer)

    def allow(self, peer: Peer, network: Network | str) -> None:
        self.allowed_ips.insert(network, peer)

    def disallow(self, peer: Peer, network: Network | str) -> bool:
        return self.allowed_ips.remove(network, peer)

    def clear_allowed_ips(self, peer: Peer) -> None:
        self.allowed_ips.remove_by_value(peer)

    def apply_peer(self, config: PeerConfig, now: float) -> Peer:
        """Add or update a peer to match `config`; its sessions survive if it existed."""
        peer = self.add_peer(config.public_key)
        self.set_preshared_key(peer, config.preshared_key)
        if config.endpoint is not None:
            peer.endpoint = config.endpoint
        current = self.allowed_ips.networks_for(peer)
        if list(current) != list(config.allowed_ips):
            self.allowed_ips.remove_by_value(peer)
            for net in config.allowed_ips:
                self.allowed_ips.insert(net, peer)
        self.set_persistent_keepalive(peer, config.persistent_keepalive, now)
        return peer

    def configure(self, config: DeviceConfig, now: float) -> None:
        """Make the device match `config` (like `wg syncconf`): peers not in it are removed,
        the rest are added or updated without disturbing their sessions."""
        self.set_private_key(config.private_key)
        self.listen_port = config.listen_port
        self.fwmark = config.fwmark
        wanted = {p.public_key for p in config.peers}
        for key in list(self._peers):
            if key not in wanted:
                self.remove_peer(key)
        for pc in config.peers:
            if self._static is not None and pc.public_key == self._static.public:
                continue
            self.apply_peer(pc, now)

    # ------------------------------------------------------------------ outgoing data

    def from_tunnel(self, packets: Iterable[bytes], now: float) -> Output:
        out = Output()
        lookup = self.allowed_ips.lookup
        batches: dict[Peer, list[bytes]] = {}
        counters = self.counters
        mtu = self.mtu
        last_dst = b""
        batch: list[bytes] = []
        for pkt in packets:
            n = len(pkt)
            if n < 20:
                counters["tunnel_malformed"] += 1
                continue
            version = pkt[0] >> 4
            if version == 4:
                dst = pkt[16:20]
            elif version == 6 and n >= 40:
                dst = pkt[24:40]
            else:
                counters["tunnel_malformed"] += 1
                continue
            if n > mtu:
                counters["tunnel_oversize"] += 1
                continue
            if dst != last_dst:
                # a run of packets to one destination costs one look-up
                peer = lookup(dst)
                if peer is None:
                    counters["no_route"] += 1
                    last_dst = b""
                    continue
                last_dst = dst
                found = batches.get(peer)
                if found is None:
                    found = batches[peer] = []
                batch = found
            batch.append(pkt)
        for peer, pkts in batches.items():
            peer.staged.extend(pkts)
            self._send_staged(peer, now, out)
            self._reschedule(peer)
        return out

    def _send_staged(self, peer: Peer, now: float, out: Output) -> None:
        staged = peer.staged
        if not staged:
            return
        kp = peer.current
        if (
            kp is None
            or kp.send_counter >= REJECT_AFTER_MESSAGES
            or now - kp.created >= REJECT_AFTER_TIME
        ):
            # only while waiting for a session is the queue bounded; oldest go first
            excess = len(staged) - MAX_STAGED_PACKETS
            if excess > 0:
                for _ in range(excess):
                    staged.popleft()
                self.counters["staged_dropped"] += excess
            self._initiate(peer, now, out, retry=False)
            return
        if peer.endpoint is None:
            self.counters["no_endpoint"] += len(staged)
            staged.clear()
            return
        room = REJECT_AFTER_MESSAGES - kp.send_counter
        if len(staged) <= room:
            packets = list(staged)
            staged.clear()
        else:
            packets = [staged.popleft() for _ in range(room)]
        self._seal(peer, kp, packets, out)
        self._packet_sent(peer, now)
        if any(packets) and peer.new_handshake_at is None:
            # expect an answer; if none comes, the session may be dead (section 6.5)
            peer.new_handshake_at = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter()
        if (
            staged
            or kp.send_counter > REKEY_AFTER_MESSAGES
            or (kp.initiator and now - kp.created > REKEY_AFTER_TIME)
        ):
            # worn keys: renew them; anything left over waits for the new session
            self._initiate(peer, now, out, retry=False)

    def _seal(self, peer: Peer, kp: Keypair, packets: list[bytes], out: Output) -> None:
        """Encrypt `packets` into transport messages; the counter stays below the limit."""
        assert peer.endpoint is not None
        endpoint = peer.endpoint
        seal = kp.send.encrypt
        remote = kp.remote_index
        counter = kp.send_counter
        mtu = self.mtu
        append = out.datagrams.append
        sent = 0
        for pkt in packets:
            n = len(pkt)
            pad = -n & 15
            if pad:
                # pad to 16 bytes, but never past the MTU
                if n + pad > mtu:
                    pad = mtu - n
                if pad > 0:
                    pkt += _PAD[:pad]
            msg = _PACK_HEADER(TYPE_TRANSPORT, remote, counter) + seal(
                _PACK_NONCE(counter), pkt, None
            )
            counter += 1
            sent += len(msg)
            append((endpoint, msg))
        kp.send_counter = counter
        peer.tx_bytes += sent

    def unsent(self, failed: Iterable[Datagram]) -> None:
        """The host could not send these (no route, say): take them back off tx_bytes,
        which count what left, as WireGuard's do. Cookie replies were never charged."""
        charged: dict[Endpoint, int] = {}
        for endpoint, msg in failed:
            self.counters["send_failed"] += 1
            if msg[:1] != _COOKIE_TYPE:
                charged[endpoint] = charged.get(endpoint, 0) + len(msg)
        for peer in self._peers.values():  # a scan, but only when sends failed
            nbytes = charged.pop(peer.endpoint, 0) if peer.endpoint is not None else 0
            if nbytes:
                peer.tx_bytes = max(0, peer.tx_bytes - nbytes)
                if not charged:
                    return

    def _packet_sent(self, peer: Peer, now: float) -> None:
        # any authenticated packet sent: persistent keepalive restarts, passive one is moot
        if peer.persistent_keepalive:
            peer.persistent_keepalive_at = now + peer.persistent_keepalive
        peer.keepalive_at = None

    def _send_keepalive(self, peer: Peer, now: float, out: Output) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now, out)

    # ------------------------------------------------------------------ incoming data

    def from_network(self, datagrams: Iterable[Datagram], now: float) -> Output:
        if not isinstance(datagrams, list):
            datagrams = list(datagrams)
        return self._receive(datagrams, [], now)

    def from_network_runs(self, runs: Iterable[Run], now: float) -> Output:
        """As `from_network`, for what UDP_GRO reads return: (source, data, segment size),
        `data` being datagrams of one source glued together, all of that size but the
        last (size 0: one datagram). A run made only of handshake messages of one type
        stays whole, so that under a flood the handshake path slices out only the few
        messages each source is allowed (see underload.py)."""
        datagrams: list[Datagram] = []
        handshakes: list[Run] = []
        for src, data, size in runs:
            n = len(data)
            if not 0 < size < n:
                datagrams.append((src, data))
            elif n % size == 0 and _HANDSHAKE_SIZES.get(data[:4]) == size and _uniform(data, size):
                handshakes.append((src, data, size))
            else:
                datagrams.extend((src, data[k : k + size]) for k in range(0, n, size))
        return self._receive(datagrams, handshakes, now)

    def _receive(self, datagrams: list[Datagram], handshakes: list[Run], now: float) -> Output:
        """`handshakes` holds whole handshake runs already; the ones found among
        `datagrams` join them, as runs of one."""
        out = Output()
        if len(datagrams) >= self._bulk_min and self._bulk(datagrams, now, out):
            if handshakes:
                self._handshake_batch(handshakes, now, out)
            return out
        packets = out.packets
        keypairs = self._keypairs
        counters = self.counters
        lookup = self.allowed_ips.lookup
        # peer -> [source of its latest packet, whether data arrived]
        seen: dict[Peer, list[Any]] = {}
        # state of the current run of packets on one keypair from one source
        last_index = -1
        last_src: Endpoint | None = None
        allowed_source = b""
        # placeholders until the first transport packet; last_index == -1 forces a look-up
        peer = _NO_PEER
        entry: list[Any] = []
        open_ = _NO_AEAD.decrypt
        validate = _NO_PEER_REPLAY.validate
        unconfirmed: Keypair | None = None
        for src, data in datagrams:
            n = len(data)
            if n < 32:  # shorter than any message
                counters["malformed"] += 1
                continue
            kind, index, counter = _UNPACK_HEADER(data)
            if kind != TYPE_TRANSPORT:
                # only well-framed handshake messages reach the handshake path and count
                # towards load, as the reference checks sizes before queueing them
                if _HANDSHAKE_SIZES.get(data[:4]) != n:
                    counters["malformed"] += 1
                else:
                    handshakes.append((src, data, n))  # the handshake path bounds its work
                continue
            if index != last_index:
                kp = keypairs.get(index)
                if kp is None:
                    counters["unknown_index"] += 1
                    continue
                if now - kp.created >= REJECT_AFTER_TIME:
                    counters["expired_keypair"] += 1
                    continue
                last_index = index
                open_ = kp.receive.decrypt
                validate = kp.replay.validate
                peer = kp.peer
                last_src = None
                allowed_source = b""
                # the responder's next keypair is confirmed by the first packet that
                # authenticates on it, never by its (cleartext) index alone
                unconfirmed = kp if kp is peer.next else None
            try:
                pt = open_(_PACK_NONCE(counter), data[16:], None)
            except InvalidTag:
                counters["decrypt_failed"] += 1
                continue
            if not validate(counter):  # also refuses counters past REJECT_AFTER_MESSAGES
                counters["replayed"] += 1
                continue
            if unconfirmed is not None:
                self._confirm(peer, unconfirmed, src, now, out)
                unconfirmed = None
            peer.rx_bytes += n
            # identity, not equality: a source equal as (host, port) may carry another local
            # address (the host's sticky source), and the latest one must win; a GRO run
            # shares one object, so runs still cost one look-up
            if src is not last_src:
                last_src = src
                found = seen.get(peer)
                if found is None:
                    found = seen[peer] = [src, False]
                else:
                    found[0] = src
                entry = found
            m = len(pt)
            if not m:
                continue  # a keepalive
            entry[1] = True  # data, even if malformed inside, as the reference counts it
            if m < 20:
                counters["inner_malformed"] += 1
                continue
            first, total, source = _UNPACK_V4(pt)
            if first >> 4 == 4:
                if total < 20:
                    total = m + 1
            elif first >> 4 == 6 and m >= 40:
                total, source = _UNPACK_V6(pt)
                total += 40
            else:
                counters["inner_malformed"] += 1
                continue
            if total > m:
                counters["inner_malformed"] += 1
                continue
            if source != allowed_source:
                # cryptokey routing: the inner source must be one of this peer's
                if lookup(source) is not peer:
                    counters["inner_source_not_allowed"] += 1
                    continue
                allowed_source = source
            packets.append(pt if total == m else pt[:total])
        for peer, (src, data_received) in seen.items():
            self._received_from(peer, src, data_received, now, out)
        if handshakes:
            self._handshake_batch(handshakes, now, out)
        return out

    def _received_from(
        self, peer: Peer, src: Endpoint, data_received: bool, now: float, out: Output
    ) -> None:
        """After a batch brought authenticated transport packets from `peer`."""
        self._authenticated_receive(peer, src, now, out)
        if data_received:
            if peer.keepalive_at is None:
                peer.keepalive_at = now + KEEPALIVE_TIMEOUT
            else:
                peer.need_another_keepalive = True
        cur = peer.current
        if (
            cur is not None
            and cur.initiator
            and not peer.sent_last_minute_handshake
            and now - cur.created > _REKEY_ON_RECEIVE
        ):
            peer.sent_last_minute_handshake = True
            self._initiate(peer, now, out, retry=False)
        self._send_staged(peer, now, out)
        self._reschedule(peer)

    def _bulk(self, datagrams: list[Datagram], now: float, out: Output) -> bool:
        """The bulk case in one go, with C-level loops (map, list compares) instead of a
        bytecode loop per packet: every datagram a transport message on one live keypair
        with consecutive fresh counters, all authentic, each carrying one whole IPv4 packet
        from the same allowed source. Anything else returns False having changed nothing,
        and the general loop takes the batch."""
        datas = [d for _, d in datagrams]
        if min(map(len, datas)) < 52:  # header + an IPv4 header + tag
            return False
        heads = list(map(_UNPACK_HEADER, datas))
        _kind, index, first = heads[0]
        n = len(heads)
        expected = zip(
            repeat(TYPE_TRANSPORT, n), repeat(index, n), range(first, first + n), strict=True
        )
        if heads != list(expected):
            return False
        kp = self._keypairs.get(index)
        if (
            kp is None
            or now - kp.created >= REJECT_AFTER_TIME
            or not kp.replay.fresh_run(first, first + n - 1)
        ):
            return False
        try:
            pts = list(
                map(
                    kp.receive.decrypt,
                    map(_PACK_NONCE, range(first, first + n)),
                    map(_AFTER_HEADER, datas),
                    repeat(None, n),
                )
            )
        except InvalidTag:
            return False
        if min(map(len, pts)) < 20:
            return False
        inner = list(map(_UNPACK_V4, pts))
        version, _total, source = inner[0]
        if version >> 4 != 4 or list(map(_VERSION_AND_SOURCE, inner)) != [(version, source)] * n:
            return False
        totals = list(map(_TOTAL, inner))
        if totals != list(map(len, pts)):
            # padded to 16 bytes: trim, but only padding (the general loop judges the rest)
            if any(
                t < 20 or not 0 <= len(pt) - t < PADDING_MULTIPLE
                for pt, t in zip(pts, totals, strict=True)
            ):
                return False
            pts = [pt[:t] for pt, t in zip(pts, totals, strict=True)]
        peer = kp.peer
        if self.allowed_ips.lookup(source) is not peer:
            return False
        # all checks passed: now commit, as the general loop would have
        kp.replay.accept_run(first, first + n - 1)
        if kp is peer.next:
            self._confirm(peer, kp, datagrams[0][0], now, out)
        peer.rx_bytes += sum(map(len, datas))
        out.packets.extend(pts)
        self.counters["bulk_batches"] += 1
        self._received_from(peer, datagrams[-1][0], True, now, out)
        return True

    def _authenticated_receive(self, peer: Peer, src: Endpoint, now: float, out: Output) -> None:
        # roaming: the endpoint is wherever the latest authenticated packet came from
        if src != peer.endpoint:
            out.events.append(EndpointChanged(peer.public_key, peer.endpoint, src))
        peer.endpoint = src
        peer.idle = False
        if peer.persistent_keepalive:
            peer.persistent_keepalive_at = now + peer.persistent_keepalive
        peer.new_handshake_at = None

    def _confirm(self, peer: Peer, kp: Keypair, src: Endpoint, now: float, out: Output) -> None:
        """The responder's next keypair becomes current on its first packet (from `src`)."""
        self._drop_keypair(peer.previous)
        peer.previous = peer.current
        peer.current = kp
        peer.next = None
        self._handshake_complete(peer, src, now, out)

    def _handshake_complete(self, peer: Peer, src: Endpoint, now: float, out: Output) -> None:
        out.events.append(HandshakeCompleted(peer.public_key, src))
        peer.retransmit_at = None
        peer.handshake_attempts = 0
        peer.sent_last_minute_handshake = False
        peer.last_handshake = now + self.wall_offset

    # ------------------------------------------------------------------ handshakes

    def _handshake_batch(self, runs: list[Run], now: float, out: Output) -> None:
        total = sum(len(data) // size for _, data, size in runs)
        if now - self._load_window_start >= 1.0:
            self._load_window_start = now
            self._load_count = 0
        self._load_count += total
        if self._load_count >= self.under_load_handshakes:
            self._under_load_until = now + UNDER_LOAD_AFTER_TIME
        checker = self._checker
        if now >= self._under_load_until or checker is None:
            # past the first few the rest are dropped unread, like a full handshake queue
            batch = _first_messages(runs, HANDSHAKES_PER_BATCH)
            if total > len(batch):
                self.counters["handshake_dropped"] += total - len(batch)
            for src, data in batch:
                kind = data[0]
                if kind == TYPE_COOKIE_REPLY:
                    self._handshake(src, data, now, out)
                elif checker is None:
                    self.counters["no_private_key"] += 1
                elif checker.check_mac1(data, _MAC1_OFFSETS[kind]):
                    self._handshake(src, data, now, out)
                else:
                    self.counters["bad_mac1"] += 1
            return
        # under load: MAC2 first (see underload.py); cookie replies to us need no proof
        cookie_runs = [r for r in runs if r[1][0] == TYPE_COOKIE_REPLY]
        cookies: list[Datagram] = []
        if cookie_runs:
            runs = [r for r in runs if r[1][0] != TYPE_COOKIE_REPLY]
            cookies = _first_messages(cookie_runs, HANDSHAKES_PER_BATCH)
            dropped = sum(len(data) // size for _, data, size in cookie_runs) - len(cookies)
            if dropped:
                self.counters["handshake_dropped"] += dropped
        admitted = self._under_load.sort(
            runs, checker, self.ratelimiter, now, out.datagrams, self.counters
        )
        for src, data in cookies + admitted:
            self._handshake(src, data, now, out)

    def _handshake(self, src: Endpoint, data: bytes, now: float, out: Output) -> None:
        """One admitted handshake message: MAC1 (and under load MAC2) already checked."""
        kind = data[0]
        try:
            if kind == TYPE_INITIATION:
                self._on_initiation(src, data, now, out)
            elif kind == TYPE_RESPONSE:
                self._on_response(src, data, now, out)
            else:
                self._on_cookie_reply(data, now)
        except MessageError:
            self.counters["malformed"] += 1

    def _on_initiation(self, src: Endpoint, data: bytes, now: float, out: Output) -> None:
        msg = parse_initiation(data)
        assert self._static is not None
        opened = open_initiation(msg, self._static, self._own_hash)
        if opened is None:
            self.counters["handshake_failed"] += 1
            return
        sym, remote = opened
        peer = self._peers.get(remote)
        if peer is None:
            self.counters["unknown_peer"] += 1
            return
        refused = peer.handshake.accept_initiation(sym, msg, now)
        if refused:
            self.counters[refused] += 1
            return
        peer.rx_bytes += len(data)
        self._authenticated_receive(peer, src, now, out)
        # an initiation of ours still pending is superseded: free its index
        pending = peer.handshake.local_index
        if pending and self._handshakes.get(pending) is peer:
            del self._handshakes[pending]
        index = self._new_index()
        made = peer.handshake.create_response(PrivateKey(self._rng(32)), index)
        if made is None:
            self.counters["handshake_failed"] += 1
            return
        response, send_key, receive_key = made
        peer.cookie.stamp(response, RESPONSE_MAC1_OFFSET, now)
        kp = Keypair(
            peer,
            send_key,
            receive_key,
            initiator=False,
            local_index=index,
            remote_index=msg.sender,
            created=now,
        )
        self._begin_session(peer, kp)
        self._packet_sent(peer, now)
        # a response counts as a handshake sent: no initiation of ours right behind it
        peer.last_sent_handshake = now
        self._send_raw(peer, bytes(response), out)
        self._reschedule(peer)

    def _on_response(self, src: Endpoint, data: bytes, now: float, out: Output) -> None:
        msg = parse_response(data)
        assert self._static is not None
        peer = self._handshakes.get(msg.receiver)
        if peer is None:
            self.counters["unknown_index"] += 1
            return
        keys = peer.handshake.consume_response(msg, self._static)
        if keys is None:
            self.counters["handshake_failed"] += 1
            return
        peer.rx_bytes += len(data)
        self._authenticated_receive(peer, src, now, out)
        del self._handshakes[msg.receiver]
        kp = Keypair(
            peer,
            keys[0],
            keys[1],
            initiator=True,
            local_index=msg.receiver,
            remote_index=msg.sender,
            created=now,
        )
        self._begin_session(peer, kp)
        self._handshake_complete(peer, src, now, out)
        # confirm the session to the responder at once, with data if any is waiting
        self._send_keepalive(peer, now, out)
        self._reschedule(peer)

    def _on_cookie_reply(self, data: bytes, now: float) -> None:
        msg = parse_cookie_reply(data)
        peer = self._handshakes.get(msg.receiver)
        if peer is None:
            kp = self._keypairs.get(msg.receiver)
            peer = kp.peer if kp is not None else None
        if peer is None:
            self.counters["unknown_index"] += 1
            return
        if not peer.cookie.consume_reply(msg, now):
            self.counters["bad_cookie_reply"] += 1
            return
        self.counters["cookie_received"] += 1

    def _begin_session(self, peer: Peer, kp: Keypair) -> None:
        hs_index = peer.handshake.local_index
        if hs_index and self._handshakes.get(hs_index) is peer:
            del self._handshakes[hs_index]
        peer.handshake.local_index = 0
        self._keypairs[kp.local_index] = kp
        if kp.initiator:
            if peer.next is not None:
                self._drop_keypair(peer.previous)
                peer.previous = peer.next
                peer.next = None
                self._drop_keypair(peer.current)
            else:
                self._drop_keypair(peer.previous)
                peer.previous = peer.current
            peer.current = kp
        else:
            self._drop_keypair(peer.next)
            peer.next = kp
            self._drop_keypair(peer.previous)
            peer.previous = None
        peer.zero_keys_at = kp.created + ZERO_KEYS_AFTER

    def _drop_keypair(self, kp: Keypair | None) -> None:
        if kp is not None and self._keypairs.get(kp.local_index) is kp:
            del self._keypairs[kp.local_index]

    def _clear_sessions(self, peer: Peer) -> None:
        for kp in peer.keypairs():
            self._drop_keypair(kp)
        peer.previous = peer.current = peer.next = None
        index = peer.handshake.local_index
        if index and self._handshakes.get(index) is peer:
            del self._handshakes[index]
        peer.handshake.clear()

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if index and index not in self._keypairs and index not in self._handshakes:
                return index

    def _jitter(self) -> float:
        return self._jitter_rng.randrange(334) / 1000

    def _initiate(self, peer: Peer, now: float, out: Output, *, retry: bool) -> None:
        if not retry:
            peer.handshake_attempts = 0
        if now - peer.last_sent_handshake < REKEY_TIMEOUT or self._static is None:
            return
        peer.last_sent_handshake = now
        old = peer.handshake.local_index
        if old and self._handshakes.get(old) is peer:
            del self._handshakes[old]
        index = self._new_index()
        msg = peer.handshake.create_initiation(
            self._static, PrivateKey(self._rng(32)), index, tai64n(now + self.wall_offset)
        )
        if msg is None:
            self.counters["low_order_peer"] += 1
            return
        self._handshakes[index] = peer
        peer.cookie.stamp(msg, INITIATION_MAC1_OFFSET, now)
        self._packet_sent(peer, now)
        self._send_raw(peer, bytes(msg), out)
        peer.retransmit_at = now + REKEY_TIMEOUT + self._jitter()

    def _send_raw(self, peer: Peer, msg: bytes, out: Output) -> None:
        if peer.endpoint is None:
            self.counters["no_endpoint"] += 1
            return
        out.datagrams.append((peer.endpoint, msg))
        peer.tx_bytes += len(msg)

    # ------------------------------------------------------------------ timers

    def _reschedule(self, peer: Peer) -> None:
        t = peer.next_deadline()
        if t is not None and not peer.removed and (peer.scheduled is None or t < peer.scheduled):
            peer.scheduled = t
            heapq.heappush(self._heap, (t, next(self._seq), peer))

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            t, _, peer = heap[0]
            if peer.removed or peer.scheduled != t:
                heapq.heappop(heap)
                continue
            return t
        return None

    def tick(self, now: float) -> Output:
        out = Output()
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, peer = heapq.heappop(heap)
            if peer.removed or peer.scheduled != t:
                continue
            peer.scheduled = None
            self._fire(peer, now, out)
            self._reschedule(peer)
        return out

    def _fire(self, peer: Peer, now: float, out: Output) -> None:
        if peer.retransmit_at is not None and peer.retransmit_at <= now:
            peer.retransmit_at = None
            if peer.handshake_attempts > MAX_TIMER_HANDSHAKES:
                # give up (section 6.4): drop what waited, wipe keys later unless renewed
                peer.keepalive_at = None
                # keepalives waiting (empty packets) are no loss worth reporting
                dropped = sum(1 for pkt in peer.staged if pkt)
                out.events.append(HandshakeGaveUp(peer.public_key, dropped))
                self.counters["staged_dropped"] += len(peer.staged)
                peer.staged.clear()
                if peer.zero_keys_at is None:
                    peer.zero_keys_at = now + ZERO_KEYS_AFTER
            else:
                peer.handshake_attempts += 1
                self._initiate(peer, now, out, retry=True)
        if peer.keepalive_at is not None and peer.keepalive_at <= now:
            peer.keepalive_at = None
            self._send_keepalive(peer, now, out)
            if peer.need_another_keepalive:
                peer.need_another_keepalive = False
                peer.keepalive_at = now + KEEPALIVE_TIMEOUT
        if peer.new_handshake_at is not None and peer.new_handshake_at <= now:
            peer.new_handshake_at = None
            if not peer.idle:
                peer.idle = True
                out.events.append(PeerIdle(peer.public_key))
            self._initiate(peer, now, out, retry=False)
        if peer.zero_keys_at is not None and peer.zero_keys_at <= now:
            peer.zero_keys_at = None
            if peer.keypairs():
                out.events.append(KeysExpired(peer.public_key))
            self._clear_sessions(peer)
            self.counters["staged_dropped"] += len(peer.staged)
            peer.staged.clear()
        if peer.persistent_keepalive_at is not None and peer.persistent_keepalive_at <= now:
            peer.persistent_keepalive_at = None
            if peer.persistent_keepalive:
                self._send_keepalive(peer, now, out)
