"""The model server's HTTP/1.1 layer: asyncio + httptools, calling one request handler directly.

A general ASGI server (uvicorn) spent ~95 µs of CPU per request here before
the handler ran; this layer spends ~30 µs, which a 2-CPU machine serving
small models feels as throughput. It does what the server needs and no more:

- keep-alive and pipelining: each connection's requests are handled in
  order, one at a time, and answered in order; reading pauses while too many
  wait (``MAX_PIPELINED``);
- bodies by Content-Length or chunked, up to ``max_body`` bytes (413 and the
  connection closed when over: the rest of the body is not read);
  ``Expect: 100-continue`` answered, as curl asks for it on larger bodies;
- a malformed request gets 400 (431 for a request line and headers over
  ``MAX_HEAD``) and the connection is closed; the server carries on;
- idle keep-alive connections close after ``keep_alive`` seconds;
- :meth:`HTTPServer.shutdown` stops accepting, lets the requests in hand
  finish (bounded), then closes every connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools
import orjson

log = logging.getLogger("workbench.serving")

MAX_PIPELINED = 32
MAX_HEAD = 64 * 1024  # bytes of request line and headers


@dataclass
class Request:
    method: str
    path: str
    headers: dict[bytes, bytes]  # names lowercased; a repeated header keeps its last value
    body: bytes
    connections: int = 1  # client connections open when it arrived (this one included)


@dataclass
class Response:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # content-length is added


Handler = Callable[[Request], Awaitable[Response]]

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def encode(response: Response, keep_alive: bool) -> bytes:
    """The bytes of ``response`` on the wire."""
    lines = [b"HTTP/1.1 %d %s" % (response.status, _REASONS.get(response.status, b"Unknown"))]
    lines += [name + b": " + value for name, value in response.headers]
    lines.append(b"content-length: %d" % len(response.body))
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + response.body


def error(status: int, message: str) -> Response:
    return Response(status, orjson.dumps({"error": message}), [(b"content-type", b"application/json")])


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, hands them to the handler in order, writes the answers."""

    def __init__(self, server: HTTPServer, adopted: bool = False, first: bytes = b""):
        self.server = server
        self.adopted = adopted  # handed over (by another worker process, workers.Balancer, or the native front end)
        self.first = first  # bytes already read from it by whoever handed it over
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.head = 0  # bytes of request line and headers so far
        self.waiting: deque[tuple[Request, bool]] = deque()
        self.busy = False  # a request is with the handler
        self.partial = False  # part of a request is parsed (the connection cannot change hands now)
        self.broken = False  # the stream cannot be parsed further: answer what is in hand, then close
        self.last_words: bytes | None = None  # written after the answer in hand, before closing
        self.closing = False
        self.paused = False
        self.idle: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.server.stopping:  # accepted just before the listening socket closed
            self._close()
            return
        balancer = self.server.balancer
        if balancer is not None and not self.adopted and balancer.pass_on(transport, len(self.server.connections) + 1):
            self.closing = True
            transport.abort()  # our copy of the socket; the other worker's stays open
            return
        self.server.connections.add(self)
        if balancer is not None:
            balancer.count(len(self.server.connections))
        self._arm_idle()
        if self.first:
            first, self.first = self.first, b""
            self.data_received(first)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.server.balancer is not None:
            self.server.balancer.count(len(self.server.connections))
        self.closing = True
        self.waiting.clear()
        if self.idle is not None:
            self.idle.cancel()

    def data_received(self, data: bytes) -> None:
        if self.broken or self.closing:
            return
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(error(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as e:
            if not self.broken:  # (else a callback already failed the connection)
                self._fail(error(400, f"malformed HTTP request: {e}"))

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body, self.size, self.head = b"", {}, [], 0, 0
        self.partial = True

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value
        self._count_head(len(name) + len(value))

    def _count_head(self, n: int) -> None:
        self.head += n
        if self.head > MAX_HEAD:
            self._fail(error(431, f"request line and headers are over the limit of {MAX_HEAD} bytes"))
            raise httptools.HttpParserError("head over the limit")

    def on_headers_complete(self) -> None:
        length = self.headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.server.max_body:
            self._fail(error(413, f"request body of {int(length)} bytes is over the limit of {self.server.max_body}"))
            raise httptools.HttpParserError("body over the limit")  # stop parsing this connection
        if self.headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.server.max_body:
            self._fail(error(413, f"request body is over the limit of {self.server.max_body} bytes"))
            raise httptools.HttpParserError("body over the limit")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.partial = False
        if self.broken:
            return
        url = self.url
        if url.startswith(b"/"):  # origin form, as clients send it
            q = url.find(b"?")
            raw_path = url if q < 0 else url[:q]
        else:  # absolute form ("GET http://host/path"), as proxies may
            try:
                raw_path = httptools.parse_url(url).path or b"/"
            except httptools.HttpParserInvalidURLError:
                self._fail(error(400, f"malformed request target {url[:200].decode('latin-1')!r}"))
                return
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        request = Request(
            self.parser.get_method().decode("latin-1"), path, self.headers, body, len(self.server.connections)
        )
        self.waiting.append((request, self.parser.should_keep_alive()))
        if len(self.waiting) > MAX_PIPELINED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        if not self.busy:
            self._next()

    # ---------------------------------------------------------------- handling

    def _next(self) -> None:
        if not self.waiting or self.closing or self.broken:
            self.busy = False
            if not self.closing:
                balancer = self.server.balancer
                if balancer is not None and balancer.wants_out(len(self.server.connections)) and self.pass_on():
                    return
                self._arm_idle()
            return
        self.busy = True
        request, keep_alive = self.waiting.popleft()
        if self.paused and len(self.waiting) <= MAX_PIPELINED // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        task = self.loop.create_task(self.server.handler(request))
        task.add_done_callback(lambda t: self._answer(t, keep_alive and not self.server.stopping))
        self.server.tasks.add(task)

    def _answer(self, task: asyncio.Task[Response], keep_alive: bool) -> None:
        self.server.tasks.discard(task)
        if task.cancelled():
            response = error(503, "the server is shutting down")
        elif task.exception() is not None:
            exc = task.exception()
            log.error("request handler failed", exc_info=exc)
            response = error(500, f"internal error: {type(exc).__name__}: {exc}")
        else:
            response = task.result()
        if self.closing or self.transport is None:
            return
        if self.broken:
            self.transport.write(encode(response, keep_alive=True) + (self.last_words or b""))
            self._close()
            return
        self.transport.write(encode(response, keep_alive))
        if not keep_alive:
            self._close()
            return
        self._next()

    def _fail(self, response: Response) -> None:
        """Answer ``response`` after the request in hand (dropping those queued behind it), then close."""
        if self.broken or self.closing or self.transport is None:
            return
        self.broken = True
        self.waiting.clear()
        if self.busy:
            self.last_words = encode(response, keep_alive=False)
        else:
            self.transport.write(encode(response, keep_alive=False))
            self._close()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm_idle(self) -> None:
        if self.idle is None and self.server.keep_alive > 0:
            self.idle = self.loop.call_later(self.server.keep_alive, self._idle_close)

    def _idle_close(self) -> None:
        self.idle = None
        if not self.busy and not self.waiting:
            self._close()

    def pass_on(self) -> bool:
        """Hand this connection to another worker process if it is idle between requests and the balancer finds
        one that should take it; True if it went (this worker then forgets it)."""
        transport, balancer = self.transport, self.server.balancer
        if self.busy or self.waiting or self.partial or self.paused or self.broken or self.closing:
            return False
        if transport is None or transport.get_write_buffer_size() or balancer is None:
            return False
        if not balancer.pass_on(transport, len(self.server.connections)):
            return False
        self.closing = True
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.server.connections.discard(self)
        balancer.count(len(self.server.connections))
        transport.abort()  # our copy of the socket; the other worker's stays open, and so does the connection
        return True

    def close_if_idle(self) -> None:
        if not self.busy and not self.waiting:
            self._close()


class HTTPServer:
    """Serves ``handler`` on ``host:port`` from the running event loop."""

    def __init__(self, handler: Handler, *, max_body: int = 16 << 20, keep_alive: float = 60.0, backlog: int = 2048):
        self.handler = handler
        self.max_body = max_body
        self.keep_alive = keep_alive
        self.backlog = backlog
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[Response]] = set()
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop start() runs on
        self._server: asyncio.base_events.Server | None = None
        self.balancer: Any = None  # evens out connections between worker processes (workers.Balancer), if any

    async def start(
        self, host: str | None = None, port: int | None = None, *, sock: socket.socket | None = None
    ) -> int:
        """Listen on ``host:port``, or accept on ``sock`` (a listening socket shared by worker processes); returns
        the port (useful with ``port=0``)."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, sock=sock, backlog=self.backlog
        )
        return int(self._server.sockets[0].getsockname()[1])

    def adopt(self, fd: int, data: bytes = b"") -> None:
        """Serve a connection accepted elsewhere (its socket's file descriptor): by another worker process, or by
        the native front end, which passes on what it read from it (``data``)."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        assert self.loop is not None
        task = self.loop.create_task(
            self.loop.connect_accepted_socket(lambda: _Connection(self, adopted=True, first=data), sock)
        )
        task.add_done_callback(lambda t: t.cancelled() or t.exception() is None or sock.close())

    def pass_idle(self) -> None:
        """Offer every idle connection to the other worker processes (see workers.Balancer.aside)."""
        for conn in list(self.connections):
            conn.pass_on()

    async def start_unix(self, path: str) -> None:
        """Listen on a Unix socket (the channel between worker processes)."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_unix_server(lambda: _Connection(self), path, backlog=self.backlog)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting; wait up to ``grace`` s for the requests in hand; close every connection."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.connections):
            conn._close()
        if self._server is not None:
            await self._server.wait_closed()
