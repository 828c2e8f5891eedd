"""The model server's Prometheus metrics, through ``prometheus_client``, and the one place a request is accounted.

With several server processes (the HTTP server's workers) ``prometheus_client`` runs in multiprocess mode:
:func:`workbench.serving.server.serve` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the
workers start, each worker writes its own values there, and ``/metrics`` in any worker adds them all up
(https://prometheus.github.io/client_python/multiprocess/).
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

if TYPE_CHECKING:
    from workbench.serving.predlog import PredictionLog

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ServerMetrics:
    """Everything ``/metrics`` shows, and the repository's events (:class:`workbench.serving.model.repository.Events`).
    ``record`` accounts one answered predict: counts, latency, and the prediction log's sample."""

    def __init__(self, prediction_log: PredictionLog | None = None, log_sample: float = 0.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.prediction_log, self.log_sample = prediction_log, log_sample
        r = self.registry
        self.requests = Counter(
            "workbench_requests",
            "Requests by model, version, status and protocol.",
            ["model", "version", "code", "protocol"],
            registry=r,
        )
        self.latency = Histogram(
            "workbench_request_latency_seconds",
            "Predict latency (body read to answer) by model and version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "workbench_batch_size",
            "Rows per batched model call.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.loaded_versions = Gauge(
            "workbench_model_version_loaded",
            "1 for each model version loaded and serving.",
            ["model", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.live_version = Gauge(
            "workbench_model_live_version",
            "Version unversioned requests get, by model.",
            ["model"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.load_failures = Counter(
            "workbench_model_load_failures",
            "Versions that failed to load or warm up.",
            ["model", "version"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "workbench_model_load_seconds",
            "Time to load and warm up a version.",
            ["model"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.log_dropped = Counter(
            "workbench_prediction_log_dropped",
            "Sampled predictions not logged (queue full or database down).",
            registry=r,
        )

    # ---------------------------------------------------------------- requests

    def count(self, model: str, version: int | None, protocol: str, code: int) -> None:
        self.requests.labels(model, "" if version is None else str(version), str(code), protocol).inc()

    def record(
        self,
        model: str,
        version: int,
        protocol: str,
        seconds: float,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> None:
        v = str(version)
        self.requests.labels(model, v, "200", protocol).inc()
        self.latency.labels(model, v).observe(seconds)
        if self.prediction_log is not None and random.random() < self.log_sample:
            self.prediction_log.record(model, version, protocol, seconds, inputs, outputs)

    # ---------------------------------------------------------------- repository events

    def loaded(self, model: str, version: int, seconds: float) -> None:
        self.loaded_versions.labels(model, str(version)).set(1)
        self.load_seconds.labels(model).observe(seconds)

    def unloaded(self, model: str, version: int) -> None:
        self.loaded_versions.labels(model, str(version)).set(0)

    def load_failed(self, model: str, version: int) -> None:
        self.load_failures.labels(model, str(version)).inc()

    def live(self, model: str, version: int | None) -> None:
        self.live_version.labels(model).set(-1 if version is None else version)

    def batch(self, model: str, version: int, rows: int) -> None:
        self.batch_size.labels(model, str(version)).observe(rows)

    def dropped(self, count: int = 1) -> None:
        self.log_dropped.inc(count)

    # ---------------------------------------------------------------- exposition

    def render(self) -> bytes:
        """The exposition text: this process's values, or with several processes every process's added up."""
        if multiprocess():
            registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def mark_process_dead(pid: int) -> None:
    """Forget a worker process's live gauges (called by the supervisor when a worker exits)."""
    if multiprocess():
        _multiprocess.mark_process_dead(pid)


__all__: list[Any] = ["ServerMetrics", "CONTENT_TYPE", "mark_process_dead", "multiprocess"]
