"""An HTTP/1.1 proxy front end (as wireproxy's `[http]`) whose requests go through an Upstream.

Two kinds of request are served:

* `CONNECT host:port` (RFC 9110 §9.3.6): dial through the upstream, answer
  `200 Connection established`, then relay bytes both ways (HTTPS, SSH, anything).
* Absolute-URI requests (`GET http://host[:port]/path HTTP/1.1`, any method): dial
  host:port (80 by default) and forward one request in origin-form with hop-by-hop headers
  removed and `Connection: close`; the response is relayed until the origin closes, then the
  client connection is closed too. Persistent client connections are deliberately not kept:
  a response then needs no framing of its own beyond what the origin sent, which keeps the
  proxy simple and leaves no room for desynchronisation (request smuggling).

Not served: `https://` absolute URIs (use CONNECT), origin-form requests to the proxy itself,
`Upgrade` (the header is dropped; WebSocket clients use CONNECT through a proxy anyway).
Request trailers are discarded (RFC 9110 §6.5.1 allows it).

Status codes: 400 bad request, 407 missing or wrong credentials (Basic, RFC 7617, when a
username or password is configured), 408 no complete head in time (5 s), 431 head over
64 KiB, 502 name not found / connection refused / no peer's AllowedIPs contain the
address (at once) / other dial failure / bad answer from the origin
(a name that does not resolve is a gateway error, not a timeout, hence 502 rather than
504), 504 dial timed out, 505 not HTTP/1.x. Each carries a short text body and
`Connection: close`. Malformed input never raises out of `handle`, and neither headers nor
credentials are ever logged; a failed dial is (warning: client, destination, cause). The
listener's `Gate` caps its connections (see `wiresnake.proxy.limits`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from ssl import Purpose, SSLContext, create_default_context
from typing import Final

from wiresnake.proxy import limits
from wiresnake.proxy.config import HTTPProxy
from wiresnake.proxy.relay import relay
from wiresnake.proxy.tunnel import NoRouteError
from wiresnake.proxy.upstream import NameResolutionError, Upstream

__all__ = ["HttpProxyServer", "serve_http", "serve_http_proxy", "tls_context"]

_log = logging.getLogger(__name__)

MAX_HEAD: Final = 64 * 1024  # request or response head (start line and fields)
HEAD_TIMEOUT: Final = limits.HANDSHAKE_TIMEOUT
DIAL_TIMEOUT: Final = 120.0  # the Dialer bounds each address (10 s); this, the whole name
LINGER: Final = 2.0  # how long to drain a client before closing (see _close)
MAX_CHUNK_LINE: Final = 4096
REALM: Final = "wiresnake"

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3})(?: .*)?")
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_PORT = re.compile(r"[0-9]{1,5}")
# RFC 9110 §7.6.1, plus the non-standard Proxy-Connection that old clients still send.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    }
)
# Framing and routing fields that the proxy writes itself for the origin.
_REBUILT: Final = frozenset({"host", "content-length", "transfer-encoding"})
_REASONS: Final = {
    400: "Bad Request",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

Fields = list[tuple[str, str]]


class _HttpError(Exception):
    """Answer the client with `status` (only raised before any answer bytes were sent)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class _BadBody(Exception):
    """The client's request body framing is broken."""


@dataclass(slots=True)
class _Request:
    method: str
    target: str
    minor: int  # HTTP/1.minor
    fields: Fields


@dataclass(slots=True)
class _Target:
    host: str  # for the upstream: a name, an IPv4 literal or a bare IPv6 literal
    port: int
    authority: str  # as written in the URI, for the Host field
    path: str  # origin-form


@dataclass(slots=True)
class _Framing:
    kind: str  # "none", "length" or "chunked"
    length: int = 0
    codings: str = ""  # the Transfer-Encoding value, when chunked


@dataclass(slots=True)
class _Progress:
    answered: bool = False  # some response bytes reached the client


