"""Load for the serving benchmarks, from maintained clients only (a helper, not a benchmark of its own).

- :func:`wrk`: REST load from ``wrk`` (Debian package; ``scripts/bench-setup.sh``) with ``bench/wrk_post.lua``
  for the POST body: one C thread, ``c`` keep-alive connections, closed loop. The fastest REST client there is
  here, so the REST figures measure the server rather than the client.
- :class:`Clients`: Python load processes of one shape for every protocol, so that gRPC and REST compare fairly:
  ``procs`` processes (spawned once), each an asyncio closed loop of its share of ``c`` concurrent requests, with
  aiohttp for REST (``c`` connections) or grpcio's aio channel (one per process) with the stock stubs
  (tensorflow-serving-api's ``PredictionServiceStub``, tritonclient's ``GRPCInferenceServiceStub``) for gRPC.
- :func:`record`: REST load on several targets until told to stop, each request's send time kept
  (``bench.serve_hotswap`` cuts it into windows).

Every figure: successful requests per second, p50 and p99 latency (ms), failed requests.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LUA = Path(__file__).with_name("wrk_post.lua")
PROTOCOLS = ("tfs-rest", "v2-rest", "v2-rest-binary", "tfs-grpc", "v2-grpc")
GRPC_CHANNELS = 4  # gRPC channels per load process, each its own connection (REST opens one per request in flight)
Send = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Target:
    """One kind of request: ``protocol`` (one of :data:`PROTOCOLS`) to ``address`` (``http://host:port`` for REST,
    ``host:port`` for gRPC), for ``model``'s input ``input_name`` holding ``x`` (float32, the batch dimension
    included)."""

    protocol: str
    address: str
    model: str
    input_name: str
    x: np.ndarray

    def url(self) -> str:
        if self.protocol == "tfs-rest":
            return f"{self.address}/v1/models/{self.model}:predict"
        return f"{self.address}/v2/models/{self.model}/infer"

    def body(self) -> bytes:
        if self.protocol == "tfs-rest":
            return json.dumps({"instances": self.x.tolist()}).encode()
        tensor = {"name": self.input_name, "shape": list(self.x.shape), "datatype": "FP32"}
        if self.protocol == "v2-rest-binary":  # KServe V2's binary tensor data extension, both ways
            raw = self.x.astype("<f4").tobytes()
            head = {"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]}
            return json.dumps({**head, "parameters": {"binary_data_output": True}}).encode() + raw
        return json.dumps({"inputs": [{**tensor, "data": self.x.reshape(-1).tolist()}]}).encode()

    def headers(self) -> dict[str, str]:
        """HTTP headers besides the content type (the binary extension's JSON length)."""
        if self.protocol != "v2-rest-binary":
            return {}
        return {"Inference-Header-Content-Length": str(len(self.body()) - self.x.astype("<f4").nbytes)}


def figures(latencies: list[float], errors: int, seconds: float, first_error: str | None = None) -> dict[str, Any]:
    """A level's figures from its successful requests' latencies (s)."""
    lat = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    out = {
        "rps": len(latencies) / seconds,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "errors": errors,
    }
    if first_error:
        out["first_error"] = first_error
    return out


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk(target: Target, c: int, duration: float) -> dict[str, Any]:
    """``wrk`` at ``c`` connections for ``duration`` s (whole seconds, at least 1) on a REST ``target``."""
    seconds = max(1, round(duration))
    with tempfile.NamedTemporaryFile(suffix=".json") as body:
        body.write(target.body())
        body.flush()
        done = subprocess.run(
            ["wrk", "-t", "1", "-c", str(c), "-d", f"{seconds}s", "--timeout", "10s", "-s", str(LUA), target.url()],
            env={**os.environ, "WRK_BODY_FILE": body.name, "WRK_HEADERS": json.dumps(target.headers())},
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    r = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    failed = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    wall = r["duration_us"] / 1e6
    return {
        "rps": (r["requests"] - r["status"]) / wall,
        "p50": r["p50_us"] / 1000,
        "p99": r["p99_us"] / 1000,
        "errors": failed,
    }


async def sender(target: Target) -> tuple[Send, Callable[[], Awaitable[Any]]]:
    """A coroutine function sending one request of ``target`` (raising on any answer but success), and its close."""
    if "-rest" in target.protocol:
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), headers={"Content-Type": "application/json", **target.headers()}
        )
        url, body = target.url(), target.body()

        async def post() -> None:
            async with session.post(url, data=body) as r:
                text = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {text[:200]!r}")

        return post, session.close
    import grpc

    # Several channels, each its own connection (grpcio shares one between equal channels unless told not to), so
    # that the calls spread over the server's processes as REST's connections do.
    options = [("grpc.max_receive_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target.address, options=options) for _ in range(GRPC_CHANNELS)]
    make = _tfs_call if target.protocol == "tfs-grpc" else _v2_call
    calls = [make(channel, target) for channel in channels]
    turn = [0]

    async def call() -> None:
        turn[0] = (turn[0] + 1) % len(calls)
        await calls[turn[0]]()

    async def close() -> None:
        for channel in channels:
            await channel.close()

    return call, close


def _tfs_call(channel: Any, target: Target) -> Send:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = target.model
    request.model_spec.signature_name = "serving_default"
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in target.x.shape]
    )
    request.inputs[target.input_name].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, tensor_shape=shape, tensor_content=target.x.astype("<f4").tobytes()
        )
    )

    async def predict() -> None:
        await stub.Predict(request, timeout=30)

    return predict


