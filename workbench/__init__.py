"""workbench: notebook → training job → loss curves → serving, on one machine or on Kubernetes.

``import workbench as wb``, then ``wb.submit(...)``, ``wb.jobs()``, ``wb.job(id)``,
``wb.tensorboard()``. Heavy frameworks are imported only where used.
"""

from __future__ import annotations

from workbench.api import (
    compare,
    delete,
    job,
    jobs,
    label,
    models,
    predict,
    prediction_summary,
    promote,
    rollback,
    runs,
    split,
    submit,
    sweep,
    sweep_by_id,
    sweeps,
    tensorboard,
)
from workbench.errors import (
    AmbiguousJob,
    CheckpointError,
    JobNotFound,
    ModelNotFound,
    RegistryError,
    ResourceError,
    ServiceError,
    ServingError,
    SpecError,
    ValidationError,
    WorkbenchError,
    WorkspaceError,
)
from workbench.job import Job

__version__ = "0.1.0"

__all__ = [
    "AmbiguousJob",
    "CheckpointError",
    "Job",
    "JobNotFound",
    "ModelNotFound",
    "RegistryError",
    "ResourceError",
    "ServingError",
    "ValidationError",
    "ServiceError",
    "SpecError",
    "WorkbenchError",
    "WorkspaceError",
    "delete",
    "job",
    "jobs",
    "submit",
    "tensorboard",
    "label",
    "models",
    "predict",
    "prediction_summary",
    "promote",
    "rollback",
    "split",
    # params, comparison, sweeps
    "compare",
    "runs",
    "sweep",
    "sweep_by_id",
    "sweeps",
]
