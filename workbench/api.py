"""The functions a notebook calls: ``submit``, ``job``, ``jobs``, ``tensorboard``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench import launcher
from workbench.errors import ServiceError
from workbench.job import Job
from workbench.spec import JobSpec
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
    params: dict[str, Any] | None = None,
    sweep: str | None = None,
    priority: int = 0,
    cpus: int | None = None,
) -> Job:
    """Run ``script`` as a training job; return its :class:`Job` at once.

    ``framework``: "tensorflow", "pytorch", "mxnet" or "none" (sets the
    distributed environment: TF_CONFIG, MASTER_ADDR/RANK..., DMLC_*).
    ``workers``: replicas that train; ``ps``: parameter servers (TensorFlow,
    MXNet). ``gpus``: GPUs per training replica. ``python``: interpreter, venv
    or named environment to run in (default: this one, or the framework's
    named environment). ``max_restarts``: restarts of the whole job after a
    replica fails. ``params``: hyperparameters (bool, int, float, str), recorded in run.json, written as
    TensorBoard HParams and given to the script as ``--NAME VALUE`` and ``WORKBENCH_PARAMS`` (JSON).
    ``sweep``: the sweep this job is a trial of (set by :func:`workbench.sweep`).
    ``priority``: higher starts first in the local queue; ``cpus``: CPU slots the job holds there (default:
    one per replica; see docs/jobs.md). The script's folder is snapshotted into the run dir.
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
        params=params if params is not None else {},
        sweep=sweep,
        priority=priority,
        cpus=cpus,
    )
    return Job(launcher.submit(spec))


def job(job_id: str) -> Job:
    """The job with this id, else the newest job with this name, else the one whose id starts with it; from any
    process. An ambiguous prefix raises :class:`~workbench.errors.AmbiguousJob` listing the candidates."""
    return Job(job_id)


def delete(job: Job | str) -> str:
    """Remove a finished job (a :class:`Job`, id, unique id prefix or name): its run folder and its record.
    Refuses a job that has not ended: cancel it first. Returns its id."""
    from workbench.housekeeping import delete as _delete

    workspace = job.workspace if isinstance(job, Job) else Workspace.current()
    return _delete(workspace, job.id if isinstance(job, Job) else job)


def jobs(limit: int | None = None, *, sweep: str | None = None) -> list[Job]:
    """Jobs of the current workspace, newest first (``sweep``: only the trials of that sweep id)."""
    from workbench.backends import get_backend, reconcile

    workspace = Workspace.current()
    reconcile(workspace)  # a job whose supervisor died shows as failed, without a status() call
    records = get_backend().records(workspace).list(None if sweep else limit)
    if sweep is not None:
        records = [r for r in records if r.spec.get("sweep") == sweep][:limit]
    return [Job(r.id, workspace) for r in records]


def tensorboard(job: Job | str | None = None) -> Any:
    """The URL of the workspace's TensorBoard (started by ``workbench up``), focused on ``job`` if given.

    Inside JupyterLab's own address (``<jupyter>/tensorboard/``, one port for both; the browser's JupyterLab login
    lets it in) when JupyterLab runs, else TensorBoard's own port. In a notebook it also displays a link.
    """
    from workbench.services import read_services

    url = tensorboard_url(read_services(Workspace.current()), job)
    from workbench.watch import in_notebook

    if in_notebook():
        from IPython.display import HTML, display

        display(HTML(tensorboard_link(url)))
    return url


def tensorboard_url(services: dict[str, Any], job: Job | str | None = None) -> str:
    """TensorBoard's URL among ``services`` (what ``workbench up`` records), with ``job``'s runs filtered in."""
    from urllib.parse import quote, urlsplit

    if "jupyter" in services and "tensorboard" in services:
        base = urlsplit(services["jupyter"]["url"])
        url = f"{base.scheme}://{base.netloc}/tensorboard/"
    elif "tensorboard" in services:
        url = services["tensorboard"]["url"]
    else:
        raise ServiceError("TensorBoard is not running for this workspace; start it with `workbench up`")
    if job is not None:
        run_id = job.id if isinstance(job, Job) else Job(job).id
        url += f"?runFilter={quote(run_id, safe='')}#timeseries"  # TensorBoard 2.21's run filter (a regex)
    return url


