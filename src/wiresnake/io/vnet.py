"""The virtio-net header that leads every TUN read and write once IFF_VNET_HDR is set
(struct virtio_net_hdr, include/uapi/linux/virtio_net.h), in the host's byte order
(little-endian here). `gro` writes it, `gso` reads it, `tun` skips it when it is plain."""

from __future__ import annotations

import struct

__all__ = [
    "F_NEEDS_CSUM",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "GSO_UDP_L4",
    "VNET",
    "VNET_HDR_LEN",
    "VNET_PLAIN",
]

VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET.size
VNET_PLAIN = bytes(VNET_HDR_LEN)  # no GSO, no checksum to finish
F_NEEDS_CSUM = 1  # the checksum field holds the pseudo-header sum; the rest is to be added
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_ECN = 0x80  # a flag on gso_type: the TCP super-packet carries CWR
