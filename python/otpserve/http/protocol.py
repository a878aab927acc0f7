"""HTTP/1.1 connections on asyncio + httptools: the thin, fast face of the servings.

One ``HttpConnection`` per TCP connection parses requests with httptools (llhttp, the parser Node.js and
uvicorn use) and hands each complete request to the ``Router``. Requests on one connection are answered in
order (pipelined ones wait their turn). Limits are enforced while reading, so a client cannot make the server
buffer more than ``max_body`` bytes or hang it with a lying Content-Length (the idle sweep answers 408).
A connection that closes while its request is queued cancels that request: it costs no compute.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from otpserve._kernel import http_parse_whole

if TYPE_CHECKING:
    from otpserve.http.router import Router

log = logging.getLogger("otpserve.http")

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    411: b"Length Required",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
MAX_HEADER_BYTES = 64 * 1024
# Requests a client may pipeline ahead of its answers before the server stops reading from it.
MAX_PIPELINED = 64


class Incoming:
    """One parsed request: method, path, query, headers (lower-cased names; at least the ones the router
    reads: ``inference-header-content-length`` and ``x-request-timeout``), and the body."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query")

    def __init__(
        self, method: bytes, path: bytes, query: bytes, headers: dict[bytes, bytes], body: bytes, keep_alive: bool
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


def response_bytes(status: int, body: bytes, content_type: bytes, extra: bytes = b"", close: bool = False) -> bytes:
    """Serialize a whole HTTP/1.1 response."""
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n" % (
        status,
        REASONS.get(status, b"Unknown"),
        content_type,
        len(body),
        extra,
        b"connection: close\r\n" if close else b"",
    )
    return head + body


