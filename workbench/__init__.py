"""workbench: notebook → training job → loss curves → serving, on one machine or on Kubernetes.

``import workbench as wb``, then ``wb.submit(...)``, ``wb.jobs()``, ``wb.job(id)``,
``wb.tensorboard()``. Heavy frameworks are imported only where used.
"""

from __future__ import annotations

from workbench.api import job, jobs, submit, tensorboard
from workbench.errors import (
    CheckpointError,
    JobNotFound,
    ResourceError,
    ServiceError,
    SpecError,
    WorkbenchError,
    WorkspaceError,
)
from workbench.job import Job

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Job",
    "JobNotFound",
    "ResourceError",
    "ServiceError",
    "SpecError",
    "WorkbenchError",
    "WorkspaceError",
    "job",
    "jobs",
    "submit",
    "tensorboard",
]
