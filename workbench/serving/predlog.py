"""Opt-in prediction log for monitoring: a sample of requests per model version in ``state/predictions.sqlite``.

The server samples a fraction of predict requests (``WORKBENCH_SERVE_LOG_SAMPLE``
or ``workbench serve --log-sample``) and hands them to a writer thread, which
inserts them in batches; a full queue drops rows (counted in ``/metrics``)
rather than slow requests down. :func:`summary` reads the table: counts,
latency percentiles and the output distribution per model version.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from workbench.workspace import Workspace

log = logging.getLogger("workbench.serving")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    time REAL NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    rows INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    inputs TEXT,
    outputs TEXT
);
CREATE INDEX IF NOT EXISTS predictions_model ON predictions (model, version, time);
"""
MAX_FIELD_CHARS = 200_000  # inputs/outputs JSON longer than this is not stored (the row still is)


def db_path(workspace: Workspace) -> Path:
    return workspace.state / "predictions.sqlite"


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    return conn


class PredictionLog:
    """Background writer of sampled predictions."""

    def __init__(self, path: Path, on_drop: Callable[[], None] | None = None, max_queue: int = 10_000):
        self.path = path
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._on_drop = on_drop
        connect(path).close()  # fail at start, not in the thread, when the workspace is not writable
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
        try:
            self._queue.put_nowait((time.time(), model, version, protocol, latency_s, inputs, outputs))
        except queue.Full:
            if self._on_drop is not None:
                self._on_drop()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        conn = connect(self.path)
        stop = False
        while not stop:
            items = [self._queue.get()]
            deadline = time.monotonic() + 0.2
            while len(items) < 500 and time.monotonic() < deadline:
                try:
                    items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            stop = None in items
            rows = [_row(*item) for item in items if item is not None]
            try:
                with conn:
                    conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.Error:
                log.exception("could not write %d predictions to %s", len(rows), self.path)
        conn.close()


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


def summary(
    workspace: Workspace | None = None, model: str | None = None, since: float | None = None
) -> dict[str, dict[int, dict[str, Any]]]:
    """Per model and version: requests, rows, latency percentiles (ms) and output distribution.

    For an output with a class axis (e.g. probabilities, shape [batch, k]) the
    distribution is how often each class was the top one, and the mean top
    score; for a scalar output, its mean, std, min and max.
    """
    path = db_path(workspace or Workspace.current())
    if not path.exists():
        return {}
    conn = sqlite3.connect(path, timeout=30)
    try:
        query = "SELECT model, version, rows, latency_ms, outputs FROM predictions WHERE time >= ?"
        params: list[Any] = [since or 0.0]
        if model is not None:
            query += " AND model = ?"
            params.append(model)
        records = conn.execute(query, params).fetchall()
    finally:
        conn.close()
    grouped: dict[tuple[str, int], list[tuple[int, float, str | None]]] = {}
    for m, v, rows, latency, outputs in records:
        grouped.setdefault((m, v), []).append((rows, latency, outputs))
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for (m, v), items in sorted(grouped.items()):
        lat = np.array([i[1] for i in items])
        out.setdefault(m, {})[v] = {
            "requests": len(items),
            "rows": int(sum(i[0] for i in items)),
            "latency_ms": {
                p: round(float(np.percentile(lat, q)), 3) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))
            }
            | {"mean": round(float(lat.mean()), 3)},
            "outputs": _distribution([i[2] for i in items]),
        }
    return out


def _distribution(dumps: list[str | None]) -> dict[str, Any]:
    per_output: dict[str, list[np.ndarray]] = {}
    for text in dumps:
        if text:
            for name, value in json.loads(text).items():
                per_output.setdefault(name, []).append(np.asarray(value))
    dist: dict[str, Any] = {}
    for name, arrays in per_output.items():
        values = np.concatenate([a.reshape(len(a), -1) for a in arrays]).astype(float)
        if values.shape[1] > 1:
            top = values.argmax(axis=1)
            classes, counts = np.unique(top, return_counts=True)
            dist[name] = {
                "top_class": {int(c): int(n) for c, n in zip(classes, counts, strict=True)},
                "mean_top_score": round(float(values.max(axis=1).mean()), 4),
            }
        else:
            col = values[:, 0]
            dist[name] = {
                "mean": float(col.mean()),
                "std": float(col.std()),
                "min": float(col.min()),
                "max": float(col.max()),
            }
    return dist