class HttpConnection(asyncio.Protocol):
    """Parses requests off one socket, answers them in order, and cancels queued work on disconnect."""

    __slots__ = (
        "_body",
        "_body_size",
        "_closing",
        "_draining",
        "_failure",
        "_header_bytes",
        "_headers",
        "_parser",
        "_paused",
        "_pending",
        "_url",
        "busy",
        "cancel_current",
        "last_activity",
        "loop",
        "reading_message",
        "router",
        "stopping",
        "transport",
    )

    def __init__(self, router: Router, loop: asyncio.AbstractEventLoop) -> None:
        self.router = router
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._pending: deque[Incoming] = deque()
        self._closing = False
        self.busy = False  # a request of this connection is being answered
        self.cancel_current: Any = None  # undoes the in-flight request if the client leaves
        self.reading_message = False
        self.last_activity = loop.time()
        self._failure: tuple[int, str] | None = None  # a protocol error waiting for the in-flight answer
        self._draining = False
        self._paused = False
        # The server is stopping: what was read is answered, the last answer says "connection: close".
        self.stopping = False

    # ---- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the new connection with the server."""
        self.transport = transport  # type: ignore[assignment]
        self.router.server.connections.add(self)
        if self.router.server.stopping:  # taken from the listener's queue while it closed
            self.stopping = True

    def connection_lost(self, exc: Exception | None) -> None:
        """The client left: cancel its queued request so no compute is spent on it."""
        self._closing = True
        self.router.server.connections.discard(self)
        cancel, self.cancel_current = self.cancel_current, None
        if cancel is not None:
            cancel()
        self._pending.clear()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        """Feed bytes to the parser; a malformed request is answered 400 and the connection closed."""
        self.last_activity = self.loop.time()
        if not self.reading_message and not self._closing:
            # Fast path: one whole ordinary request in one read (nearly every request) is parsed in one
            # native call instead of httptools' eight-odd callbacks; anything else goes to httptools.
            whole = http_parse_whole(data, MAX_HEADER_BYTES, self.router.server.max_body)
            if whole is not None:
                method, path, query, keep_alive, body, header_length, timeout = whole
                headers = {}
                if header_length is not None:
                    headers[b"inference-header-content-length"] = header_length
                if timeout is not None:
                    headers[b"x-request-timeout"] = timeout
                self._complete(Incoming(method, path, query, headers, body, keep_alive))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self.fail(400, f"malformed HTTP request: {exc}")
        except _Refused:
            pass

    # ---- httptools callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """httptools: a new request starts."""
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        self.reading_message = True

    def on_url(self, url: bytes) -> None:
        """httptools: (part of) the request target."""
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools: one header; names are kept lower-cased."""
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._count_header_bytes(0)
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        """httptools: refuse a declared body over the limit before any of it is read (413)."""
        length = self._headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                self.fail(400, f"Content-Length {length!r} is not a number")
                raise _Refused from None
            if declared > self.router.server.max_body:
                self.fail(413, f"body of {declared} bytes is over the limit of {self.router.server.max_body} bytes")
                raise _Refused

    def on_body(self, body: bytes) -> None:
        """httptools: a chunk of the body, counted against the limit."""
        self._body_size += len(body)
        if self._body_size > self.router.server.max_body:
            self.fail(413, f"body is over the limit of {self.router.server.max_body} bytes")
            raise _Refused
        self._body.append(body)

    def on_message_complete(self) -> None:
        """httptools: the request is whole; answer it now or after the one in flight."""
        self.reading_message = False
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        path, _, query = self._url.partition(b"?")
        parser = self._parser
        self._complete(Incoming(parser.get_method(), path, query, self._headers, body, parser.should_keep_alive()))

    def _complete(self, req: Incoming) -> None:
        """A whole request: answer it now, or after the one in flight (pipelining)."""
        if self._closing:
            return  # it came behind an answer that closed the connection
        if self.busy:
            self._pending.append(req)
            if len(self._pending) >= MAX_PIPELINED and self.transport is not None:
                # A client pipelining without reading its answers: stop reading until it catches up.
                self.transport.pause_reading()
                self._paused = True
        else:
            self.busy = True
            self.router.handle(self, req)

    # ---- stopping --------------------------------------------------------------------------------------

    def drain(self) -> None:
        """The server stops: answer every request already read, the last with ``connection: close``."""
        self.stopping = True

    def keeps_alive(self, req: Incoming) -> bool:
        """Whether the answer to ``req`` leaves the connection open: the client's wish, unless the server
        stops and nothing more was read (that answer is the last)."""
        return req.keep_alive and (not self.stopping or bool(self._pending))

    def idle_since(self, now: float) -> float | None:
        """Seconds this connection has waited for its client's next request; None while it has work."""
        if self.busy or self._pending or self.reading_message or self.transport is None:
            return None
        return now - self.last_activity

    def close(self) -> None:
        """Close the connection now (whatever it was doing)."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    # ---- answering -------------------------------------------------------------------------------------

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            self.fail(431, f"request line and headers are over {MAX_HEADER_BYTES} bytes")
            raise _Refused

    def send(self, data: bytes, keep_alive: bool) -> None:
        """Write a whole response, then go on with the next pipelined request (or close)."""
        self.cancel_current = None
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        self.last_activity = self.loop.time()
        if not keep_alive:
            self._closing = True
            transport.close()
            return
        self.busy = False
        if self._failure is not None:
            # A protocol error came in behind the request just answered: its answer goes out in order.
            self._write_failure(*self._failure)
            return
        if self._draining:
            return  # an outer send() is already working through the pipelined requests
        self._draining = True
        try:
            # A loop, not recursion: hundreds of pipelined quick answers must not exhaust the stack.
            while self._pending and not self.busy and self.transport is not None and not self._closing:
                self.busy = True
                self.router.handle(self, self._pending.popleft())
        finally:
            self._draining = False
        if self._paused and len(self._pending) < MAX_PIPELINED // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def fail(self, status: int, message: str) -> None:
        """Answer a protocol-level error and close: the stream can no longer be trusted."""
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._pending.clear()
        if self.busy:
            # The request before the bad bytes is still being answered: answer it first, then the error.
            self._failure = (status, message)
            self.transport.pause_reading()
            return
        self._write_failure(status, message)

    def _write_failure(self, status: int, message: str) -> None:
        self.cancel_current = None
        self._failure = None
        if self.transport is None:
            return
        self.router.server.count_status(status)
        body = self.router.error_body(message)
        self.transport.write(response_bytes(status, body, b"application/json", close=True))
        self.transport.close()

    def idle_check(self, now: float, timeout: float, keep_alive: float) -> None:
        """Close a connection stuck mid-request (a body shorter than its Content-Length), or idle too long."""
        if self.busy:
            return
        idle = now - self.last_activity
        if self.reading_message and idle > timeout:
            self.fail(408, f"request not completed within {timeout:g} s (body shorter than its Content-Length?)")
        elif not self.reading_message and idle > keep_alive and self.transport is not None:
            self._closing = True
            self.transport.close()  # an idle keep-alive connection: free its file descriptor


class _Refused(Exception):
    """Raised out of a parser callback to stop parsing a request that was already answered."""
