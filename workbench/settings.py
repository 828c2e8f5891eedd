"""Every environment variable and default the workbench reads, declared once.

Values are read at call time (never cached at import), so tests and notebooks
can change them with ``os.environ`` and see the effect at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str

    def get(self) -> str:
        value = os.environ.get(self.name, "")
        return value if value != "" else self.default


WORKSPACE = Setting(
    "WORKBENCH_WORKSPACE", str(Path.home() / "workbench"), "root of the workspace (runs/, models/, state/)"
)
BACKEND = Setting("WORKBENCH_BACKEND", "local", "job backend: local or kubernetes")
DATA_DIR = Setting(
    "WORKBENCH_DATA_DIR",
    str(Path.home() / ".cache" / "workbench" / "datasets"),
    "where example datasets (MNIST) are cached",
)
CODE_SNAPSHOT_MAX_MB = Setting("WORKBENCH_CODE_MAX_MB", "50", "size cap of a job's code snapshot, in MB")
KILL_GRACE_S = Setting("WORKBENCH_KILL_GRACE", "5", "seconds between SIGTERM and SIGKILL when stopping replicas")
GPU_COUNT = Setting("WORKBENCH_GPUS", "", "GPUs on this machine; empty means ask nvidia-smi")
SERVE_POLL_S = Setting("WORKBENCH_SERVE_POLL", "0.5", "seconds between the model server's scans of models/")
ENVIRONMENTS = Setting(
    "WORKBENCH_ENVIRONMENTS",
    "",
    "named job environments, 'name=/path/to/python,...' (e.g. mxnet=.venv-mxnet/bin/python)",
)

# Variables the launcher sets for each training replica (the script's contract).
RUN_ID_VAR = "WORKBENCH_RUN_ID"
LOG_DIR_VAR = "WORKBENCH_LOG_DIR"
CHECKPOINT_DIR_VAR = "WORKBENCH_CHECKPOINT_DIR"
WORKSPACE_VAR = WORKSPACE.name
ROLE_VAR = "WORKBENCH_ROLE"
REPLICA_INDEX_VAR = "WORKBENCH_REPLICA_INDEX"
ATTEMPT_VAR = "WORKBENCH_ATTEMPT"


def workspace_root() -> Path:
    """The workspace root, absolute (``WORKBENCH_WORKSPACE`` or ``~/workbench``)."""
    return Path(WORKSPACE.get()).expanduser().resolve()


def all_settings() -> list[Setting]:
    return [v for v in globals().values() if isinstance(v, Setting)]
