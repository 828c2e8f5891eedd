"""The workspace layout: the one module that knows where things live on disk.

::

    <workspace>/
      runs/<run-id>/run.json            spec, state, timestamps, lineage
      runs/<run-id>/logs/<role>-<i>.log stdout+stderr of each replica
      runs/<run-id>/tb/                 TensorBoard event files
      runs/<run-id>/checkpoints/        checkpoints, one entry per step
      runs/<run-id>/code/               snapshot of the submitted code
      models/<name>/<version>/          serving format
      models/<name>/model.json          versions, labels, lineage
      state/                            job database, services file
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import settings
from workbench.errors import WorkspaceError


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def code(self) -> Path:
        return self.root / "code"

    @property
    def supervisor_log(self) -> Path:
        return self.logs / "launcher.log"

    def replica_log(self, role: str, index: int) -> Path:
        return self.logs / f"{role}-{index}.log"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def current(cls) -> Workspace:
        """The workspace named by ``WORKBENCH_WORKSPACE`` (read now, not at import)."""
        return cls(settings.workspace_root())

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def db_path(self) -> Path:
        return self.state / "jobs.sqlite"

    @property
    def services_file(self) -> Path:
        return self.state / "services.json"

    def run(self, run_id: str) -> RunPaths:
        return RunPaths(self.runs / run_id)

    def model_dir(self, name: str) -> Path:
        return self.models / name

    def ensure(self) -> Workspace:
        """Create the top-level folders; a clear error if the workspace is not writable."""
        try:
            for d in (self.runs, self.models, self.state):
                d.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.state, prefix=".probe-", delete=True)
            probe.close()
        except OSError as e:
            raise WorkspaceError(
                f"workspace {self.root} is not writable ({e.strerror or e}); "
                f"set {settings.WORKSPACE.name} to a directory you can write"
            ) from e
        return self


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)
