"""``models/<name>/``: versions, labels, the live version and traffic split, kept in ``model.json``.

Every change happens under an exclusive lock on ``models/<name>/.lock`` and
rewrites ``model.json`` atomically, so concurrent promotes get distinct
version numbers and the server (which reads without the lock) always sees a
whole file. A version folder is renamed into place before ``model.json``
names it, so a version listed there is always complete on disk.

``model.json``::

    {"name": "lenet",
     "versions": {"1": {"framework": ..., "format": ..., "created": ..., "source": {run_id, checkpoint,
                        step, metrics}, "code": {git_commit, ...}, "signature": {...}, "validation": {...}}},
     "live": null,                 # null: the newest version; else the version rollback pinned
     "labels": {"stable": 1, "canary": 2},
     "traffic": {"stable": 90, "canary": 10},   # optional split of unversioned requests
     "history": [{"time": ..., "event": "promote", "version": 2}, ...]}
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import ModelNotFound, RegistryError
from workbench.workspace import Workspace, read_json, write_json_atomic

MODEL_JSON = "model.json"
VERSION_JSON = "workbench.json"  # inside a version folder: framework, format, signature (self-describing copy)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HISTORY_KEPT = 200


def check_name(name: str, what: str = "model name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(f"{what} {name!r} must be letters, digits, '.', '_' or '-' (at most 100)")
    return name


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """The version folders on disk (positive integer names; staging folders start with a dot)."""
    if not model_dir.is_dir():
        return {}
    return {int(p.name): p for p in model_dir.iterdir() if p.name.isdigit() and int(p.name) > 0 and p.is_dir()}


def empty(name: str) -> dict[str, Any]:
    return {"name": name, "versions": {}, "live": None, "labels": {}, "traffic": None, "history": []}


def read_model_json(model_dir: Path) -> dict[str, Any]:
    """``model.json`` of a model folder (an empty record when missing)."""
    try:
        data: dict[str, Any] = read_json(model_dir / MODEL_JSON)
    except FileNotFoundError:
        return empty(model_dir.name)
    except (OSError, ValueError) as e:
        raise RegistryError(f"{model_dir / MODEL_JSON} cannot be read ({e})") from e
    for key, value in empty(model_dir.name).items():
        data.setdefault(key, value)
    return data


def live_version(data: dict[str, Any], available: set[int] | None = None) -> int | None:
    """The version unversioned requests get (ignoring a traffic split): ``live`` if set, else the newest.

    ``available`` limits the choice to versions that can serve (loaded in the server).
    """
    versions = {int(v) for v in data["versions"]} if available is None else available
    pinned = data.get("live")
    if pinned is not None and int(pinned) in versions:
        return int(pinned)
    newest = [v for v in versions if not data["versions"].get(str(v), {}).get("rolled_back")]
    return max(newest or versions, default=None)


def resolve_ref(data: dict[str, Any], ref: str | int) -> int:
    """A version number or label as a version number."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        v = int(ref)
        if str(v) not in data["versions"]:
            raise ModelNotFound(f"model {data['name']!r} has no version {v}; versions: {_listing(data)}")
        return v
    if ref not in data["labels"]:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(data["labels"].items())) or "none"
        raise ModelNotFound(f"model {data['name']!r} has no label {ref!r}; labels: {labels}")
    return int(data["labels"][ref])


def _listing(data: dict[str, Any]) -> str:
    return ", ".join(sorted(data["versions"], key=int)) or "none"


