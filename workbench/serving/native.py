"""The native front end in the server: which requests it serves, and a batch thread per model version for them.

With the C extension built (``workbench.serving._native``), ``workbench serve`` lets a C thread accept the
connections (:class:`NativeFrontend`). It answers the common predict request itself, outside the GIL: a POST to
``/v1/models/{m}[/versions/{v}|/labels/{l}]:predict`` or ``/v2/models/{m}[/versions/{v}]/infer`` whose body is
one numeric tensor for a model with one input and one output (see :func:`plan`). Its rows are queued for the
model version's :class:`Lane`, a thread that takes what is queued as one batch, runs the model once and hands
the outputs back to C, which writes each answer. Any other request, including every malformed one, is never
answered in C: the connection, with what was read from it, passes to the Python server
(:mod:`workbench.serving.http`), which serves it from then on. So the front end changes how fast the common
request is answered, not what any request gets (tests compare the two answers byte for byte).

Routes follow the repository: each swap publishes the table anew (:meth:`NativeFrontend.publish`), and a
version swapped out still answers what was queued for it before its lane stops, as the Python batcher does. An
unversioned path whose model splits traffic between versions stays with the Python server, which draws the
version per request.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from workbench.registry.signature import Signature
from workbench.serving import http, tfserving, v2
from workbench.serving.metrics import ServerMetrics, labels
from workbench.serving.predlog import PredictionLog

if TYPE_CHECKING:
    from workbench.serving.http import HTTPServer
    from workbench.serving.repository import ModelState

try:
    from workbench.serving import _native
except ImportError:  # built without a C compiler: the Python server serves everything
    _native = None

log = logging.getLogger("workbench.serving")

_KINDS = {"float32": "f", "float64": "d", "int64": "q"}
_OUTPUTS = {"float32", "int32", "int64"}
_GATHER_CAP = 0.002  # the longest a batch waits for requests on their way (see Lane)
_INLINE_MAX_S = 0.002  # a model call that takes longer never runs on the front end's thread


def available() -> bool:
    return _native is not None and hasattr(_native, "Frontend")


def plan(signature: Signature) -> dict[str, Any] | None:
    """What the front end needs to serve a model of this signature, or None where it leaves it to Python: one
    input of float32, float64 or int64 with every dimension but the batch known, and one float32/int32/int64
    output."""
    if len(signature.inputs) != 1 or len(signature.outputs) != 1:
        return None
    spec, out = signature.inputs[0], signature.outputs[0]
    if spec.dtype not in _KINDS or out.dtype not in _OUTPUTS or not spec.shape:
        return None
    row = spec.shape[1:]
    if any(d is None or d < 1 for d in row):
        return None
    return {
        "kind": _KINDS[spec.dtype],
        "row_shape": tuple(int(d) for d in row),
        "input": spec.name,
        "output": out.name,
        "dtype": np.dtype(spec.dtype),
    }


class Lane:
    """One model version's requests from the front end: their queue (a ``_native.Slot``) and the thread that runs
    them in batches of up to ``max_batch`` rows."""

    def __init__(
        self,
        model: str,
        version: int,
        signature: Signature,
        fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        shape: dict[str, Any],
        *,
        max_batch: int,
        max_wait: float,
        metrics: ServerMetrics,
        gather: float = 0.0,
        processes: int = 1,
        on_batch: Callable[[], None] | None = None,
        prediction_log: PredictionLog | None = None,
        log_sample: float = 0.0,
    ):
        assert _native is not None
        self.model, self.version, self.signature = model, version, signature
        self._fn, self._shape = fn, shape
        self.max_batch, self.max_wait = max(1, max_batch), max(0.0, max_wait)
        self._metrics = metrics
        # Only a small batch waits for company: a model call's fixed cost dominates below a quarter of max_batch
        # rows, while a bigger batch going at once lets the front end read the next one meanwhile. Where other
        # server processes (``processes`` in all) share the CPUs, their work fills that overlap instead, and
        # a batch waits until it has a quarter of max_batch per process (LeNet at 64 connections on 2 CPUs, 2
        # processes: batches of 19 -> 27 rows, +8% requests/s; 1 process: a half is no better than a quarter).
        self.gather = gather
        self.gather_rows = max(1, min(self.max_batch, self.max_batch * max(1, processes) // 4))
        self._on_batch = on_batch
        self._predlog, self._log_sample = prediction_log, log_sample
        self._labels = labels(model, version)
        self._counted = {
            "rest": labels(model, version, protocol="rest", code="200"),
            "v2": labels(model, version, protocol="v2", code="200"),
        }
        prefix = (
            b'{"model_name":'
            + orjson.dumps(model)
            + b',"model_version":"%d","outputs":[{"name":' % version
            + orjson.dumps(shape["output"])
            + b","
        )
        self.slot = _native.Slot(
            shape["kind"],
            shape["row_shape"],
            version,
            signature_name=str(signature.extra.get("signature_name", "serving_default")),
            input_name=shape["input"],
            input_datatype=v2.DATATYPES[str(shape["dtype"])],
            v2_prefix=prefix.decode(),
        )
        self._inline_on = False  # see _serve
        self._thread = threading.Thread(target=self._run, name=f"native-{model}-{version}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Take no more requests; those queued still run. Returns at once."""
        self.slot.close()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self.slot.take(self.max_batch, self.max_wait, -1.0, self.gather, _GATHER_CAP, self.gather_rows)
            if batch is None:
                return
            if batch is False:
                continue
            try:
                self._serve(batch)
            except Exception:  # a bug of ours: every request still gets an answer (Batch's own 500 at worst)
                log.exception("native batch of model %s version %s failed", self.model, self.version)

    def _inline(self, batch: Any) -> None:
        """A lone client's request, on the front end's thread (see Slot.set_inline)."""
        try:
            self._serve(batch)
        except Exception:
            log.exception("native request of model %s version %s failed", self.model, self.version)

    def _serve(self, batch: Any) -> None:
        if self._on_batch is not None:
            self._on_batch()
        x = np.frombuffer(batch, self._shape["dtype"]).reshape(batch.rows, *self._shape["row_shape"])
        sizes = batch.sizes
        t0 = time.perf_counter()
        try:
            outputs = self._fn({self._shape["input"]: x})
        except Exception as e:
            if len(sizes) == 1:
                log.exception("model call failed")
                self._model_failed(batch, 0, e)
                return
            start = 0  # run each alone, so that one bad request fails only itself
            for i, rows in enumerate(sizes):
                self._one(batch, i, x[start : start + rows])
                start += rows
            return
        # A lone client's request may run on the front end's thread, which serves nothing else meanwhile: only
        # while the model answers quickly (it is first measured here, on this thread).
        fast = time.perf_counter() - t0 < _INLINE_MAX_S
        if fast != self._inline_on:
            self._inline_on = fast
            self.slot.set_inline(self._inline if fast else None)
        self._metrics.batch_size.observe(self._labels, batch.rows)
        self._answer(batch, x, outputs, 0, len(sizes))

    def _one(self, batch: Any, i: int, x: np.ndarray) -> None:
        try:
            outputs = self._fn({self._shape["input"]: x})
        except Exception as e:
            log.exception("model call failed")
            self._model_failed(batch, i, e)
            return
        self._metrics.batch_size.observe(self._labels, len(x))
        self._answer(batch, x, outputs, i, 1)

    def _model_failed(self, batch: Any, i: int, e: Exception) -> None:
        message = f"the model failed on this input: {type(e).__name__}: {e}"
        self._metrics.requests.inc(labels(self.model, self.version, protocol="model", code="500"))
        batch.reply(http.encode(http.error(500, message), keep_alive=True), i, 1)

    def _answer(self, batch: Any, x: np.ndarray, outputs: dict[str, np.ndarray], first: int, count: int) -> None:
        """Answer requests [first, first+count) of ``batch``, whose inputs are ``x`` and outputs ``outputs``."""
        formats = batch.formats[first : first + count]
        sizes = batch.sizes[first : first + count] if self._predlog is not None else None
        out = outputs.get(self._shape["output"])
        if out is None and len(outputs) == 1:
            out = next(iter(outputs.values()))
        try:
            if out is None:
                raise ValueError(f"no output {self._shape['output']!r}")
            # (counted before the answers leave: a client that has its answer finds it in the metrics)
            latencies = batch.answer(np.ascontiguousarray(out), first, count, lambda ls: self._count(formats, ls))
        except ValueError:  # outputs C does not write (NaN, another dtype...): answered in Python, as it would
            latencies = self._answer_in_python(batch, outputs, first, count)
        if sizes is not None:
            self._sample(x, outputs, sizes, formats, latencies)

    def _sample(
        self, x: np.ndarray, outputs: dict[str, np.ndarray], sizes: list[int], formats: bytes, latencies: list[float]
    ) -> None:
        assert self._predlog is not None
        start = 0
        for rows, fmt, seconds in zip(sizes, formats, latencies, strict=True):
            if random.random() < self._log_sample:
                self._predlog.record(
                    self.model,
                    self.version,
                    "v2" if fmt == ord("v") else "rest",
                    seconds,
                    {self._shape["input"]: x[start : start + rows].copy()},
                    {k: v[start : start + rows].copy() for k, v in outputs.items()},
                )
            start += rows

    def _answer_in_python(self, batch: Any, outputs: dict[str, np.ndarray], first: int, count: int) -> list[float]:
        """Requests [first, first+count) of ``batch`` answered from ``outputs`` (their rows) as the Python server
        answers them. Returns each one's time since it was read."""
        sizes, formats, ids = batch.sizes, batch.formats, batch.ids
        latencies = []
        headers = [(b"content-type", b"application/json"), (b"x-model-version", str(self.version).encode())]
        start = 0
        for i in range(first, first + count):
            rows = {k: v[start : start + sizes[i]] for k, v in outputs.items()}
            start += sizes[i]
            if formats[i : i + 1] == b"v":
                body = v2.infer_body(self.model, self.version, rows, self.signature, None, ids[i])
            else:
                body = tfserving.predict_body(rows, self.signature, "row" if formats[i : i + 1] == b"p" else "columnar")
            response = http.Response(200, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), headers)
            latencies += batch.ages(i, 1)
            self._count(formats[i : i + 1], latencies[-1:])
            batch.reply(http.encode(response, keep_alive=True), i, 1)
        return latencies

    def _count(self, formats: bytes, latencies: list[float]) -> None:
        v2_count = formats.count(b"v")
        if v2_count:
            self._metrics.requests.inc(self._counted["v2"], v2_count)
        if len(formats) - v2_count:
            self._metrics.requests.inc(self._counted["rest"], len(formats) - v2_count)
        self._metrics.latency.observe_many(self._labels, latencies)


