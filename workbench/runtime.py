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
