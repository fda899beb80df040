"""A fixed-key WireGuard handshake held to answers computed without our code.

Three independent oracles:

(a) `noiseprotocol`, another implementation of Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, with
    WireGuard's prologue, fixed static keys and fixed ephemerals (injected with
    `set_keypair_from_private_bytes(Keypair.EPHEMERAL, ...)`). Our side is a real `Device`
    whose `rng` hands out the ephemeral and the sender index and whose `wall_offset` fixes
    the TAI64N timestamp, so its datagrams must match noiseprotocol's messages byte for byte.
    The WireGuard framing around noiseprotocol's messages (type, indices, MAC1, MAC2) is
    written out here by hand.
(b) MAC1, MAC2 and the cookie reply, computed step by step from the whitepaper (section
    5.4.4 and 5.4.7) with hashlib and a hand-written XChaCha20-Poly1305.
(c) The whitepaper's derivation (sections 5.4.2, 5.4.3 and 5.4.5) written out with hashlib, a
    hand-written RFC 2104 HMAC and `cryptography`'s X25519 and ChaCha20-Poly1305 directly,
    compared with the chaining key, hash and transport keys of our `noise` functions.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from lab import ipv4_packet
from noise.connection import Keypair as NoiseKeypair
from noise.connection import NoiseConnection
from test_crypto import hmac_by_hand, xaead_open_by_hand

from wiresnake.crypto import PrivateKey
from wiresnake.protocol import noise
from wiresnake.protocol.cookie import CookieChecker, CookieGenerator
from wiresnake.protocol.device import Device, Output
from wiresnake.protocol.handshake import Handshake, open_initiation
from wiresnake.protocol.messages import parse_cookie_reply, parse_initiation, parse_response
from wiresnake.protocol.peer import Endpoint, Peer

# noiseprotocol warns whenever an ephemeral is injected; that is the point here
pytestmark = pytest.mark.filterwarnings("ignore:One of ephemeral keypairs is already set")

# ---------------------------------------------------------------- the fixed handshake

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
# C = HASH(CONSTRUCTION) and HASH(C || IDENTIFIER), as the reference implementations
# (wireguard-rs, and others) hard-code them
REFERENCE_INITIAL_CHAIN_KEY = bytes.fromhex(
    "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
)
REFERENCE_INITIAL_HASH = bytes.fromhex(
    "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"
)


def fixed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


OUR_STATIC = fixed("wiresnake static")
THEIR_STATIC = fixed("noiseprotocol static")
OUR_EPHEMERAL = fixed("wiresnake ephemeral")
THEIR_EPHEMERAL = fixed("noiseprotocol ephemeral")
OUR_INDEX = 0x11223344
THEIR_INDEX = 0xA1B2C3D4
COOKIE_SECRET = fixed("cookie secret")
COOKIE_NONCE = bytes(range(0x30, 0x48))

PSKS = [
    pytest.param(bytes(32), id="zero-psk"),
    pytest.param(bytes(range(0x40, 0x60)), id="psk"),
]

# the engine's clock is monotonic; wall time is now + wall_offset
NOW = 1000.0
WALL = 1_700_000_000.5
# TAI64N of WALL: seconds + 2^62 + 10, then 500_000_000 ns (0x1dcd6500) with the low 24
# bits masked (0x1d000000), both big-endian
OUR_TIMESTAMP = struct.pack(">QI", 0x400000000000000A + 1_700_000_000, 0x1D000000)
THEIR_TIMESTAMP = struct.pack(">QI", 0x400000000000000A + 1_700_000_123, 0x2A000000)

OUR_ENDPOINT: Endpoint = ("192.0.2.1", 51820)
THEIR_ENDPOINT: Endpoint = ("198.51.100.7", 40000)
OUR_IP, THEIR_IP = "10.0.0.1", "10.0.0.2"
TO_THEM = ipv4_packet(OUR_IP, THEIR_IP, b"hello")  # 25 bytes, padded to 32 when sealed
TO_US = ipv4_packet(THEIR_IP, OUR_IP, b"hello back, from noiseprotocol")


def public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def index_bytes(index: int) -> bytes:
    return index.to_bytes(4, "little")


class ScriptedRng:
    """The device's `rng`: scripted answers by requested length, in order; anything
    unscripted (the timer jitter) comes from a fixed stream, never all zeros."""

    def __init__(self, script: dict[int, list[bytes]]) -> None:
        self.script = {n: list(v) for n, v in script.items()}
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        queue = self.script.get(n)
        if queue:
            return queue.pop(0)
        return hashlib.shake_128(self.calls.to_bytes(4, "little")).digest(n)


# ---------------------------------------------------------------- WireGuard framing by hand


def mac1_by_hand(receiver_public: bytes, covered: bytes) -> bytes:
    """Whitepaper 5.4.4: MAC(HASH(LABEL_MAC1 || Spub_m'), msg up to mac1), keyed BLAKE2s-128."""
    key = hashlib.blake2s(LABEL_MAC1 + receiver_public).digest()
    return hashlib.blake2s(covered, key=key, digest_size=16).digest()


def mac2_by_hand(cookie: bytes, covered: bytes) -> bytes:
    """Whitepaper 5.4.4: MAC(cookie, msg up to mac2), keyed BLAKE2s-128."""
    return hashlib.blake2s(covered, key=cookie, digest_size=16).digest()


def frame_initiation(sender: int, noise_message: bytes, receiver_public: bytes) -> bytes:
    assert len(noise_message) == 32 + 48 + 28
    body = bytes([1, 0, 0, 0]) + index_bytes(sender) + noise_message
    return body + mac1_by_hand(receiver_public, body) + bytes(16)


def frame_response(
    sender: int, receiver: int, noise_message: bytes, receiver_public: bytes
) -> bytes:
    assert len(noise_message) == 32 + 16
    body = bytes([2, 0, 0, 0]) + index_bytes(sender) + index_bytes(receiver) + noise_message
    return body + mac1_by_hand(receiver_public, body) + bytes(16)


def frame_transport(receiver: int, counter: int, sealed: bytes) -> bytes:
    return bytes([4, 0, 0, 0]) + index_bytes(receiver) + counter.to_bytes(8, "little") + sealed


def padded(packet: bytes) -> bytes:
    return packet + bytes(-len(packet) % 16)


# ---------------------------------------------------------------- noiseprotocol, the oracle


def noise_party(
    *,
    initiator: bool,
    static: bytes,
    ephemeral: bytes,
    psk: bytes,
    remote_static: bytes | None = None,
) -> NoiseConnection:
    conn = NoiseConnection.from_name(CONSTRUCTION)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(IDENTIFIER)
    conn.set_psks(psk=psk)
    conn.set_keypair_from_private_bytes(NoiseKeypair.STATIC, static)
    conn.set_keypair_from_private_bytes(NoiseKeypair.EPHEMERAL, ephemeral)
    if remote_static is not None:
        conn.set_keypair_from_public_bytes(NoiseKeypair.REMOTE_STATIC, remote_static)
    conn.start_handshake()
    return conn


def noise_transport_keys(conn: NoiseConnection) -> tuple[bytes, bytes]:
    """(send, receive) keys of a finished noiseprotocol handshake."""
    proto = conn.noise_protocol
    return proto.cipher_state_encrypt.k, proto.cipher_state_decrypt.k


# ---------------------------------------------------------------- our device as initiator


@dataclass
class Initiated:
    device: Device
    peer: Peer
    endpoint: Endpoint
    initiation: bytes


def our_device(psk: bytes, rng: ScriptedRng, **kw: int) -> tuple[Device, Peer]:
    device = Device(OUR_STATIC, rng=rng, wall_offset=WALL - NOW, **kw)
    peer = device.add_peer(public(THEIR_STATIC))
    device.set_preshared_key(peer, psk)
    device.allow(peer, f"{THEIR_IP}/32")
    return device, peer


def our_device_initiates(psk: bytes) -> Initiated:
    rng = ScriptedRng({4: [index_bytes(OUR_INDEX)], 32: [OUR_EPHEMERAL]})
    device, peer = our_device(psk, rng)
    device.set_endpoint(peer, THEIR_ENDPOINT)
    out = device.from_tunnel([TO_THEM], NOW)
    assert len(out.datagrams) == 1
    endpoint, initiation = out.datagrams[0]
    return Initiated(device, peer, endpoint, initiation)


@dataclass
class Answered:
    responder: NoiseConnection
    payload: bytes
    response: bytes


def noiseprotocol_answers(initiation: bytes, psk: bytes) -> Answered:
    responder = noise_party(
        initiator=False, static=THEIR_STATIC, ephemeral=THEIR_EPHEMERAL, psk=psk
    )
    payload = bytes(responder.read_message(initiation[8:116]))
    message = bytes(responder.write_message(b""))
    response = frame_response(THEIR_INDEX, OUR_INDEX, message, public(OUR_STATIC))
    return Answered(responder, payload, response)


def full_exchange_from_our_side(psk: bytes) -> tuple[Initiated, Answered, Output]:
    ini = our_device_initiates(psk)
    ans = noiseprotocol_answers(ini.initiation, psk)
    out = ini.device.from_network([(THEIR_ENDPOINT, ans.response)], NOW + 0.05)
    return ini, ans, out


@pytest.mark.parametrize("psk", PSKS)
def test_our_initiation_carries_the_message_noiseprotocol_would_send(psk: bytes) -> None:
    oracle = noise_party(
        initiator=True,
        static=OUR_STATIC,
        ephemeral=OUR_EPHEMERAL,
        psk=psk,
        remote_static=public(THEIR_STATIC),
    )
    expected = bytes(oracle.write_message(OUR_TIMESTAMP))
    assert our_device_initiates(psk).initiation[8:116] == expected


def test_our_initiation_is_148_bytes_to_the_peer_with_type_and_sender_index() -> None:
    ini = our_device_initiates(bytes(32))
    assert ini.endpoint == THEIR_ENDPOINT
    assert len(ini.initiation) == 148
    assert ini.initiation[:4] == bytes([1, 0, 0, 0])
    assert struct.unpack_from("<I", ini.initiation, 4)[0] == OUR_INDEX


@pytest.mark.parametrize("psk", PSKS)
def test_noiseprotocol_reads_our_tai64n_timestamp_from_the_initiation(psk: bytes) -> None:
    ans = noiseprotocol_answers(our_device_initiates(psk).initiation, psk)
    assert ans.payload == OUR_TIMESTAMP


@pytest.mark.parametrize("psk", PSKS)
def test_our_device_accepts_noiseprotocols_response(psk: bytes) -> None:
    ini, _, _ = full_exchange_from_our_side(psk)
    assert ini.peer.current is not None
    assert ini.peer.current.remote_index == THEIR_INDEX


def test_our_device_drops_a_response_whose_mac1_is_wrong() -> None:
    ini = our_device_initiates(bytes(32))
    response = bytearray(noiseprotocol_answers(ini.initiation, bytes(32)).response)
    response[60] ^= 1
    ini.device.from_network([(THEIR_ENDPOINT, bytes(response))], NOW + 0.05)
    assert ini.peer.current is None


def test_our_device_does_not_accept_a_response_under_another_psk() -> None:
    psk = bytes(range(0x40, 0x60))
    ini = our_device_initiates(psk)
    response = noiseprotocol_answers(ini.initiation, bytes(32)).response
    ini.device.from_network([(THEIR_ENDPOINT, response)], NOW + 0.05)
    assert ini.peer.current is None


@pytest.mark.parametrize("psk", PSKS)
def test_our_first_transport_packet_opens_with_noiseprotocols_keys(psk: bytes) -> None:
    _, ans, out = full_exchange_from_our_side(psk)
    assert len(out.datagrams) == 1
    endpoint, transport = out.datagrams[0]
    assert endpoint == THEIR_ENDPOINT
    assert transport[:16] == frame_transport(THEIR_INDEX, 0, b"")
    assert ans.responder.decrypt(transport[16:]) == padded(TO_THEM)


@pytest.mark.parametrize("psk", PSKS)
def test_our_device_opens_transport_sealed_by_noiseprotocol(psk: bytes) -> None:
    ini, ans, _ = full_exchange_from_our_side(psk)
    transport = frame_transport(OUR_INDEX, 0, ans.responder.encrypt(TO_US))
    out = ini.device.from_network([(THEIR_ENDPOINT, transport)], NOW + 0.1)
    assert out.packets == [TO_US]


# ---------------------------------------------------------------- noiseprotocol as initiator


def noiseprotocol_initiates(psk: bytes) -> tuple[NoiseConnection, bytes]:
    initiator = noise_party(
        initiator=True,
        static=THEIR_STATIC,
        ephemeral=THEIR_EPHEMERAL,
        psk=psk,
        remote_static=public(OUR_STATIC),
    )
    message = bytes(initiator.write_message(THEIR_TIMESTAMP))
    return initiator, frame_initiation(THEIR_INDEX, message, public(OUR_STATIC))


@dataclass
class Responded:
    device: Device
    peer: Peer
    initiator: NoiseConnection
    out: Output


def our_device_responds(psk: bytes) -> Responded:
    initiator, initiation = noiseprotocol_initiates(psk)
    rng = ScriptedRng({4: [index_bytes(OUR_INDEX)], 32: [OUR_EPHEMERAL]})
    device, peer = our_device(psk, rng)
    out = device.from_network([(THEIR_ENDPOINT, initiation)], NOW)
    return Responded(device, peer, initiator, out)


def the_response(r: Responded) -> bytes:
    assert len(r.out.datagrams) == 1
    endpoint, response = r.out.datagrams[0]
    assert endpoint == THEIR_ENDPOINT
    return response


@pytest.mark.parametrize("psk", PSKS)
def test_our_response_carries_the_message_noiseprotocol_would_send(psk: bytes) -> None:
    # the same responder as ours (our static and ephemeral), played by noiseprotocol
    shadow = noise_party(initiator=False, static=OUR_STATIC, ephemeral=OUR_EPHEMERAL, psk=psk)
    shadow.read_message(noiseprotocol_initiates(psk)[1][8:116])
    expected = bytes(shadow.write_message(b""))
    assert the_response(our_device_responds(psk))[12:60] == expected


def test_our_response_is_92_bytes_with_type_and_both_indices() -> None:
    response = the_response(our_device_responds(bytes(32)))
    assert len(response) == 92
    assert response[:4] == bytes([2, 0, 0, 0])
    assert struct.unpack_from("<II", response, 4) == (OUR_INDEX, THEIR_INDEX)


@pytest.mark.parametrize("psk", PSKS)
def test_noiseprotocol_accepts_our_response(psk: bytes) -> None:
    r = our_device_responds(psk)
    assert r.initiator.read_message(the_response(r)[12:60]) == b""
    assert r.initiator.handshake_finished


def test_our_device_drops_an_initiation_whose_mac1_is_wrong() -> None:
    _, initiation = noiseprotocol_initiates(bytes(32))
    broken = initiation[:116] + bytes([initiation[116] ^ 1]) + initiation[117:]
    device, _ = our_device(bytes(32), ScriptedRng({}))
    assert not device.from_network([(THEIR_ENDPOINT, broken)], NOW).datagrams


@pytest.mark.parametrize("psk", PSKS)
def test_our_responder_opens_noiseprotocols_first_transport_packet(psk: bytes) -> None:
    r = our_device_responds(psk)
    r.initiator.read_message(the_response(r)[12:60])
    transport = frame_transport(OUR_INDEX, 0, r.initiator.encrypt(TO_US))
    out = r.device.from_network([(THEIR_ENDPOINT, transport)], NOW + 0.05)
    assert out.packets == [TO_US]
    assert r.peer.current is not None


@pytest.mark.parametrize("psk", PSKS)
def test_our_responder_seals_transport_noiseprotocol_opens(psk: bytes) -> None:
    r = our_device_responds(psk)
    r.initiator.read_message(the_response(r)[12:60])
    confirm = frame_transport(OUR_INDEX, 0, r.initiator.encrypt(TO_US))
    r.device.from_network([(THEIR_ENDPOINT, confirm)], NOW + 0.05)
    out = r.device.from_tunnel([TO_THEM], NOW + 0.1)
    assert len(out.datagrams) == 1
    transport = out.datagrams[0][1]
    assert transport[:16] == frame_transport(THEIR_INDEX, 0, b"")
    assert r.initiator.decrypt(transport[16:]) == padded(TO_THEM)


# ---------------------------------------------------------------- transport keys, compared


@pytest.mark.parametrize("psk", PSKS)
def test_initiator_handshake_keys_equal_noiseprotocols_split(psk: bytes) -> None:
    static = PrivateKey(OUR_STATIC)
    hs = Handshake(public(THEIR_STATIC))
    hs.static_static = static.exchange(public(THEIR_STATIC))
    hs.preshared_key = psk
    msg = hs.create_initiation(static, PrivateKey(OUR_EPHEMERAL), OUR_INDEX, OUR_TIMESTAMP)
    assert msg is not None
    ans = noiseprotocol_answers(bytes(msg), psk)
    keys = hs.consume_response(parse_response(ans.response), static)
    their_send, their_receive = noise_transport_keys(ans.responder)
    assert keys == (their_receive, their_send)


@pytest.mark.parametrize("psk", PSKS)
def test_responder_handshake_keys_equal_noiseprotocols_split(psk: bytes) -> None:
    initiator, initiation = noiseprotocol_initiates(psk)
    static = PrivateKey(OUR_STATIC)
    msg = parse_initiation(initiation)
    opened = open_initiation(msg, static, hash_of_own_key(static))
    assert opened is not None
    sym, remote = opened
    assert remote == public(THEIR_STATIC)
    hs = Handshake(remote)
    hs.static_static = static.exchange(remote)
    hs.preshared_key = psk
    assert hs.accept_initiation(sym, msg, NOW) is None
    made = hs.create_response(PrivateKey(OUR_EPHEMERAL), OUR_INDEX)
    assert made is not None
    response, send_key, receive_key = made
    initiator.read_message(bytes(response)[12:60])
    their_send, their_receive = noise_transport_keys(initiator)
    assert (send_key, receive_key) == (their_receive, their_send)


def hash_of_own_key(static: PrivateKey) -> bytes:
    """Hi after mixing the responder's own public key (whitepaper 5.4.2, third line)."""
    return hashlib.blake2s(REFERENCE_INITIAL_HASH + static.public).digest()


# ---------------------------------------------------------------- (b) MAC1, MAC2, cookies


def test_our_initiation_mac1_is_keyed_by_the_responders_public_key() -> None:
    initiation = our_device_initiates(bytes(32)).initiation
    assert initiation[116:132] == mac1_by_hand(public(THEIR_STATIC), initiation[:116])


def test_our_initiation_mac2_is_zero_without_a_cookie() -> None:
    assert our_device_initiates(bytes(32)).initiation[132:148] == bytes(16)


def test_our_response_mac1_is_keyed_by_the_initiators_public_key() -> None:
    response = the_response(our_device_responds(bytes(32)))
    assert response[60:76] == mac1_by_hand(public(THEIR_STATIC), response[:60])


def test_our_response_mac2_is_zero_without_a_cookie() -> None:
    assert the_response(our_device_responds(bytes(32)))[76:92] == bytes(16)


@dataclass
class UnderLoad:
    device: Device
    initiation: bytes
    out: Output


def initiation_to_a_device_under_load() -> UnderLoad:
    _, initiation = noiseprotocol_initiates(bytes(32))
    rng = ScriptedRng(
        {
            32: [COOKIE_SECRET, OUR_EPHEMERAL],
            24: [COOKIE_NONCE],
            4: [index_bytes(OUR_INDEX)],
        }
    )
    # under load from the first handshake message on
    device, _ = our_device(bytes(32), rng, under_load_handshakes=1)
    out = device.from_network([(THEIR_ENDPOINT, initiation)], NOW)
    return UnderLoad(device, initiation, out)


def cookie_of(endpoint: Endpoint) -> bytes:
    """Whitepaper 5.4.7: MAC(Rm, Am), Am the source address and UDP port (network order,
    as the kernel writes them)."""
    address = ipaddress.ip_address(endpoint[0]).packed + endpoint[1].to_bytes(2, "big")
    return hashlib.blake2s(address, key=COOKIE_SECRET, digest_size=16).digest()


def test_under_load_an_initiation_without_mac2_gets_a_cookie_reply_only() -> None:
    u = initiation_to_a_device_under_load()
    assert len(u.out.datagrams) == 1
    endpoint, reply = u.out.datagrams[0]
    assert endpoint == THEIR_ENDPOINT
    assert len(reply) == 64
    assert reply[:4] == bytes([3, 0, 0, 0])
    assert struct.unpack_from("<I", reply, 4)[0] == THEIR_INDEX
    assert reply[8:32] == COOKIE_NONCE


def test_cookie_reply_opens_by_hand_to_the_mac_of_the_source_address() -> None:
    u = initiation_to_a_device_under_load()
    reply = u.out.datagrams[0][1]
    key = hashlib.blake2s(LABEL_COOKIE + public(OUR_STATIC)).digest()
    cookie = xaead_open_by_hand(key, reply[8:32], reply[32:64], u.initiation[116:132])
    assert cookie == cookie_of(THEIR_ENDPOINT)


def test_under_load_an_initiation_with_a_hand_computed_mac2_is_answered() -> None:
    u = initiation_to_a_device_under_load()
    body = u.initiation[:132]
    retry = body + mac2_by_hand(cookie_of(THEIR_ENDPOINT), body)
    out = u.device.from_network([(THEIR_ENDPOINT, retry)], NOW + 0.01)
    assert [len(d) for _, d in out.datagrams] == [92]


def test_under_load_an_initiation_with_a_wrong_mac2_gets_another_cookie_reply() -> None:
    u = initiation_to_a_device_under_load()
    body = u.initiation[:132]
    retry = body + mac2_by_hand(fixed("not the cookie")[:16], body)
    out = u.device.from_network([(THEIR_ENDPOINT, retry)], NOW + 0.01)
    assert [len(d) for _, d in out.datagrams] == [64]


def stamped_by_generator_after_cookie_round_trip() -> tuple[CookieChecker, bytes, bytes]:
    """Our generator (sender side) and checker (receiver side) through one cookie reply."""
    source = ipaddress.ip_address(THEIR_ENDPOINT[0]).packed + THEIR_ENDPOINT[1].to_bytes(2, "big")
    checker = CookieChecker(public(OUR_STATIC), ScriptedRng({32: [COOKIE_SECRET]}))
    generator = CookieGenerator(public(OUR_STATIC))
    msg = bytearray(noiseprotocol_initiates(bytes(32))[1])
    generator.stamp(msg, 116, NOW)
    reply = checker.create_reply(bytes(msg), 116, THEIR_INDEX, source, NOW)
    assert generator.consume_reply(parse_cookie_reply(reply), NOW)
    generator.stamp(msg, 116, NOW + 1)
    return checker, bytes(msg), source


def test_cookie_generator_stamps_the_mac2_the_whitepaper_defines_after_a_reply() -> None:
    _, msg, _ = stamped_by_generator_after_cookie_round_trip()
    assert msg[132:148] == mac2_by_hand(cookie_of(THEIR_ENDPOINT), msg[:132])


def test_cookie_checker_accepts_the_mac2_its_reply_taught_the_generator() -> None:
    checker, msg, source = stamped_by_generator_after_cookie_round_trip()
    assert checker.check_mac2(msg, 116, source, NOW + 1)


# ---------------------------------------------------------------- (c) the whitepaper by hand


def HASH(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def KDF(n: int, key: bytes, data: bytes) -> list[bytes]:
    """Whitepaper 5.4: tau0 = HMAC(key, input), tau_i = HMAC(tau0, tau_(i-1) || i)."""
    t0 = hmac_by_hand(key, data)
    out: list[bytes] = []
    t = b""
    for i in range(1, n + 1):
        t = hmac_by_hand(t0, t + bytes([i]))
        out.append(t)
    return out


def AEAD(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(bytes(4) + counter.to_bytes(8, "little"), plaintext, ad)


def DH(private: bytes, public_key: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public_key)
    )


@dataclass
class Derivation:
    initiation_ck: bytes
    initiation_h: bytes
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    response_ck: bytes
    response_h: bytes
    response_ephemeral: bytes
    encrypted_nothing: bytes
    initiator_send: bytes
    initiator_receive: bytes


def whitepaper(psk: bytes) -> Derivation:
    """Sections 5.4.2, 5.4.3 and 5.4.5, line by line; we (OUR_*) initiate."""
    s_pub_i, s_pub_r = public(OUR_STATIC), public(THEIR_STATIC)
    # 5.4.2 initiator to responder
    c = HASH(CONSTRUCTION)
    h = HASH(c, IDENTIFIER)
    h = HASH(h, s_pub_r)
    e_pub_i = public(OUR_EPHEMERAL)
    c = KDF(1, c, e_pub_i)[0]
    h = HASH(h, e_pub_i)
    c, k = KDF(2, c, DH(OUR_EPHEMERAL, s_pub_r))
    encrypted_static = AEAD(k, 0, s_pub_i, h)
    h = HASH(h, encrypted_static)
    c, k = KDF(2, c, DH(OUR_STATIC, s_pub_r))
    encrypted_timestamp = AEAD(k, 0, OUR_TIMESTAMP, h)
    h = HASH(h, encrypted_timestamp)
    initiation_ck, initiation_h = c, h
    # 5.4.3 responder to initiator
    e_pub_r = public(THEIR_EPHEMERAL)
    c = KDF(1, c, e_pub_r)[0]
    h = HASH(h, e_pub_r)
    c = KDF(1, c, DH(THEIR_EPHEMERAL, e_pub_i))[0]
    c = KDF(1, c, DH(THEIR_EPHEMERAL, s_pub_i))[0]
    c, tau, k = KDF(3, c, psk)
    h = HASH(h, tau)
    encrypted_nothing = AEAD(k, 0, b"", h)
    h = HASH(h, encrypted_nothing)
    # 5.4.5 transport keys: (T_i^send = T_r^recv, T_i^recv = T_r^send) = KDF2(C, empty)
    send, receive = KDF(2, c, b"")
    return Derivation(
        initiation_ck,
        initiation_h,
        e_pub_i,
        encrypted_static,
        encrypted_timestamp,
        c,
        h,
        e_pub_r,
        encrypted_nothing,
        send,
        receive,
    )


def our_initiator_state() -> tuple[noise.SymmetricState, tuple[bytes, bytes, bytes]]:
    static = PrivateKey(OUR_STATIC)
    sym = noise.SymmetricState.initialize(public(THEIR_STATIC))
    parts = noise.write_initiation(
        sym,
        static,
        PrivateKey(OUR_EPHEMERAL),
        public(THEIR_STATIC),
        static.exchange(public(THEIR_STATIC)),
        OUR_TIMESTAMP,
    )
    return sym, parts


def our_responder_state() -> noise.SymmetricState:
    static = PrivateKey(THEIR_STATIC)
    _, (e, s, ts) = our_initiator_state()
    sym = noise.SymmetricState.initialize(static.public)
    remote = noise.read_initiation_static(sym, static, e, s)
    noise.read_initiation_payload(sym, static.exchange(remote), ts)
    return sym


def test_hand_derivation_agrees_with_noiseprotocol() -> None:
    """The oracle's own check: the whitepaper by hand and noiseprotocol agree."""
    psk = bytes(range(0x40, 0x60))
    d = whitepaper(psk)
    initiator = noise_party(
        initiator=True,
        static=OUR_STATIC,
        ephemeral=OUR_EPHEMERAL,
        psk=psk,
        remote_static=public(THEIR_STATIC),
    )
    responder = noise_party(
        initiator=False, static=THEIR_STATIC, ephemeral=THEIR_EPHEMERAL, psk=psk
    )
    message1 = bytes(initiator.write_message(OUR_TIMESTAMP))
    responder.read_message(message1)
    message2 = bytes(responder.write_message(b""))
    initiator.read_message(message2)
    assert message1 == d.ephemeral + d.encrypted_static + d.encrypted_timestamp
    assert message2 == d.response_ephemeral + d.encrypted_nothing
    assert initiator.get_handshake_hash() == d.response_h
    assert noise_transport_keys(initiator) == (d.initiator_send, d.initiator_receive)


def test_initial_chain_key_is_hash_of_the_construction() -> None:
    assert HASH(CONSTRUCTION) == REFERENCE_INITIAL_CHAIN_KEY
    assert noise.INITIAL_CHAIN_KEY == REFERENCE_INITIAL_CHAIN_KEY


def test_initial_hash_is_hash_of_chain_key_and_identifier() -> None:
    assert HASH(REFERENCE_INITIAL_CHAIN_KEY, IDENTIFIER) == REFERENCE_INITIAL_HASH
    assert noise.INITIAL_HASH == REFERENCE_INITIAL_HASH


def test_our_initiation_message_follows_the_whitepaper() -> None:
    d = whitepaper(bytes(32))
    _, parts = our_initiator_state()
    assert parts == (d.ephemeral, d.encrypted_static, d.encrypted_timestamp)


def test_our_initiator_chain_key_and_hash_after_message_1_follow_the_whitepaper() -> None:
    d = whitepaper(bytes(32))
    sym, _ = our_initiator_state()
    assert (sym.ck, sym.h) == (d.initiation_ck, d.initiation_h)


def test_our_responder_chain_key_and_hash_after_reading_message_1_follow_the_whitepaper() -> None:
    d = whitepaper(bytes(32))
    sym = our_responder_state()
    assert (sym.ck, sym.h) == (d.initiation_ck, d.initiation_h)


@pytest.mark.parametrize("psk", PSKS)
def test_our_response_message_and_state_follow_the_whitepaper(psk: bytes) -> None:
    d = whitepaper(psk)
    sym = our_responder_state()
    parts = noise.write_response(
        sym,
        PrivateKey(THEIR_EPHEMERAL),
        d.ephemeral,
        public(OUR_STATIC),
        psk,
        b"",
    )
    assert parts == (d.response_ephemeral, d.encrypted_nothing)
    assert (sym.ck, sym.h) == (d.response_ck, d.response_h)


@pytest.mark.parametrize("psk", PSKS)
def test_our_initiator_state_after_reading_message_2_follows_the_whitepaper(psk: bytes) -> None:
    d = whitepaper(psk)
    sym, _ = our_initiator_state()
    payload = noise.read_response(
        sym,
        PrivateKey(OUR_STATIC),
        PrivateKey(OUR_EPHEMERAL),
        d.response_ephemeral,
        psk,
        d.encrypted_nothing,
    )
    assert payload == b""
    assert (sym.ck, sym.h) == (d.response_ck, d.response_h)


@pytest.mark.parametrize("psk", PSKS)
def test_our_split_gives_the_whitepapers_transport_keys(psk: bytes) -> None:
    d = whitepaper(psk)
    sym = noise.SymmetricState(d.response_ck, d.response_h)
    assert sym.split() == (d.initiator_send, d.initiator_receive)