class NativeFrontend:
    """The C front end on ``sock`` (a listening TCP socket), handing what it does not serve to ``server``."""

    def __init__(self, sock: socket.socket, server: HTTPServer, *, max_body: int, keep_alive: float):
        assert _native is not None
        self.sock = sock
        self.server = server
        self._fe = _native.Frontend(sock.fileno(), max_body, keep_alive)

    def start(self) -> None:
        """Start accepting; the Python server's loop must be running (it takes the connections handed over)."""
        loop = self.server.loop
        assert loop is not None
        loop.call_soon_threadsafe(loop.add_reader, self._fe.handoff_fd, self._take_handoffs)
        self._fe.start()

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, wait up to ``grace`` s for the answers in hand, close every connection it holds."""
        self._fe.routes([])
        self._fe.stop(grace)
        loop = self.server.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.remove_reader, self._fe.handoff_fd)

    def stats(self) -> dict[str, int]:
        return dict(self._fe.stats())

    def report(self, metrics: ServerMetrics) -> None:
        """Its counts into ``metrics`` (before they are rendered)."""
        stats = self._fe.stats()
        metrics.native_answered.set((), stats["served"])
        metrics.native_handed_off.set((), stats["handed_off"])
        metrics.native_open.set((), stats["open"])

    def balance(
        self, table: Any, me: int, width: int, count: int, pass_fd: Callable[[int], bool], inbox: int = -1
    ) -> None:
        """Several server processes serve this port: keep connections even with the others through their shared
        ``table`` (see workers.Balancer), taking those they pass on the datagram socket ``inbox`` (a file
        descriptor; without the GIL). Before :meth:`start`."""
        from workbench.serving.workers import COLUMNS, DRAINING, LAST_REQUEST, NATIVE, OPEN, PID

        columns = (PID, OPEN, DRAINING, LAST_REQUEST, NATIVE, COLUMNS)
        self._fe.balance(table, me, width, count, columns, pass_fd, inbox)

    def pass_idle(self) -> None:
        """Pass on every idle connection the balance asks to move (this process steps aside to load)."""
        self._fe.pass_idle()

    def _take_handoffs(self) -> None:  # the Python server's loop
        for fd, data in self._fe.handoffs():
            self.server.adopt(fd, data)

    def publish(self, models: dict[str, ModelState]) -> None:
        """Serve the predict routes of ``models`` (the repository's whole table) from now on."""
        table: list[tuple[bytes, Any, str]] = []
        for name, state in models.items():
            slots = {
                v: s.lane.slot
                for v, s in state.servables.items()
                if getattr(s, "lane", None) is not None and v not in state.unconfirmed
            }
            if not slots:
                continue
            for v, slot in slots.items():
                table.append((f"/v1/models/{name}/versions/{v}:predict".encode(), slot, "rest"))
                table.append((f"/v2/models/{name}/versions/{v}/infer".encode(), slot, "v2"))
            for label, v in (state.data.get("labels") or {}).items():
                if int(v) in slots:
                    table.append((f"/v1/models/{name}/labels/{label}:predict".encode(), slots[int(v)], "rest"))
            live = state.live()
            if live in slots and not state.data.get("traffic"):
                table.append((f"/v1/models/{name}:predict".encode(), slots[live], "rest"))
                table.append((f"/v2/models/{name}/infer".encode(), slots[live], "v2"))
        self._fe.routes(table)
