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
from workbench.store import FINAL_STATES, JobStore
from workbench.workspace import Workspace, read_json

SUPERVISOR = "workbench.backends.local.supervisor"
START_TIMEOUT_S = 60


class LocalBackend(Backend):
    name = "local"

    def submit(self, workspace: Workspace, job_id: str, spec: JobSpec) -> None:
        paths = workspace.run(job_id)
        paths.logs.mkdir(parents=True, exist_ok=True)
        with open(paths.supervisor_log, "ab") as log:
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
                    str(workspace.root),
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
        if record.state in FINAL_STATES:
            return record.state
        if record.supervisor_pid and not processes.alive(record.supervisor_pid, job_id):
            # Re-read: the supervisor may have written its final state as it exited.
            record = store.get(job_id)
            if record.state not in FINAL_STATES:
                self._stop_replicas(workspace, job_id)
                store.transition(job_id, "failed", "the job's launcher process died unexpectedly")
        elif not record.supervisor_pid and time.time() - record.created > START_TIMEOUT_S:
            store.transition(
                job_id, "failed", f"the launcher did not start (see {workspace.run(job_id).supervisor_log})"
            )
        return store.get(job_id).state

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
        try:
            listed = read_json(workspace.run(job_id).root / "replicas.json")
        except (OSError, ValueError):
            return
        pids = [r["pid"] for r in listed if processes.alive(r["pid"])]
        processes.kill_trees(pids, float(settings.KILL_GRACE_S.get()))

    def log_sources(self, workspace: Workspace, job_id: str) -> dict[str, Iterator[str]]:
        logs = workspace.run(job_id).logs
        spec = JobSpec.from_dict(JobStore(workspace).get(job_id).spec)
        names = [f"{r.role}-{r.index}" for r in replicas(spec.roles())]
        return {name: processes.tail_lines(logs / f"{name}.log") for name in names}
