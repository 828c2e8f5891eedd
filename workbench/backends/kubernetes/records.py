"""Job records of the Kubernetes backend: ``run.json`` in the workspace for what was asked, the cluster for what
happens.

No job database: a SQLite file on the shared volume would be written by every pod that follows a job, and
SQLite's locking does not work over a network filesystem (https://sqlite.org/wal.html). A run's ``run.json``
(written by the launcher at submit) keeps its id, name, spec, creation time and lineage; its state, replicas
and timestamps come from its Jobs and Pods (:func:`workbench.backends.kubernetes.state.observe`) each time they
are asked for. Once the cluster says a job ended, or it was cancelled, the outcome is written into ``run.json``
once, so it outlives the Jobs (their TTL) and a finished job needs no API call.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.backends.kubernetes.state import Observed
from workbench.errors import AmbiguousJob, JobNotFound
from workbench.store import FINAL_STATES, STATES, JobRecord
from workbench.workspace import Workspace, read_json, write_json_atomic

Observer = Callable[[str, dict[str, Any]], Observed]  # (run id, run.json) -> what the cluster says


class RunRecords:
    """The job records of one workspace's Kubernetes runs; ``observe`` asks the cluster about one run."""

    def __init__(self, workspace: Workspace, observe: Observer):
        self.workspace, self._observe = workspace, observe

    def get(self, job_id: str) -> JobRecord:
        """The run with this id (or unique id prefix): its outcome once decided, else what the cluster says now
        (and a job the cluster says has ended is settled: its outcome written into run.json)."""
        run_id, data = self._read(job_id)
        if data.get("state") in FINAL_STATES:
            return _record(data)
        observed = self._observe(run_id, data)
        if observed.state in FINAL_STATES:
            self.transition(
                run_id,
                observed.state,
                observed.message,
                attempt=observed.attempt,
                started=observed.started,
                ended=observed.ended,
            )
            return self.get(run_id)
        return _record({**data, **_observed(observed)})

    def list(self, limit: int | None = None) -> list[JobRecord]:
        """The Kubernetes runs of the workspace, newest first, as their run.json has them (no API call: ask
        :meth:`get` for a live state)."""
        found = []
        for path in self.workspace.runs.glob("*/run.json"):
            if path.parent.name.startswith("."):
                continue
            try:
                data = read_json(path)
            except (OSError, ValueError):
                continue  # being written, or not a run
            if data.get("backend") == "kubernetes":
                found.append(data)
        found.sort(key=lambda d: d.get("created") or 0, reverse=True)
        return [_record(d) for d in found[:limit] if d.get("id")]

    def insert(self, record: JobRecord) -> None:
        """Nothing to write: the launcher's run.json is the record (the run dir appeared whole before this)."""
        self._read(record.id)

    def update(self, job_id: str, **fields: Any) -> None:
        run_id, data = self._read(job_id)
        write_json_atomic(self.workspace.run(run_id).run_json, {**data, **fields})

    def transition(self, job_id: str, state: str, message: str | None = None, **fields: Any) -> bool:
        """Record an outcome (a final state) in run.json, unless one is there: the first decision stands."""
        assert state in FINAL_STATES, f"only outcomes are recorded, not {state!r} (one of {STATES})"
        run_id, data = self._read(job_id)
        if data.get("state") in FINAL_STATES:
            return False
        fields = {k: v for k, v in fields.items() if v is not None}
        fields.setdefault("ended", time.time())
        write_json_atomic(self.workspace.run(run_id).run_json, {**data, **fields, "state": state, "message": message})
        return True

    def _read(self, job_id: str) -> tuple[str, dict[str, Any]]:
        path = self.workspace.run(job_id).run_json
        if not path.exists():
            path = self._by_name(job_id) or self._by_prefix(job_id)
        data = read_json(path)
        if data.get("backend") != "kubernetes":
            raise JobNotFound(
                f"job {path.parent.name} ran with the {data.get('backend')} backend, not kubernetes; "
                f"set WORKBENCH_BACKEND={data.get('backend')} to follow it"
            )
        return path.parent.name, data

    def _by_name(self, name: str) -> Path | None:
        """run.json of the newest run called ``name``."""
        named = [r for r in self.list() if r.name == name]
        return self.workspace.run(named[0].id).run_json if named else None

    def _by_prefix(self, prefix: str) -> Path:
        """run.json of the one run whose id starts with ``prefix`` (as git takes commits)."""
        matches = sorted(
            p for p in self.workspace.runs.glob(f"{glob.escape(prefix)}*/run.json") if not p.parent.name.startswith(".")
        )
        if not matches:
            raise JobNotFound(f"no job {prefix!r} (an id, a unique id prefix or a job name) in {self.workspace.root}")
        if len(matches) > 1:
            shown = ", ".join(p.parent.name for p in matches[:20]) + (", ..." if len(matches) > 20 else "")
            raise AmbiguousJob(f"{prefix!r} starts several job ids: {shown}; give more of the id, or a job name")
        return matches[0]


def _observed(observed: Observed) -> dict[str, Any]:
    return {
        "state": observed.state,
        "message": observed.message,
        "attempt": observed.attempt,
        "started": observed.started,
    }


def _record(data: dict[str, Any]) -> JobRecord:
    return JobRecord(
        id=data["id"],
        name=data.get("name") or data["id"],
        backend="kubernetes",
        state=data.get("state") or "queued",
        created=float(data.get("created") or 0),
        started=data.get("started"),
        ended=data.get("ended"),
        attempt=int(data.get("attempt") or 0),
        supervisor_pid=None,
        cancel_requested=bool(data.get("cancel_requested")),
        message=data.get("message"),
        spec=data["spec"],
    )
