"""Scalars from a run's TensorBoard event files, read without TensorFlow.

Event files are TFRecord files of ``Event`` protos. We read them directly
(length, crc, payload, crc) so ``job.watch()`` and checkpoint metrics work in a
process that never imports TensorFlow, and read incrementally: each call picks
up only what was appended since the last.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class _File:
    offset: int = 0


@dataclass
class ScalarReader:
    """Incremental reader of every scalar under a logdir: ``series["train/epoch_loss"] = [(step, value)]``."""

    logdir: Path
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    _files: dict[Path, _File] = field(default_factory=dict)

    def update(self) -> dict[str, list[tuple[int, float]]]:
        if self.logdir.is_dir():
            for path in sorted(self.logdir.rglob("*tfevents*")):
                if path.is_file():
                    self._read(path, self._files.setdefault(path, _File()))
        return self.series

    def _read(self, path: Path, state: _File) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        run = path.parent.relative_to(self.logdir).as_posix()
        run = "" if run == "." else run + "/"
        with open(path, "rb") as f:
            f.seek(state.offset)
            while True:
                header = f.read(12)
                if len(header) < 12:
                    break
                (length,) = struct.unpack("<Q", header[:8])
                body = f.read(length + 4)
                if len(body) < length + 4:
                    break  # a record still being written: read it next time
                state.offset = f.tell()
                event = Event.FromString(body[:length])
                for value in event.summary.value:
                    scalar = _scalar(value)
                    if scalar is not None:
                        self.series.setdefault(run + value.tag, []).append((int(event.step), scalar))


def _scalar(value) -> float | None:  # type: ignore[no-untyped-def]
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor") and not value.tensor.tensor_shape.dim:
        t = value.tensor
        for vals in (t.float_val, t.double_val, t.int_val, t.int64_val):
            if len(vals):
                return float(vals[0])
        if t.tensor_content:
            import numpy as np

            dtype = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64}.get(t.dtype)
            if dtype is not None:
                return float(np.frombuffer(t.tensor_content, dtype=dtype)[0])
    return None


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series under ``logdir`` (one-shot)."""
    return ScalarReader(Path(logdir)).update()


def loss_series(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """The series that look like losses (tag contains "loss"), epoch-level ones first."""
    losses = {k: v for k, v in series.items() if "loss" in k.rsplit("/", 1)[-1].lower()}
    return dict(sorted(losses.items(), key=lambda kv: (not is_epoch_level(kv[0]), kv[0])))


def is_epoch_level(tag: str) -> bool:
    """Whether a series counts epochs on its x axis: Keras' ``epoch_*`` tags (``batch_*`` and the rest count
    steps)."""
    return tag.rsplit("/", 1)[-1].lower().startswith("epoch")


def by_level(
    series: dict[str, list[tuple[int, float]]],
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """``series`` split into epoch-level and step-level ones (their x axes differ: never one axis for both)."""
    epochs = {k: v for k, v in series.items() if is_epoch_level(k)}
    return epochs, {k: v for k, v in series.items() if k not in epochs}
