"""Transport messages get a receive queue of their own, apart from handshakes.

The kernel's WireGuard puts handshake messages on a bounded queue of their own, so a flood
of initiations can fill that queue but never push a live session's packets out. A
userspace daemon has one socket queue per port, where the kernel drops at random once it
is full: at a few hundred thousand initiations a second that would starve every session.
So the port gets two sockets in one SO_REUSEPORT group, and a classic BPF program, run by
the kernel for each datagram, picks the socket by the message type byte: transport data
(type 4) to the second, everything else to the first. The daemon reads both; a flood then
only ever overflows the first.
"""

from __future__ import annotations

import ctypes
import socket
import struct

__all__ = ["HANDSHAKE_INDEX", "TRANSPORT_INDEX", "attach_steering"]

_SO_ATTACH_REUSEPORT_CBPF = 51
HANDSHAKE_INDEX = 0  # the first socket bound in the group: handshakes, cookies, the rest
TRANSPORT_INDEX = 1  # the second: transport data

# The program sees the UDP payload at offset 0 (the kernel pulls the UDP header first).
# A load past the end of a datagram ends the program with 0: the first socket.
_LD_B_ABS, _JEQ_K, _RET_K = 0x30, 0x15, 0x06
_PROGRAM = (
    (_LD_B_ABS, 0, 0, 0),  # A = payload[0], the message type
    (_JEQ_K, 0, 1, 4),  # transport? next : skip one
    (_RET_K, 0, 0, TRANSPORT_INDEX),
    (_RET_K, 0, 0, HANDSHAKE_INDEX),
)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def attach_steering(sock: socket.socket) -> None:
    """Attach the program to `sock`'s reuseport group (any member will do). Raises OSError
    where the kernel lacks SO_ATTACH_REUSEPORT_CBPF (before Linux 4.5)."""
    code = b"".join(struct.pack("=HBBI", *insn) for insn in _PROGRAM)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(_PROGRAM), ctypes.addressof(buffer))
    # the kernel copies the program during the call, while `buffer` is alive
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
