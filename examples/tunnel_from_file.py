"""Open a rootless tunnel from a configuration file and talk TCP through it.

The file is what wireproxy or wg-quick reads ([Interface] and [Peer]); `open_tunnel` gives
a handle whose `open_connection` takes names, resolved by the file's DNS servers through
the tunnel. For a self-contained run, the peer here is a second tunnel in this process
with an echo server behind it. Run: python examples/tunnel_from_file.py
"""

import asyncio
import base64
import tempfile
import time
from pathlib import Path

from wiresnake import Tunnel, open_tunnel
from wiresnake.crypto import generate_private_key, public_key
from wiresnake.protocol.settings import DeviceConfig, PeerConfig, parse_network


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(4096):
        writer.write(data)
    writer.close()


async def main() -> None:
    # the far side: a tunnel with an echo server on 10.80.0.1 port 7
    server_key, our_key = generate_private_key(), generate_private_key()
    far = await Tunnel.open(DeviceConfig(server_key), ["10.80.0.1/24"], listen_host="127.0.0.1")
    far.device.apply_peer(
        PeerConfig(public_key(our_key), allowed_ips=(parse_network("10.80.0.2/32"),)),
        time.monotonic(),
    )
    await far.start_server(echo, 7)

    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "wg.conf"
        conf.write_text(
            f"[Interface]\n"
            f"PrivateKey = {base64.b64encode(our_key).decode()}\n"
            f"Address = 10.80.0.2/32\n\n"
            f"[Peer]\n"
            f"PublicKey = {base64.b64encode(public_key(server_key)).decode()}\n"
            f"Endpoint = 127.0.0.1:{far.listen_port}\n"
            f"AllowedIPs = 10.80.0.0/24\n"
        )
        async with open_tunnel(conf) as net:
            print(f"ping 10.80.0.1: {await net.ping('10.80.0.1') * 1000:.1f} ms")
            reader, writer = await net.open_connection("10.80.0.1", 7)
            writer.write(b"hello from a config file\n")
            print((await reader.readline()).decode().strip())
            writer.write_eof()
            await reader.read()  # the server saw our end and closed its side
            writer.close()
    far.close()


if __name__ == "__main__":
    asyncio.run(main())
