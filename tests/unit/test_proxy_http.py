"""The HTTP proxy front end on loopback, its requests through a rootless tunnel pair to a
small HTTP/1.1 origin (and an echo server) on the far tunnel."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import random
import shutil
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from proxy_lab import TableUpstream
from test_proxy_streams import _echo
from test_proxy_tunnel import _pair

from wiresnake.proxy import http as proxy_http
from wiresnake.proxy.http import HttpProxyServer, serve_http
from wiresnake.proxy.tunnel import Tunnel

ORIGIN_PORT = 8080
ECHO_PORT = 7
NAMES = {"web.internal": ["10.60.0.2"], "v6.internal": ["fd60::2"]}


@pytest.fixture(autouse=True)
def _no_proxy_bypass(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib and curl would bypass the proxy for hosts listed in NO_PROXY.
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        assert await reader.readuntil(b"\r\n") == b"\r\n"  # the proxy sends no trailers
        return body
    return await reader.readexactly(int(headers.get("content-length", "0")))


async def _origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One request, answered with JSON echoing it. `/chunked` answers in chunks."""
    try:
        await _answer(reader, writer)
    except AssertionError as e:  # visible to the test as a 500, not as a hang
        writer.write(b"HTTP/1.1 500 Assertion\r\nConnection: close\r\n\r\n%s" % str(e).encode())
    finally:
        writer.close()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    request_line, *field_lines = head[:-4].split("\r\n")
    method, path, version = request_line.split(" ")
    fields = [line.split(":", 1) for line in field_lines]
    headers = {n.lower(): v.strip() for n, v in fields}
    # Hop-by-hop fields never reach the origin.
    assert "proxy-authorization" not in headers
    assert "proxy-connection" not in headers
    assert "x-hop" not in headers
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await _read_body(reader, headers)
    answer = json.dumps(
        {
            "method": method,
            "path": path,
            "version": version,
            "headers": headers,
            "body": body.decode("latin-1"),
        }
    ).encode()
    if path == "/chunked":
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n"
        )
        for i in range(0, len(answer), 7):
            part = answer[i : i + 7]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        writer.write(b"0\r\n\r\n")
    else:
        writer.write(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(answer), answer)
        )
    await writer.drain()


@dataclass
class Lab:
    port: int  # the proxy's, on loopback
    far: Tunnel  # the tunnel end that the origin and echo servers listen on


@asynccontextmanager
async def _lab(
    username: str = "", password: str = "", ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Lab]:
    """Tunnel pair, origin and echo behind the far end, the proxy on loopback: its port."""
    a, b = await _pair()
    async with a, b:
        await b.start_server(_origin, ORIGIN_PORT)
        await b.start_server(_echo, ECHO_PORT)
        upstream = TableUpstream(a, NAMES)
        proxy = await serve_http(upstream, "127.0.0.1", 0, username, password, ssl=ssl_context)
        try:
            yield Lab(proxy.sockets[0].getsockname()[1], b)
        finally:
            proxy.close()


