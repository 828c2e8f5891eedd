"""The server under hostile clients, over real sockets on 127.0.0.1: slow request heads, too many connections,
bodies past the limit or too slow, HEAD, overflowing shapes, bearer token, errors without internals."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests

from workbench.serving.transport.http import Limits

from .conftest import Server, start_server, stop_server
from .inprocess import DENSE, NumpyRuntime, client, make_app, stop

QUIET = {"WORKBENCH_SERVE_PRELOAD": ","}  # no framework to import: these servers serve no model


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with tight limits: 1 s for a request head, 2 s for a body, 6 connections, 1 KB bodies."""
    ws = tmp_path_factory.mktemp("limits") / "workspace"
    ws.mkdir(parents=True)
    env = {
        **QUIET,
        "WORKBENCH_SERVE_HEADER_TIMEOUT": "1",
        "WORKBENCH_SERVE_BODY_TIMEOUT": "2",
        "WORKBENCH_SERVE_MAX_CONNECTIONS": "6",
        "WORKBENCH_SERVE_MAX_BODY_MB": "0.001",
    }
    server = start_server(ws, ws.parent / "server.log", env=env)
    yield server
    stop_server(server)


_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    _OPEN.append(s)
    return s


def _closed_within(s: socket.socket, seconds: float) -> float:
    """Seconds until the server closes ``s`` (reading what it sends meanwhile); fails past ``seconds``."""
    t0 = time.monotonic()
    s.settimeout(seconds)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def test_a_slow_request_head_is_cut_off_while_others_are_answered(strict):
    slow = _connect(strict)
    slow.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
    t0 = time.monotonic()
    answered = 0
    try:
        for part in (b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n", b"X-C: 3\r\n", b"X-D: 4\r\n"):  # a slowloris
            assert requests.get(f"{strict.url}/v2/health/live", timeout=5).status_code == 200
            answered += 1
            time.sleep(0.4)  # the slow client's pace: the point of the test
            slow.sendall(part)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server has cut it off
    assert _closed_within(slow, 5) < 5 and time.monotonic() - t0 < 4
    assert answered >= 2
    idle = _connect(strict)  # a connection that never sends anything is cut off too
    assert _closed_within(idle, 5) < 3


def test_a_body_that_does_not_arrive_in_time_gets_a_408(strict):
    s = _connect(strict)
    s.sendall(b'POST /v1/models/x:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"inst')
    s.settimeout(6)
    answer = b""
    while chunk := s.recv(4096):  # the server closes the connection after its answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in answer
    assert requests.get(f"{strict.url}/v2/health/live", timeout=5).status_code == 200


def test_past_the_connection_cap_requests_get_a_clean_503(strict):
    held = [_connect(strict) for _ in range(5)]
    try:
        held[0].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert held[0].recv(4096).startswith(b"HTTP/1.1 200")
        extra = _connect(strict)
        extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        extra.settimeout(5)
        assert extra.recv(4096).startswith(b"HTTP/1.1 503")
        extra.close()
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while requests.get(f"{strict.url}/v2/health/live", timeout=5).status_code != 200:  # freed: answered again
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_bodies_past_the_limit_get_a_413_and_head_answers_have_no_body(strict):
    big = json.dumps({"instances": [[0.5] * 300]}).encode()
    r = requests.post(f"{strict.url}/v1/models/x:predict", data=big, timeout=5)
    assert r.status_code == 413 and "over the limit" in r.json()["error"]
    chunked = requests.post(f"{strict.url}/v1/models/x:predict", data=iter([big[:600], big[600:]]), timeout=5)
    assert chunked.status_code == 413  # no content-length: counted as it arrives
    s = _connect(strict)
    s.sendall(b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(5)
    data, deadline = b"", time.monotonic() + 5
    while not data.endswith(b'{"live":true}') and time.monotonic() < deadline:  # both answers, however they arrive
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 13" in head.lower()
    assert rest.startswith(b"HTTP/1.1 200")  # the HEAD answer had no body: the next answer follows at once
    assert rest.endswith(b'{"live":true}')


@pytest.mark.slow
def test_an_overflowing_v2_shape_gets_a_400_at_once_and_the_model_keeps_answering(trained, server, publish, digits):
    publish("overflow")
    server.wait_version("overflow", 1)
    body = {"inputs": [{"name": "image", "shape": [562949953421313, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    t0 = time.monotonic()
    r = requests.post(f"{server.url}/v2/models/overflow/infer", json=body, timeout=5)
    # at once: a few ms, where allocating the declared shape would take minutes or fail; generous on a busy machine
    assert r.status_code == 400 and "shape" in r.json()["error"] and time.monotonic() - t0 < 3
    ok = requests.post(f"{server.url}/v1/models/overflow:predict", json={"instances": digits[:1]}, timeout=10)
    assert ok.status_code == 200


def test_token_guards_admin_routes_and_with_scope_all_everything_but_health(tmp_path: Path):
    async def go(limits: Limits) -> dict[str, int]:
        app = make_app(tmp_path, limits, dense=NumpyRuntime(DENSE))
        async with client(app) as c:
            codes = {
                "reload": (await c.post("/workbench/reload")).status_code,
                "reload+token": (
                    await c.post("/workbench/reload", headers={"authorization": "Bearer s3cret"})
                ).status_code,
                "wrong": (await c.post("/workbench/reload", headers={"authorization": "Bearer nope"})).status_code,
                "predict": (await c.post("/v1/models/dense:predict", json={"instances": [[1, 2, 3, 4]]})).status_code,
                "health": (await c.get("/v2/health/ready")).status_code,
            }
        stop(app)
        return codes

    admin = asyncio.run(go(Limits(token="s3cret")))
    assert admin == {"reload": 401, "reload+token": 200, "wrong": 401, "predict": 200, "health": 200}
    every = asyncio.run(go(Limits(token="s3cret", token_scope="all")))
    assert every == {"reload": 401, "reload+token": 200, "wrong": 401, "predict": 401, "health": 200}
    assert asyncio.run(go(Limits()))["reload"] == 200


def test_a_model_failing_at_run_time_gets_a_500_without_its_internals(tmp_path: Path):
    async def go() -> httpx.Response:
        app = make_app(tmp_path, broken=NumpyRuntime(DENSE, fail="graph text: node MatMul_1 in while/body"))
        async with client(app) as c:
            r = await c.post("/v1/models/broken:predict", json={"instances": [[1, 2, 3, 4]]})
        stop(app)
        return r

    r = asyncio.run(go())
    assert r.status_code == 500
    assert "broken" in r.json()["error"] and "MatMul" not in r.text and "graph" not in r.text
