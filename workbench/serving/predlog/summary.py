"""The prediction log's rows -> per model version: counts, latency percentiles and the output distribution."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def aggregate(records: list[tuple[Any, ...]]) -> dict[str, dict[int, dict[str, Any]]]:
    """``records``: (model, version, rows, latency_ms, outputs JSON) as :func:`workbench.serving.predlog.sql.select`
    returns them."""
    grouped: dict[tuple[str, int], list[tuple[int, float, str | None]]] = {}
    for m, v, rows, latency, outputs in records:
        grouped.setdefault((m, int(v)), []).append((rows, latency, outputs))
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
