"""The native front end (workbench.serving._native.Frontend, workbench.serving.native) over real sockets on 127.0.0.1.

The rig runs the C front end on a listening socket, the Python HTTP server (an echo handler, so that a test can
tell who answered) on an event loop thread, and lanes over small numpy models, without TensorFlow. The last test
compares a real ``workbench serve`` with and without the front end, byte for byte, on a promoted LeNet.
"""

from __future__ import annotations

import array
import asyncio
import json
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
import requests

from workbench.registry.signature import Signature, TensorSpec
from workbench.serving import http, native, tfserving, v2
from workbench.serving.http import HTTPServer, Request, Response
from workbench.serving.metrics import ServerMetrics
from workbench.serving.repository import ModelState
from workbench.serving.workers import COLUMNS, DRAINING, NATIVE, PID, listen, table_size

from .test_http import closed, read_responses

pytestmark = pytest.mark.skipif(not native.available(), reason="the C extension is not built")

SIG = Signature(
    inputs=(TensorSpec("x", "float32", (None, 2, 3)),),
    outputs=(TensorSpec("y", "float32", (None, 2)),),
    extra={"signature_name": "serving_default"},
)


def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = inputs["x"]
    if (x == -1).any():
        raise ValueError("minus one is not allowed")
    if (x == -2).any():
        return {"y": np.full((len(x), 2), np.nan, np.float32)}
    return {"y": (x.sum(axis=2) / 3).astype(np.float32)}


async def python_side(request: Request) -> Response:
    body = b"python %s %s %d" % (request.method.encode(), request.path.encode(), len(request.body))
    return Response(200, body, [(b"content-type", b"text/plain")])


