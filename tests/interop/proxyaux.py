"""Servers and clients for the proxy-mode namespace tests, run inside the namespaces.

    proxyaux.py http HOST PORT              GET /bytes/N/SEED, POST /sink, GET /
    proxyaux.py dns HOST PORT NAME=IP ...   answers A queries for the names, NXDOMAIN else
    proxyaux.py get SOCKS HOST PORT N SEED  download N bytes through SOCKS5, check them
    proxyaux.py put SOCKS HOST PORT N SEED  upload N bytes through SOCKS5, check the digest
    proxyaux.py many SOCKS HOST PORT COUNT SIZE   COUNT concurrent downloads
    proxyaux.py udpdns SOCKS DNS NAME       a DNS query through SOCKS5 UDP ASSOCIATE
    proxyaux.py flood PORT COUNT SECONDS    COUNT silent connections, held up to SECONDS
    proxyaux.py silent PORT...              seconds until a silent connection is closed

Servers print "ready" once listening. Content is a seeded random stream, so both ends
know it without storing it.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import ipaddress
import random
import socket
import socketserver
import struct
import sys
import time

CHUNK = 1 << 20


def stream(n: int, seed: int) -> bytes:
    """The content of /bytes/n/seed, in one piece (for small n)."""
    return b"".join(chunks(n, seed))


def chunks(n: int, seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    while n > 0:
        size = min(CHUNK, n)
        yield rng.randbytes(size)
        n -= size


def digest(n: int, seed: int) -> str:
    h = hashlib.sha256()
    for c in chunks(n, seed):
        h.update(c)
    return h.hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = self.path.split("/")
        if len(parts) == 4 and parts[1] == "bytes":
            n, seed = int(parts[2]), int(parts[3])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            for c in chunks(n, seed):
                self.wfile.write(c)
            return
        body = f"hello from {socket.gethostname()} path={self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        left = n
        while left:
            data = self.rfile.read(min(CHUNK, left))
            if not data:
                break
            h.update(data)
            left -= len(data)
        body = f"{n - left} {h.hexdigest()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 512


def serve_http(host: str, port: int) -> None:
    _Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = _Server((host, port), _Handler)
    print("ready", flush=True)
    server.serve_forever()


def serve_dns(host: str, port: int, names: dict[str, str]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    print("ready", flush=True)
    while True:
        query, peer = sock.recvfrom(2048)
        if len(query) < 12:
            continue
        qid, _flags, _count = struct.unpack("!HHH", query[:6])
        i, labels = 12, []
        while query[i]:
            labels.append(query[i + 1 : i + 1 + query[i]].decode())
            i += 1 + query[i]
        qtype, _qclass = struct.unpack("!HH", query[i + 1 : i + 5])
        question = query[12 : i + 5]
        name = ".".join(labels).lower()
        answers = b""
        count = 0
        rcode = 3
        if name in names:
            rcode = 0
            if qtype == 1:
                count = 1
                answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4)
                answers += ipaddress.IPv4Address(names[name]).packed
        flags = 0x8180 | rcode
        sock.sendto(struct.pack("!HHHHHH", qid, flags, 1, count, 0, 0) + question + answers, peer)


async def _socks_connect(
    socks: int, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", socks)
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    name = host.encode()
    writer.write(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port))
    reply = await reader.readexactly(4)
    assert reply[1] == 0, f"SOCKS5 reply {reply[1]}"
    await reader.readexactly({1: 4, 4: 16}[reply[3]] + 2)
    return reader, writer


async def _get(socks: int, host: str, port: int, n: int, seed: int) -> None:
    reader, writer = await _socks_connect(socks, host, port)
    writer.write(f"GET /bytes/{n}/{seed} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    expected = chunks(n, seed)
    pending = b""
    got = 0
    for want in expected:
        while len(pending) < len(want):
            data = await reader.read(1 << 18)
            assert data, f"EOF after {got + len(pending)} of {n} bytes"
            pending += data
        assert pending[: len(want)] == want, f"content differs in the MiB at {got}"
        pending = pending[len(want) :]
        got += len(want)
    assert got == n and not pending
    writer.close()


async def _put(socks: int, host: str, port: int, n: int, seed: int) -> None:
    reader, writer = await _socks_connect(socks, host, port)
    writer.write(f"POST /sink HTTP/1.1\r\nHost: {host}\r\nContent-Length: {n}\r\n\r\n".encode())
    for c in chunks(n, seed):
        writer.write(c)
        await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    body = await reader.readline()
    assert body.decode().split() == [str(n), digest(n, seed)], body
    writer.close()


async def _many(socks: int, host: str, port: int, count: int, size: int) -> None:
    async def one(i: int) -> None:
        reader, writer = await _socks_connect(socks, host, port)
        writer.write(f"GET /bytes/{size}/{i} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        body = await reader.readexactly(size)
        assert body == stream(size, i), f"connection {i}: content differs"
        writer.close()

    await asyncio.gather(*(one(i) for i in range(count)))


def udp_dns(socks: int, dns: str, name: str) -> str:
    ctl = socket.create_connection(("127.0.0.1", socks), timeout=10)
    ctl.sendall(b"\x05\x01\x00")
    assert ctl.recv(2) == b"\x05\x00"
    ctl.sendall(b"\x05\x03\x00\x01" + bytes(4) + b"\0\0")
    reply = ctl.recv(10)
    assert reply[1] == 0, f"UDP ASSOCIATE reply {reply[1]}"
    relay = (str(ipaddress.IPv4Address(reply[4:8])), struct.unpack("!H", reply[8:10])[0])
    if relay[0] == "0.0.0.0":
        relay = ("127.0.0.1", relay[1])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(3)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + b"\0\x01\0\x01"
    header = b"\0\0\0\x01" + ipaddress.IPv4Address(dns).packed + struct.pack("!H", 53)
    for _ in range(5):
        udp.sendto(header + query, relay)
        try:
            data, _ = udp.recvfrom(2048)
        except TimeoutError:
            continue
        assert data[:10] == header, data[:10]
        answer = data[10:]
        assert answer[:2] == b"\x12\x34"
        ctl.close()
        return str(ipaddress.IPv4Address(answer[-4:]))
    raise SystemExit("no DNS answer through UDP ASSOCIATE")


async def _flood(port: int, count: int, seconds: float) -> tuple[int, int]:
    """Open `count` connections to `port` that send nothing and hold them up to `seconds`:
    (how many opened, how many the other side closed in that time)."""
    conns = []
    for _ in range(count):
        conns.append(await asyncio.open_connection("127.0.0.1", port))
    print("open", flush=True)

    async def held(reader: asyncio.StreamReader) -> bool:
        try:
            while await reader.read(4096):
                pass
        except OSError:
            pass
        return True

    done = await asyncio.wait([asyncio.ensure_future(held(r)) for r, _ in conns], timeout=seconds)
    for _, w in conns:
        w.close()
    return len(conns), len(done[0])


async def _silent(ports: list[int]) -> list[float]:
    took = []
    for port in ports:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(30):
            try:
                while await reader.read(4096):
                    pass
            except ConnectionError:
                pass
        took.append(time.monotonic() - started)
        writer.close()
    return took


def main(argv: list[str]) -> None:
    what = argv[0]
    if what == "http":
        serve_http(argv[1], int(argv[2]))
    elif what == "dns":
        serve_dns(argv[1], int(argv[2]), dict(a.split("=", 1) for a in argv[3:]))
    elif what in ("get", "put"):
        started = time.monotonic()
        fn = _get if what == "get" else _put
        asyncio.run(fn(int(argv[1]), argv[2], int(argv[3]), int(argv[4]), int(argv[5])))
        elapsed = time.monotonic() - started
        print(f"ok {argv[4]} {elapsed:.2f}", flush=True)
    elif what == "many":
        asyncio.run(_many(int(argv[1]), argv[2], int(argv[3]), int(argv[4]), int(argv[5])))
        print(f"ok {argv[4]}", flush=True)
    elif what == "flood":
        opened, closed = asyncio.run(_flood(int(argv[1]), int(argv[2]), float(argv[3])))
        print("opened", opened, "closed", closed, flush=True)
    elif what == "silent":
        took = asyncio.run(_silent([int(p) for p in argv[1:]]))
        print("closed", *(f"{t:.2f}" for t in took), flush=True)
    elif what == "udpdns":
        print(udp_dns(int(argv[1]), argv[2], argv[3]), flush=True)
    else:
        raise SystemExit(f"unknown: {what}")


if __name__ == "__main__":
    main(sys.argv[1:])
