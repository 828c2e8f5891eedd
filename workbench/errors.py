"""The workbench's own exceptions: errors a user can cause, with messages that say what to do."""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base of every error the workbench raises on purpose."""


class SpecError(WorkbenchError, ValueError):
    """A job spec is malformed (unknown framework, bad replica counts, missing script...)."""


class WorkspaceError(WorkbenchError):
    """The workspace cannot be used (not writable, corrupt state database...)."""


class JobNotFound(WorkbenchError, KeyError):
    """No job with that id exists in this workspace."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else "job not found"


class AmbiguousJob(WorkbenchError, KeyError):
    """An id prefix matches several jobs; the message lists them."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "ambiguous job id"


class ResourceError(WorkbenchError):
    """A job asks for more than the machine has (e.g. GPUs)."""


class CheckpointError(WorkbenchError):
    """A checkpoint is missing or cannot be read."""


class ServiceError(WorkbenchError):
    """A workbench service (JupyterLab, TensorBoard, server) failed to start or stop."""


class RegistryError(WorkbenchError):
    """A model registry request is wrong: unknown model, version or label, bad checkpoint choice, export failure."""


class ModelNotFound(RegistryError, KeyError):
    """No model (or version, or label) with that name in this workspace."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "model not found"


class ValidationError(RegistryError):
    """A new model version failed the validation gate (loaded in a fresh process, run on a sample); nothing was published."""


class ServingError(WorkbenchError):
    """The model server answered a request with an error (``status`` holds the HTTP status) or cannot be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
