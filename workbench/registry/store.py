"""``models/<name>/``: versions, labels, the live version and traffic split, kept in ``model.json``.

Every change happens under an exclusive lock on ``models/<name>/.lock`` and
rewrites ``model.json`` atomically, so concurrent promotes get distinct
version numbers and the server (which reads without the lock) always sees a
whole file.

``model.json`` is the registry's one truth, written last: a version exists once
``model.json`` lists it, never because a folder is there. Publishing fsyncs the
staged folder, renames it to its number, then writes ``model.json`` (fsynced,
with its folder); when any step fails the folder is taken back out, so the
registry is exactly as before. What a crash (kill -9, power loss) leaves behind
(``.staging-*`` folders, numbered folders ``model.json`` does not list) is
invisible to readers and removed by :func:`clean` (on the next promote, at
server start, by ``workbench gc``).

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

import errno
import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from workbench.errors import ModelNotFound, RegistryError
from workbench.registry import remote
from workbench.workspace import Workspace, fsync_dir, fsync_tree, read_json, write_json_atomic

log = logging.getLogger("workbench.registry")

MODEL_JSON = "model.json"
VERSION_JSON = "workbench.json"  # inside a version folder: framework, format, signature (self-describing copy)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_STAGING = re.compile(r"^\.staging-(\d+)-(\d+)$")  # .staging-<pid of the promote>-<time.time_ns() at creation>
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


def published_dirs(model_dir: Path, data: dict[str, Any]) -> dict[int, Path]:
    """The version folders ``model.json`` (``data``) lists: the only ones a server may load."""
    return {v: p for v, p in version_dirs(model_dir).items() if str(v) in data["versions"]}


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
        return (self.dir / MODEL_JSON).exists()

    def read(self) -> dict[str, Any]:
        remote.pull_index(self)  # an s3:// workspace: the bucket's model.json is the truth
        if not self.exists():
            raise ModelNotFound(
                f"no model {self.name!r} in {self.workspace.models}; models: {', '.join(names(self.workspace)) or 'none'}"
            )
        return read_model_json(self.dir)

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """Hold the model's lock; yield ``model.json`` as a dict and write it back (atomically) on success."""
        self.read()  # ModelNotFound, listing the models there are
        with self._lock():
            remote.pull_index(self)
            data = read_model_json(self.dir)
            yield data
            data["history"] = data["history"][-_HISTORY_KEPT:]
            try:
                write_json_atomic(self.dir / MODEL_JSON, data)
            except OSError as e:
                raise RegistryError(f"cannot write {self.dir / MODEL_JSON} ({_cause(e)}); nothing changed") from e
            remote.push_index(self)

    def staging_dir(self) -> Path:
        """A fresh hidden folder inside the model folder (same filesystem, so publishing is one rename), named
        after this process so that :func:`clean` knows when its owner is gone."""
        path = self.dir / f".staging-{os.getpid()}-{time.time_ns()}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except OSError as e:
            raise RegistryError(
                f"cannot create a staging folder in {self.dir} ({_cause(e)}); nothing was published"
            ) from e
        return path

    def publish(self, staging: Path, entry: dict[str, Any], *, live: bool = True, label: str | None = None) -> int:
        """Rename ``staging`` to the next version number and record it in ``model.json``; return the version.

        The version is live once ``model.json`` lists it, written last. On any failure the registry is left as it
        was (``staging`` included: its caller removes it) and a :class:`RegistryError` names the path and cause.
        """
        if label:
            check_name(label, "label")
        try:
            fsync_tree(staging)
        except OSError as e:
            raise RegistryError(f"cannot write {staging} to disk ({_cause(e)}); nothing was published") from e
        with self._lock():
            remote.pull_index(self)
            data = read_model_json(self.dir)
            version = max(self._next_version(data), max(remote.taken_versions(self), default=0) + 1)
            final = self.dir / str(version)
            current = live_version(data)
            data["versions"][str(version)] = {**entry, "version": version, "created": time.time()}
            if live:
                data["live"], data["traffic"] = None, None
            elif data["live"] is None and current is not None:
                data["live"] = current  # keep serving what was live: the new version is not the newest-live
            if label:
                data["labels"][label] = version
            data["history"].append(
                {"time": time.time(), "event": "promote", "version": version, "live": live, "label": label}
            )
            data["history"] = data["history"][-_HISTORY_KEPT:]
            data["last_version"] = version
            remote.publish(self, staging, version, data)  # an s3:// workspace: the bucket first, model.json last
            try:
                os.rename(staging, final)
            except OSError as e:
                if not (self.workspace.url and final.is_dir()):
                    raise RegistryError(f"cannot move {staging} to {final} ({_cause(e)}); nothing was published") from e
                shutil.rmtree(staging, ignore_errors=True)  # a model server sharing the cache copied it first
            try:
                fsync_dir(self.dir)
                write_json_atomic(self.dir / MODEL_JSON, data)
            except BaseException as e:
                if self.workspace.url or str(version) in _listed(self.dir):  # (the bucket has it: published)
                    log.warning("%s lists version %s but syncing its folder failed (%s)", MODEL_JSON, version, e)
                    return version  # written: the version is published (readers already see it)
                os.rename(final, staging)  # back out: model.json still says what it said
                if isinstance(e, OSError):
                    raise RegistryError(
                        f"cannot write {self.dir / MODEL_JSON} ({_cause(e)}); version {version} was not published "
                        "and the registry is unchanged"
                    ) from e
                raise
            return version

    def _next_version(self, data: dict[str, Any]) -> int:
        """One more than any number ever given out (``last_version``, the history) or found on disk, so a number
        is never reused and never collides with a folder a crash left behind."""
        taken = {int(v) for v in data["versions"]} | set(version_dirs(self.dir))
        taken |= {int(h["version"]) for h in data["history"] if h.get("event") == "promote" and h.get("version")}
        return max(taken | {int(data.get("last_version") or 0)}, default=0) + 1

    @contextmanager
    def _lock(self) -> Iterator[None]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.dir / ".lock", "a+")
        except OSError as e:
            raise RegistryError(f"cannot lock {self.dir / '.lock'} ({_cause(e)})") from e
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def gc(self) -> list[Path]:
        """Remove what crashed promotes left in this model's folder: ``.staging-*`` folders whose process is gone,
        numbered folders ``model.json`` does not list, temporary ``model.json`` files. Returns what it removed."""
        removed = []
        with self._lock():
            data = read_model_json(self.dir)
            for p in self.dir.iterdir():
                orphan = (p.name.isdigit() and p.is_dir() and p.name not in data["versions"]) or (
                    p.name.startswith(f".{MODEL_JSON}.")
                )
                m = _STAGING.match(p.name)
                if orphan or (m and not _owner_alive(int(m.group(1)), int(m.group(2)) / 1e9)):
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
                    removed.append(p)
        for p in removed:
            log.info("removed %s (left by an unfinished promote)", p)
        return removed

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

    def delete_version(self, version: int | str) -> None:
        """Remove ``version``: first from ``model.json`` (from then on it is no version: the server drops it),
        then its folder (what an interruption leaves is a folder :meth:`gc` removes). Refuses a version that a
        label, the traffic split or a rollback's pin still points at, naming them."""
        with self.locked() as data:
            v = resolve_ref(data, int(version) if str(version).isdigit() else version)
            users = [f"label {k!r}" for k, x in sorted(data["labels"].items()) if int(x) == v]
            for ref in data["traffic"] or {}:
                if resolve_ref(data, ref) == v:
                    users.append(f"the traffic split ({ref!r})")
            if data.get("live") is not None and int(data["live"]) == v:
                users.append("the live pin (a rollback made it live)")
            if users:
                raise RegistryError(
                    f"model {self.name!r} version {v} is still used by {', '.join(users)}; point them at another "
                    "version first (`workbench models NAME --label L=V`, `--split`, `--rollback V`)"
                )
            del data["versions"][str(v)]
            data["history"].append({"time": time.time(), "event": "delete", "version": v})
        shutil.rmtree(self.dir / str(v), ignore_errors=True)

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
    """Models in the workspace: folders with a ``model.json`` (a first promote that never finished is none)."""
    remote.mirror_indexes(workspace)
    if not workspace.models.is_dir():
        return []
    return sorted(
        p.name for p in workspace.models.iterdir() if not p.name.startswith(".") and (p / MODEL_JSON).is_file()
    )


def clean(workspace: Workspace) -> list[Path]:
    """Remove what crashed promotes left behind in every model folder (see :meth:`ModelStore.gc`) and stop
    orphaned export/validation workers. Safe while other promotes run. Returns the paths removed.

    The model server calls it at start; promote before it publishes; ``workbench gc`` on demand."""
    from workbench.registry.worker import stop_orphans

    stop_orphans()
    removed: list[Path] = []
    if workspace.models.is_dir():
        for p in sorted(workspace.models.iterdir()):
            if p.is_dir() and not p.name.startswith(".") and _NAME.match(p.name):
                removed += ModelStore(workspace, p.name).gc()
    return removed


def _listed(model_dir: Path) -> set[str]:
    try:
        return set(read_model_json(model_dir)["versions"])
    except RegistryError:
        return set()


def _owner_alive(pid: int, created: float) -> bool:
    """Whether the process that created a staging folder at ``created`` still runs (not a later one with its
    pid)."""
    try:
        return psutil.Process(pid).create_time() <= created + 1
    except psutil.NoSuchProcess:
        return False


def _cause(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    return e.strerror or str(e)