class Rig:
    def __init__(self, keep_alive: float = 60.0, max_body: int = 1 << 20, balance: tuple[Any, ...] | None = None):
        self.loop = asyncio.new_event_loop()
        self.server = HTTPServer(python_side, max_body=max_body, keep_alive=keep_alive)
        self.server.loop = self.loop
        self.sock = listen("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.frontend = native.NativeFrontend(self.sock, self.server, max_body=max_body, keep_alive=keep_alive)
        self.metrics = ServerMetrics()
        self.lanes: list[native.Lane] = []
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        if balance is not None:
            self.frontend.balance(*balance)
        self.frontend.start()

    def lane(self, version: int, fn: Any = model, **kw: Any) -> native.Lane:
        shape = native.plan(SIG)
        assert shape is not None
        options = {"max_batch": 64, "max_wait": 0.0, **kw}
        lane = native.Lane("m", version, SIG, fn, shape, metrics=self.metrics, **options)
        self.lanes.append(lane)
        return lane

    def publish(self, lanes: dict[int, native.Lane], live: int, labels: dict[str, int] | None = None) -> None:
        servables = {v: SimpleNamespace(lane=lane) for v, lane in lanes.items()}
        data = {"labels": labels or {}, "live": live}
        self.frontend.publish({"m": ModelState("m", data, servables, {})})  # type: ignore[arg-type]

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.clients.append(s)
        return s

    def stop(self) -> None:
        self.frontend.stop(2)
        asyncio.run_coroutine_threadsafe(self.server.shutdown(2), self.loop).result(10)
        for lane in self.lanes:
            lane.close()
            lane.join(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.sock.close()
        for s in self.clients:
            s.close()


@pytest.fixture
def rig():
    r = Rig()
    lane = r.lane(1)
    r.publish({1: lane}, live=1, labels={"stable": 1})
    yield r
    r.stop()


def post(path: str, body: Any, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return b"POST %s %s\r\nHost: x\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        version,
        extra,
        len(data),
        data,
    )


def as_python(outputs: dict[str, np.ndarray], fmt: str, version: int = 1, request_id: Any = None) -> bytes:
    """The whole HTTP response the Python server gives for these outputs."""
    if fmt == "v2":
        body = v2.infer_body("m", version, outputs, SIG, None, request_id)
    else:
        body = tfserving.predict_body(outputs, SIG, fmt)
    headers = [(b"content-type", b"application/json"), (b"x-model-version", str(version).encode())]
    return http.encode(Response(200, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), headers), True)


def raw_response(s: socket.socket) -> bytes:
    """One response off ``s``, as the bytes on the wire."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(rest) < length:
        rest += s.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_predict_is_answered_in_c_with_the_python_servers_bytes(rig):
    x = np.random.default_rng(0).random((3, 2, 3), dtype=np.float32)
    expect = {"y": (x.sum(axis=2) / 3).astype(np.float32)}
    s = rig.connect()
    cases = [
        ("/v1/models/m:predict", {"instances": x.tolist()}, "row"),
        ("/v1/models/m/versions/1:predict", {"signature_name": "serving_default", "inputs": x.tolist()}, "columnar"),
        ("/v1/models/m/labels/stable:predict", {"instances": x.tolist(), "signature_name": ""}, "row"),
    ]
    for path, body, fmt in cases:
        s.sendall(post(path, body))
        assert raw_response(s) == as_python(expect, fmt), path
    infer = {
        "id": "req-7",
        "inputs": [{"name": "x", "shape": [3, 2, 3], "datatype": "fp32", "data": x.ravel().tolist()}],
    }
    for path in ("/v2/models/m/infer", "/v2/models/m/versions/1/infer"):
        s.sendall(post(path, infer))
        assert raw_response(s) == as_python(expect, "v2", request_id="req-7")
    stats = rig.frontend.stats()
    assert stats["served"] == 5 and stats["handed_off"] == 0 and stats["open"] == 1
    text = rig.metrics.render()
    assert 'workbench_requests_total{model="m",version="1",code="200",protocol="rest"} 3' in text
    assert 'workbench_requests_total{model="m",version="1",code="200",protocol="v2"} 2' in text


def test_pipelined_and_piecemeal_requests_are_answered_in_order(rig):
    s = rig.connect()
    a, b = np.zeros((1, 2, 3), np.float32), np.ones((2, 2, 3), np.float32)
    s.sendall(
        post("/v1/models/m:predict", {"instances": a.tolist()})
        + post("/v1/models/m:predict", {"instances": b.tolist()})
    )
    first, second = read_responses(s, 2)
    assert json.loads(first[2]) == {"predictions": [[0.0, 0.0]]}
    assert json.loads(second[2]) == {"predictions": [[1.0, 1.0], [1.0, 1.0]]}
    request = post("/v1/models/m:predict", {"instances": b.tolist()})
    for piece in (request[:7], request[7:60], request[60:-3], request[-3:]):
        s.sendall(piece)
        time.sleep(0.05)
    assert json.loads(read_responses(s, 1)[0][2]) == {"predictions": [[1.0, 1.0], [1.0, 1.0]]}
    assert rig.frontend.stats()["handed_off"] == 0


GOOD = {"instances": np.zeros((1, 2, 3)).tolist()}


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n",
        post("/v1/models/other:predict", GOOD),
        post("/v1/models/m:predict?x=1", GOOD),
        post("/v1/models/%6d:predict", GOOD),
        post("/v1/models/m:predict", GOOD, b"Connection: close\r\n"),
        post("/v1/models/m:predict", GOOD, b"Expect: 100-continue\r\n"),
        post("/v1/models/m:predict", GOOD, version=b"HTTP/1.0"),
        post("/v1/models/m:predict", b'{"instances": [[1, 2]]}'),  # wrong shape
        post("/v1/models/m:predict", b'{"instances": [[[1, 2, 3], [4, 5, 6]]], "extra": 1}'),
        post("/v1/models/m:predict", b'{"instances": [[[1, 2, 3], [4, 5, 6]]]'),  # malformed JSON
        post("/v1/models/m:predict", b'{"instances": [[[1, 2, 3], [4, 5, "6"]]]}'),
        post("/v1/models/m:predict", {"instances": GOOD["instances"], "signature_name": "other"}),
        post("/v1/models/m:predict", {"instances": GOOD["instances"], "inputs": GOOD["instances"]}),
        post(
            "/v2/models/m/infer", {"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP64", "data": [0] * 6}]}
        ),
        post(
            "/v2/models/m/infer", {"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [0] * 5}]}
        ),
        post(
            "/v2/models/m/infer",
            {
                "inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [0] * 6}],
                "outputs": [{"name": "y"}],
            },
        ),
        b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}\n\r\n0\r\n\r\n",
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n\r\n",  # no body
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
)
def test_everything_else_goes_to_the_python_server_untouched(rig, request_bytes):
    s = rig.connect()
    s.sendall(request_bytes)
    status, _, body = read_responses(s, 2 if b"Expect" in request_bytes else 1)[-1]  # (after 100 Continue)
    if request_bytes.startswith(b"NOT"):
        assert status == 400  # httptools' verdict, as on any connection
    else:
        assert body.startswith(b"python "), body
    assert rig.frontend.stats() == {"open": 0, "handed_off": 1, "served": 0, "passed": 0, "adopted": 0}


def test_a_connection_moves_to_python_at_its_first_other_request(rig):
    s = rig.connect()
    s.sendall(post("/v1/models/m:predict", GOOD))
    assert json.loads(read_responses(s, 1)[0][2]) == {"predictions": [[0.0, 0.0]]}
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" + post("/v1/models/m:predict", GOOD))
    (_, _, a), (_, _, b) = read_responses(s, 2)
    assert a == b"python GET /v2/health/live 0"
    assert b.startswith(b"python POST /v1/models/m:predict")
    assert rig.frontend.stats()["served"] == 1


def test_swap_new_version_serves_and_the_old_one_finishes_its_queue(rig):
    slow_started, release = threading.Event(), threading.Event()

    def slow(inputs):
        slow_started.set()
        release.wait(10)
        return model(inputs)

    old = rig.lane(2, slow)
    rig.publish({2: old}, live=2)
    waiting = rig.connect()
    waiting.sendall(post("/v1/models/m:predict", GOOD))
    assert slow_started.wait(10)
    queued = rig.connect()
    queued.sendall(post("/v1/models/m:predict", GOOD))  # behind the one in hand
    time.sleep(0.1)
    new = rig.lane(3)
    rig.publish({3: new}, live=3)  # the swap
    old.close()
    s = rig.connect()
    s.sendall(post("/v1/models/m:predict", GOOD))
    assert read_responses(s, 1)[0][1]["x-model-version"] == "3"
    release.set()
    for c in (waiting, queued):
        status, headers, _ = read_responses(c, 1)[0]
        assert (status, headers["x-model-version"]) == (200, "2")
    old.join(5)
    assert not old._thread.is_alive()


def test_a_failing_request_fails_alone_and_outputs_c_cannot_write_are_answered_as_python_would():
    r = Rig()
    try:
        r.publish({1: r.lane(1, max_wait=0.2)}, live=1)
        good, bad, nan = r.connect(), r.connect(), r.connect()
        bad.sendall(post("/v1/models/m:predict", {"instances": (-np.ones((1, 2, 3))).tolist()}))
        good.sendall(post("/v1/models/m:predict", GOOD))
        nan.sendall(post("/v1/models/m:predict", {"instances": (-2 * np.ones((1, 2, 3))).tolist()}))
        status, _, body = read_responses(bad, 1)[0]
        assert status == 500
        assert json.loads(body) == {"error": "the model failed on this input: ValueError: minus one is not allowed"}
        assert json.loads(read_responses(good, 1)[0][2]) == {"predictions": [[0.0, 0.0]]}
        assert raw_response(nan) == as_python({"y": np.full((1, 2), np.nan, np.float32)}, "row")
        assert b'{"predictions":[[null,null]]}' in as_python({"y": np.full((1, 2), np.nan, np.float32)}, "row")
        assert 'code="500",protocol="model"} 1' in r.metrics.render()
    finally:
        r.stop()


def test_concurrent_clients_get_their_own_rows_in_shared_batches():
    r = Rig()
    try:
        r.publish({1: r.lane(1, max_wait=0.002)}, live=1)
        errors: list[str] = []

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            s = r.connect()
            for _ in range(40):
                x = rng.random((int(rng.integers(1, 4)), 2, 3), dtype=np.float32)
                s.sendall(post("/v1/models/m:predict", {"instances": x.tolist()}))
                got = np.array(json.loads(read_responses(s, 1)[0][2])["predictions"], np.float32)
                if not np.array_equal(got, (x.sum(axis=2) / 3).astype(np.float32)):
                    errors.append(f"client {seed}: {got} for {x}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        assert r.frontend.stats()["served"] == 320
        text = r.metrics.render()
        count = float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith("workbench_batch_size_count")))
        assert count < 320  # requests shared model calls
    finally:
        r.stop()


@pytest.mark.parametrize("processes, batches", [(1, [2, 2, 2]), (2, [4, 2])])
def test_a_small_batch_waits_for_requests_on_their_way_up_to_its_share_of_the_max_batch(
    monkeypatch, processes, batches
):
    # max batch 8: with one server process a batch waits for company until it has 2 rows (a quarter), with two
    # until it has 4 (a quarter per process); it stops waiting once no request came within the gap (0.5 s here)
    monkeypatch.setattr(native, "_GATHER_CAP", 3.0)
    sizes: list[int] = []

    def counting(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes.append(len(inputs["x"]))
        return model(inputs)

    r = Rig()
    try:
        r.publish({1: r.lane(1, counting, max_batch=8, gather=0.5, processes=processes)}, live=1)
        clients = [r.connect() for _ in range(7)]  # one stays idle: the batch never holds every client
        time.sleep(0.2)
        xs = [np.full((1, 2, 3), i, np.float32) for i in range(6)]
        for s, x in zip(clients[:6], xs, strict=True):
            s.sendall(post("/v1/models/m:predict", {"instances": x.tolist()}))
            time.sleep(0.05)
        for s, x in zip(clients[:6], xs, strict=True):
            got = json.loads(read_responses(s, 1)[0][2])["predictions"]
            assert got == (x.sum(axis=2) / 3).tolist()
        assert sizes == batches
    finally:
        r.stop()


def test_clients_that_vanish_and_idle_connections():
    r = Rig(keep_alive=1.0)
    try:
        r.publish({1: r.lane(1)}, live=1)
        for cut in (10, 80, None):
            s = socket.create_connection(("127.0.0.1", r.port))
            request = post("/v1/models/m:predict", GOOD)
            s.sendall(request[:cut] if cut else request)
            s.close()  # before (or without reading) the answer
        idle = r.connect()
        idle.sendall(post("/v1/models/m:predict", GOOD))
        assert read_responses(idle, 1)[0][0] == 200
        t0 = time.monotonic()
        assert closed(idle) and time.monotonic() - t0 < 4  # closed after ~1 s idle
        s = r.connect()
        s.sendall(post("/v1/models/m:predict", GOOD))
        assert read_responses(s, 1)[0][0] == 200
    finally:
        r.stop()


def test_stop_answers_what_is_in_hand_then_closes():
    r = Rig()
    started = threading.Event()

    def slow(inputs):
        started.set()
        time.sleep(0.5)
        return model(inputs)

    r.publish({1: r.lane(1, slow)}, live=1)
    busy, idle = r.connect(), r.connect()
    busy.sendall(post("/v1/models/m:predict", GOOD))
    assert started.wait(10)
    stopper = threading.Thread(target=r.frontend.stop, args=(5,))
    stopper.start()
    assert read_responses(busy, 1)[0][0] == 200
    assert closed(busy) and closed(idle)
    stopper.join(10)
    assert not stopper.is_alive()
    r.stop()


def test_a_body_over_the_limit_is_left_to_python():
    r = Rig(max_body=1000)
    try:
        r.publish({1: r.lane(1)}, live=1)
        s = r.connect()
        s.sendall(post("/v1/models/m:predict", {"instances": np.zeros((200, 2, 3)).tolist()}))
        assert read_responses(s, 1)[0][0] == 413
    finally:
        r.stop()


def test_plan_leaves_other_signatures_to_python():
    def sig(inputs, outputs):
        return Signature(tuple(TensorSpec(*i) for i in inputs), tuple(TensorSpec(*o) for o in outputs))

    y = [("y", "float32", (None, 2))]
    assert native.plan(sig([("x", "float32", (None, 4))], y)) is not None
    assert native.plan(sig([("x", "int64", (None,))], [("y", "int64", (None,))])) is not None
    assert native.plan(sig([("x", "float32", (None, None))], y)) is None  # a dimension not known
    assert native.plan(sig([("x", "object", (None,))], y)) is None  # strings
    assert native.plan(sig([("x", "int32", (None, 2))], y)) is None
    assert native.plan(sig([("a", "float32", (None, 2)), ("b", "float32", (None, 2))], y)) is None
    assert native.plan(sig([("x", "float32", (None, 2))], [("y", "float64", (None, 2))])) is None
    assert native.plan(sig([("x", "float32", (None, 2))], y * 2)) is None


def test_float32_text_is_orjsons():
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [
            rng.integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
            rng.random(50_000).astype(np.float32) ** 8,  # probabilities, many tiny
            np.array([2.0**e for e in range(-149, 128)], np.float32),
            np.array([0.1, 1e-6, 1e-7, 1e13, 9999999e6, 3.4028235e38, -0.0, 0.0, 1.0], np.float32),
        ]
    )
    values = values[np.isfinite(values)]
    expected = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    got = [native._native.format_f32(float(v)) for v in values]
    mismatched = [(float(v), g, e) for v, g, e in zip(values, got, expected, strict=True) if g != e]
    assert not mismatched, mismatched[:5]


def test_workbench_serve_answers_alike_with_and_without_the_front_end(serving_ws, base, server, digits):
    """A real server (the session's, front end on) and one with ``--native off``, over the same LeNet."""
    from .conftest import start_server, stop_server

    off = start_server(serving_ws, serving_ws.parent / "server-native-off.log", "--native", "off")
    try:
        bodies = [
            ("/v1/models/base:predict", {"instances": digits[:2]}),
            ("/v1/models/base/versions/1:predict", {"inputs": digits[:1]}),
            (
                "/v2/models/base/infer",
                {
                    "id": "a",
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1, 28, 28],
                            "datatype": "FP32",
                            "data": np.ravel(digits[0]).tolist(),
                        }
                    ],
                },
            ),
        ]
        answers = {}
        for url in (server.url, off.url):
            port = int(url.rsplit(":", 1)[1])
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            answers[url] = []
            for path, body in bodies:
                s.sendall(post(path, body))
                answers[url].append(raw_response(s))
            s.close()
        assert answers[server.url] == answers[off.url]
        metrics = requests.get(f"{server.url}/metrics", timeout=10).text
        served = float(
            next(ln.split()[-1] for ln in metrics.splitlines() if ln.startswith("workbench_native_answered_total"))
        )
        assert served >= 3
        off_metrics = requests.get(f"{off.url}/metrics", timeout=10).text
        assert not any(ln.startswith("workbench_native_answered_total ") for ln in off_metrics.splitlines())
    finally:
        stop_server(off)


