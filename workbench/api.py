"""The functions a notebook calls: ``submit``, ``job``, ``jobs``, ``tensorboard``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench import launcher
from workbench.errors import ServiceError
from workbench.job import Job
from workbench.spec import JobSpec
from workbench.store import JobStore
from workbench.workspace import Workspace


def submit(
    script: str,
    *,
    args: Sequence[str] = (),
    framework: str = "tensorflow",
    workers: int = 1,
    ps: int = 0,
    gpus: int = 0,
    name: str | None = None,
    env: dict[str, str] | None = None,
    python: str | None = None,
    max_restarts: int = 0,
) -> Job:
    """Run ``script`` as a training job; return its :class:`Job` at once.

    ``framework``: "tensorflow", "pytorch", "mxnet" or "none" (sets the
    distributed environment: TF_CONFIG, MASTER_ADDR/RANK..., DMLC_*).
    ``workers``: replicas that train; ``ps``: parameter servers (TensorFlow,
    MXNet). ``gpus``: GPUs per training replica. ``python``: interpreter, venv
    or named environment to run in (default: this one, or the framework's
    named environment). ``max_restarts``: restarts of the whole job after a
    replica fails. The script's folder is snapshotted into the run dir.
    Raises :class:`~workbench.errors.SpecError` (and friends) before creating
    anything when the request is wrong.
    """
    spec = JobSpec(
        script=script,
        args=tuple(args) if not isinstance(args, (str, bytes)) else args,  # type: ignore[arg-type]
        framework=framework,
        workers=workers,
        ps=ps,
        gpus=gpus,
        name=name,
        env=dict(env or {}),
        python=python,
        max_restarts=max_restarts,
    )
    return Job(launcher.submit(spec))


def job(job_id: str) -> Job:
    """The job with this id (or unique id prefix), from any process."""
    return Job(job_id)


def jobs(limit: int | None = None) -> list[Job]:
    """Jobs of the current workspace, newest first."""
    workspace = Workspace.current()
    return [Job(r.id, workspace) for r in JobStore(workspace).list(limit)]


def tensorboard(job: Job | str | None = None) -> Any:
    """The URL of the workspace's TensorBoard (started by ``workbench up``), focused on ``job`` if given.

    In a notebook it displays a link and returns the URL.
    """
    from workbench.services import read_services

    info = read_services(Workspace.current()).get("tensorboard")
    if not info:
        raise ServiceError("TensorBoard is not running for this workspace; start it with `workbench up`")
    url = info["url"]
    if job is not None:
        run_id = job.id if isinstance(job, Job) else job
        url += f"#timeseries&regexInput={run_id}"
    from workbench.watch import in_notebook

    if in_notebook():
        from IPython.display import HTML, display

        display(HTML(f'<a href="{url}" target="_blank">Open TensorBoard: {url}</a>'))
    return url
