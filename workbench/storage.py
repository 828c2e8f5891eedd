"""Where a workspace lives: a local folder, or an object store (``s3://bucket/prefix``) reached through fsspec.

A workspace URL is parsed once, here, through one registry of URL schemes. A
plain path (or ``file://``) is a local workspace, used exactly as before. Any
other known scheme is a *remote* workspace: its files live in the bucket, and
every process keeps a local mirror of the part it uses (see
:mod:`workbench.workspace`). :class:`Remote` moves whole folders between the
two, copying only files that are new or changed. Unknown schemes, and URLs a
workspace cannot be (``http://``, ``s3:/one-slash``), are a
:class:`~workbench.errors.WorkspaceError` that lists what works.

The filesystem library of a scheme (s3fs for ``s3://``) is imported when a
remote workspace is first used, with an install hint when it is missing. S3
settings come from the usual places: the endpoint from ``AWS_ENDPOINT_URL``
(MinIO), credentials from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
a profile or an instance role.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import WorkspaceError

# scheme -> (module that implements it, how to install it)
SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "pip install 'workbench[s3]' (s3fs)"),
}
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?P<rest>.*)$")


def parse(location: str) -> str | None:
    """The normalised URL of a remote workspace (``s3://bucket/prefix``), or None for a local path.

    Raises :class:`WorkspaceError` for a URL no workspace can be, naming the schemes that work."""
    m = _URL.match(location)
    if m is None or len(m["scheme"]) == 1:  # a path (a Windows drive letter is one character)
        return None
    scheme, rest = m["scheme"].lower(), m["rest"]
    if scheme == "file":
        return None
    known = ", ".join(f"{s}://bucket/prefix" for s in SCHEMES)
    if scheme not in SCHEMES:
        raise WorkspaceError(
            f"workspace {location!r}: the workbench cannot use {scheme}:// as a workspace; "
            f"use a local directory or {known}"
        )
    if not rest.startswith("//") or not rest[2:].strip("/"):
        raise WorkspaceError(f"workspace {location!r} is not a {scheme} URL; write it as {scheme}://bucket/prefix")
    return f"{scheme}://{rest[2:].strip('/')}"


def local_path(location: str) -> Path:
    """The local folder of a non-URL location (``file://`` stripped)."""
    if location.startswith("file://"):
        location = location[len("file://") :]
    return Path(location).expanduser().resolve()


def filesystem(url: str) -> Any:
    """The fsspec filesystem of ``url``'s scheme (instances are cached by fsspec)."""
    scheme = url.split("://", 1)[0]
    module, hint = SCHEMES[scheme]
    try:
        __import__(module)
    except ImportError as e:
        raise WorkspaceError(f"workspace {url} needs {module}, which is not installed: {hint}") from e
    import fsspec

    # No listings cache: a job's files, a promote's versions and model.json change under long-lived readers.
    options: dict[str, Any] = {"use_listings_cache": False}
    if scheme == "s3":
        client: dict[str, Any] = {"region_name": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")}
        if os.environ.get("AWS_ENDPOINT_URL"):  # botocore reads it too, but not every aiobotocore does
            client["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
        options["client_kwargs"] = {k: v for k, v in client.items() if v}
    return fsspec.filesystem(scheme, **options)


@dataclass(frozen=True)
class Remote:
    """A remote workspace's bucket side. Paths are relative to the workspace (``runs/<id>/tb``)."""

    url: str

    @property
    def fs(self) -> Any:
        return filesystem(self.url)

    @property
    def root(self) -> str:
        return self.url.split("://", 1)[1]

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel.strip('/')}" if rel.strip("/") else self.root

    def files(self, rel: str) -> dict[str, dict[str, Any]]:
        """Files under folder ``rel``: path relative to it -> fsspec info (size, LastModified...)."""
        base = self.path(rel)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(base) + 1 :]: i for p, i in found.items() if i.get("type") == "file" and p != base}

    def info(self, rel: str) -> dict[str, Any] | None:
        try:
            return dict(self.fs.info(self.path(rel)))
        except FileNotFoundError:
            return None

    def folders(self, rel: str) -> list[str]:
        """Names of the folders directly under ``rel``."""
        try:
            entries = self.fs.ls(self.path(rel), detail=True, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def put_file(self, local: Path, rel: str) -> None:
        self.fs.put_file(str(local), self.path(rel))

    def put_tree(self, local: Path, rel: str) -> None:
        """Upload every file under ``local`` to folder ``rel`` (not the notes of what was pulled there)."""
        for f in sorted(p for p in local.rglob("*") if p.is_file() and p.name != _Notes.NAME):
            self.put_file(f, f"{rel}/{f.relative_to(local).as_posix()}")

    def get_file(self, rel: str, local: Path, info: dict[str, Any] | None = None) -> bool:
        """Download ``rel`` to ``local`` (atomically: readers see the old file or the new one) when it is missing
        there or changed; return whether it downloaded. What was downloaded is noted (the object's ETag) in a
        hidden ``.workbench-pulled.json`` beside it, which is how a later call knows the copy is current."""
        info = info or self.info(rel)
        if info is None:
            return False
        tag = str(info.get("ETag") or info.get("etag") or "")
        notes = _Notes(local.parent)
        if tag and notes.get(local.name) == tag and _size(local) == info.get("size"):
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.pull-{os.getpid()}")
        try:
            self.fs.get_file(self.path(rel), str(partial))
            os.replace(partial, local)
        finally:
            partial.unlink(missing_ok=True)
        if tag:
            notes.set(local.name, tag)
        return True

    def pull(self, rel: str, local: Path) -> list[str]:
        """Copy the files of folder ``rel`` that are new or changed into ``local``; return those copied."""
        return [name for name, info in self.files(rel).items() if self.get_file(f"{rel}/{name}", local / name, info)]


class Pusher:
    """Uploads the files of a local folder that are new or changed since its last push (by size and mtime, noted
    before each upload, so a file written during its upload goes again next time). Hidden files (names starting
    with a dot: temporary and partial files) are skipped."""

    def __init__(self, remote: Remote, local: Path, rel: str):
        self.remote, self.local, self.rel = remote, local, rel
        self.sent: dict[Path, tuple[int, int]] = {}

    def known(self) -> None:
        """Count what is in the folder now as pushed (files just pulled from the bucket)."""
        for f, st in self._files():
            self.sent[f] = st

    def push(self) -> list[Path]:
        pushed = []
        for f, st in self._files():
            if self.sent.get(f) == st:
                continue
            target = self.rel if f == self.local else f"{self.rel}/{f.relative_to(self.local).as_posix()}"
            self.remote.put_file(f, target)
            self.sent[f] = st
            pushed.append(f)
        return pushed

    def _files(self) -> list[tuple[Path, tuple[int, int]]]:
        if self.local.is_file():  # one file (run.json)
            st = self.local.stat()
            return [(self.local, (st.st_size, st.st_mtime_ns))]
        if not self.local.is_dir():
            return []
        out = []
        for folder, dirs, files in os.walk(self.local):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                p = Path(folder, name)
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue  # removed while we looked (a checkpoint rotated out)
                out.append((p, (st.st_size, st.st_mtime_ns)))
        return out


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


class _Notes:
    """The ETags of the files pulled into one folder (a hidden JSON file there)."""

    NAME = ".workbench-pulled.json"

    def __init__(self, folder: Path):
        self.path = folder / self.NAME

    def _read(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return {}

    def get(self, name: str) -> str | None:
        return self._read().get(name)

    def set(self, name: str, tag: str) -> None:
        notes = {**self._read(), name: tag}
        partial = self.path.with_name(f"{self.NAME}.{os.getpid()}")
        partial.write_text(json.dumps(notes))
        os.replace(partial, self.path)  # several processes may pull here: a lost note only means a download again
