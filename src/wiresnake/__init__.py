"""wiresnake: WireGuard in Python.

`Device` is the sans-IO protocol engine; `open_tunnel` opens a rootless tunnel (engine and
userspace TCP/IP stack) from a wireproxy or wg-quick file, for asyncio code:

    async with open_tunnel("wg0.conf") as net:
        reader, writer = await net.open_connection("10.0.0.1", 80)

Both are imported on first use, so `import wiresnake` stays light.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

__all__ = ["Device", "Dialer", "NoRouteError", "Tunnel", "__version__", "open_tunnel"]

# The one version string is pyproject.toml's; an installed (or editable) package carries it.
try:
    __version__ = version("wiresnake")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from wiresnake.protocol.device import Device
    from wiresnake.proxy.dial import Dialer, open_tunnel
    from wiresnake.proxy.tunnel import NoRouteError, Tunnel

_LAZY = {
    "Device": "wiresnake.protocol.device",
    "Dialer": "wiresnake.proxy.dial",
    "open_tunnel": "wiresnake.proxy.dial",
    "NoRouteError": "wiresnake.proxy.tunnel",
    "Tunnel": "wiresnake.proxy.tunnel",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wiresnake' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