def tensorboard_link(url: str) -> str:
    """An HTML link to ``url``, escaped (a URL's ``&reg...`` must not turn into ``®``)."""
    from html import escape

    return f'<a href="{escape(url)}" target="_blank">Open TensorBoard: {escape(url)}</a>'


# ---------------------------------------------------------------- serving (workbench.registry, workbench.serving)


def promote(
    job: Any = None, model: str | None = None, checkpoint: Any = "latest", *, wait: float = 60, **options: Any
) -> Any:
    """Export a job's checkpoint, validate it in a fresh process, publish it as the next version of ``model``.

    ``checkpoint``: "latest", "best" (``metric="val_accuracy"``, ``mode="max"``), a step or a path; ``builder``,
    ``framework``, ``sample``, ``label``, ``live``: see :func:`workbench.registry.promote.promote`. When a model
    server runs for the workspace, waits up to ``wait`` s until it serves the new version (0: do not wait).
    Returns the :class:`~workbench.registry.ModelVersion`.
    """
    from workbench.errors import ServingError
    from workbench.registry import promote as _promote
    from workbench.registry.promote import warm_workers
    from workbench.serving import client

    version = _promote(job, model, checkpoint, warm=False, **options)
    try:  # the idle workers for the next promote start once the server has this version: their imports compete
        if wait:
            try:
                url = client.server_url()
            except ServingError:
                return version
            client.notify(url)
            if not client.wait_available(url, version.model, version.version, wait):
                print(f"note: the model server at {url} does not serve {version.model} version {version.version} yet")
    finally:
        warm_workers(version.framework)
    return version


def predict(model: str, instances: Any = None, **options: Any) -> Any:
    """Predict through the model server: ``instances`` (row format) or ``inputs=`` (columnar); ``version=``, ``label=``, ``url=``."""
    from workbench.serving.client import predict as _predict

    return _predict(model, instances, **options)


def models() -> dict[str, Any]:
    """Every model of the workspace: versions (run, step, metrics), live version, labels, traffic split."""
    from workbench.registry import models as _models

    return _models()


def rollback(model: str, version: int | str | None = None) -> int:
    """Send unversioned traffic back to ``version`` (default: the one before the live one); return it."""
    from workbench.registry import rollback as _rollback

    return _rollback(model, version)


def label(model: str, name: str, version: int | str | None) -> None:
    """Point label ``name`` ("stable", "canary"...) at ``version``; ``None`` removes it."""
    from workbench.registry import label as _label

    _label(model, name, version)


def split(model: str, weights: dict[str, float] | None) -> None:
    """Split unversioned traffic by weight among labels or versions, e.g. ``{"stable": 90, "canary": 10}``."""
    from workbench.registry import split as _split

    _split(model, weights)


def prediction_summary(model: str | None = None, since: float | None = None) -> dict[str, Any]:
    """Summary of the server's prediction log: requests, latency percentiles, output distribution per version."""
    from workbench.serving.predlog import summary

    return summary(model=model, since=since)


# ---------------------------------------------------------------- comparison and sweeps (workbench.experiments)


def runs(name: str | None = None, sweep: str | None = None, status: str | None = None) -> Any:
    """Runs as a pandas DataFrame: id, name, status, sweep, params, final and best value of each scalar, duration.

    See :func:`workbench.experiments.compare.runs`."""
    from workbench.experiments.compare import runs as _runs

    return _runs(name=name, sweep=sweep, status=status)


def compare(runs: Any, metric: str) -> Any:
    """Plot ``metric`` of several runs (Jobs, ids, a ``runs()`` DataFrame, a sweep) together; see
    :func:`workbench.experiments.compare.compare`."""
    from workbench.experiments.compare import compare as _compare

    return _compare(runs, metric)


def sweep(script: str, space: dict[str, Any], **options: Any) -> Any:
    """Start a hyperparameter sweep whose trials are jobs; see :func:`workbench.experiments.sweep.sweep`."""
    from workbench.experiments.sweep import sweep as _sweep

    return _sweep(script, space, **options)


def sweep_by_id(sweep_id: str) -> Any:
    """The sweep with this id (or unique prefix), e.g. after a notebook restart."""
    from workbench.experiments.sweep import sweep_by_id as _sweep_by_id

    return _sweep_by_id(sweep_id)


def sweeps() -> list[Any]:
    """The workspace's sweeps, newest first."""
    from workbench.experiments.sweep import sweeps as _sweeps

    return _sweeps()
