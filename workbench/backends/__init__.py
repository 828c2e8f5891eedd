"""Job backends, chosen by name through one registry.

A backend implements :class:`workbench.backends.base.Backend` (submit, status,
logs, cancel). Its module is imported only when picked, so a missing optional
dependency (e.g. the ``kubernetes`` client) gives an install hint, not a
traceback at ``import workbench``.
"""

from __future__ import annotations

import logging

from workbench import settings
from workbench.backends.base import Backend
from workbench.errors import WorkbenchError
from workbench.plugins import instantiate
from workbench.store import JobRecord
from workbench.workspace import Workspace

log = logging.getLogger("workbench")

REGISTRY: dict[str, tuple[str, str]] = {
    # name: (dotted path "module:Class", install hint for its extra)
    "local": ("workbench.backends.local.backend:LocalBackend", ""),
    "kubernetes": ("workbench.backends.kubernetes.backend:KubernetesBackend", "pip install 'workbench[kubernetes]'"),
}


def get_backend(name: str | None = None) -> Backend:
    """The backend called ``name`` (default: ``WORKBENCH_BACKEND``; "auto" is kubernetes inside a pod, else local)."""
    name = name or settings.BACKEND.get()
    if name == "auto":
        from workbench.backends.kubernetes.incluster import in_cluster  # stdlib only: no client import

        name = "kubernetes" if in_cluster() else "local"
    if name not in REGISTRY:
        raise WorkbenchError(f"unknown backend {name!r}; known backends: {', '.join(sorted(REGISTRY))}")
    target, hint = REGISTRY[name]
    backend: Backend = instantiate(target, f"the {name} backend", hint or "reinstall workbench")
    return backend


def reconcile(workspace: Workspace) -> None:
    """Let each backend settle the active jobs it runs (a dead local supervisor's job is failed, its replicas
    stopped), so that a listing never shows a dead job as running."""
    from workbench.store import FINAL_STATES

    active: dict[str, list[JobRecord]] = {}
    for record in get_backend().records(workspace).list():  # the configured backend's: no job store on Kubernetes
        if record.state not in FINAL_STATES:
            active.setdefault(record.backend, []).append(record)
    for name, records in active.items():
        try:
            get_backend(name).reconcile(workspace, records)
        except WorkbenchError as e:  # e.g. the Kubernetes API is unreachable: list what the store says
            log.warning("could not check the %s jobs against what runs: %s", name, e)
