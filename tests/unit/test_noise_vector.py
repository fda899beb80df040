"""Our Noise math held to the cacophony vector for Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wiresnake.crypto import NONCE as TRANSPORT_NONCE
from wiresnake.crypto import ChaCha20Poly1305, PrivateKey
from wiresnake.protocol import noise

VECTOR: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "noise-ikpsk2.json").read_text()
)["vectors"][0]


def h(name: str) -> bytes:
    return bytes.fromhex(VECTOR[name])


def test_both_messages_handshake_hash_and_transport_match_the_vector() -> None:
    prologue = h("init_prologue")
    psk = bytes.fromhex(VECTOR["init_psks"][0])
    i_static, i_eph = PrivateKey(h("init_static")), PrivateKey(h("init_ephemeral"))
    r_static, r_eph = PrivateKey(h("resp_static")), PrivateKey(h("resp_ephemeral"))
    assert r_static.public == h("init_remote_static")
    msgs = VECTOR["messages"]

    # initiator writes message 1
    isym = noise.SymmetricState.initialize(r_static.public, prologue)
    e_pub, sealed_s, sealed_p = noise.write_initiation(
        isym,
        i_static,
        i_eph,
        r_static.public,
        i_static.exchange(r_static.public),
        bytes.fromhex(msgs[0]["payload"]),
    )
    assert (e_pub + sealed_s + sealed_p).hex() == msgs[0]["ciphertext"]

    # responder reads it
    rsym = noise.SymmetricState.initialize(r_static.public, prologue)
    initiator = noise.read_initiation_static(rsym, r_static, e_pub, sealed_s)
    assert initiator == i_static.public
    payload = noise.read_initiation_payload(rsym, r_static.exchange(initiator), sealed_p)
    assert payload.hex() == msgs[0]["payload"]

    # responder writes message 2, initiator reads it
    re_pub, sealed = noise.write_response(
        rsym, r_eph, e_pub, initiator, psk, bytes.fromhex(msgs[1]["payload"])
    )
    assert (re_pub + sealed).hex() == msgs[1]["ciphertext"]
    payload = noise.read_response(isym, i_static, i_eph, re_pub, psk, sealed)
    assert payload.hex() == msgs[1]["payload"]
    assert isym.h.hex() == rsym.h.hex() == VECTOR["handshake_hash"]

    # transport: messages alternate initiator, responder, ...; each direction counts from 0
    i_send, i_recv = isym.split()
    r_recv, r_send = rsym.split()
    assert (i_send, i_recv) == (r_recv, r_send)
    counters = [0, 0]
    for n, m in enumerate(msgs[2:]):
        key = i_send if n % 2 == 0 else r_send
        ct = ChaCha20Poly1305(key).encrypt(
            TRANSPORT_NONCE.pack(counters[n % 2]), bytes.fromhex(m["payload"]), b""
        )
        counters[n % 2] += 1
        assert ct.hex() == m["ciphertext"]
