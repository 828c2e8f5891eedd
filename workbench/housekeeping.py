"""Removing finished jobs: ``wb.delete(job)``, ``workbench delete``, ``workbench gc --keep N --older-than D``."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from workbench.backends import get_backend
from workbench.errors import WorkbenchError
from workbench.store import FINAL_STATES, JobRecord, JobStore
from workbench.workspace import Workspace

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` (a bare number: seconds)."""
    m = _DURATION.match(str(text))
    if not m:
        raise WorkbenchError(f"{text!r} is not a duration; write e.g. 90s, 30m, 12h, 7d or 2w")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def delete(workspace: Workspace, job_id: str) -> str:
    """Remove a finished job: its run folder (logs, TensorBoard events, checkpoints, code) and its record.

    Refuses a job that has not ended (cancel it first). The folder is first renamed to a hidden name, which no
    listing or database rebuild reads, so an interrupted delete never brings the job back half-removed. Returns
    the job's id."""
    store = get_backend().records(workspace)
    record = store.get(job_id)
    if record.state not in FINAL_STATES:
        raise WorkbenchError(
            f"job {record.id} is {record.state}; cancel it first (`workbench cancel {record.id}`), then delete it"
        )
    run = workspace.run(record.id).root
    doomed = run.with_name(f".deleting-{record.id}")
    if run.exists():
        run.rename(doomed)
    if isinstance(store, JobStore):  # on Kubernetes run.json is the record: gone with the folder (Jobs expire by TTL)
        store.delete(record.id)
    shutil.rmtree(doomed, ignore_errors=True)
    return record.id


def gc(workspace: Workspace, keep: int | None = None, older_than: float | None = None) -> list[str]:
    """Delete finished jobs beyond the ``keep`` newest ones and/or that ended more than ``older_than`` seconds ago
    (both given: only jobs that are both). Jobs that have not ended are never touched. Returns the deleted ids."""
    if keep is None and older_than is None:
        return []
    if keep is not None and keep < 0:
        raise WorkbenchError(f"--keep must be 0 or more, got {keep}")
    finished = [r for r in get_backend().records(workspace).list() if r.state in FINAL_STATES]  # newest first
    now = time.time()
    doomed = [
        r
        for i, r in enumerate(finished)
        if (keep is None or i >= keep) and (older_than is None or now - _ended(r) > older_than)
    ]
    _remove_leftovers(workspace)
    return [delete(workspace, r.id) for r in doomed]


def _ended(record: JobRecord) -> float:
    return record.ended or record.started or record.created


def _remove_leftovers(workspace: Workspace) -> None:
    """Folders of deletes that were interrupted."""
    if workspace.runs.is_dir():
        for p in workspace.runs.glob(".deleting-*"):
            shutil.rmtree(Path(p), ignore_errors=True)