def _error_response(status: int, message: str) -> bytes:
    body = f"{status} {_REASONS.get(status, 'Error')}: {message}\n".encode()
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if status == 407:
        lines.append(f'Proxy-Authenticate: Basic realm="{REALM}"')
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_head(reader: asyncio.StreamReader, *, skip_blank: int = 0) -> list[bytes]:
    """The lines of one head, without line ends, up to the empty line.

    IncompleteReadError when the stream ends before the first byte (a client that just
    closed); _HttpError 400 when it ends mid-head, 431 over MAX_HEAD."""
    lines: list[bytes] = []
    total = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _HttpError(431, "header section too large") from None
        except asyncio.IncompleteReadError as e:
            if not lines and not e.partial and total == 0:
                raise
            raise _HttpError(400, "incomplete head") from None
        total += len(line)
        if total > MAX_HEAD:
            raise _HttpError(431, "header section too large")
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            # RFC 9112 §2.2: ignore an empty line or two before a request line.
            if not lines and skip_blank > 0:
                skip_blank -= 1
                continue
            return lines
        if b"\r" in line or b"\0" in line:
            raise _HttpError(400, "control character in head")
        lines.append(line)


def _parse_fields(lines: list[bytes]) -> Fields:
    fields: Fields = []
    for line in lines:
        name, colon, value = line.partition(b":")
        # No obs-fold, no whitespace before the colon (RFC 9112 §5.1, §5.2): both have been
        # used to make two parsers disagree about a message.
        if not colon or not _TOKEN.fullmatch(name):
            raise _HttpError(400, "malformed header field")
        fields.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
    return fields


def _values(fields: Fields, name: str) -> list[str]:
    return [v for n, v in fields if n.lower() == name]


def _list_values(fields: Fields, name: str) -> list[str]:
    """A comma-separated list field, all its lines joined, empty elements left out."""
    return [item.strip() for v in _values(fields, name) for item in v.split(",") if item.strip()]


def _parse_request(lines: list[bytes]) -> _Request:
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _HttpError(400, "malformed request line")
    version = _VERSION.fullmatch(parts[2])
    if version is None:
        raise _HttpError(400, "malformed request line")
    if version.group(1) != b"1":
        raise _HttpError(505, "only HTTP/1.x is supported")
    if any(b <= 0x20 or b == 0x7F for b in parts[1]):
        raise _HttpError(400, "malformed request target")
    return _Request(
        method=parts[0].decode("ascii"),
        target=parts[1].decode("latin-1"),
        minor=int(version.group(2)),
        fields=_parse_fields(lines[1:]),
    )


