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
        """Create the top-level folders (``state/`` private: it holds tokens and job environments); a clear error if
        the workspace is not writable."""
        try:
            for d in (self.runs, self.models):
                d.mkdir(parents=True, exist_ok=True)
            private_dir(self.state)
            probe = tempfile.NamedTemporaryFile(dir=self.state, prefix=".probe-", delete=True)
            probe.close()
        except OSError as e:
            raise WorkspaceError(
                f"workspace {self.root} is not writable ({e.strerror or e}); "
                f"set {settings.WORKSPACE.name} to a directory you can write"
            ) from e
        return self


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one, also after a crash or power
    loss (the file and its folder are fsynced). Created 0600 (mkstemp's mode): state files are the user's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (and ``root``), deepest first, so that once it is renamed into
    place its content is on disk, not only in the page cache."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(folder, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def private_dir(path: Path) -> Path:
    """Create folder ``path`` (and parents) if needed, readable by its owner only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def open_private(path: Path, mode: str = "ab") -> Any:
    """``open(path, mode)`` creating the file 0600 (a state file or log under ``state/``)."""
    return open(path, mode, opener=lambda p, flags: os.open(p, flags, 0o600))


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)
