"""The background writer: sampled predictions queue in memory and a thread inserts them in batches.

Nothing here may fail or slow a predict. A full queue drops the row; a batch the database refuses (down,
unreachable, full disk) is dropped too, never retried, so no row can land twice. Drops are counted (the
server's ``workbench_prediction_log_dropped_total``) and logged at most every :data:`WARN_EVERY_S`. While the
database is unreachable the writer reconnects with a growing delay (up to :data:`MAX_BACKOFF_S`), and rows
wait in the queue meanwhile, up to its bound.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("workbench.serving")

BATCH_ROWS = 500
BATCH_WAIT_S = 0.2
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.5, 5.0
WARN_EVERY_S = 10.0
MAX_FIELD_CHARS = 200_000  # inputs/outputs JSON longer than this is not stored (the row still is)


class Database(Protocol):
    """What the writer and :func:`~workbench.serving.predlog.summary` need of a database module."""

    placeholder: str
    errors: tuple[type[BaseException], ...]

    def connect(self) -> Any: ...
    def insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None: ...
    def query(self, statement: str, params: list[Any]) -> list[tuple[Any, ...]]: ...


class PredictionLog:
    """Background writer of sampled predictions into ``database``; ``on_drop(n)`` hears of each row not logged."""

    def __init__(self, database: Database, on_drop: Callable[[int], None] | None = None, max_queue: int = 10_000):
        self.database = database
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._on_drop = on_drop
        self._closing = threading.Event()
        self._warned: dict[str, float] = {}  # kind of warning -> when last logged
        self._unwarned = 0  # rows dropped since the last drop warning
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(
        self,
        model: str,
        version: int,
        protocol: str,
        latency_s: float,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> None:
        """Queue one prediction; never blocks (a full queue drops it)."""
        try:
            self._queue.put_nowait((time.time(), model, version, protocol, latency_s, inputs, outputs))
        except queue.Full:
            self._drop(1, "the queue is full")

    def close(self, timeout: float = 10) -> None:
        """Write what is queued (if the database takes it within ``timeout``), then stop the thread."""
        self._closing.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the writer sees _closing once it has taken a batch
        self._thread.join(timeout)

    # ---------------------------------------------------------------- the thread

    def _run(self) -> None:
        conn, delay = None, MIN_BACKOFF_S
        while True:
            batch, stop = self._next_batch()
            while conn is None and not (stop and not batch):
                try:
                    conn = self.database.connect()
                    if delay > MIN_BACKOFF_S:
                        log.info("the prediction log at %s is reachable again", self.database)
                    delay = MIN_BACKOFF_S
                except Exception as e:  # the database's errors, and its driver's on a malformed URL
                    self._warn(
                        "down", f"cannot reach the prediction log at {self.database} ({_first_line(e)}); retrying"
                    )
                    if self._closing.wait(delay):  # closing while the database is down: give up
                        self._drop(len(batch) + self._discard(), "the server stopped while it was down")
                        return
                    delay = min(delay * 2, MAX_BACKOFF_S)  # > MIN_BACKOFF_S from now on: it was down
            if batch and conn is not None:
                try:
                    self.database.insert(conn, [_row(*item) for item in batch])
                except (
                    Exception
                ) as e:  # whatever it is (the database's errors, a value it refuses), never the thread's end
                    self._drop(len(batch), _first_line(e))
                    _close(conn)
                    conn = None
            if stop:
                break
        _close(conn)

    def _next_batch(self) -> tuple[list[Any], bool]:
        """Up to BATCH_ROWS items, waiting at most BATCH_WAIT_S once the first came; and whether to stop after."""
        items = [self._queue.get()]
        deadline = time.monotonic() + BATCH_WAIT_S
        while len(items) < BATCH_ROWS and items[-1] is not None:
            try:
                items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        stop = items[-1] is None or self._closing.is_set()
        return [i for i in items if i is not None], stop

    def _discard(self) -> int:
        """Empty the queue; return how many rows it held."""
        rows = 0
        while True:
            try:
                rows += self._queue.get_nowait() is not None
            except queue.Empty:
                return rows

    def _drop(self, count: int, why: str) -> None:
        if count <= 0:
            return
        if self._on_drop is not None:
            self._on_drop(count)
        self._unwarned += count
        if self._warn("drop", f"dropped {self._unwarned} prediction(s) not logged to {self.database}: {why}"):
            self._unwarned = 0

    def _warn(self, kind: str, message: str) -> bool:
        """Log a warning of this kind at most once per WARN_EVERY_S (an outage would otherwise log every batch);
        return whether it was logged."""
        now = time.monotonic()
        if now - self._warned.get(kind, -WARN_EVERY_S) < WARN_EVERY_S:
            return False
        log.warning("%s", message)
        self._warned[kind] = now
        return True


def _row(
    t: float,
    model: str,
    version: int,
    protocol: str,
    latency_s: float,
    inputs: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
) -> tuple[Any, ...]:
    rows = len(next(iter(outputs.values()))) if outputs else 0
    return (t, model, int(version), protocol, rows, latency_s * 1000.0, _dump(inputs), _dump(outputs))


def _dump(arrays: dict[str, np.ndarray]) -> str | None:
    text = json.dumps({k: v.tolist() for k, v in arrays.items()})
    return text if len(text) <= MAX_FIELD_CHARS else None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _close(conn: Any) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:  # a connection to a database that went away may fail to close; it is gone either way
            pass
    return None
