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

A workspace is a local directory or a bucket (``s3://bucket/prefix``, see
:mod:`workbench.storage`). For a bucket, ``root`` is a local cache folder
(``WORKBENCH_CACHE_DIR``) laid out the same way: ``state/`` (job database,
services) is local only; ``runs/`` and ``models/`` mirror what the bucket holds,
moved by :meth:`Workspace.pull` / :meth:`Workspace.push`; ``work/<run-id>/`` holds
the files a running job's replicas write (uploaded as the job runs, see
:mod:`workbench.sync`). Every path helper below is local either way.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import settings, storage
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
    url: str | None = None  # s3://bucket/prefix when the workspace is a bucket; root is then its local cache

    @classmethod
    def current(cls) -> Workspace:
        """The workspace named by ``WORKBENCH_WORKSPACE`` (read now, not at import)."""
        return cls.at(settings.WORKSPACE.get())

    @classmethod
    def at(cls, location: str) -> Workspace:
        """The workspace at a local path or a bucket URL; :class:`WorkspaceError` for a URL it cannot be."""
        url = storage.parse(location)
        if url is None:
            return cls(storage.local_path(location))
        return cls(settings.cache_dir(url), url)

    @property
    def location(self) -> str:
        """What names this workspace to another process (``WORKBENCH_WORKSPACE``): its URL or its folder."""
        return self.url or str(self.root)

    @property
    def remote(self) -> storage.Remote | None:
        return storage.Remote(self.url) if self.url else None

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def pull(self, path: Path) -> list[str]:
        """Bring local folder ``path`` (under ``root``) up to date with the bucket; nothing for a local workspace."""
        remote = self.remote
        if remote is None:
            return []
        try:
            return remote.pull(self.relative(path), path)
        except OSError as e:
            raise WorkspaceError(f"cannot read {self.url}/{self.relative(path)} ({e})") from e

    def push(self, path: Path) -> None:
        """Upload local file or folder ``path`` (under ``root``) to the bucket; nothing for a local workspace."""
        remote = self.remote
        if remote is None:
            return
        try:
            if path.is_dir():
                remote.put_tree(path, self.relative(path))
            else:
                remote.put_file(path, self.relative(path))
        except OSError as e:
            raise WorkspaceError(f"cannot write {self.url}/{self.relative(path)} ({e})") from e

    def work_dir(self, run_id: str) -> Path:
        """Local folder for the files a running job writes, before they are uploaded (remote workspaces)."""
        return self.root / "work" / run_id

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
        if self.url:
            self._check_bucket()
        return self

    def _check_bucket(self) -> None:
        remote = storage.Remote(self.url or "")
        bucket = remote.root.split("/", 1)[0]
        try:
            remote.fs.call_s3("head_bucket", Bucket=bucket)  # (fs.exists says False for any error)
        except FileNotFoundError as e:
            raise WorkspaceError(f"workspace {self.url}: bucket {bucket!r} does not exist; create it first") from e
        except Exception as e:  # noqa: BLE001 - botocore's errors (no endpoint, no credentials) are many
            raise WorkspaceError(
                f"workspace {self.url} cannot be reached ({type(e).__name__}: {e}); check AWS_ENDPOINT_URL and "
                "the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY credentials"
            ) from e


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
