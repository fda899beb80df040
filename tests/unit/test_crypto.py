"""Known answers for `wiresnake.crypto`, taken from the documents that define each primitive.

Sources, each vector transcribed from its text:
- RFC 7748 section 5.2 (X25519 single and iterated) and 6.1 (Alice and Bob).
- RFC 8439 section 2.1.1 (quarter round), 2.8.2 and Appendix A.5 (ChaCha20-Poly1305 AEAD).
- RFC 7693 Appendix B ("abc") and Appendix E (the self-test's grand hash of unkeyed and
  keyed BLAKE2s digests of 16, 20, 28 and 32 bytes).
- wireguard-go device/kdf_test.go (HMAC-BLAKE2s KDF1/KDF2/KDF3).
- draft-irtf-cfrg-xchacha-03 section 2.2.1 (HChaCha20) and Appendix A.3.1
  (AEAD_XChaCha20_Poly1305).
- TAI64N as the kernel's and wireguard-go's tai64n (base 2^62 + 10, big-endian, the low 24
  bits of the nanoseconds masked) and wireguard-go's tai64n_test.go monotonicity table.
- Key strings as wireguard-tools' encoding.c accepts them (exactly 44 canonical base64
  characters, exactly 64 hex digits).
"""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest

from wiresnake.crypto import (
    NONCE,
    ChaCha20Poly1305,
    CryptoError,
    KeyFormatError,
    PrivateKey,
    aead_decrypt,
    aead_encrypt,
    dh,
    generate_private_key,
    hash,
    hchacha20,
    hmac,
    kdf1,
    kdf2,
    kdf3,
    key_from_base64,
    key_from_hex,
    key_to_base64,
    key_to_hex,
    mac,
    public_key,
    tai64n,
    xaead_decrypt,
    xaead_encrypt,
)

h = bytes.fromhex

# ---------------------------------------------------------------- ChaCha by hand (RFC 8439 2.1)

_M32 = 0xFFFFFFFF
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
_COLUMNS = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
_DIAGONALS = ((0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))


def _rotl(v: int, n: int) -> int:
    return ((v << n) & _M32) | (v >> (32 - n))


