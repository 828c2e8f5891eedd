"""The registry of an ``s3://`` workspace: the bucket holds the truth, the local cache a copy of it.

The same rule as on disk (:mod:`workbench.registry.store`): ``model.json`` is
written last. Publishing uploads the version's folder to
``models/<name>/<version>/`` first (a numbered folder ``model.json`` does not
list is no version: readers never look at it), then ``model.json``, one PUT
that readers see whole or not at all. Only then does the local copy change.
Every change reads ``model.json`` from the bucket first, so promotes from other
machines are seen. (The local lock serializes changes on one machine; S3 has no
lock, so two machines promoting the same model at the same moment is not safe.)

The model server mirrors the bucket into its local cache before each scan
(:func:`mirror`): each version folder ``model.json`` lists is downloaded into a
hidden folder and renamed into place, then ``model.json`` is written locally, so
the server's usual hot swap sees whole versions only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import RegistryError
from workbench.workspace import Workspace, read_json

if TYPE_CHECKING:
    from workbench.registry.store import ModelStore

MODEL_JSON = "model.json"


def pull_index(store: ModelStore) -> None:
    """Bring the local ``model.json`` of ``store`` up to date with the bucket's (nothing on a local workspace)."""
    ws = store.workspace
    if ws.remote is None:
        return
    try:
        ws.remote.get_file(ws.relative(store.dir / MODEL_JSON), store.dir / MODEL_JSON)
    except OSError as e:
        raise RegistryError(f"cannot read {ws.url}/{ws.relative(store.dir / MODEL_JSON)} ({e})") from e


def push_index(store: ModelStore) -> None:
    """Upload the local ``model.json`` (just rewritten under the lock) to the bucket."""
    ws = store.workspace
    if ws.remote is None:
        return
    try:
        ws.remote.put_file(store.dir / MODEL_JSON, ws.relative(store.dir / MODEL_JSON))
    except OSError as e:
        raise RegistryError(
            f"cannot write {ws.url}/{ws.relative(store.dir / MODEL_JSON)} ({e}); the bucket is unchanged"
        ) from e


def taken_versions(store: ModelStore) -> set[int]:
    """Version numbers that have a folder in the bucket (published, or left by a promote that failed)."""
    ws = store.workspace
    if ws.remote is None:
        return set()
    return {int(n) for n in ws.remote.folders(ws.relative(store.dir)) if n.isdigit()}


def publish(store: ModelStore, staging: Path, version: int, data: dict[str, Any]) -> None:
    """Upload ``staging`` as version ``version``, then ``data`` as the bucket's ``model.json`` (last)."""
    ws = store.workspace
    if ws.remote is None:
        return
    import json

    rel = ws.relative(store.dir)
    try:
        ws.remote.put_tree(staging, f"{rel}/{version}")
        with ws.remote.fs.open(ws.remote.path(f"{rel}/{MODEL_JSON}"), "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
    except OSError as e:
        raise RegistryError(f"cannot upload version {version} to {ws.url}/{rel} ({e}); it was not published") from e


def mirror(ws: Workspace) -> None:
    """Copy the bucket's models into the local cache: each changed ``model.json`` after the version folders it
    lists (whole, by rename). For the model server, before each scan."""
    remote = ws.remote
    if remote is None:
        return
    for name in remote.folders(ws.relative(ws.models)):
        if name.startswith("."):
            continue
        model_dir = ws.model_dir(name)
        rel = ws.relative(model_dir)
        info = remote.info(f"{rel}/{MODEL_JSON}")
        if info is None:
            continue  # a first promote still uploading
        incoming = model_dir / f".{MODEL_JSON}.incoming"
        if not remote.get_file(f"{rel}/{MODEL_JSON}", incoming, info) and (model_dir / MODEL_JSON).exists():
            continue  # unchanged
        for version in read_json(incoming).get("versions", {}):
            final = model_dir / str(version)
            if not final.is_dir():
                partial = model_dir / f".pull-{version}"
                shutil.rmtree(partial, ignore_errors=True)
                remote.pull(f"{rel}/{version}", partial)
                partial.rename(final)
        shutil.copy2(incoming, model_dir / f".{MODEL_JSON}.new")
        (model_dir / f".{MODEL_JSON}.new").replace(model_dir / MODEL_JSON)


def mirror_indexes(ws: Workspace) -> None:
    """Copy every model's ``model.json`` from the bucket (listing models; their versions stay where they are)."""
    remote = ws.remote
    if remote is None:
        return
    for name in remote.folders(ws.relative(ws.models)):
        if not name.startswith("."):
            rel = ws.relative(ws.model_dir(name) / MODEL_JSON)
            remote.get_file(rel, ws.model_dir(name) / MODEL_JSON)


def main(argv: list[str]) -> int:
    """``python -m workbench.registry.remote [--every S]``: keep copying the bucket workspace's models into the
    local cache (``WORKBENCH_CACHE_DIR``), for a server that reads folders (TF Serving's sidecar in the chart)."""
    import argparse
    import logging
    import time

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--every", type=float, default=2.0, help="seconds between copies")
    args = p.parse_args(argv)
    ws = Workspace.current()
    if ws.url is None:
        p.error("WORKBENCH_WORKSPACE is not a bucket (s3://...): nothing to copy")
    while True:
        try:
            mirror(ws)
        except Exception:  # noqa: BLE001 - the bucket unreachable for a while: try again
            logging.exception("cannot copy the models of %s", ws.url)
        time.sleep(args.every)


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
