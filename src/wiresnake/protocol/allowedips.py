"""Cryptokey routing: the allowed-IPs table, a longest-prefix match over IPv4 and IPv6.

Each prefix belongs to at most one value (a peer).  Outgoing packets pick their peer by the
destination address; incoming packets must carry a source address that routes back to the
peer that sent them.

Layout, chosen for CPython rather than copied from the kernel's bit trie: per family, one
dict per prefix length present, mapping the masked address (an int) to its value, and a
list of (mask, dict.get) for the lengths present, longest first.  A look-up tries those dicts in
turn, so it costs one dict probe per distinct prefix length rather than one step per bit.
In front of that sits a bounded cache keyed by the packed address bytes straight from the IP
header, holding hits and misses alike and cleared on every change, so that the steady state
of a flow is a single dict hit.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeAlias, TypeVar

__all__ = ["DEFAULT_CACHE_SIZE", "AllowedIPs", "Network", "parse_network"]

T = TypeVar("T")
Network: TypeAlias = IPv4Network | IPv6Network

DEFAULT_CACHE_SIZE = 16384


class _Missing(enum.Enum):
    MISSING = 0


_MISSING = _Missing.MISSING
_from_bytes = int.from_bytes  # big-endian by default; bound once, as int.from_bytes is slow
_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6

# A prefix, as kept internally: (family bits, prefix length, masked address).
_Key: TypeAlias = tuple[int, int, int]


def parse_network(network: str | Network) -> Network:
    """``network`` as an IPv4Network or IPv6Network, host bits masked off.

    A bare address is a host prefix (/32 or /128), as ``wg`` reads it.  Anything else that is
    not address/length (a netmask for a length, a zone index such as ``%eth0``) raises
    ValueError.
    """
    if isinstance(network, IPv4Network | IPv6Network):
        return network
    if not isinstance(network, str):
        raise TypeError(f"expected a CIDR string or an IP network, not {type(network).__name__}")
    text = network.strip()
    try:
        if "%" in text:
            raise ValueError("a zone index has no place in a prefix")
        _, slash, plen_text = text.partition("/")
        if slash and not (plen_text.isascii() and plen_text.isdigit()):
            # ipaddress would take a netmask here; wg and wireguard-go take only a length.
            raise ValueError(f"the prefix length {plen_text!r} is not a decimal number")
        # Pick the family up front: ip_network's own message would not say what is wrong.
        if ":" in text:
            return IPv6Network(text, strict=False)
        return IPv4Network(text, strict=False)
    except ValueError as e:
        raise ValueError(f"invalid allowed IP {network!r}: {e}") from None


def _key(net: Network) -> _Key:
    bits = net.max_prefixlen
    return bits, net.prefixlen, int(net.network_address)


def _parse_key(network: str | Network) -> _Key:
    """The key of ``network``; strings go through inet_pton, several times faster than
    ipaddress.

    Whatever the fast path does not accept goes through parse_network, which either accepts
    it or explains why not.
    """
    if isinstance(network, str):
        addr, slash, plen_text = network.strip().partition("/")
        family, bits = (_AF_INET6, 128) if ":" in addr else (_AF_INET, 32)
        try:
            packed: bytes | None = _inet_pton(family, addr)
        except (OSError, ValueError):
            packed = None
        if packed is not None:
            if not slash:
                return bits, bits, _from_bytes(packed)
            if plen_text.isascii() and plen_text.isdigit() and len(plen_text) <= 3:
                plen = int(plen_text)
                if plen <= bits:
                    return bits, plen, _from_bytes(packed) & _mask(bits, plen)
    return _key(parse_network(network))


def _mask(bits: int, plen: int) -> int:
    return ((1 << plen) - 1) << (bits - plen)


class AllowedIPs(Generic[T]):
    """Longest-prefix-match table from IP prefixes to values; not thread-safe.

    Values (peers) must be hashable, compare by identity (the default for objects) and never
    be None.
    """

    __slots__ = (
        "_cache",
        "_cache_get",
        "_cache_size",
        "_count",
        "_levels4",
        "_levels6",
        "_owned",
        "_tables",
    )

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, not {cache_size}")
        self._cache_size = cache_size
        self._cache: dict[bytes, T | None] = {}
        self._cache_get = self._cache.get
        # (family bits, prefix length) -> {masked address: value}
        self._tables: dict[tuple[int, int], dict[int, T]] = {}
        # (mask, table.get) per prefix length present, longest first, per family
        self._levels4: list[tuple[int, Callable[[int], T | None]]] = []
        self._levels6: list[tuple[int, Callable[[int], T | None]]] = []
        # value -> its prefixes, in the order it got them (a dict as an ordered set)
        self._owned: dict[T, dict[_Key, None]] = {}
        self._count = 0

    def __len__(self) -> int:
        """The number of prefixes in the table."""
        return self._count

    # -- the per-packet path -------------------------------------------------------------

    def lookup(self, addr: bytes) -> T | None:
        """The value owning the longest prefix containing ``addr``, or None.

        ``addr`` is a packed IPv4 (4 bytes) or IPv6 (16 bytes) address, as sliced from an IP
        header; it must be hashable (bytes, or a read-only memoryview of bytes).
        """
        value = self._cache_get(addr, _MISSING)
        if value is not _MISSING:
            return value
        # Not cached: probe the prefix lengths present, longest first.
        n = len(addr)
        if n == 4:
            levels = self._levels4
        elif n == 16:
            levels = self._levels6
        else:
            raise ValueError(f"address must be 4 or 16 bytes, not {n}")
        ip = _from_bytes(addr)
        value = None
        for mask, get in levels:
            value = get(ip & mask)
            if value is not None:
                break
        cache = self._cache
        if len(cache) >= self._cache_size:
            cache.clear()
        cache[bytes(addr)] = value
        return value

    # -- changes -------------------------------------------------------------------------

    def insert(self, network: str | Network, value: T) -> None:
        """Route ``network`` (host bits masked off) to ``value``, taking it from any owner."""
        if value is None:
            raise ValueError("the value of a prefix cannot be None")
        key = _parse_key(network)
        owned = self._owned.get(value)  # before any change: raises if value is unhashable
        bits, plen, addr = key
        table = self._tables.get((bits, plen))
        if table is None:
            table = self._tables[bits, plen] = {}
            self._rebuild_levels(bits)
        old = table.get(addr)
        if old is value:
            return
        self._cache.clear()
        if old is None:
            self._count += 1
        else:
            self._disown(old, key)
        table[addr] = value
        if owned is None:
            owned = self._owned[value] = {}
        owned[key] = None

    def remove(self, network: str | Network, value: T) -> bool:
        """Remove ``network`` if ``value`` owns it; return whether it did."""
        key = _parse_key(network)
        bits, plen, addr = key
        table = self._tables.get((bits, plen))
        if table is None or table.get(addr) is not value:
            return False
        self._cache.clear()
        self._drop(key, table)
        self._disown(value, key)
        return True

    def remove_by_value(self, value: T) -> None:
        """Remove every prefix of ``value``."""
        owned = self._owned.pop(value, None)
        if not owned:
            return
        self._cache.clear()
        tables = self._tables
        for key in owned:
            bits, plen, _ = key
            self._drop(key, tables[bits, plen])

    def clear(self) -> None:
        """Remove every prefix."""
        self._cache.clear()
        self._tables.clear()
        self._levels4.clear()
        self._levels6.clear()
        self._owned.clear()
        self._count = 0

    # -- inspection ----------------------------------------------------------------------

    def networks_for(self, value: T) -> list[Network]:
        """The prefixes of ``value``, in the order it got them."""
        owned = self._owned.get(value)
        if not owned:
            return []
        return [
            IPv4Network((addr, plen)) if bits == 32 else IPv6Network((addr, plen))
            for bits, plen, addr in owned
        ]

    # -- internals -----------------------------------------------------------------------

    def _drop(self, key: _Key, table: dict[int, T]) -> None:
        bits, plen, addr = key
        del table[addr]
        self._count -= 1
        if not table:
            del self._tables[bits, plen]
            self._rebuild_levels(bits)

    def _disown(self, value: T, key: _Key) -> None:
        owned = self._owned[value]
        del owned[key]
        if not owned:
            del self._owned[value]

    def _rebuild_levels(self, bits: int) -> None:
        tables = self._tables
        plens = sorted((plen for b, plen in tables if b == bits), reverse=True)
        levels = [(_mask(bits, plen), tables[bits, plen].get) for plen in plens]
        # In place, so that the lists keep their identity.
        if bits == 32:
            self._levels4[:] = levels
        else:
            self._levels6[:] = levels
