"""MAC1, MAC2 and cookie replies: the DoS defence of section 5.4.7 of the whitepaper.

`CookieChecker` is the responder's side (one per device, keyed on our own public key):
it verifies MAC1 on every handshake message, and under load MAC2, answering with a cookie
reply instead of doing Diffie-Hellman. `CookieGenerator` is the sender's side (one per
peer, keyed on that peer's public key): it stamps MACs on our handshake messages and
keeps the last cookie the peer gave us.
"""

from __future__ import annotations

import hmac as _hmac
from collections.abc import Callable

from wiresnake.crypto import CryptoError, hash, mac, xaead_decrypt, xaead_encrypt
from wiresnake.protocol.constants import (
    COOKIE_LATENCY,
    COOKIE_REFRESH_TIME,
    LABEL_COOKIE,
    LABEL_MAC1,
)
from wiresnake.protocol.messages import CookieReply

__all__ = ["CookieChecker", "CookieGenerator", "mac2_matches"]

_ZERO16 = bytes(16)


def mac2_matches(cookie: bytes, msg: bytes, mac1_offset: int) -> bool:
    """Whether `msg` carries the MAC2 that `cookie` makes."""
    mac2_offset = mac1_offset + 16
    expected = mac(cookie, msg[:mac2_offset])
    return _hmac.compare_digest(expected, msg[mac2_offset : mac2_offset + 16])


class CookieChecker:
    __slots__ = ("_cookie_key", "_mac1_key", "_rng", "_secret", "_secret_born")

    def __init__(self, public_key: bytes, rng: Callable[[int], bytes]) -> None:
        self._mac1_key = hash(LABEL_MAC1, public_key)
        self._cookie_key = hash(LABEL_COOKIE, public_key)
        self._rng = rng
        self._secret = b""
        self._secret_born = float("-inf")

    def check_mac1(self, msg: bytes, mac1_offset: int) -> bool:
        expected = mac(self._mac1_key, msg[:mac1_offset])
        return _hmac.compare_digest(expected, msg[mac1_offset : mac1_offset + 16])

    def _cookie(self, source: bytes) -> bytes:
        return mac(self._secret, source)

    def check_mac2(self, msg: bytes, mac1_offset: int, source: bytes, now: float) -> bool:
        """`source` is the sender's address bytes and port, as the cookie binds them."""
        cookie = self.cookie_for(source, now)
        return cookie is not None and mac2_matches(cookie, msg, mac1_offset)

    def cookie_for(self, source: bytes, now: float) -> bytes | None:
        """The cookie `source` holds if we sent it one, or None if none of ours is valid now."""
        if now - self._secret_born > COOKIE_REFRESH_TIME:
            return None
        return self._cookie(source)

    @property
    def secret_born(self) -> float:
        """When the secret that cookies are made from was drawn: a new one voids them all."""
        return self._secret_born

    def create_reply(
        self, msg: bytes, mac1_offset: int, sender_index: int, source: bytes, now: float
    ) -> bytes:
        if now - self._secret_born > COOKIE_REFRESH_TIME:
            self._secret = self._rng(32)
            self._secret_born = now
        nonce = self._rng(24)
        mac1 = msg[mac1_offset : mac1_offset + 16]
        sealed = xaead_encrypt(self._cookie_key, nonce, self._cookie(source), mac1)
        return CookieReply(sender_index, nonce, sealed).pack()


class CookieGenerator:
    __slots__ = ("_cookie", "_cookie_born", "_cookie_key", "_last_mac1", "_mac1_key")

    def __init__(self, peer_public_key: bytes) -> None:
        self._mac1_key = hash(LABEL_MAC1, peer_public_key)
        self._cookie_key = hash(LABEL_COOKIE, peer_public_key)
        self._cookie: bytes | None = None
        self._cookie_born = float("-inf")
        self._last_mac1: bytes | None = None

    def stamp(self, msg: bytearray, mac1_offset: int, now: float) -> None:
        """Write MAC1, and MAC2 while we hold a fresh cookie, into `msg` in place."""
        mac1 = mac(self._mac1_key, bytes(msg[:mac1_offset]))
        msg[mac1_offset : mac1_offset + 16] = mac1
        self._last_mac1 = mac1
        mac2_offset = mac1_offset + 16
        if (
            self._cookie is not None
            and now - self._cookie_born < COOKIE_REFRESH_TIME - COOKIE_LATENCY
        ):
            msg[mac2_offset : mac2_offset + 16] = mac(self._cookie, bytes(msg[:mac2_offset]))
        else:
            msg[mac2_offset : mac2_offset + 16] = _ZERO16

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Accept a cookie reply only if it answers the last message we stamped."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = xaead_decrypt(self._cookie_key, reply.nonce, reply.cookie, self._last_mac1)
        except CryptoError:
            return False
        self._cookie = cookie
        self._cookie_born = now
        self._last_mac1 = None
        return True
