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
from workbench.backends.local import processes, queue
from workbench.conventions import replicas
from workbench.spec import JobSpec
from workbench.store import FINAL_STATES, JobRecord, JobStore
from workbench.workspace import Workspace, open_private, read_json

SUPERVISOR = "workbench.backends.local.supervisor"
START_TIMEOUT_S = 60


def _launcher_pid(workspace: Workspace, record: JobRecord) -> int | None:
    """The pid of the job's launcher: run.json's (written first, and emptied when a new launcher is started),
    else the database's."""
    try:
        run = read_json(workspace.run(record.id).run_json)
    except (OSError, ValueError):
        return record.supervisor_pid
    return run["supervisor_pid"] if "supervisor_pid" in run else record.supervisor_pid  # type: ignore[no-any-return]


def spawn(workspace: Workspace, job_id: str, env: dict[str, str]) -> None:
    """Start the job's supervisor, detached, with ``env`` (its submitter's environment)."""
    paths = workspace.run(job_id)
    with open_private(paths.supervisor_log) as log:
        # "sh -c '... &'" exits at once, so the supervisor is re-parented and never
        # becomes a zombie of the (long-lived) notebook kernel or job that started it.
        subprocess.run(
            ["sh", "-c", 'exec "$@" </dev/null &', "sh", sys.executable, "-m", SUPERVISOR, workspace.location, job_id],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            check=True,
        )


def admit(workspace: Workspace) -> list[str]:
    """Start the queued jobs that fit now (see :mod:`workbench.backends.local.queue`); return their ids."""
    return queue.admit(workspace, lambda job_id, env: spawn(workspace, job_id, env))


class LocalBackend(Backend):
    name = "local"

    def submit(self, workspace: Workspace, job_id: str, spec: JobSpec) -> None:
        """Queue the job; its launcher starts once what it asks for is free (see :mod:`.queue`)."""
        workspace.run(job_id).logs.mkdir(parents=True, exist_ok=True)
        queue.save_env(workspace, job_id, dict(os.environ))  # its launcher gets them, whoever lets it in
        admit(workspace)

    def status(self, workspace: Workspace, job_id: str) -> str:
        store = JobStore(workspace)
        record = store.get(job_id)
        if record.state not in FINAL_STATES:
            self._settle(workspace, store, record)
            state = store.get(job_id).state
            if record.state == "queued" or state in FINAL_STATES:
                admit(workspace)  # a queue whose launchers all died moves on when someone looks
        return store.get(job_id).state

    def reconcile(self, workspace: Workspace, records: list[JobRecord]) -> None:
        store = JobStore(workspace)
        for record in records:
            self._settle(workspace, store, record)
        admit(workspace)

    def queue_positions(self, workspace: Workspace) -> dict[str, int]:
        return queue.positions(workspace)

    def _settle(self, workspace: Workspace, store: JobStore, record: JobRecord) -> None:
        """Fail an active job whose supervisor is gone (stopping what is left of its replicas)."""
        job_id = record.id
        held = queue.allocation(workspace, job_id)
        if record.state == "queued" and held is None:
            return  # waiting in the queue: its launcher, if any, may come and go (the next admitter starts one)
        pid = _launcher_pid(workspace, record)
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
        elif not pid and held and time.time() - held["admitted"] > START_TIMEOUT_S:
            store.transition(
                job_id, "failed", f"the launcher did not start (see {workspace.run(job_id).supervisor_log})"
            )

    def cancel(self, workspace: Workspace, job_id: str) -> str:
        store = JobStore(workspace)
        store.update(job_id, cancel_requested=1)
        record = store.get(job_id)
        if record.state in FINAL_STATES:
            return record.state
        with queue.lock(workspace):  # no admitter lets it in meanwhile
            if queue.allocation(workspace, job_id) is None and record.state == "queued":
                store.transition(job_id, "cancelled", "cancelled while queued; it never started")
                queue.env_file(workspace, job_id).unlink(missing_ok=True)
                done = True
            else:
                done = False
        if done:
            admit(workspace)  # the next head gets its waiting launcher; this one's sees the state and leaves
            return store.get(job_id).state
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
        admit(workspace)  # its launcher, gone, could not
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
