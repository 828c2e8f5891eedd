"""The server's HTTP/1.1 layer over real sockets on 127.0.0.1: keep-alive, pipelining, bodies, limits, bad input."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from workbench.serving.http import HTTPServer, Request, Response


async def echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    if request.path.startswith("/sleep/"):
        await asyncio.sleep(float(request.path.split("/")[-1]))
    body = b"%s %s %d:" % (request.method.encode(), request.path.encode(), len(request.body)) + request.body[:20]
    return Response(200, body, [(b"content-type", b"text/plain")])


class Running:
    def __init__(self, **kw):
        self.loop = asyncio.new_event_loop()
        self.server = HTTPServer(echo, **kw)
        self.port = 0
        self.sockets: list[socket.socket] = []
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.port = self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)

    def shutdown(self, grace: float = 5) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(grace), self.loop).result(grace + 5)

    def stop(self) -> None:
        if not self.server.stopping:
            self.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        for s in self.sockets:
            s.close()

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sockets.append(s)
        return s


@pytest.fixture
def srv() -> Iterator[Running]:
    r = Running(max_body=1000, keep_alive=30)
    yield r
    r.stop()


def read_responses(s: socket.socket, n: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``n`` responses off ``s`` (status, headers, body)."""
    data, out = b"", []
    while len(out) < n:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return out
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(data) < length:
            data += s.recv(65536)
        out.append((int(lines[0].split()[1]), headers, data[:length]))
        data = data[length:]
    return out


def closed(s: socket.socket) -> bool:
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_keep_alive_and_pipelined_requests_are_answered_in_order(srv):
    s = srv.connect()
    s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_responses(s, 1)[0][2] == b"GET /a 0:"
    # three requests in one write; the first is the slowest, yet the answers come in request order
    s.sendall(
        b"POST /sleep/0.2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /b?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /c%20d HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET http://127.0.0.1/abs?q HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    answers = [body for _, _, body in read_responses(s, 4)]
    assert answers == [b"POST /sleep/0.2 3:abc", b"GET /b 0:", b"GET /c d 0:", b"GET /abs 0:"]
    assert len(srv.server.connections) == 1


def test_chunked_body_and_expect_100_continue(srv):
    s = srv.connect()
    s.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n3\r\n123\r\n0\r\n\r\n")
    assert read_responses(s, 1)[0][2] == b"POST /c 7:wxyz123"
    s.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    s.sendall(b"hello")
    assert read_responses(s, 1)[0][2] == b"POST /e 5:hello"
    # a client library that sends Expect (as curl does for larger bodies) gets its answer
    assert requests.post(f"http://127.0.0.1:{srv.port}/r", data=b"q" * 900, timeout=5).text == "POST /r 900:" + "q" * 20


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
        b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n"
        + b"a" * 1000
        + b"\r\n3e8\r\n"
        + b"b" * 1000,
    ],
)
def test_body_over_the_limit_gets_413_and_the_connection_closes(srv, request_bytes):
    s = srv.connect()
    s.sendall(request_bytes)
    status, headers, body = read_responses(s, 1)[0]
    assert status == 413 and b"over the limit of 1000" in body and headers["connection"] == "close"
    assert closed(s)
    assert requests.get(f"http://127.0.0.1:{srv.port}/still", timeout=5).text == "GET /still 0:"


@pytest.mark.parametrize(
    "garbage", [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"\x00\x01\x02\r\n\r\n"]
)
def test_malformed_requests_get_400_and_the_server_carries_on(srv, garbage):
    s = srv.connect()
    s.sendall(garbage)
    status, _, body = read_responses(s, 1)[0]
    assert status == 400 and b"malformed HTTP request" in body
    assert closed(s)
    assert requests.get(f"http://127.0.0.1:{srv.port}/ok", timeout=5).status_code == 200


def test_endless_headers_get_431(srv):
    s = srv.connect()
    s.sendall(b"GET / HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 70000 + b"\r\n\r\n")
    status, _, body = read_responses(s, 1)[0]
    assert status == 431 and b"over the limit" in body
    assert closed(s)


def test_handler_error_is_a_500_and_the_connection_stays_usable(srv):
    s = srv.connect()
    s.sendall(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    (status, _, body), (status2, _, body2) = read_responses(s, 2)
    assert status == 500 and b"RuntimeError: handler bug" in body
    assert (status2, body2) == (200, b"GET /after 0:")


def test_http_1_0_closes_after_the_answer_and_idle_connections_time_out():
    srv = Running(keep_alive=0.3)
    try:
        s = srv.connect()
        s.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        _, headers, body = read_responses(s, 1)[0]
        assert body == b"GET /old 0:" and headers["connection"] == "close" and closed(s)
        idle = srv.connect()
        idle.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        read_responses(idle, 1)
        t0 = time.monotonic()
        assert closed(idle) and time.monotonic() - t0 < 3
    finally:
        srv.stop()


def test_shutdown_finishes_the_request_in_hand_and_closes(srv):
    s = srv.connect()
    s.sendall(b"GET /sleep/0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
    idle = srv.connect()
    deadline = time.monotonic() + 5
    while len(srv.server.connections) < 2 and time.monotonic() < deadline:  # both accepted by the server
        time.sleep(0.01)
    srv.shutdown(grace=5)
    status, headers, body = read_responses(s, 1)[0]
    assert (status, body, headers["connection"]) == (200, b"GET /sleep/0.5 0:", "close")
    assert closed(idle)
    with pytest.raises(OSError):
        srv.connect()