def test_a_lone_clients_request_runs_on_the_front_ends_thread_only_for_a_quick_model():
    r = Rig()
    try:
        threads: list[str] = []

        def quick(inputs):
            threads.append(threading.current_thread().name)
            return model(inputs)

        def slow(inputs):
            time.sleep(0.3)
            return model(inputs)

        r.publish({1: r.lane(1, quick), 2: r.lane(2, slow)}, live=1)
        s = r.connect()
        for _ in range(20):  # (a call that happens to take over 2 ms on a busy machine sends the next one back)
            s.sendall(post("/v1/models/m:predict", GOOD))
            assert read_responses(s, 1)[0][0] == 200
            if threads[-1] != "native-m-1":
                break
        assert threads[0] == "native-m-1"  # measured on the lane's thread first
        assert threads[-1] != "native-m-1"  # then run where it was read: no hand-off between threads
        s.sendall(post("/v1/models/m/versions/2:predict", GOOD))
        assert read_responses(s, 1)[0][0] == 200
        s.sendall(post("/v1/models/m/versions/2:predict", GOOD))  # a slow model: its lane's thread, always
        time.sleep(0.05)
        t0 = time.monotonic()
        other = r.connect()
        other.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(other, 1)[0][2] == b"python GET /v2/health/live 0"
        assert time.monotonic() - t0 < 0.2  # not held up behind the model call
        assert read_responses(s, 1)[0][0] == 200
    finally:
        r.stop()


