"""What a training script uses from inside a job (also works when run by hand).

The launcher tells each replica its places through environment variables
(``WORKBENCH_RUN_ID``, ``WORKBENCH_LOG_DIR``, ``WORKBENCH_CHECKPOINT_DIR``,
``WORKBENCH_WORKSPACE``); :func:`context` reads them, with local defaults when
the script runs outside the workbench. This module imports no framework.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import settings

INDEX = "index.jsonl"


@dataclass(frozen=True)
class Context:
    run_id: str | None
    log_dir: Path
    checkpoint_dir: Path
    workspace: Path | None
    role: str
    index: int
    attempt: int

    @property
    def is_chief(self) -> bool:
        """Whether this replica writes the shared outputs (checkpoints, summaries)."""
        if self.role in ("chief", "worker") and os.environ.get("TF_CONFIG"):
            cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
            return self.role == "chief" or ("chief" not in cluster and self.index == 0)
        return self.index == 0 and self.role in ("worker", "chief")


def context() -> Context:
    """This replica's run id, TensorBoard dir, checkpoint dir and role."""
    env = os.environ
    workspace = env.get(settings.WORKSPACE_VAR)
    return Context(
        run_id=env.get(settings.RUN_ID_VAR),
        log_dir=Path(env.get(settings.LOG_DIR_VAR) or "logs"),
        checkpoint_dir=Path(env.get(settings.CHECKPOINT_DIR_VAR) or "checkpoints"),
        workspace=Path(workspace) if workspace else None,
        role=env.get(settings.ROLE_VAR, "worker"),
        index=int(env.get(settings.REPLICA_INDEX_VAR, "0")),
        attempt=int(env.get(settings.ATTEMPT_VAR, "0")),
    )


def record_checkpoint(path: str | Path, step: int, **metrics: float) -> None:
    """Note a checkpoint and the metrics at its step, for ``job.checkpoints()`` and ``promote``.

    Optional: checkpoints named with their step (``ckpt-0005.keras``) are found
    without it, with metrics read from TensorBoard at that step.
    """
    path = Path(path)
    entry: dict[str, Any] = {"step": int(step), "path": path.name, "time": time.time()}
    entry["metrics"] = {k: float(v) for k, v in metrics.items()}
    with open(path.parent / INDEX, "a") as f:
        f.write(json.dumps(entry) + "\n")


def params() -> dict[str, Any]:
    """The job's params (``submit(params=...)``, from ``WORKBENCH_PARAMS``), plus those this script logged with
    :func:`log_params`; ``{}`` outside a job. They also arrive as ``--NAME VALUE`` arguments."""
    from workbench.params import logged

    found: dict[str, Any] = json.loads(os.environ.get(settings.PARAMS_VAR) or "{}")
    root = _run_root()
    return {**found, **(logged(root) if root else {})}


def log_params(values: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """Record params the script chose itself (defaults, derived values) beside those it was given, in
    ``runs/<id>/params.json`` (``wb.runs()`` shows them). Values: bool, int, float or str. Only the chief replica
    writes; returns every param of the run.

    TensorBoard keeps the first HParams summary of a run and ignores later ones, so they go to TensorBoard only
    when the run has none yet (the job was submitted without params): then log them once, all together."""
    from workbench.params import LOGGED, checked, has_hparams, write_hparams

    new = checked({**(values or {}), **more})
    ctx = context()
    merged = {**params(), **new}
    if not ctx.is_chief:
        return merged
    root = _run_root()
    if root is not None:
        from workbench.params import logged
        from workbench.workspace import write_json_atomic

        write_json_atomic(root / LOGGED, {**logged(root), **new})
    try:
        if not has_hparams(ctx.log_dir):
            write_hparams(ctx.log_dir, merged, ctx.run_id)
    except ImportError:  # an environment without tensorboard (e.g. a framework's own venv): params.json has them
        pass
    return merged


def _run_root() -> Path | None:
    env = os.environ
    if env.get(settings.WORKSPACE_VAR) and env.get(settings.RUN_ID_VAR):
        from workbench.workspace import Workspace

        return Workspace(Path(env[settings.WORKSPACE_VAR])).run(env[settings.RUN_ID_VAR]).root
    return None
