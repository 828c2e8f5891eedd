"""The small interface every job backend implements."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from workbench.spec import JobSpec
from workbench.store import JobRecord
from workbench.workspace import Workspace

if TYPE_CHECKING:
    from workbench.store import JobRecord


class JobRecords(Protocol):
    """Where a backend keeps its job records: :class:`workbench.store.JobStore` (SQLite) by default."""

    def get(self, job_id: str) -> JobRecord: ...
    def list(self, limit: int | None = None) -> list[JobRecord]: ...
    def insert(self, record: JobRecord) -> None: ...
    def update(self, job_id: str, **fields: Any) -> None: ...
    def transition(self, job_id: str, state: str, message: str | None = None, **fields: Any) -> bool: ...


class Backend(abc.ABC):
    """Runs the replicas of a job somewhere and reports on them.

    Job records (id, spec, state) live where :meth:`records` says: the
    workspace's job store unless the backend has a better source (the
    Kubernetes API); a backend starts replicas, keeps the record's state true,
    and stops them.
    """

    name: str

    def records(self, workspace: Workspace) -> JobRecords:
        """The job records of this backend's jobs in ``workspace``."""
        from workbench.store import JobStore

        return JobStore(workspace)

    @abc.abstractmethod
    def submit(self, workspace: Workspace, job_id: str, spec: JobSpec) -> None:
        """Start the job's replicas; return at once."""

    @abc.abstractmethod
    def status(self, workspace: Workspace, job_id: str) -> str:
        """The job's state, reconciled with what really runs."""

    @abc.abstractmethod
    def cancel(self, workspace: Workspace, job_id: str) -> str:
        """Stop every replica of the job (its whole process tree / pods); return the final state."""

    def reconcile(self, workspace: Workspace, records: list[JobRecord]) -> None:
        """Bring the state of these active jobs in line with what really runs (e.g. fail a job whose supervisor
        died). Called on each listing of jobs and at ``workbench up``. By default: :meth:`status` of each."""
        for record in records:
            self.status(workspace, record.id)

    def queue_positions(self, workspace: Workspace) -> dict[str, int]:
        """Position (1: next) of each job waiting in this backend's own queue; none where a cluster schedules."""
        return {}

    @abc.abstractmethod
    def log_sources(self, workspace: Workspace, job_id: str) -> dict[str, Iterator[str]]:
        """One line iterator per replica (``"worker-0"`` -> lines), reading what is there now."""