@dataclass(frozen=True)
class ModelStore:
    """One model's folder. Methods that change it take the lock and rewrite ``model.json`` atomically."""

    workspace: Workspace
    name: str

    @property
    def dir(self) -> Path:
        return self.workspace.model_dir(self.name)

    def exists(self) -> bool:
        return (self.dir / MODEL_JSON).exists() or bool(version_dirs(self.dir))

    def read(self) -> dict[str, Any]:
        if not self.exists():
            raise ModelNotFound(
                f"no model {self.name!r} in {self.workspace.models}; models: {', '.join(names(self.workspace)) or 'none'}"
            )
        return read_model_json(self.dir)

    @contextmanager
    def locked(self, create: bool = False) -> Iterator[dict[str, Any]]:
        """Hold the model's lock; yield ``model.json`` as a dict and write it back (atomically) on success."""
        if not create:
            self.read()  # ModelNotFound, listing the models there are
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = read_model_json(self.dir)
                yield data
                data["history"] = data["history"][-_HISTORY_KEPT:]
                write_json_atomic(self.dir / MODEL_JSON, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def staging_dir(self) -> Path:
        """A fresh hidden folder inside the model folder (same filesystem, so publishing is one rename)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f".staging-{os.getpid()}-{time.time_ns()}"
        path.mkdir()
        return path

    def publish(self, staging: Path, entry: dict[str, Any], *, live: bool = True, label: str | None = None) -> int:
        """Rename ``staging`` to the next version number and record it; return the version."""
        with self.locked(create=True) as data:
            taken = {int(v) for v in data["versions"]} | set(version_dirs(self.dir))
            version = max(taken, default=0) + 1
            current = live_version(data)
            os.rename(staging, self.dir / str(version))
            data["versions"][str(version)] = {**entry, "version": version, "created": time.time()}
            if live:
                data["live"], data["traffic"] = None, None
            elif data["live"] is None and current is not None:
                data["live"] = current  # keep serving what was live: the new version is not the newest-live
            if label:
                data["labels"][check_name(label, "label")] = version
            data["history"].append(
                {"time": time.time(), "event": "promote", "version": version, "live": live, "label": label}
            )
            return version

    def rollback(self, to: int | str | None = None) -> int:
        """Make ``to`` (default: the version before the live one) live; mark the one it replaces rolled back."""
        with self.locked() as data:
            if not data["versions"]:
                raise ModelNotFound(f"model {self.name!r} has no versions to roll back")
            current = live_version(data)
            if to is None:
                older = [
                    int(v) for v, e in data["versions"].items() if int(v) < (current or 0) and not e.get("rolled_back")
                ]
                if not older:
                    raise RegistryError(f"model {self.name!r} has no version before {current} to roll back to")
                target = max(older)
            else:
                target = resolve_ref(data, to)
            if current is not None and current != target:
                data["versions"][str(current)]["rolled_back"] = True
            data["versions"][str(target)].pop("rolled_back", None)
            data["live"], data["traffic"] = target, None
            data["history"].append({"time": time.time(), "event": "rollback", "from": current, "to": target})
            return target

    def set_label(self, label: str, version: int | str | None) -> None:
        """Point ``label`` at ``version`` (a number or another label); ``None`` removes it."""
        with self.locked() as data:
            check_name(label, "label")
            if version is None:
                data["labels"].pop(label, None)
                if data["traffic"] and label in data["traffic"]:
                    raise RegistryError(f"label {label!r} carries traffic; change the split first")
            else:
                data["labels"][label] = resolve_ref(data, version)
            data["history"].append(
                {"time": time.time(), "event": "label", "label": label, "version": data["labels"].get(label)}
            )

    def set_traffic(self, weights: dict[str, float] | None) -> None:
        """Split unversioned requests by weight among labels or versions; ``None`` ends the split."""
        with self.locked() as data:
            if weights:
                for ref, w in weights.items():
                    resolve_ref(data, ref)
                    if not isinstance(w, (int, float)) or w < 0:
                        raise RegistryError(f"traffic weight of {ref!r} must be a number >= 0, got {w!r}")
                if sum(weights.values()) <= 0:
                    raise RegistryError("traffic weights must not all be 0")
            data["traffic"] = {str(k): float(v) for k, v in weights.items()} if weights else None
            data["history"].append({"time": time.time(), "event": "traffic", "traffic": data["traffic"]})


def names(workspace: Workspace) -> list[str]:
    """Models in the workspace."""
    if not workspace.models.is_dir():
        return []
    return sorted(p.name for p in workspace.models.iterdir() if p.is_dir() and not p.name.startswith("."))