def _v2_call(channel: Any, target: Target) -> Send:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name=target.input_name, datatype="FP32", shape=list(target.x.shape)
    )
    request = service_pb2.ModelInferRequest(
        model_name=target.model, inputs=[tensor], raw_input_contents=[target.x.astype("<f4").tobytes()]
    )

    async def infer() -> None:
        await stub.ModelInfer(request, timeout=30)

    return infer


async def closed_loop(target: Target, c: int, start: float, duration: float) -> tuple[list[float], int, str | None]:
    """``c`` concurrent requests back to back until ``start + duration`` (``time.time()``: the same clock in every
    process); those sent before ``start`` warm up. Latencies (s) of the successful ones sent from ``start``."""
    send, close = await sender(target)
    latencies: list[float] = []
    errors, first_error = 0, None
    end = start + duration

    async def one() -> None:
        nonlocal errors, first_error
        while (t0 := time.time()) < end:
            try:
                await send()
            except Exception as e:  # noqa: BLE001 (any failure is a failed request; the first is reported)
                if t0 >= start:
                    errors += 1
                    first_error = first_error or f"{type(e).__name__}: {e}"[:300]
                await asyncio.sleep(0.01)  # a refused connection fails at once: do not spin
                continue
            t1 = time.time()
            if t0 >= start and t1 <= end:
                latencies.append(t1 - t0)

    try:
        await asyncio.gather(*(one() for _ in range(c)))
    finally:
        await close()
    return latencies, errors, first_error


