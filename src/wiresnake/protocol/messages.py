"""Wire formats of the four WireGuard messages, parsed strictly.

Every field is little-endian. The type is one byte followed by three reserved zero bytes,
so the first 32-bit word must equal the type exactly: a non-zero reserved byte is a
different word and is refused like an unknown type.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "COOKIE_REPLY",
    "COOKIE_REPLY_SIZE",
    "INITIATION",
    "INITIATION_MAC1_OFFSET",
    "INITIATION_SIZE",
    "KEEPALIVE_SIZE",
    "RESPONSE",
    "RESPONSE_MAC1_OFFSET",
    "RESPONSE_SIZE",
    "TRANSPORT_HEADER",
    "TRANSPORT_HEADER_SIZE",
    "TYPE_COOKIE_REPLY",
    "TYPE_INITIATION",
    "TYPE_RESPONSE",
    "TYPE_TRANSPORT",
    "CookieReply",
    "Initiation",
    "MessageError",
    "Response",
    "parse_cookie_reply",
    "parse_initiation",
    "parse_response",
]

TYPE_INITIATION = 1
TYPE_RESPONSE = 2
TYPE_COOKIE_REPLY = 3
TYPE_TRANSPORT = 4

INITIATION = struct.Struct("<II32s48s28s16s16s")
RESPONSE = struct.Struct("<III32s16s16s16s")
COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")

INITIATION_SIZE = INITIATION.size  # 148
RESPONSE_SIZE = RESPONSE.size  # 92
COOKIE_REPLY_SIZE = COOKIE_REPLY.size  # 64
TRANSPORT_HEADER_SIZE = TRANSPORT_HEADER.size  # 16
KEEPALIVE_SIZE = TRANSPORT_HEADER_SIZE + 16
# MAC1 covers the message up to itself; MAC2 covers it up to MAC2 (MAC1 included).
INITIATION_MAC1_OFFSET = INITIATION_SIZE - 32
RESPONSE_MAC1_OFFSET = RESPONSE_SIZE - 32


class MessageError(ValueError):
    """A datagram is not a well-formed message of the expected type."""


class Initiation(NamedTuple):
    sender: int
    ephemeral: bytes
    static: bytes
    timestamp: bytes
    mac1: bytes
    mac2: bytes

    def pack(self) -> bytes:
        return INITIATION.pack(TYPE_INITIATION, *self)


class Response(NamedTuple):
    sender: int
    receiver: int
    ephemeral: bytes
    empty: bytes
    mac1: bytes
    mac2: bytes

    def pack(self) -> bytes:
        return RESPONSE.pack(TYPE_RESPONSE, *self)


class CookieReply(NamedTuple):
    receiver: int
    nonce: bytes
    cookie: bytes

    def pack(self) -> bytes:
        return COOKIE_REPLY.pack(TYPE_COOKIE_REPLY, *self)


def _check(data: bytes, size: int, kind: int, name: str) -> None:
    if len(data) != size:
        raise MessageError(f"{name} must be {size} bytes, got {len(data)}")
    if int.from_bytes(data[:4], "little") != kind:
        raise MessageError(f"not a {name} (type or reserved bytes wrong)")


def parse_initiation(data: bytes) -> Initiation:
    _check(data, INITIATION_SIZE, TYPE_INITIATION, "handshake initiation")
    return Initiation(*INITIATION.unpack(data)[1:])


def parse_response(data: bytes) -> Response:
    _check(data, RESPONSE_SIZE, TYPE_RESPONSE, "handshake response")
    return Response(*RESPONSE.unpack(data)[1:])


def parse_cookie_reply(data: bytes) -> CookieReply:
    _check(data, COOKIE_REPLY_SIZE, TYPE_COOKIE_REPLY, "cookie reply")
    return CookieReply(*COOKIE_REPLY.unpack(data)[1:])
