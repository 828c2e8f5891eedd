"""A run's hyperparameters: checked, turned into script arguments, and written as TensorBoard HParams summaries.

``submit(..., params={"lr": 0.01, "optimizer": "adam"})`` records them in run.json and hands them to every replica
twice: as ``--lr 0.01 --optimizer adam`` after the job's own ``args``, and as JSON in ``WORKBENCH_PARAMS``. The
launcher writes them into the run's TensorBoard dir as an HParams session (the hparams plugin's own summary format),
so TensorBoard's HPARAMS tab compares runs, with each run's scalars as metrics, whether or not the script looks at
its params.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from workbench.errors import SpecError

Value = bool | int | float | str
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
SUFFIX = ".hparams"  # of the event files write_hparams makes
LOGGED = "params.json"  # params a script logged itself (workbench.runtime.log_params), beside run.json


def checked(params: dict[str, Any] | None) -> dict[str, Value]:
    """``params`` as a plain dict of names to bool/int/float/str, or :class:`SpecError` naming the bad entry."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise SpecError(f"params must be a dict of name -> value, got {type(params).__name__}")
    out: dict[str, Value] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(
                f"param name {name!r} must start with a letter or _ and hold only letters, digits, _ . - "
                "(it becomes the script option --NAME)"
            )
        if hasattr(value, "item") and callable(value.item):  # numpy scalars, e.g. from a search space
            value = value.item()
        if not isinstance(value, (bool, int, float, str)):
            raise SpecError(
                f"param {name}={value!r}: values must be bool, int, float or str (what TensorBoard's HParams take)"
            )
        out[name] = value
    return out


def parse_pairs(items: list[str]) -> dict[str, Value]:
    """``["lr=0.01", "opt=adam"]`` (the CLI's ``--param``) as a dict; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return checked(out)


def as_text(value: Value) -> str:
    """How a value appears on the script's command line: strings as they are, the rest as JSON (true, 0.01)."""
    return value if isinstance(value, str) else json.dumps(value)


def as_args(params: dict[str, Value]) -> list[str]:
    """``{"lr": 0.01}`` -> ``["--lr", "0.01"]``."""
    return [part for name, value in params.items() for part in (f"--{name}", as_text(value))]


def has_hparams(tb_dir: Path) -> bool:
    """Whether ``tb_dir`` holds an HParams summary written by :func:`write_hparams` (TensorBoard reads only a
    run's first one)."""
    return any(tb_dir.glob(f"*tfevents*{SUFFIX}"))


def write_hparams(tb_dir: Path, params: dict[str, Value], run_id: str | None, start: float | None = None) -> None:
    """Write ``params`` into ``tb_dir`` as the hparams plugin's session-start summary (one session group per run).

    TensorBoard's own summary builder and record writer, on a plain file: its ``EventFileWriter`` would import
    TensorFlow (seconds) for ``tf.io.gfile``. The file appears whole (renamed into place). TensorBoard keeps the
    first summary metadata of a run's tag, so a second write to the same dir changes nothing there.
    """
    import os
    import socket

    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams import summary_v2
    from tensorboard.summary.writer.record_writer import RecordWriter

    now = time.time()
    summary = summary_v2.hparams_pb(dict(params), trial_id=run_id, start_time_secs=start or now)
    tb_dir.mkdir(parents=True, exist_ok=True)
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}{SUFFIX}"
    partial = tb_dir / f".partial-{name.replace('tfevents', 'tfev')}"  # not an event file until renamed
    with open(partial, "wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        writer.write(Event(wall_time=now, step=0, summary=summary).SerializeToString())
    partial.replace(tb_dir / name)


def logged(run_root: Path) -> dict[str, Value]:
    """The params a run's script logged with ``runtime.log_params`` (empty when none)."""
    try:
        data = json.loads((run_root / LOGGED).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
