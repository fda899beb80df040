"""Byte-exact TCP transfer for tests: `serve ADDR PORT` prints the count and SHA-256 of what
it received; `send ADDR PORT NBYTES SEED` sends seeded pseudo-random bytes and prints the
same for what it sent."""

from __future__ import annotations

import hashlib
import random
import socket
import sys


def serve(addr: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(1)
        print("ready", flush=True)
        conn, _ = s.accept()
        h, n = hashlib.sha256(), 0
        with conn:
            while chunk := conn.recv(1 << 20):
                h.update(chunk)
                n += len(chunk)
    print(n, h.hexdigest(), flush=True)


def send(addr: str, port: int, total: int, seed: int) -> None:
    rnd = random.Random(seed)
    h, n = hashlib.sha256(), 0
    with socket.create_connection((addr, port), timeout=60) as s:
        while n < total:
            chunk = rnd.randbytes(min(1 << 18, total - n))
            s.sendall(chunk)
            h.update(chunk)
            n += len(chunk)
    print(n, h.hexdigest(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
