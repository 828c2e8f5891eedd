"""Local backend: a detached supervisor process per job, replicas as its children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from workbench import settings
from workbench.backends.base import Backend
from workbench.backends.local import processes
from workbench.conventions import replicas
from workbench.spec import JobSpec
from workbench.store import FINAL_STATES, JobRecord, JobStore
from workbench.workspace import Workspace, open_private, read_json

SUPERVISOR = "workbench.backends.local.supervisor"
START_TIMEOUT_S = 60


def _pid_in_run_json(workspace: Workspace, job_id: str) -> int | None:
    try:
        return read_json(workspace.run(job_id).run_json).get("supervisor_pid")  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


class LocalBackend(Backend):
    name = "local"

    def submit(self, workspace: Workspace, job_id: str, spec: JobSpec) -> None:
        paths = workspace.run(job_id)
        paths.logs.mkdir(parents=True, exist_ok=True)
        with open_private(paths.supervisor_log) as log:
            # "sh -c '... &'" exits at once, so the supervisor is re-parented and never
            # becomes a zombie of the (long-lived) notebook kernel that submitted it.
            subprocess.run(
                [
                    "sh",
                    "-c",
                    'exec "$@" </dev/null &',
                    "sh",
                    sys.executable,
                    "-m",
                    SUPERVISOR,
                    workspace.location,
                    job_id,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                check=True,
            )

    def status(self, workspace: Workspace, job_id: str) -> str:
        store = JobStore(workspace)
        record = store.get(job_id)
        if record.state not in FINAL_STATES:
            self._settle(workspace, store, record)
        return store.get(job_id).state

    def _settle(self, workspace: Workspace, store: JobStore, record: JobRecord) -> None:
        """Fail an active job whose supervisor is gone (stopping what is left of its replicas)."""
        job_id = record.id
        pid = record.supervisor_pid or _pid_in_run_json(workspace, job_id)
        if pid and not processes.alive(pid, job_id):
            # Re-read: the supervisor may have written its final state as it exited.
            if store.get(job_id).state not in FINAL_STATES:
                self._stop_replicas(workspace, job_id)
                store.transition(
                    job_id,
                    "failed",
                    f"the job's launcher process died unexpectedly (pid {pid}: killed or crashed); "
                    "its replicas were stopped",
                )
        elif not pid and time.time() - record.created > START_TIMEOUT_S:
            store.transition(
                job_id, "failed", f"the launcher did not start (see {workspace.run(job_id).supervisor_log})"
            )

    def cancel(self, workspace: Workspace, job_id: str) -> str:
        store = JobStore(workspace)
        store.update(job_id, cancel_requested=1)
        record = store.get(job_id)
        if record.state in FINAL_STATES:
            return record.state
        grace = float(settings.KILL_GRACE_S.get())
        if processes.alive(record.supervisor_pid, job_id):
            try:
                os.kill(record.supervisor_pid, signal.SIGTERM)  # type: ignore[arg-type]
            except ProcessLookupError:
                pass
            if processes.wait_for(lambda: store.get(job_id).state in FINAL_STATES, grace + 15):
                return store.get(job_id).state
        elif not record.supervisor_pid and processes.wait_for(
            lambda: store.get(job_id).state in FINAL_STATES, 5
        ):  # a supervisor still starting sees cancel_requested and stops at once
            return store.get(job_id).state
        self._stop_replicas(workspace, job_id)
        store.transition(job_id, "cancelled", "cancelled by request")
        return store.get(job_id).state

    def _stop_replicas(self, workspace: Workspace, job_id: str) -> None:
        """Stop the job's replicas and whatever they started (found by the run id in their environment, so that a
        replica's children are found after the replica itself is gone)."""
        try:
            listed = [r["pid"] for r in read_json(workspace.run(job_id).root / "replicas.json")]
        except (OSError, ValueError):
            listed = []
        pids = {p for p in listed if processes.alive(p)} | set(processes.with_env(settings.RUN_ID_VAR, job_id))
        processes.kill_trees(sorted(pids), float(settings.KILL_GRACE_S.get()))

    def log_sources(self, workspace: Workspace, job_id: str) -> dict[str, Iterator[str]]:
        logs = workspace.run(job_id).logs
        spec = JobSpec.from_dict(JobStore(workspace).get(job_id).spec)
        names = [f"{r.role}-{r.index}" for r in replicas(spec.roles())]
        return {name: processes.tail_lines(logs / f"{name}.log") for name in names}
