"""A userspace IPv4/IPv6 host stack, sans-IO, fed with raw IP packets.

Its shape is smoltcp's: an `Interface` with our addresses and the MTU, sockets that live
in its `SocketSet`, and three calls that drive it, with time as an argument:

    iface = Interface(["10.0.0.2/32", "fd00::2/128"], mtu=1420)
    sock = UdpSocket(iface)                     # an ephemeral port on every address
    sock.send_to(b"query", ("10.0.0.1", 53))
    packets = iface.poll(now)                   # -> Device.from_tunnel(packets, now)
    iface.receive(device_output.packets, now)   # <- Device.from_network(...).packets
    reply = sock.recv_from()                    # (b"answer", ("10.0.0.1", 53)) or None
    iface.next_deadline()                       # when to poll again if nothing arrives

Modules: `checksum` (RFC 1071), `ip` (headers), `sockets` (the socket base and set),
`icmp` (echo, errors, `IcmpSocket`), `udp` (`UdpSocket`), `tcp` (the connection state
machine), `tcpsock` (TCP on the interface: `TcpSocket`, `TcpListener`, `connect`), `iface`
(`Interface`).
"""

from wiresnake.netstack.icmp import EchoReply, IcmpError, IcmpSocket
from wiresnake.netstack.iface import Interface
from wiresnake.netstack.ip import IpPacket
from wiresnake.netstack.sockets import Endpoint, Socket, SocketSet
from wiresnake.netstack.tcpsock import TcpListener, TcpSocket
from wiresnake.netstack.udp import UdpSocket

__all__ = [
    "EchoReply",
    "Endpoint",
    "IcmpError",
    "IcmpSocket",
    "Interface",
    "IpPacket",
    "Socket",
    "SocketSet",
    "TcpListener",
    "TcpSocket",
    "UdpSocket",
]
