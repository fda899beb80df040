"""The Internet checksum against RFC 1071's worked example and a word-by-word model."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from wiresnake.netstack.checksum import checksum, ones_sum, pseudo_header


def naive_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 as written: add 16-bit big-endian words, carries wrapped around."""
    if len(data) % 2:
        data += b"\0"
    total = initial
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_rfc_1071_worked_example() -> None:
    # section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2, whose complement is 220d
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert checksum(data) == 0x220D


def test_a_real_ipv4_header_sums_to_its_checksum() -> None:
    # the example header of Wikipedia's "IPv4 header checksum", checksum field zeroed
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert checksum(header) == 0xB861
    filled = header[:10] + b"\xb8\x61" + header[12:]
    assert checksum(filled) == 0


def test_odd_lengths_are_padded_with_a_zero_byte() -> None:
    assert ones_sum(b"\x12") == 0x1200
    assert checksum(b"\x12\x34\x56") == checksum(b"\x12\x34\x56\x00")


def test_the_two_zeros_of_ones_complement() -> None:
    # an all-zero message sums to +0; anything else that cancels out sums to -0 (ffff)
    assert ones_sum(b"") == 0 and checksum(b"") == 0xFFFF
    assert ones_sum(bytes(10)) == 0 and checksum(bytes(10)) == 0xFFFF
    assert ones_sum(b"\xff\xff") == 0xFFFF and checksum(b"\xff\xff") == 0
    assert ones_sum(b"\x12\x34\xed\xcb") == 0xFFFF


def test_a_message_carrying_its_checksum_verifies_to_zero() -> None:
    body = b"some payload of odd size"
    c = checksum(b"\0\0" + body)
    assert checksum(c.to_bytes(2, "big") + body) == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_matches_the_word_by_word_model(data: bytes, initial: int) -> None:
    expected = naive_sum(data, initial)
    assert ones_sum(data, initial) == expected
    assert checksum(data, initial) == (~expected & 0xFFFF)
    assert checksum(memoryview(data), initial) == checksum(bytearray(data), initial)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4), st.binary())
def test_ipv4_pseudo_header_matches_the_bytes_of_rfc_768(
    src: bytes, dst: bytes, data: bytes
) -> None:
    pseudo = src + dst + struct.pack("!BBH", 0, 17, len(data))
    assert checksum(data, pseudo_header(src, dst, 17, len(data))) == checksum(pseudo + data)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
    st.sampled_from([6, 17, 58]),
    st.binary(max_size=2000),
)
def test_ipv6_pseudo_header_matches_the_bytes_of_rfc_8200(
    src: bytes, dst: bytes, nh: int, data: bytes
) -> None:
    pseudo = src + dst + struct.pack("!I3xB", len(data), nh)
    assert checksum(data, pseudo_header(src, dst, nh, len(data))) == checksum(pseudo + data)
    assert naive_sum(pseudo) == pseudo_header(src, dst, nh, len(data))


def test_a_pseudo_header_with_a_long_length_folds_like_its_32_bit_field() -> None:
    src, dst = bytes(16), bytes(15) + b"\x01"
    pseudo = src + dst + struct.pack("!I3xB", 0x12345, 17)
    assert pseudo_header(src, dst, 17, 0x12345) == naive_sum(pseudo)
