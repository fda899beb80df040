"""Configuration values the engine is set from: what UAPI `set` and config files map onto."""

from __future__ import annotations

from dataclasses import dataclass, field

from wiresnake.protocol.allowedips import Network, parse_network
from wiresnake.protocol.peer import Endpoint

__all__ = ["DeviceConfig", "Network", "PeerConfig", "parse_network"]


@dataclass(frozen=True, slots=True)
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    allowed_ips: tuple[Network, ...] = ()
    persistent_keepalive: int = 0  # seconds; 0 is off

    def __post_init__(self) -> None:
        if len(self.public_key) != 32:
            raise ValueError("public key must be 32 bytes")
        if self.preshared_key is not None and len(self.preshared_key) != 32:
            raise ValueError("preshared key must be 32 bytes")
        if not 0 <= self.persistent_keepalive <= 65535:
            raise ValueError("persistent keepalive must be 0..65535 seconds")


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    private_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: tuple[PeerConfig, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.private_key is not None and len(self.private_key) != 32:
            raise ValueError("private key must be 32 bytes")
        if not 0 <= self.listen_port <= 65535:
            raise ValueError("listen port must be 0..65535")
        keys = [p.public_key for p in self.peers]
        if len(set(keys)) != len(keys):
            raise ValueError("a peer's public key appears twice")