def _parse_host_port(authority: str, default_port: int | None) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or, when a default port is given, without the port."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise _HttpError(400, "malformed IPv6 address")
        literal, rest = authority[1:end], authority[end + 1 :]
        # No zone identifiers: they name interfaces of this machine, not of the tunnel.
        if "%" in literal:
            raise _HttpError(400, "malformed IPv6 address")
        try:
            host = str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise _HttpError(400, "malformed IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise _HttpError(400, "malformed authority")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = authority.partition(":")
        port_text = port_text_ if colon else None
        if ":" in port_text_ or not _HOST_NAME.fullmatch(host):
            raise _HttpError(400, "malformed host")
    if not port_text:
        if default_port is None:
            raise _HttpError(400, "port missing")
        return host, default_port
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise _HttpError(400, "malformed port")
    return host, int(port_text)


def _parse_absolute(target: str) -> _Target:
    scheme, sep, rest = target.partition("://")
    if not sep or not scheme.isascii() or not scheme.isalpha():
        if target.startswith("/") or target == "*":
            raise _HttpError(400, "this is a proxy: send an absolute URI (http://host/path)")
        raise _HttpError(400, "malformed request target")
    if scheme.lower() == "https":
        raise _HttpError(400, "https:// URIs go through CONNECT (use the proxy for tunnelling)")
    if scheme.lower() != "http":
        raise _HttpError(400, "only http:// URIs are proxied")
    cut = len(rest)
    for stop in "/?#":
        at = rest.find(stop)
        if 0 <= at < cut:
            cut = at
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:  # userinfo is deprecated and a classic spoofing trick
        raise _HttpError(400, "user information in URI")
    host, port = _parse_host_port(authority, 80)
    path = path.partition("#")[0]  # fragments are never sent
    if not path.startswith("/"):
        path = "/" + path
    return _Target(host, port, authority, path)


def _framing(request: _Request) -> _Framing:
    """How the request body is delimited (RFC 9112 §6.3), rejecting anything ambiguous."""
    te = _list_values(request.fields, "transfer-encoding")
    cl = _list_values(request.fields, "content-length")
    if _values(request.fields, "transfer-encoding"):
        # Both fields at once is how requests are smuggled past a proxy: refuse.
        if cl:
            raise _HttpError(400, "both Transfer-Encoding and Content-Length")
        if request.minor == 0:
            raise _HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = [c.lower() for c in te]
        if not codings or codings[-1] != "chunked" or codings.count("chunked") != 1:
            raise _HttpError(400, "unsupported Transfer-Encoding")
        return _Framing("chunked", codings=", ".join(codings))
    if _values(request.fields, "content-length"):
        if len(set(cl)) != 1 or not cl[0].isdigit() or not cl[0].isascii() or len(cl[0]) > 18:
            raise _HttpError(400, "malformed Content-Length")
        return _Framing("length", length=int(cl[0]))
    return _Framing("none")


def _connection_options(fields: Fields) -> set[str]:
    return {o.lower() for o in _list_values(fields, "connection")}


def _origin_head(request: _Request, target: _Target, framing: _Framing) -> bytes:
    drop = _HOP_BY_HOP | _REBUILT | _connection_options(request.fields)
    # RFC 9112 §3.2.2: the Host field is replaced by the absolute URI's authority.
    lines = [f"{request.method} {target.path} HTTP/1.{request.minor}", f"Host: {target.authority}"]
    lines += [f"{n}: {v}" for n, v in request.fields if n.lower() not in drop]
    if framing.kind == "chunked":
        lines.append(f"Transfer-Encoding: {framing.codings}")
    elif framing.kind == "length":
        lines.append(f"Content-Length: {framing.length}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _client_head(status_line: bytes, fields: Fields, *, final: bool) -> bytes:
    drop = _HOP_BY_HOP | _connection_options(fields)
    lines = [status_line.decode("latin-1")]
    lines += [f"{n}: {v}" for n, v in fields if n.lower() not in drop]
    if final:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_line(reader: asyncio.StreamReader, limit: int) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _BadBody from None
    if len(line) > limit:
        raise _BadBody
    return line.rstrip(b"\r\n")


async def _copy_exactly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        data = await reader.read(min(n, 65536))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        writer.write(data)
        await writer.drain()
        n -= len(data)


async def _copy_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framing: _Framing
) -> None:
    """Forward exactly one request body, so that nothing after it reaches the origin."""
    if framing.kind == "length":
        await _copy_exactly(reader, writer, framing.length)
    elif framing.kind == "chunked":
        # Re-framed canonically (extensions and trailers dropped): the origin never sees
        # a chunk syntax that it might read differently from us.
        while True:
            size_text = (await _read_line(reader, MAX_CHUNK_LINE)).partition(b";")[0]
            size_text = size_text.strip(b" \t")
            if not _HEX.fullmatch(size_text):
                raise _BadBody
            size = int(size_text, 16)
            if size == 0:
                break
            writer.write(b"%x\r\n" % size)
            await _copy_exactly(reader, writer, size)
            if await _read_line(reader, 2):
                raise _BadBody
            writer.write(b"\r\n")
        trailers = 0
        while line := await _read_line(reader, MAX_HEAD):
            trailers += len(line)
            if trailers > MAX_HEAD:
                raise _BadBody
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _relay_response(
    remote_r: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: _Request,
    progress: _Progress,
) -> None:
    """Pass the origin's answer on, head cleaned of hop-by-hop fields, body as it comes."""
    while True:
        try:
            lines = await _read_head(remote_r)
            status = _STATUS_LINE.fullmatch(lines[0]) if lines else None
            if status is None:
                raise _HttpError(502, "malformed response from the origin")
            fields = _parse_fields(lines[1:])
        except asyncio.IncompleteReadError:
            raise _HttpError(502, "the origin closed without answering") from None
        except _HttpError:
            raise _HttpError(502, "malformed response from the origin") from None
        code = int(status.group(1))
        if 100 <= code < 200 and code != 101:
            # Interim answers (100 Continue, 103 Early Hints) are passed on, except to
            # HTTP/1.0 clients, which do not expect them (RFC 9110 §15.2).
            if request.minor >= 1:
                writer.write(_client_head(lines[0], fields, final=False))
                progress.answered = True
                await writer.drain()
            continue
        writer.write(_client_head(lines[0], fields, final=True))
        progress.answered = True
        await writer.drain()
        break
    if request.method == "HEAD" or code in (204, 304):
        return
    while data := await remote_r.read(65536):
        writer.write(data)
        await writer.drain()


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close after a "lingering" drain: closing with unread client data in the socket
    makes the kernel send a reset, which can destroy our answer before the client reads it
    (RFC 9112 §9.6)."""
    try:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), LINGER)
            # Without a half-close (TLS) the client would not see the end of our answer
            # while we wait for the end of its data: just close.
            if not writer.can_write_eof():
                return
            writer.write_eof()
            async with asyncio.timeout(LINGER):
                while await reader.read(65536):
                    pass
    finally:
        writer.close()


def _dial_failure(error: OSError, host: str, timeout: float) -> _HttpError:
    """The answer to a dial that failed, its message saying why."""
    if isinstance(error, NameResolutionError):
        return _HttpError(502, f"host name not found: {error}")
    if isinstance(error, NoRouteError):
        return _HttpError(502, f"no route to {host}: {error}")
    if isinstance(error, ConnectionRefusedError):
        return _HttpError(502, "connection refused")
    if isinstance(error, TimeoutError):
        return _HttpError(504, f"connection timed out: {error or f'no answer in {timeout:g} s'}")
    return _HttpError(502, f"host unreachable: {error.strerror or error}")


class HttpProxyServer:
    """Serves one client connection per `handle` call; see the module text."""

    def __init__(self, upstream: Upstream, username: str = "", password: str = "") -> None:
        self.upstream = upstream
        self._auth = bool(username or password)
        self._username = username.encode()
        self._password = password.encode()
        self.head_timeout = HEAD_TIMEOUT
        self.dial_timeout = DIAL_TIMEOUT

    def _authorized(self, fields: Fields) -> bool:
        if not self._auth:
            return True
        values = _values(fields, "proxy-authorization")
        if len(values) != 1:
            return False
        scheme, _, token = values[0].partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, colon, password = decoded.partition(b":")
        # Both comparisons always run, so timing does not tell which part was wrong.
        user_ok = hmac.compare_digest(user, self._username)
        password_ok = hmac.compare_digest(password, self._password)
        return bool(colon) and user_ok and password_ok

    async def _dial(
        self, host: str, port: int, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(
                self.upstream.open_connection(host, port), self.dial_timeout
            )
        except OSError as e:
            failure = _dial_failure(e, host, self.dial_timeout)
        _log.warning(
            "HTTP proxy from %s: %s port %d failed: %s",
            limits.client_name(writer),
            host,
            port,
            failure.message,
        )
        raise failure

    async def _connect(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, port = _parse_host_port(request.target, None)
        remote_r, remote_w = await self._dial(host, port, writer)
        _log.debug("CONNECT to %s port %d", host, port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        # Bytes the client sent right after its head (say a TLS ClientHello) are still in
        # `reader` and go out first.
        await relay(reader, writer, remote_r, remote_w)

    async def _forward(
        self,
        request: _Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        progress: _Progress,
    ) -> None:
        target = _parse_absolute(request.target)
        framing = _framing(request)
        remote_r, remote_w = await self._dial(target.host, target.port, writer)
        _log.debug("%s to %s port %d", request.method, target.host, target.port)
        try:
            remote_w.write(_origin_head(request, target, framing))
            # Body and answer run side by side: an origin may answer (100 Continue, or an
            # early error) before it has read the body.
            body = asyncio.create_task(_copy_body(reader, remote_w, framing))
            answer = asyncio.create_task(_relay_response(remote_r, writer, request, progress))
            try:
                await asyncio.wait({body, answer}, return_when=asyncio.FIRST_COMPLETED)
                failure = body.exception() if body.done() else None
                # A broken body, or a client gone mid-body, ends the exchange; a failed write
                # to the origin does not: it may have answered early (413) and closed.
                if isinstance(failure, _BadBody):
                    raise _HttpError(400, "malformed chunked body")
                if isinstance(failure, asyncio.IncompleteReadError):
                    return
                await answer
            finally:
                body.cancel()
                answer.cancel()
                # gather, not suppress(): a cancellation of this handler must still propagate.
                await asyncio.gather(body, answer, return_exceptions=True)
        finally:
            remote_w.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, progress: _Progress
    ) -> None:
        try:
            async with asyncio.timeout(self.head_timeout):
                lines = await _read_head(reader, skip_blank=2)
        except TimeoutError:
            raise _HttpError(408, "no complete request in time") from None
        limits.handshake_done()
        request = _parse_request(lines)
        if not self._authorized(request.fields):
            raise _HttpError(407, "proxy authentication required")
        if request.method == "CONNECT":
            await self._connect(request, reader, writer)
        else:
            await self._forward(request, reader, writer, progress)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection, then close it."""
        progress = _Progress()
        try:
            await self._serve(reader, writer, progress)
        except _HttpError as e:
            if not progress.answered:
                _log.debug("answered %d: %s", e.status, e.message)
                writer.write(_error_response(e.status, e.message))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the client or the origin went away
        except asyncio.CancelledError:
            pass  # shutting down; Python 3.11 would log a cancelled handler as an error
        except Exception:
            # A bug must not take the listener down, nor leave the client hanging.
            _log.exception("HTTP proxy request failed")
            if not progress.answered:
                with contextlib.suppress(Exception):
                    writer.write(_error_response(502, "internal error"))
        finally:
            await _close(reader, writer)


def tls_context(cert_file: str, key_file: str) -> SSLContext:
    """A server context for an HTTPS proxy listener (clients speak TLS to the proxy)."""
    context = create_default_context(Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def serve_http(
    upstream: Upstream,
    host: str,
    port: int,
    username: str = "",
    password: str = "",
    ssl: SSLContext | None = None,
    caps: limits.Limits | None = None,
) -> asyncio.Server:
    """Listen on the local (host, port) and serve HTTP proxy requests through `upstream`;
    `caps` bounds the listener's connections (by default: what descriptors allow)."""
    server = HttpProxyServer(upstream, username, password)
    caps = caps or limits.Limits.for_listeners(1, env={})
    server.head_timeout = caps.handshake_timeout
    gate = limits.Gate("HTTP proxy", caps)
    return await gate.start_server(server.handle, host, port, ssl=ssl)


async def serve_http_proxy(upstream: Upstream, section: HTTPProxy) -> asyncio.Server:
    """Serve an `[http]` section: its bind address, credentials and, if given, TLS files."""
    context = tls_context(section.cert_file, section.key_file) if section.tls else None
    return await serve_http(
        upstream,
        section.bind.host,
        section.bind.port,
        section.username,
        section.password,
        ssl=context,
    )
