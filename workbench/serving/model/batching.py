"""Server-side dynamic batching: requests queued for one model version run as one model call.

One thread per model version takes what is queued (up to ``max_batch`` rows;
waiting up to ``max_wait`` seconds for more when that is > 0), concatenates
the inputs along the batch axis, calls the model once, and hands each request
its slice. With ``max_wait=0`` nothing waits: at concurrency 1 a request runs
alone at once, and under load the requests that arrive while the model runs
form the next batch. Results go back to the asyncio loop of the waiting
request in one ``call_soon_threadsafe`` per batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("workbench.serving")

Inputs = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


class Closed(Exception):
    """The batcher stopped (its version was swapped out); the caller resolves the model again."""


@dataclass
class _Item:
    inputs: Inputs
    rows: int
    future: asyncio.Future[Outputs]
    loop: asyncio.AbstractEventLoop
    key: tuple[Any, ...] = field(default=())  # non-batch shapes: only equal keys share a batch


_STOP = object()


class Batcher:
    """Runs ``fn`` on batches of queued requests, on a thread of its own."""

    def __init__(
        self,
        fn: Callable[[Inputs], Outputs],
        max_batch: int = 64,
        max_wait: float = 0.0,
        name: str = "batcher",
        on_batch: Callable[[int], None] | None = None,
    ):
        self._fn = fn
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait)
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, inputs: Inputs, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Outputs]:
        """Queue one request (arrays with a batch axis); its future gets its outputs. Raises Closed."""
        rows = len(next(iter(inputs.values())))
        key = tuple((k, v.shape[1:], v.dtype.str) for k, v in inputs.items())
        item = _Item(inputs, rows, loop.create_future(), loop, key)
        with self._lock:
            if self._closed:
                raise Closed()
            self._queue.put(item)
        return item.future

    def close(self) -> None:
        """Stop taking requests; those already queued still run. Returns at once."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        carry: _Item | None = None
        stopping = False
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                return
            batch, rows = [first], first.rows
            deadline = time.monotonic() + self.max_wait
            while rows < self.max_batch:
                nxt = self._next(deadline)
                if nxt is None:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                if nxt.key != first.key or rows + nxt.rows > self.max_batch:
                    carry = nxt
                    break
                batch.append(nxt)
                rows += nxt.rows
            self._execute(batch, rows)
            if stopping:
                carry = _STOP  # type: ignore[assignment]

    def _next(self, deadline: float) -> Any:
        try:
            if self.max_wait <= 0:
                return self._queue.get_nowait()
            remaining = deadline - time.monotonic()
            return self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _execute(self, batch: list[_Item], rows: int) -> None:
        batch = [item for item in batch if not item.future.cancelled()]
        if not batch:
            return
        try:
            if len(batch) == 1:
                results: list[Any] = [self._fn(batch[0].inputs)]
            else:
                merged = {k: np.concatenate([item.inputs[k] for item in batch]) for k in batch[0].inputs}
                out = self._fn(merged)
                results, start = [], 0
                for item in batch:
                    results.append({k: v[start : start + item.rows] for k, v in out.items()})
                    start += item.rows
            if self._on_batch is not None:
                self._on_batch(rows)
        except Exception as e:
            if len(batch) > 1:  # run each alone, so one bad request fails only itself
                for item in batch:
                    self._execute([item], item.rows)
                return
            log.exception("model call failed")
            results = [e]
        _deliver_all(batch, results)


def _deliver_all(batch: list[_Item], results: list[Any]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Outputs], Any]]] = {}
    for item, result in zip(batch, results, strict=True):
        by_loop.setdefault(item.loop, []).append((item.future, result))
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, pairs)
        except RuntimeError:
            pass  # the loop is closed: the server is shutting down


def _deliver(pairs: list[tuple[asyncio.Future[Outputs], Any]]) -> None:
    for future, result in pairs:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