class Pair:
    """Two front ends in one process standing in for two server processes on one port (a client connects to
    either's socket): they share the workers' table, and each passes connections to the other as the supervisor's
    processes do, over a datagram socket the other's front end reads."""

    def __init__(self, fn: Any = model):
        self.table = bytearray(table_size(2))
        self.view = memoryview(self.table).cast("q")
        self.width = COLUMNS + 2
        self.passed: list[int] = [0, 0]
        self.problems: list[str] = []
        self.rigs: list[Rig] = []
        self.mail = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in (0, 1)]  # (to me, my inbox)
        for me in (0, 1):
            self.view[me * self.width + PID] = 1000 + me
            inbox = self.mail[me][1].fileno()
            self.rigs.append(Rig(balance=(self.table, me, self.width, 2, self._passer(me), inbox)))
            self.rigs[me].publish({1: self.rigs[me].lane(1, fn)}, live=1)

    def _passer(self, me: int) -> Any:
        def pass_fd(fd: int) -> bool:
            # (returns once the other counts it, as workers.Balancer counts the ones still on their way)
            theirs = self.view[(1 - me) * self.width + NATIVE]
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self.mail[1 - me][0].sendmsg([str(me).encode()], rights)
            self.passed[me] += 1
            deadline = time.monotonic() + 5
            while self.view[(1 - me) * self.width + NATIVE] == theirs and time.monotonic() < deadline:
                time.sleep(0.001)
            taken = self.view[(1 - me) * self.width + COLUMNS + me]  # counted by the other as taken from me
            if taken != self.passed[me]:
                self.problems.append(f"{1 - me} counts {taken} taken from {me}, which passed {self.passed[me]}")
            return True

        return pass_fd

    def native_open(self) -> list[int]:
        return [self.view[me * self.width + NATIVE] for me in (0, 1)]

    def served(self) -> list[int]:
        return [r.frontend.stats()["served"] for r in self.rigs]

    def settle(self, expect: list[int]) -> None:
        deadline = time.monotonic() + 10
        while self.native_open() != expect:
            assert time.monotonic() < deadline, self.native_open()
            time.sleep(0.01)

    def stop(self) -> None:
        for r in self.rigs:
            r.stop()
        for pair in self.mail:
            for s in pair:
                s.close()
        assert self.problems == []