def quarter_round(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & _M32
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & _M32
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & _M32
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & _M32
    s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20_by_hand(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 as draft-irtf-cfrg-xchacha section 2.2 defines it, in plain Python:
    constants, key, 16-byte nonce; 20 rounds; no final addition; words 0..3 and 12..15."""
    s = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce16)]
    for _ in range(10):
        for q in _COLUMNS:
            quarter_round(s, *q)
        for q in _DIAGONALS:
            quarter_round(s, *q)
    return struct.pack("<8I", *s[0:4], *s[12:16])


def xaead_seal_by_hand(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD_XChaCha20_Poly1305 (draft section 2.3): subkey from HChaCha20 over the first 16
    nonce bytes, then RFC 8439's AEAD with 4 zero bytes and the last 8 nonce bytes."""
    subkey = hchacha20_by_hand(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(bytes(4) + nonce24[16:], plaintext, ad)


def xaead_open_by_hand(key: bytes, nonce24: bytes, sealed: bytes, ad: bytes) -> bytes:
    subkey = hchacha20_by_hand(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).decrypt(bytes(4) + nonce24[16:], sealed, ad)


# ---------------------------------------------------------------- X25519 (RFC 7748)

RFC7748_5_2 = [
    pytest.param(
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        id="vector-1",
    ),
    pytest.param(
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        # the top bit of this u-coordinate is set; section 5 says to mask it
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        id="vector-2-high-bit-set",
    ),
]

ALICE_PRIVATE = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
ALICE_BOB_SHARED = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

_P = 2**255 - 19
# u-coordinates of points of small order (and non-canonical encodings of them): X25519 of any
# clamped scalar with these is all zeros, which WireGuard must refuse.
LOW_ORDER_POINTS = [
    pytest.param(bytes(32), id="0-order-4"),
    pytest.param((1).to_bytes(32, "little"), id="1-order-1"),
    pytest.param(
        h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), id="order-8-a"
    ),
    pytest.param(
        h("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"), id="order-8-b"
    ),
    pytest.param((_P - 1).to_bytes(32, "little"), id="p-1-order-2"),
    pytest.param(_P.to_bytes(32, "little"), id="p-noncanonical-0"),
    pytest.param((_P + 1).to_bytes(32, "little"), id="p+1-noncanonical-1"),
]


@pytest.mark.parametrize(("scalar", "u", "expected"), RFC7748_5_2)
def test_x25519_matches_rfc7748_section_5_2(scalar: str, u: str, expected: str) -> None:
    assert PrivateKey(h(scalar)).exchange(h(u)) == h(expected)


@pytest.mark.parametrize(
    ("iterations", "expected"),
    [
        (1, "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"),
        (1000, "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"),
    ],
)
def test_x25519_iterated_matches_rfc7748_section_5_2(iterations: int, expected: str) -> None:
    k = u = (9).to_bytes(32, "little")
    for _ in range(iterations):
        k, u = dh(PrivateKey(k), u), k
    assert k == h(expected)


def test_public_keys_match_rfc7748_section_6_1() -> None:
    assert (public_key(ALICE_PRIVATE), public_key(BOB_PRIVATE)) == (ALICE_PUBLIC, BOB_PUBLIC)


def test_shared_secret_matches_rfc7748_section_6_1_from_both_sides() -> None:
    alice, bob = PrivateKey(ALICE_PRIVATE), PrivateKey(BOB_PRIVATE)
    assert dh(alice, BOB_PUBLIC) == dh(bob, ALICE_PUBLIC) == ALICE_BOB_SHARED


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_private_key_refuses_a_low_order_peer_public_key(point: bytes) -> None:
    with pytest.raises(CryptoError):
        PrivateKey(ALICE_PRIVATE).exchange(point)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_private_key_of_the_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(KeyFormatError):
        PrivateKey(bytes(length))


def test_generated_private_key_is_clamped_like_wg_genkey() -> None:
    for _ in range(16):
        k = generate_private_key()
        assert len(k) == 32
        assert k[0] & 7 == 0
        assert k[31] & 0x80 == 0
        assert k[31] & 0x40 == 0x40


# ---------------------------------------------------------------- ChaCha20-Poly1305 (RFC 8439)

SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
AEAD_2_8_2_KEY = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
AEAD_2_8_2_NONCE = h("070000004041424344454647")
AEAD_2_8_2_AAD = h("50515253c0c1c2c3c4c5c6c7")
AEAD_2_8_2_SEALED = h(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
    "1ae10b594f09e26a7e902ecbd0600691"  # tag
)

A5_KEY = h("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0")
# nonce 00000000 0102030405060708: four zero bytes, then a 64-bit little-endian counter,
# exactly WireGuard's transport nonce
A5_COUNTER = int.from_bytes(h("0102030405060708"), "little")
A5_AAD = h("f33388860000000000004e91")
A5_SEALED = h(
    "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2"
    "4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf"
    "332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855"
    "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4"
    "b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e"
    "af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a"
    "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10"
    "49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29"
    "a6ad5cb4022b02709b"
    "eead9d67890cbb22392336fea1851f38"  # tag
)
A5_PLAINTEXT = (
    b"Internet-Drafts are draft documents valid for a maximum of six months and may be "
    b"updated, replaced, or obsoleted by other documents at any time. It is inappropriate "
    b"to use Internet-Drafts as reference material or to cite them other than as /"
    + "\u201cwork in progress.".encode()
    + b"/"
    + "\u201d".encode()
)


def test_quarter_round_helper_matches_rfc8439_section_2_1_1() -> None:
    s = [0x11111111, 0x01020304, 0x9B8D6F43, 0x01234567]
    quarter_round(s, 0, 1, 2, 3)
    assert s == [0xEA2A92F4, 0xCB1CF8CE, 0x4581472E, 0x5881C4BB]


def test_chacha20_poly1305_matches_rfc8439_section_2_8_2() -> None:
    sealed = ChaCha20Poly1305(AEAD_2_8_2_KEY).encrypt(AEAD_2_8_2_NONCE, SUNSCREEN, AEAD_2_8_2_AAD)
    assert sealed == AEAD_2_8_2_SEALED


def test_transport_nonce_is_four_zero_bytes_and_a_little_endian_counter() -> None:
    assert NONCE.pack(A5_COUNTER) == h("000000000102030405060708")


def test_aead_decrypt_opens_rfc8439_appendix_a5() -> None:
    assert aead_decrypt(A5_KEY, A5_COUNTER, A5_SEALED, A5_AAD) == A5_PLAINTEXT


def test_aead_encrypt_reproduces_rfc8439_appendix_a5() -> None:
    assert aead_encrypt(A5_KEY, A5_COUNTER, A5_PLAINTEXT, A5_AAD) == A5_SEALED


def test_aead_decrypt_refuses_a_flipped_tag_bit_with_crypto_error() -> None:
    tampered = A5_SEALED[:-1] + bytes([A5_SEALED[-1] ^ 1])
    with pytest.raises(CryptoError):
        aead_decrypt(A5_KEY, A5_COUNTER, tampered, A5_AAD)


def test_aead_decrypt_refuses_another_counter_with_crypto_error() -> None:
    with pytest.raises(CryptoError):
        aead_decrypt(A5_KEY, A5_COUNTER + 1, A5_SEALED, A5_AAD)


# ---------------------------------------------------------------- BLAKE2s (RFC 7693)

RFC7693_ABC = h("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")
RFC7693_SELFTEST_GRAND_HASH = h("6a411f08ce25adcdfb02aba641451cec53c598b24f4fc787fbdc88797f4c1dfe")


def selftest_seq(length: int, seed: int) -> bytes:
    """RFC 7693 Appendix E: the deterministic Fibonacci byte sequence."""
    a = (0xDEAD4BAD * seed) & _M32
    b = 1
    out = bytearray()
    for _ in range(length):
        t = (a + b) & _M32
        a, b = b, t
        out.append(t >> 24)
    return bytes(out)


def _blake2s(outlen: int, key: bytes, data: bytes) -> bytes:
    """Our functions where they cover the case (HASH: unkeyed 32; MAC: keyed 16),
    hashlib for the other digest lengths of the self-test."""
    if outlen == 32 and not key:
        return hash(data)
    if outlen == 16 and key:
        return mac(key, data)
    return hashlib.blake2s(data, key=key, digest_size=outlen).digest()


def test_hash_matches_rfc7693_appendix_b_abc() -> None:
    assert hash(b"abc") == RFC7693_ABC


def test_hash_of_several_parts_is_the_hash_of_their_concatenation() -> None:
    assert hash(b"a", b"", b"bc") == RFC7693_ABC


def test_hash_and_mac_reproduce_rfc7693_appendix_e_self_test() -> None:
    digests: list[bytes] = []
    for outlen in (16, 20, 28, 32):
        for inlen in (0, 3, 64, 65, 255, 1024):
            data = selftest_seq(inlen, inlen)
            digests.append(_blake2s(outlen, b"", data))
            digests.append(_blake2s(outlen, selftest_seq(outlen, outlen), data))
    assert hash(*digests) == RFC7693_SELFTEST_GRAND_HASH


def test_mac_is_sixteen_bytes() -> None:
    assert len(mac(bytes(32), b"")) == 16


# ---------------------------------------------------------------- HMAC and KDF (wireguard-go)

KDF_VECTORS = [
    pytest.param(
        "746573742d6b6579",
        "746573742d696e707574",
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
        id="test-key",
    ),
    pytest.param(
        "776972656775617264",
        "776972656775617264",
        "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
        "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
        id="wireguard",
    ),
    pytest.param(
        "",
        "",
        "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
        "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
        "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
        id="empty",
    ),
]
_KDF_ARGS = ("key", "data", "t1", "t2", "t3")


@pytest.mark.parametrize(_KDF_ARGS, KDF_VECTORS)
def test_kdf1_matches_wireguard_go(key: str, data: str, t1: str, t2: str, t3: str) -> None:
    assert kdf1(h(key), h(data)) == h(t1)


@pytest.mark.parametrize(_KDF_ARGS, KDF_VECTORS)
def test_kdf2_matches_wireguard_go(key: str, data: str, t1: str, t2: str, t3: str) -> None:
    assert kdf2(h(key), h(data)) == (h(t1), h(t2))


@pytest.mark.parametrize(_KDF_ARGS, KDF_VECTORS)
def test_kdf3_matches_wireguard_go(key: str, data: str, t1: str, t2: str, t3: str) -> None:
    assert kdf3(h(key), h(data)) == (h(t1), h(t2), h(t3))


def hmac_by_hand(key: bytes, data: bytes) -> bytes:
    """RFC 2104 over BLAKE2s-256 (64-byte block): long keys are hashed first."""
    if len(key) > 64:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.blake2s(bytes(k ^ 0x36 for k in key) + data).digest()
    return hashlib.blake2s(bytes(k ^ 0x5C for k in key) + inner).digest()


@pytest.mark.parametrize("key_length", [0, 32, 64, 65, 100])
def test_hmac_is_rfc2104_over_blake2s(key_length: int) -> None:
    key = bytes(range(key_length))
    assert hmac(key, b"wiresnake") == hmac_by_hand(key, b"wiresnake")


# ------------------------------------------------------- XChaCha20 (draft-irtf-cfrg-xchacha)

HCHACHA_KEY = bytes(range(32))
HCHACHA_NONCE = h("000000090000004a0000000031415927")
HCHACHA_SUBKEY = h("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")

XAEAD_KEY = AEAD_2_8_2_KEY
XAEAD_NONCE = h("404142434445464748494a4b4c4d4e4f5051525354555657")
XAEAD_AAD = h("50515253c0c1c2c3c4c5c6c7")
XAEAD_SEALED = h(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
    "c0875924c1c7987947deafd8780acf49"  # tag
)


def test_hchacha20_by_hand_matches_the_draft_section_2_2_1() -> None:
    assert hchacha20_by_hand(HCHACHA_KEY, HCHACHA_NONCE) == HCHACHA_SUBKEY


def test_hchacha20_matches_the_draft_section_2_2_1() -> None:
    assert hchacha20(HCHACHA_KEY, HCHACHA_NONCE) == HCHACHA_SUBKEY


@pytest.mark.parametrize(
    "nonce16",
    [
        pytest.param(bytes(16), id="zeros"),
        pytest.param(b"\xff" * 16, id="all-ones-counter-word-at-max"),
        pytest.param(bytes(range(100, 116)), id="ascending"),
    ],
)
def test_hchacha20_agrees_with_the_hand_written_rounds(nonce16: bytes) -> None:
    key = bytes(range(200, 232))
    assert hchacha20(key, nonce16) == hchacha20_by_hand(key, nonce16)


def test_xaead_encrypt_matches_the_draft_appendix_a_3_1() -> None:
    assert xaead_encrypt(XAEAD_KEY, XAEAD_NONCE, SUNSCREEN, XAEAD_AAD) == XAEAD_SEALED


def test_xaead_decrypt_opens_the_draft_appendix_a_3_1() -> None:
    assert xaead_decrypt(XAEAD_KEY, XAEAD_NONCE, XAEAD_SEALED, XAEAD_AAD) == SUNSCREEN


def test_xaead_by_hand_matches_the_draft_appendix_a_3_1() -> None:
    assert xaead_seal_by_hand(XAEAD_KEY, XAEAD_NONCE, SUNSCREEN, XAEAD_AAD) == XAEAD_SEALED


def test_xaead_decrypt_refuses_other_associated_data_with_crypto_error() -> None:
    with pytest.raises(CryptoError):
        xaead_decrypt(XAEAD_KEY, XAEAD_NONCE, XAEAD_SEALED, XAEAD_AAD + b"x")


@pytest.mark.parametrize("length", [12, 23, 25])
def test_xaead_refuses_a_nonce_that_is_not_24_bytes(length: int) -> None:
    with pytest.raises(ValueError):
        xaead_encrypt(XAEAD_KEY, bytes(length), b"", b"")


def test_xaead_agrees_with_libsodium_when_pynacl_is_installed() -> None:
    bindings = pytest.importorskip("nacl.bindings")
    key, nonce, ad = bytes(range(32)), bytes(range(50, 74)), b"mac1 of some message"
    cookie = bytes(range(16))
    ours = xaead_encrypt(key, nonce, cookie, ad)
    assert ours == bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(cookie, ad, nonce, key)


# ---------------------------------------------------------------- TAI64N

TAI64_BASE = 0x400000000000000A


def test_tai64n_of_the_unix_epoch_is_the_tai64_label_with_zero_nanoseconds() -> None:
    assert tai64n(0.0) == h("400000000000000a00000000")


def test_tai64n_is_big_endian_seconds_plus_base_then_masked_nanoseconds() -> None:
    # 1_700_000_000.5 s: 500_000_000 ns = 0x1dcd6500, masked to 0x1d000000
    expected = struct.pack(">QI", TAI64_BASE + 1_700_000_000, 0x1D000000)
    assert tai64n(1_700_000_000.5) == expected


@pytest.mark.parametrize("wall", [0.0, 0.123456789, 1.999999, 1_700_000_000.987654])
def test_tai64n_masks_the_low_24_bits_of_the_nanoseconds(wall: float) -> None:
    stamp = tai64n(wall)
    assert len(stamp) == 12
    nanos = int.from_bytes(stamp[8:], "big")
    assert nanos & 0xFFFFFF == 0
    assert nanos < 1_000_000_000


@pytest.mark.parametrize(
    ("later_by", "after"),
    [
        pytest.param(10e-9, False, id="10ns"),
        pytest.param(10e-6, False, id="10us"),
        pytest.param(1e-3, False, id="1ms"),
        pytest.param(10e-3, False, id="10ms"),
        pytest.param(20e-3, True, id="20ms"),
    ],
)
def test_tai64n_granularity_matches_wireguard_go(later_by: float, after: bool) -> None:
    start = 0.123456789  # wireguard-go's time.Unix(0, 123456789)
    assert (tai64n(start + later_by) > tai64n(start)) is after


def test_tai64n_bytes_never_decrease_as_time_goes_on() -> None:
    times = [1_000_000.0 + i * 0.0071 for i in range(600)]  # crosses several seconds
    stamps = [tai64n(t) for t in times]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) > 200


# ---------------------------------------------------------------- key codecs

KEYS = [
    pytest.param(bytes(32), id="zero"),
    pytest.param(b"\xff" * 32, id="ones"),
    pytest.param(bytes(range(32)), id="ascending"),
    pytest.param(ALICE_PUBLIC, id="rfc7748-alice"),
]


@pytest.mark.parametrize("key", KEYS)
def test_base64_round_trip(key: bytes) -> None:
    text = key_to_base64(key)
    assert text == base64.b64encode(key).decode()
    assert key_from_base64(text) == key


@pytest.mark.parametrize("key", KEYS)
def test_hex_round_trip_is_lowercase(key: bytes) -> None:
    text = key_to_hex(key)
    assert text == text.lower() and len(text) == 64
    assert key_from_hex(text) == key


def test_hex_accepts_uppercase_digits_as_wg_does() -> None:
    assert key_from_hex(ALICE_PUBLIC.hex().upper()) == ALICE_PUBLIC


_ZERO_B64 = "A" * 43 + "="

BAD_BASE64 = [
    pytest.param("A" * 42 + "B=", id="nonzero-unused-bits"),
    pytest.param("A" * 42 + "P=", id="nonzero-unused-bits-P"),
    pytest.param("A" * 43, id="43-chars-no-padding"),
    pytest.param(_ZERO_B64 + "=", id="45-chars"),
    pytest.param(base64.b64encode(bytes(31)).decode(), id="31-bytes"),
    pytest.param(base64.b64encode(bytes(33)).decode(), id="33-bytes"),
    pytest.param("A" * 42 + "==", id="double-padding-44-chars"),
    pytest.param(" " + _ZERO_B64[1:], id="leading-space"),
    pytest.param(_ZERO_B64 + "\n", id="trailing-newline"),
    pytest.param(_ZERO_B64[:20] + " " + _ZERO_B64[21:], id="inner-space"),
    pytest.param("-" + _ZERO_B64[1:], id="urlsafe-alphabet"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("text", BAD_BASE64)
def test_base64_refuses_what_wg_refuses(text: str) -> None:
    with pytest.raises(KeyFormatError):
        key_from_base64(text)


def test_base64_refuses_non_ascii_with_key_format_error() -> None:
    with pytest.raises(KeyFormatError):
        key_from_base64("\u00e9" * 43 + "=")


BAD_HEX = [
    pytest.param("0" * 63, id="63-digits"),
    pytest.param("0" * 65, id="65-digits"),
    pytest.param("g" + "0" * 63, id="non-hex-digit"),
    pytest.param("0x" + "0" * 62, id="0x-prefix"),
    pytest.param("0" * 63 + "\u00e9", id="non-ascii"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("text", BAD_HEX)
def test_hex_refuses_what_wg_refuses(text: str) -> None:
    with pytest.raises(KeyFormatError):
        key_from_hex(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("  " + "00" * 31, id="leading-spaces"),
        pytest.param("00" * 31 + "\n\n", id="trailing-newlines"),
        pytest.param("00 " * 20 + "0000", id="spaced-pairs"),
    ],
)
def test_hex_refuses_whitespace(text: str) -> None:
    assert len(text) == 64
    with pytest.raises(KeyFormatError):
        key_from_hex(text)
