"""Two rootless tunnels in one process: a TCP echo server behind one, a client on the other.

No root, no TUN: each side is the WireGuard engine plus wiresnake's userspace TCP/IP stack
over a UDP socket on loopback. Run: python examples/two_tunnels.py
"""

import asyncio
import time

from wiresnake.crypto import generate_private_key, public_key
from wiresnake.protocol.settings import DeviceConfig, PeerConfig, parse_network
from wiresnake.proxy.tunnel import Tunnel


async def main() -> None:
    key_a, key_b = generate_private_key(), generate_private_key()
    a = await Tunnel.open(DeviceConfig(key_a), ["10.70.0.1/24"], listen_host="127.0.0.1")
    b = await Tunnel.open(DeviceConfig(key_b), ["10.70.0.2/24"], listen_host="127.0.0.1")
    now = time.monotonic()
    a.device.apply_peer(
        PeerConfig(
            public_key(key_b),
            endpoint=("127.0.0.1", b.listen_port),
            allowed_ips=(parse_network("10.70.0.2/32"),),
        ),
        now,
    )
    b.device.apply_peer(
        PeerConfig(public_key(key_a), allowed_ips=(parse_network("10.70.0.1/32"),)), now
    )

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo: " + await reader.readline())
        await writer.drain()
        writer.close()

    async with a, b:
        await b.start_server(echo, 7)
        print(f"ping 10.70.0.2: {await a.ping('10.70.0.2') * 1000:.1f} ms")
        reader, writer = await a.open_connection("10.70.0.2", 7)
        writer.write(b"hello through the tunnel\n")
        await writer.drain()
        print((await reader.readline()).decode().strip())
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