def test_connections_are_evened_out_between_processes_and_answered_where_they_went():
    pair = Pair()
    try:
        a = pair.rigs[0]
        clients = [a.connect() for _ in range(6)]  # all to the first process
        pair.settle([3, 3])  # one more than the other's and the next one goes over, before it is read
        assert pair.passed == [3, 0]
        for _ in range(3):
            for s in clients:
                s.sendall(post("/v1/models/m:predict", GOOD))
            for s in clients:
                assert json.loads(read_responses(s, 1)[0][2]) == {"predictions": [[0.0, 0.0]]}
        served = pair.served()
        assert sum(served) == 18 and served[0] == served[1] == 9, served  # each answered its own three
        assert pair.passed == [3, 0] and pair.native_open() == [3, 3]  # balanced: nothing moves back and forth
        for s in clients[:3]:  # whichever process held them
            s.close()
        for s in clients[3:]:
            s.close()
        pair.settle([0, 0])
    finally:
        pair.stop()


def test_a_process_stepping_aside_passes_each_connection_once_idle_new_ones_too():
    def slow(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.3)
        return model(inputs)

    pair = Pair(fn=slow)
    try:
        a, b = pair.rigs
        pair.view[1 * pair.width + PID] = 0  # the other is not counted in the balance...
        idle, busy = a.connect(), a.connect()
        pair.settle([2, 0])
        busy.sendall(post("/v1/models/m:predict", GOOD))
        time.sleep(0.1)  # (its request is with the model)
        pair.view[0 * pair.width + DRAINING] = 1  # ...but takes what one that steps aside passes it
        a.frontend.pass_idle()
        pair.settle([1, 1])  # the idle one went at once; the busy one stays until it has its answer
        assert json.loads(read_responses(busy, 1)[0][2]) == {"predictions": [[0.0, 0.0]]}
        pair.settle([0, 2])  # then it went too
        late = a.connect()  # a new connection goes before it is read
        pair.settle([0, 3])
        for s in (idle, busy, late):
            s.sendall(post("/v1/models/m:predict", GOOD))
        for s in (idle, busy, late):
            assert json.loads(read_responses(s, 1)[0][2]) == {"predictions": [[0.0, 0.0]]}
        assert (pair.served(), pair.passed) == ([1, 3], [3, 0]), pair.native_open()
        pair.view[0 * pair.width + DRAINING] = 0  # done loading: new connections stay again
        again = a.connect()
        again.sendall(post("/v1/models/m:predict", GOOD))
        assert read_responses(again, 1)[0][0] == 200
        assert pair.served() == [2, 3]
        for s in (idle, busy, late):  # the other has two more now: one goes back once idle
            s.sendall(post("/v1/models/m:predict", GOOD))
            assert read_responses(s, 1)[0][0] == 200
        pair.settle([2, 2])
        assert pair.passed == [3, 1]
    finally:
        pair.stop()


def test_a_connection_passed_with_its_next_request_already_sent_is_answered_there():
    pair = Pair()
    try:
        a = pair.rigs[0]
        s = a.connect()
        pair.settle([1, 0])
        pair.view[DRAINING] = 1
        s.sendall(post("/v1/models/m:predict", GOOD) + post("/v1/models/m:predict", GOOD))  # pipelined
        (_, _, one), (_, _, two) = read_responses(s, 2)
        assert json.loads(one) == json.loads(two) == {"predictions": [[0.0, 0.0]]}
        pair.settle([0, 1])  # read together: both answered here; it went once idle
        for _ in range(20):  # the next one may already be in the socket when it changes hands
            s.sendall(post("/v1/models/m:predict", GOOD))
            assert read_responses(s, 1)[0][0] == 200
        assert sum(pair.served()) == 22 and pair.served()[1] >= 20
    finally:
        pair.stop()
