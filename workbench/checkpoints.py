"""A run's checkpoints: one entry per step, with the metrics logged at that step."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from workbench.metrics import read_scalars
from workbench.runtime import INDEX

_STEP = re.compile(r"^(?P<key>.*?(?P<step>\d+))(?P<rest>(\.[^/]*)?)$")
_SKIP = {INDEX, "checkpoint"}


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    metrics: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(self.metrics.items()))
        return f"Checkpoint(step={self.step}, path={self.path.name!r}{', ' + shown if shown else ''})"


def list_checkpoints(checkpoint_dir: Path, tb_dir: Path | None = None) -> list[Checkpoint]:
    """Checkpoints under ``checkpoint_dir``, by step.

    Entries are grouped by name up to their step number, so a
    ``tf.train.Checkpoint`` (``ckpt-3.index`` + ``ckpt-3.data-...``) is one
    checkpoint whose path is the prefix ``ckpt-3``; a ``.keras`` file or a
    SavedModel folder is its own path. Metrics come from ``record_checkpoint``
    or, failing that, from TensorBoard scalars logged at the same step.
    """
    if not checkpoint_dir.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    steps: dict[str, int] = {}
    for entry in sorted(checkpoint_dir.iterdir()):
        m = _STEP.match(entry.name)
        if entry.name in _SKIP or entry.name.startswith(".") or not m:
            continue
        groups.setdefault(m["key"], []).append(entry)
        steps[m["key"]] = int(m["step"])
    recorded = _recorded(checkpoint_dir)
    scalars = read_scalars(tb_dir) if tb_dir else {}
    found = []
    for key, entries in groups.items():
        path = entries[0] if len(entries) == 1 else checkpoint_dir / key
        step = steps[key]
        metrics = recorded.get(path.name) or _at_step(scalars, step)
        found.append(Checkpoint(step, path, metrics))
    return sorted(found, key=lambda c: c.step)


def _recorded(checkpoint_dir: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    index = checkpoint_dir / INDEX
    if index.is_file():
        for line in index.read_text().splitlines():
            try:
                entry = json.loads(line)
                out[entry["path"]] = entry.get("metrics", {})
            except (ValueError, KeyError):
                continue  # a line cut short by a crash
    return out


def _at_step(scalars: dict[str, list[tuple[int, float]]], step: int) -> dict[str, float]:
    return {tag: value for tag, points in scalars.items() for s, value in points if s == step}