def _fetch(
    port: int,
    url: str,
    data: bytes | None = None,
    auth: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """urllib through the proxy (blocking: run it in a thread)."""
    proxy = f"http://{auth + '@' if auth else ''}127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


async def _raw(port: int, data: bytes) -> bytes:
    """Send `data` to the proxy and end the stream, read its answer to the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_urllib_get_by_address_and_by_name_with_hop_by_hop_fields_removed() -> None:
    async def scenario() -> None:
        async with _lab() as lab:
            port = lab.port
            status, headers, body = await asyncio.to_thread(
                _fetch,
                port,
                "http://10.60.0.2:8080/x?q=1#frag",
                headers={"Proxy-Connection": "keep-alive", "Proxy-Authorization": "Basic eDp5"},
            )
            assert status == 201 and headers["Connection"] == "close"
            seen = json.loads(body)
            assert (seen["method"], seen["path"]) == ("GET", "/x?q=1")
            assert seen["headers"]["host"] == "10.60.0.2:8080"
            assert seen["headers"]["connection"] == "close"
            status, _, body = await asyncio.to_thread(_fetch, port, "http://web.internal:8080/y")
            seen = json.loads(body)
            assert status == 201 and seen["path"] == "/y"
            assert seen["headers"]["host"] == "web.internal:8080"

    _run(scenario)


def test_post_with_a_length_and_with_chunks_and_a_chunked_answer() -> None:
    async def scenario() -> None:
        async with _lab() as lab:
            port = lab.port
            status, _, body = await asyncio.to_thread(
                _fetch, port, "http://web.internal:8080/form", b"a=1&b=2"
            )
            seen = json.loads(body)
            assert status == 201 and (seen["method"], seen["body"]) == ("POST", "a=1&b=2")
            assert seen["headers"]["content-length"] == "7"

            # chunked request (extensions and trailers dropped), chunked answer relayed
            answer = await _raw(
                port,
                b"PUT http://10.60.0.2:8080/chunked HTTP/1.1\r\nHost: spoofed\r\n"
                b"Transfer-Encoding: chunked\r\nTE: trailers\r\nConnection: TE, X-Hop\r\n"
                b"X-Hop: 1\r\nX-Kept: 2\r\n\r\n"
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            )
            head, _, rest = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"Connection: close" in head and b"Keep-Alive" not in head
            payload = b""
            while size := int(rest.split(b"\r\n", 1)[0], 16):
                rest = rest.split(b"\r\n", 1)[1]
                payload, rest = payload + rest[:size], rest[size + 2 :]
            seen = json.loads(payload)
            assert (seen["method"], seen["body"]) == ("PUT", "hello world")
            assert seen["headers"]["host"] == "10.60.0.2:8080"  # from the URI, not the client
            assert seen["headers"]["transfer-encoding"] == "chunked"
            assert "te" not in seen["headers"] and seen["headers"]["x-kept"] == "2"

            # Expect: 100-continue, the interim answer passed through
            answer = await _raw(
                port,
                b"POST http://10.60.0.2:8080/e HTTP/1.1\r\nExpect: 100-continue\r\n"
                b"Content-Length: 3\r\n\r\nabc",
            )
            assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n")
            assert json.loads(answer.split(b"\r\n\r\n", 2)[2])["body"] == "abc"

    _run(scenario)


def test_connect_relays_256_kib_byte_exact_including_bytes_sent_early() -> None:
    async def scenario() -> None:
        async with _lab() as lab:
            port = lab.port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # The first bytes go out with the head, before the 200 (as TLS clients may).
            writer.write(b"CONNECT 10.60.0.2:7 HTTP/1.1\r\nHost: 10.60.0.2:7\r\n\r\nearly")
            assert await reader.readuntil(b"\r\n\r\n") == (
                b"HTTP/1.1 200 Connection established\r\n\r\n"
            )
            assert await asyncio.wait_for(reader.readexactly(5), 5) == b"early"
            payload = random.Random(7).randbytes(256 * 1024)
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(-1), 5) == payload
            writer.close()

    _run(scenario)


def test_basic_authentication() -> None:
    async def scenario() -> None:
        async with _lab("alice", "s3cr:t") as lab:
            port = lab.port
            url = "http://10.60.0.2:8080/auth"
            status, headers, _ = await asyncio.to_thread(_fetch, port, url)
            assert status == 407
            assert headers["Proxy-Authenticate"] == 'Basic realm="wiresnake"'
            assert headers["Connection"] == "close"
            status, _, body = await asyncio.to_thread(_fetch, port, url, auth="alice:s3cr%3At")
            assert status == 201 and json.loads(body)["path"] == "/auth"
            status, _, _ = await asyncio.to_thread(_fetch, port, url, auth="alice:wrong")
            assert status == 407
            # CONNECT needs the credentials too; malformed ones are just wrong.
            token = base64.b64encode(b"alice:s3cr:t").decode()
            for authorization, expected in [
                ("", b"407"),
                ("Proxy-Authorization: Basic !!!\r\n", b"407"),
                ("Proxy-Authorization: Bearer x\r\n", b"407"),
                (f"Proxy-Authorization: basic  {token}\r\n", b"200"),
            ]:
                answer = await _raw(
                    port, f"CONNECT 10.60.0.2:7 HTTP/1.1\r\n{authorization}\r\n".encode()
                )
                assert answer.startswith(b"HTTP/1.1 " + expected)

    _run(scenario)


def test_failures_answer_with_a_status_and_close() -> None:
    async def scenario() -> None:
        async with _lab() as lab:
            port = lab.port
            cases = [
                (b"GET http://nowhere.internal/ HTTP/1.1\r\n\r\n", 502),
                (b"CONNECT nowhere.internal:443 HTTP/1.1\r\n\r\n", 502),
                (b"GET http://10.60.0.2:9/ HTTP/1.1\r\n\r\n", 502),  # refused
                (b"CONNECT 10.60.0.2:9 HTTP/1.1\r\n\r\n", 502),
                (b"HELLO\r\n\r\n", 400),
                (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
                (b"GET /local HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
                (b"GET https://10.60.0.2/ HTTP/1.1\r\n\r\n", 400),
                (b"GET ftp://10.60.0.2/ HTTP/1.1\r\n\r\n", 400),
                (b"GET http://u:p@10.60.0.2/ HTTP/1.1\r\n\r\n", 400),
                (b"GET http://10.60.0.2:99999/ HTTP/1.1\r\n\r\n", 400),
                (b"CONNECT 10.60.0.2 HTTP/1.1\r\n\r\n", 400),
                (b"CONNECT [fd60::2 HTTP/1.1\r\n\r\n", 400),
                (b"CONNECT [fe80::1%25lo]:80 HTTP/1.1\r\n\r\n", 400),
                (b"GET http://10.60.0.2:8080/ HTTP/2.0\r\n\r\n", 505),
                (b"GET http://10.60.0.2:8080/ HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
                (b"GET http://10.60.0.2:8080/ HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
                (b"GET http://a/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
                (
                    b"POST http://10.60.0.2:8080/ HTTP/1.1\r\nContent-Length: 3\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                    400,
                ),
                (b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
                (
                    b"POST http://10.60.0.2:8080/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"zz\r\n",
                    400,
                ),
                (b"GET http://a/ HTTP/1.1\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n", 431),
                # many moderate fields that add up past the limit
                (b"GET http://a/ HTTP/1.1\r\n" + b"X-Pad: %b\r\n" % (b"y" * 990) * 80, 431),
            ]
            for request, status in cases:
                answer = await _raw(port, request)
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 %d " % status), (request[:60], answer[:80])
                assert b"\r\nConnection: close" in head
                assert body.startswith(b"%d " % status)

            # a client that connects and leaves costs nothing, and the proxy still works
            assert await _raw(port, b"") == b""
            assert (await _raw(port, b"GET http://10.60.0.2:8080/ok HTTP/1.0\r\n\r\n")).startswith(
                b"HTTP/1.1 201 Created"
            )

    _run(scenario)


def test_ipv6_targets() -> None:
    async def scenario() -> None:
        async with _lab() as lab:
            port = lab.port
            status, _, body = await asyncio.to_thread(_fetch, port, "http://[fd60::2]:8080/v6")
            seen = json.loads(body)
            assert status == 201 and seen["headers"]["host"] == "[fd60::2]:8080"
            status, _, body = await asyncio.to_thread(_fetch, port, "http://v6.internal:8080/n")
            assert status == 201 and json.loads(body)["path"] == "/n"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"CONNECT [fd60::2]:7 HTTP/1.1\r\n\r\nping")
            assert await reader.readuntil(b"\r\n\r\n") == (
                b"HTTP/1.1 200 Connection established\r\n\r\n"
            )
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            writer.close()

    _run(scenario)


class _Stalled:
    """An upstream whose connections never complete."""

    async def open_connection(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def resolve(self, host: str) -> list[str]:
        return [host]

    def udp_endpoint(self) -> Any:
        raise NotImplementedError


def test_dial_timeout_is_504_and_a_slow_head_is_408() -> None:
    async def scenario() -> None:
        proxy = HttpProxyServer(_Stalled())
        proxy.dial_timeout = 0.2
        proxy.head_timeout = 0.2
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        answer = await _raw(port, b"CONNECT 10.60.0.2:443 HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET http://10.60.0.2/ HTTP/1.1\r\n")  # and the head never ends
        answer = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        server.close()

    _run(scenario)


def test_a_bad_answer_from_the_origin_is_502() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def scenario() -> None:
        async with _lab() as lab:
            await lab.far.start_server(garbage, 81)
            await lab.far.start_server(silent, 82)
            for origin in (81, 82):
                request = b"GET http://10.60.0.2:%d/ HTTP/1.1\r\n\r\n" % origin
                answer = await _raw(lab.port, request)
                assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer

    _run(scenario)


def test_bytes_after_the_body_never_reach_the_origin() -> None:
    async def tail(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers with every byte that follows the head within 0.3 s."""
        await reader.readuntil(b"\r\n\r\n")
        rest = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                while data := await reader.read(65536):
                    rest += data
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(rest), rest))
        writer.close()

    async def scenario() -> None:
        async with _lab() as lab:
            await lab.far.start_server(tail, 83)
            smuggled = b"GET http://10.60.0.2:83/second HTTP/1.1\r\n\r\n"
            for framing, body in [
                (b"Content-Length: 3", b"abc"),
                (b"Transfer-Encoding: chunked", b"3\r\nabc\r\n0\r\n\r\n"),
            ]:
                request = b"POST http://10.60.0.2:83/ HTTP/1.1\r\n%s\r\n\r\n%s" % (framing, body)
                answer = await _raw(lab.port, request + smuggled)
                head, _, got = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK"), answer
                assert got == body  # exactly the body, nothing of the second request

    _run(scenario)


