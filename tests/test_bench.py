"""``python -m bench``: discovery, the load tools against stand-in servers, and smoke runs of the benchmarks."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bench import _load

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_lists_benchmarks_and_rejects_unknown_names():
    listed = bench("--list")
    assert listed.returncode == 0 and "launch_overhead" in listed.stdout.split()
    assert "serve_throughput" in listed.stdout.split() and "_load" not in listed.stdout
    unknown = bench("no_such_bench")
    assert unknown.returncode == 2 and "known: " in unknown.stderr and "launch_overhead" in unknown.stderr


X = np.arange(6, dtype=np.float32).reshape(1, 2, 3) / 8


def test_rest_bodies_are_each_protocols_json():
    tfs = _load.Target("tfs-rest", "http://h:1", "m", "image", X)
    assert tfs.url() == "http://h:1/v1/models/m:predict"
    assert json.loads(tfs.body()) == {"instances": X.tolist()}
    v2 = _load.Target("v2-rest", "http://h:1", "m", "image", X)
    assert v2.url() == "http://h:1/v2/models/m/infer"
    assert json.loads(v2.body()) == {
        "inputs": [{"name": "image", "shape": [1, 2, 3], "datatype": "FP32", "data": X.reshape(-1).tolist()}]
    }


@pytest.fixture
def echo_server() -> Iterator[tuple[str, list[bytes]]]:
    """A stand-in REST server on 127.0.0.1: 200 for a POST, 500 for one to model "fail"; the bodies it got."""
    seen: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no delayed-ACK stalls

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if len(seen) < 100:
                seen.append(body)
            status, answer = (500, b'{"error": "no"}') if "/fail" in self.path else (200, b'{"predictions": [[1]]}')
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(not _load.wrk_available(), reason="wrk is not installed (bash scripts/bench-setup.sh)")
def test_wrk_posts_the_body_and_reports_throughput_latency_and_failures(echo_server):
    url, seen = echo_server
    target = _load.Target("tfs-rest", url, "m", "image", X)
    ok = _load.wrk(target, 2, 1)
    assert ok["rps"] > 50 and ok["errors"] == 0 and 0 < ok["p50"] <= ok["p99"] < 1000, ok
    assert set(seen) == {target.body()}
    bad = _load.wrk(_load.Target("tfs-rest", url, "fail", "image", X), 1, 1)
    assert bad["errors"] > 0 and bad["rps"] == 0, bad


def test_python_client_loop_counts_successes_and_failures(echo_server):
    pytest.importorskip("aiohttp", reason="bash scripts/bench-setup.sh")
    url, _ = echo_server
    good = asyncio.run(_load.closed_loop(_load.Target("v2-rest", url, "m", "image", X), 2, time.time(), 0.5))
    assert len(good[0]) > 10 and good[1] == 0 and good[2] is None
    down = _load.Target("v2-rest", "http://127.0.0.1:1", "m", "image", X)  # nothing listens on port 1
    latencies, errors, first = asyncio.run(_load.closed_loop(down, 1, time.time(), 0.3))
    assert not latencies and errors > 0 and first


def test_grpc_clients_send_the_stock_messages():
    """Both gRPC clients against stand-in servicers from the same stock packages: the request a server gets."""
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("tritonclient.grpc", reason="bash scripts/setup.sh")
    tfs = pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc", reason="bash scripts/setup.sh")
    from tensorflow_serving.apis import predict_pb2
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    got: dict[str, object] = {}

    class Predict(tfs.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (the stub's name)
            t = request.inputs["image"]
            got["tfs"] = (request.model_spec.name, [d.size for d in t.tensor_shape.dim], t.tensor_content)
            return predict_pb2.PredictResponse()

    class Infer(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):  # noqa: N802
            got["v2"] = (request.model_name, list(request.inputs[0].shape), request.raw_input_contents[0])
            return service_pb2.ModelInferResponse(model_name=request.model_name)

    server = grpc.server(futures.ThreadPoolExecutor(4))
    tfs.add_PredictionServiceServicer_to_server(Predict(), server)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Infer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        for protocol in ("tfs-grpc", "v2-grpc"):
            target = _load.Target(protocol, f"127.0.0.1:{port}", "m", "image", X)
            latencies, errors, first = asyncio.run(_load.closed_loop(target, 2, time.time(), 0.3))
            assert len(latencies) > 5 and errors == 0, first
    finally:
        server.stop(None)
    assert got["tfs"] == ("m", [1, 2, 3], X.tobytes())
    assert got["v2"] == ("m", [1, 2, 3], X.tobytes())


@pytest.mark.slow
def test_serve_throughput_smoke_run_prints_every_row_or_why_not(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = bench(
        "serve_throughput", "--", "--duration", "1", "--levels", "1,8", "--resnet-levels", "8", "--client-procs", "1",
        "--out", str(tmp_path / "out"), env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    out = done.stdout
    for row in ("in-process (batched)", "new TFS REST (aiohttp)", "new V2 REST (aiohttp)"):
        assert re.search(rf"^{re.escape(row)} +\d+ ", out, re.M), row
    assert re.search(r"^ResNet-20, one 32x32x3 image", out, re.M)
    optional = {
        "new TFS REST (wrk)": "wrk is not installed",
        "new TFS gRPC (grpcio)": "new TFS gRPC (grpcio) skipped",
        "MLServer V2 REST (wrk)": "MLServer skipped",
        "old C TFS REST (wrk)": "old C server skipped",
    }
    for row, skipped in optional.items():  # each row is there, or the reason it is not
        assert re.search(rf"^{re.escape(row)} +\d+ ", out, re.M) or skipped in out, row
    figures = json.loads((tmp_path / "out" / "serve_throughput.json").read_text())
    assert figures["lenet"]["new V2 REST (aiohttp)"]["8"]["errors"] == 0
    assert figures["resnet20"]["in-process (batched)"]["8"]["rps"] > 0


@pytest.mark.slow
def test_serve_hotswap_smoke_run_swaps_without_failed_requests(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = bench("serve_hotswap", "--", "--swaps", "1", "--quiet", "1", "--mode", "publish", env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert re.search(r"failed requests: lenet 0, steady 0 \(goal 0\)", done.stdout), done.stdout
    assert re.search(r"lenet versions published: 2", done.stdout), done.stdout


@pytest.mark.slow
def test_launch_overhead_smoke_run_prints_its_figures(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = bench(
        "launch_overhead",
        "--",
        "--epochs",
        "1",
        "--limit",
        "1000",
        "--rounds",
        "1",
        "--workspace",
        str(tmp_path / "workspace"),
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ratio = float(re.search(r"wall-time ratio job/direct: ([0-9.]+)", done.stdout)[1])
    assert 0.3 < ratio < 3, done.stdout  # same work on both sides, but the machine may be busy
    cpu_ratio = float(re.search(r"CPU-time ratio job/direct: ([0-9.]+)", done.stdout)[1])
    assert 0.7 < cpu_ratio < 1.5, done.stdout  # CPU time hardly depends on the load
    assert re.search(r"first log line [0-9.]+ s after submit returned", done.stdout)
    for mode in ("direct", "job"):
        assert re.search(rf"test accuracy after 1 epoch\(s\), {mode}: 0\.\d{{4}}", done.stdout), mode
    assert len(list((tmp_path / "workspace" / "runs").glob("bench-lenet-1-*/checkpoints/ckpt-0001.keras"))) == 1
