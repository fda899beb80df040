"""Test harness for the proxy front ends: the real Dialer over a real tunnel pair, with
names from a fixed table instead of DNS (the DNS resolver has its own tests)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from wiresnake.proxy.dial import Dialer
from wiresnake.proxy.tunnel import Tunnel
from wiresnake.proxy.upstream import NameResolutionError


class TableResolver:
    """`names` maps host names to IP literals; a literal answers itself."""

    def __init__(self, names: Mapping[str, list[str]] | None = None) -> None:
        self.names = dict(names or {})

    async def resolve(self, host: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        found = self.names.get(host.lower())
        if not found:
            raise NameResolutionError(f"no such host: {host}")
        return list(found)


class TableUpstream(Dialer):
    """Dials through `tunnel`, resolving names from `names`."""

    def __init__(self, tunnel: Tunnel, names: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(tunnel, TableResolver(names), connect_timeout=10)