def _worker(pipe: Any) -> None:
    """A load process: import the clients once, then run each closed loop it is sent."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import aiohttp  # noqa: F401
    import grpc  # noqa: F401

    stubs = []
    for module in ("tensorflow_serving.apis.prediction_service_pb2_grpc", "tritonclient.grpc.service_pb2_grpc"):
        try:
            __import__(module)
            stubs.append(module.split(".")[0])
        except ImportError:
            pass
    pipe.send(stubs)
    while (job := pipe.recv()) is not None:
        try:
            pipe.send(asyncio.run(closed_loop(*job)))
        except Exception as e:  # noqa: BLE001 (reported as the level's error, the pool goes on)
            pipe.send(([], 1, f"{type(e).__name__}: {e}"[:300]))


@dataclass
class Clients:
    """``procs`` Python load processes; :meth:`run` shares ``c`` concurrent requests among them."""

    procs: int = 2
    warmup: float = 1.0
    _pipes: list[Any] = field(default_factory=list)
    _children: list[Any] = field(default_factory=list)
    stubs: list[str] = field(default_factory=list)

    def __enter__(self) -> Clients:
        ctx = multiprocessing.get_context("spawn")
        for _ in range(self.procs):
            mine, theirs = ctx.Pipe()
            child = ctx.Process(target=_worker, args=(theirs,), daemon=True)
            child.start()
            self._pipes.append(mine)
            self._children.append(child)
        self.stubs = [pipe.recv() for pipe in self._pipes][0]
        return self

    def __exit__(self, *exc: object) -> None:
        for pipe, child in zip(self._pipes, self._children, strict=True):
            pipe.send(None)
            child.join(10)
            if child.is_alive():
                child.kill()

    def missing(self, protocol: str) -> str | None:
        """Why ``protocol`` cannot be driven here, or None."""
        need = {"tfs-grpc": "tensorflow_serving", "v2-grpc": "tritonclient"}.get(protocol)
        if need and need not in self.stubs:
            return f"{need} is not installed in this venv (bash scripts/setup.sh installs it)"
        return None

    def run(self, target: Target, c: int, duration: float) -> dict[str, Any]:
        n = min(c, len(self._pipes))
        start = time.time() + self.warmup
        for i, pipe in enumerate(self._pipes[:n]):
            pipe.send((target, c // n + (i < c % n), start, duration))
        parts = [pipe.recv() for pipe in self._pipes[:n]]
        latencies = [t for lat, _, _ in parts for t in lat]
        first_error = next((e for _, _, e in parts if e), None)
        return figures(latencies, sum(e for _, e, _ in parts), duration, first_error)


@dataclass
class Samples:
    """One target's requests: send times (``time.perf_counter``, the same clock in every process), latencies (s),
    and failures."""

    sent: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def within(self, spans: list[tuple[float, float]]) -> list[float]:
        """Latencies of the requests sent within any of ``spans``."""
        sent = np.asarray(self.sent)
        inside = np.zeros(len(sent), dtype=bool)
        for a, b in spans:
            inside |= (sent >= a) & (sent < b)
        return list(np.asarray(self.latencies)[inside])


async def record(
    targets: list[tuple[Target, int]], stop: Callable[[], bool], rate: float | None = None
) -> list[Samples]:
    """Load on each ``(target, concurrency)`` until ``stop()``: closed loop, or with ``rate``, that many requests/s
    per target (open loop, at most ``concurrency`` in flight; latency counted from when each was due)."""
    out = [Samples() for _ in targets]
    t_start = time.perf_counter()

    async def timed(send: Send, samples: Samples, due: float) -> None:
        try:
            await send()
        except Exception:  # noqa: BLE001 (counted)
            samples.errors += 1
            return
        samples.sent.append(due)
        samples.latencies.append(time.perf_counter() - due)

    async def closed(send: Send, samples: Samples) -> None:
        while not stop():
            await timed(send, samples, time.perf_counter())

    async def opened(send: Send, samples: Samples, c: int) -> None:
        assert rate
        slots, i, pending = asyncio.Semaphore(c), 0, set()
        while not stop():
            due = t_start + i / rate
            i += 1
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await slots.acquire()
            task = asyncio.create_task(timed(send, samples, due))
            task.add_done_callback(lambda _t: slots.release())
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)

    async def stopper() -> None:
        while not stop():
            await asyncio.sleep(0.05)

    senders = [await sender(t) for t, _ in targets]
    jobs = []
    for (send, _), (_, c), samples in zip(senders, targets, out, strict=True):
        jobs += [opened(send, samples, c)] if rate else [closed(send, samples) for _ in range(c)]
    await asyncio.gather(stopper(), *jobs)
    for _, close in senders:
        await close()
    for samples in out:
        samples.seconds = time.perf_counter() - t_start
    return out
