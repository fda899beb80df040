"""Every protocol constant in one place (whitepaper section 6 and the reference code)."""

from __future__ import annotations

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.334  # up to a third of a second, as the reference
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
# An initiator stops using a cookie a little before the responder stops accepting it.
COOKIE_LATENCY = 5.0
HANDSHAKE_INITIATION_RATE = 1.0 / 50  # at most 50 initiations a second from one peer
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
ZERO_KEYS_AFTER = 3 * REJECT_AFTER_TIME

MAX_STAGED_PACKETS = 128
UNDER_LOAD_AFTER_TIME = 1.0
# The reference is under load while 1/8 of its 1024-deep handshake queue is full; with no
# queue here, that becomes this many handshake messages within one second.
UNDER_LOAD_HANDSHAKES = 1024 // 8
# not under load, handshake messages past this many in one batch of received datagrams are
# dropped unread, as the reference drops them when its handshake queue is full (past this
# many, the batch puts the device under load anyway)
HANDSHAKES_PER_BATCH = 16
# under load (see underload.py), per batch: at most this many MAC2-valid messages get
# Diffie-Hellman, at most this many cookie replies go out, and at most this many messages
# of one source are read
UNDER_LOAD_HANDSHAKES_PER_BATCH = 8
COOKIE_REPLIES_PER_BATCH = 8
READ_PER_SOURCE = 4
PADDING_MULTIPLE = 16
DEFAULT_MTU = 1420
