"""``Job``: a handle on one run, usable from any process (``workbench.job(id)``)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from workbench.backends import get_backend
from workbench.backends.base import Backend, JobRecords
from workbench.checkpoints import Checkpoint, list_checkpoints
from workbench.store import FINAL_STATES, JobRecord
from workbench.workspace import RunPaths, Workspace


class Job:
    """A submitted job. Cheap: it holds only the id and workspace; every call reads fresh state."""

    def __init__(self, job_id: str, workspace: Workspace | None = None):
        self.workspace = workspace or Workspace.current()
        self.id = self._records().get(job_id).id  # raises JobNotFound; accepts a unique prefix

    def __repr__(self) -> str:
        return f"Job({self.id!r}, status={self.status()!r})"

    @property
    def record(self) -> JobRecord:
        return self._records().get(self.id)

    def _records(self) -> JobRecords:
        """The configured backend's records (WORKBENCH_BACKEND): a SQLite job store locally, the cluster on
        Kubernetes."""
        return get_backend().records(self.workspace)

    @property
    def paths(self) -> RunPaths:
        return self.workspace.run(self.id)

    @property
    def name(self) -> str:
        return self.record.name

    def _backend(self) -> Backend:
        return get_backend()  # the one whose records these are

    def status(self) -> str:
        """One of "queued", "running", "succeeded", "failed", "cancelled"."""
        return self._backend().status(self.workspace, self.id)

    def queue_position(self) -> int | None:
        """Where the job waits in the local queue (1: it starts next); None once it was let in, or where the
        cluster's scheduler decides (Kubernetes)."""
        return self._backend().queue_positions(self.workspace).get(self.id)

    @property
    def message(self) -> str | None:
        """Why the job is in its state (e.g. which replica failed)."""
        return self.record.message

    def done(self) -> bool:
        return self.status() in FINAL_STATES

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> str:
        """Block until the job ends; return its final status. Raises ``TimeoutError`` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (state := self.status()) not in FINAL_STATES:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {state} after {timeout} s")
            time.sleep(poll)
        return state

    def cancel(self) -> str:
        """Stop every replica (whole process trees); return the final status."""
        return self._backend().cancel(self.workspace, self.id)

    def logs(self, follow: bool = False, replica: str | None = None, out: TextIO | None = None) -> str | None:
        """Replica logs. Without ``follow``, return them as one string (each line tagged
        ``[worker-0]`` when the job has several replicas). With ``follow=True``, print
        lines to ``out`` (default stdout) as they are written, until the job ends; return None.
        """
        sources = self._backend().log_sources(self.workspace, self.id)
        if replica is not None:
            if replica not in sources:
                raise KeyError(f"no replica {replica!r}; this job has {', '.join(sources)}")
            sources = {replica: sources[replica]}
        tag = len(sources) > 1

        def drain() -> list[str]:
            lines = []
            for name, source in sources.items():
                for line in source:
                    if line is None:
                        break
                    lines.append(f"[{name}] {line}" if tag else line)
            return lines

        if not follow:
            return "\n".join(drain())
        out = out or sys.stdout
        while True:
            finished = self.done()  # checked before draining, so no final line is missed
            for line in drain():
                print(line, file=out, flush=True)
            if finished:
                return None
            time.sleep(0.3)

    def checkpoints(self) -> list[Checkpoint]:
        """Checkpoints written so far, by step, with the metrics logged at each step (on an ``s3://`` workspace,
        copied from the bucket into the local cache first: their paths are local)."""
        self.pull_outputs()
        return list_checkpoints(self.paths.checkpoints, self.paths.tb)

    def scalars(self) -> dict[str, list[tuple[int, float]]]:
        """Every TensorBoard scalar the job logged: ``{"train/epoch_loss": [(step, value), ...]}``."""
        from workbench.metrics import read_scalars

        self.workspace.pull(self.paths.tb)
        return read_scalars(self.paths.tb)

    def pull_outputs(self) -> None:
        """On an ``s3://`` workspace, bring the local copies of the run's checkpoints and event files up to date with
        the bucket (only new or changed files move); nothing on a local workspace."""
        self.workspace.pull(self.paths.checkpoints)
        self.workspace.pull(self.paths.tb)

    def watch(self, interval: float = 2.0, timeout: float | None = None) -> str:
        """Follow the job live: status, step and loss plot in a notebook, text lines elsewhere."""
        from workbench.watch import watch

        return watch(self, interval=interval, timeout=timeout)