def _self_signed(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "proxy.crt", directory / "proxy.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


def test_tls_listener(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)

    async def scenario() -> None:
        context = proxy_http.tls_context(cert_file, key_file)
        async with _lab(ssl_context=context) as lab:
            port = lab.port
            client = ssl.create_default_context(cafile=cert_file)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname="localhost"
            )
            writer.write(b"GET http://10.60.0.2:8080/tls HTTP/1.1\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(-1), 5)
            assert answer.startswith(b"HTTP/1.1 201 Created\r\n")
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["path"] == "/tls"
            writer.close()

    _run(scenario)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_through_the_proxy() -> None:
    async def scenario() -> None:
        async with _lab("bob", "pw") as lab:
            port = lab.port
            env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
            base = ["curl", "-q", "-sS", "--max-time", "5", "-x", f"http://127.0.0.1:{port}"]
            base += ["--proxy-user", "bob:pw"]
            process = await asyncio.create_subprocess_exec(
                *base,
                "-d",
                "from curl",
                "http://web.internal:8080/curl",
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            out, _ = await process.communicate()
            assert process.returncode == 0
            seen = json.loads(out)
            assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/curl", "from curl")
            # -p: tunnel through CONNECT, then plain HTTP to the origin inside it
            process = await asyncio.create_subprocess_exec(
                *base, "-p", "http://10.60.0.2:8080/tunnelled", stdout=asyncio.subprocess.PIPE
            )
            out, _ = await process.communicate()
            assert process.returncode == 0
            assert json.loads(out)["path"] == "/tunnelled"

    _run(scenario)
