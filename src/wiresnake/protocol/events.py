"""What happened to peers during one engine call, for whoever watches (the mesh, `status`).

`Device` appends these to `Output.events` as it makes the change, so within one call they
are in the order they happened, and each occurrence is reported once. They describe what
traffic and timers did: configuration changes made through `Device`'s methods (a new
endpoint, a removed peer, a new private key) report nothing, their caller knows. A call
in which nothing happens leaves `Output.events` empty.

Peers are named by public key, not by `Peer` object, so an event stays meaningful after
its peer is removed.
"""

from __future__ import annotations

from dataclasses import dataclass

from wiresnake.protocol.peer import Endpoint

__all__ = [
    "EndpointChanged",
    "Event",
    "HandshakeCompleted",
    "HandshakeGaveUp",
    "KeysExpired",
    "PeerIdle",
]


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A new session is in use: on the initiator when the response arrives, on the
    responder when the first packet on the new keys confirms them. Every completed
    handshake reports, the rekeys every two minutes included. `endpoint` is where the
    message that completed it came from."""

    public_key: bytes
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class EndpointChanged:
    """An authenticated packet came from another (host, port) than the peer's endpoint,
    which now follows it (roaming). `old` is None when the peer had no endpoint yet (a
    responder learning it). Only the remote address counts: the local address a sticky
    source carries changing alone is no roam."""

    public_key: bytes
    old: Endpoint | None
    new: Endpoint


@dataclass(frozen=True, slots=True)
class HandshakeGaveUp:
    """REKEY_ATTEMPT_TIME of retries brought no session (the peer is unreachable or
    refuses us): retries stop until new traffic asks again, and the `dropped` IP packets
    that waited for the session are gone (keepalives waiting are not counted)."""

    public_key: bytes
    dropped: int


@dataclass(frozen=True, slots=True)
class KeysExpired:
    """No new session for 3 x REJECT_AFTER_TIME since the last one: every keypair of the
    peer is zeroed. Reported only if it had any (a peer never reached has none to lose)."""

    public_key: bytes


@dataclass(frozen=True, slots=True)
class PeerIdle:
    """The peer stopped answering: data was sent on a session and no authenticated packet
    came back within KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (the whitepaper's section 6.5,
    after which the engine starts a new handshake). This is the earliest sign that the
    path in use is dead, which is what path selection acts on; a peer that is merely
    quiet in both directions is not idle in this sense. Reported once until an
    authenticated packet from the peer is heard again."""

    public_key: bytes


Event = HandshakeCompleted | EndpointChanged | HandshakeGaveUp | KeysExpired | PeerIdle
