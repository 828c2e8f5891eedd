"""The model server's Prometheus metrics (text exposition format 0.0.4), without a client library."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _fmt_labels(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    items = [*labels, *extra]
    if not items:
        return ""
    esc = (str(v).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n") for _, v in items)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(items, esc, strict=True)) + "}"


def _num(v: float) -> str:
    return repr(float(v)) if v != int(v) else str(int(v))


class Counter:
    def __init__(self, name: str, help: str, kind: str = "counter"):
        self.name, self.help, self.kind = name, help, kind
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, labels: Labels = (), by: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + by

    def set(self, labels: Labels, value: float) -> None:
        with self._lock:
            self._values[labels] = value

    def remove(self, labels: Labels) -> None:
        with self._lock:
            self._values.pop(labels, None)

    def snapshot(self) -> dict[Labels, float]:
        with self._lock:
            return dict(self._values)

    def render(self, others: Iterable[dict[Labels, float]] = ()) -> list[str]:
        """The exposition lines, the values of other worker processes (``others``) added in."""
        values = self.snapshot()
        for other in others:
            for k, v in other.items():
                values[k] = values.get(k, 0.0) + v
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        lines += [f"{self.name}{_fmt_labels(k)} {_num(v)}" for k, v in sorted(values.items())]
        return lines


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help, buckets
        self._data: dict[Labels, list[float]] = {}  # per label set: bucket counts..., +Inf count, sum
        self._lock = threading.Lock()

    def observe(self, labels: Labels, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            d = self._data.get(labels)
            if d is None:
                d = self._data[labels] = [0.0] * (len(self.buckets) + 2)
            d[i] += 1
            d[-1] += value

    def observe_many(self, labels: Labels, values: list[float]) -> None:
        """``observe`` each of ``values`` (a batch's latencies), under one lock."""
        where = [bisect.bisect_left(self.buckets, v) for v in values]
        with self._lock:
            d = self._data.get(labels)
            if d is None:
                d = self._data[labels] = [0.0] * (len(self.buckets) + 2)
            for i in where:
                d[i] += 1
            d[-1] += sum(values)

    def snapshot(self) -> dict[Labels, list[float]]:
        with self._lock:
            return {k: list(v) for k, v in self._data.items()}

    def render(self, others: Iterable[dict[Labels, list[float]]] = ()) -> list[str]:
        data = self.snapshot()
        for other in others:
            for k, v in other.items():
                data[k] = [a + b for a, b in zip(data[k], v, strict=True)] if k in data else list(v)
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, d in sorted(data.items()):
            total = 0.0
            for bound, count in zip((*self.buckets, float("inf")), d[:-1], strict=True):
                total += count
                le = "+Inf" if bound == float("inf") else _num(bound)
                lines.append(f"{self.name}_bucket{_fmt_labels(labels, [('le', le)])} {_num(total)}")
            lines.append(f"{self.name}_count{_fmt_labels(labels)} {_num(total)}")
            lines.append(f"{self.name}_sum{_fmt_labels(labels)} {_num(d[-1])}")
        return lines


class ServerMetrics:
    """Everything ``/metrics`` shows. One instance per server (no global registry)."""

    def __init__(self) -> None:
        self.requests = Counter("workbench_requests_total", "Requests by model, version, protocol and HTTP status.")
        self.latency = Histogram(
            "workbench_request_latency_seconds",
            "Predict latency (body read to answer) by model and version.",
            LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "workbench_batch_size", "Rows per batched model call by model and version.", BATCH_BUCKETS
        )
        self.loaded = Counter("workbench_model_version_loaded", "1 for each model version loaded and serving.", "gauge")
        self.live = Counter("workbench_model_live_version", "Version unversioned requests get, by model.", "gauge")
        self.load_failures = Counter("workbench_model_load_failures_total", "Versions that failed to load or warm up.")
        self.load_seconds = Histogram(
            "workbench_model_load_seconds", "Time to load and warm up a version.", (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
        )
        self.log_dropped = Counter(
            "workbench_prediction_log_dropped_total", "Sampled predictions not logged (queue full)."
        )
        self.native_answered = Counter(
            "workbench_native_answered_total", "Predict requests the native front end answered."
        )
        self.native_handed_off = Counter(
            "workbench_native_handed_off_total", "Connections the native front end passed to the Python server."
        )
        self.native_open = Counter(
            "workbench_native_connections", "Client connections the native front end holds.", "gauge"
        )

    def _parts(self) -> tuple[Counter | Histogram, ...]:
        return (
            self.requests,
            self.latency,
            self.batch_size,
            self.loaded,
            self.live,
            self.load_failures,
            self.load_seconds,
            self.log_dropped,
            self.native_answered,
            self.native_handed_off,
            self.native_open,
        )

    def _per_request(self) -> tuple[Counter | Histogram, ...]:
        """What each worker process counts of its own requests; the rest (loads, versions) every worker sees alike."""
        return (
            self.requests,
            self.latency,
            self.batch_size,
            self.log_dropped,
            self.native_answered,
            self.native_handed_off,
            self.native_open,
        )

    def snapshot(self) -> dict[str, list[Any]]:
        """The per-request values, as JSON (label sets as lists of pairs), for another worker process to add in."""
        return {p.name: [[list(map(list, k)), v] for k, v in p.snapshot().items()] for p in self._per_request()}

    def render(self, others: Iterable[dict[str, list[Any]]] = ()) -> str:
        """The exposition text, the per-request values of ``others`` (snapshots of sibling workers) added in."""
        others = list(others)
        lines = []
        for p in self._parts():
            merged = [{tuple(map(tuple, k)): v for k, v in o.get(p.name, ())} for o in others]
            lines += p.render(merged)  # type: ignore[arg-type]
        return "\n".join(lines) + "\n"


@lru_cache(maxsize=4096)  # built on every request, for a handful of distinct label sets
def labels(model: str, version: int | None = None, **more: str) -> Labels:
    base: list[tuple[str, str]] = [("model", model)]
    if version is not None:
        base.append(("version", str(version)))
    return tuple(base + sorted(more.items()))
