"""Compare runs: a pandas table of params against final and best metrics (``runs``), their curves on one plot
(``compare``). Scalars come from each run's TensorBoard event files (:mod:`workbench.metrics`)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError
from workbench.metrics import read_scalars
from workbench.store import JobRecord
from workbench.workspace import Workspace, read_json

if TYPE_CHECKING:
    import pandas as pd

    from workbench.job import Job

Series = dict[str, list[tuple[int, float]]]
FIXED = ("id", "name", "status", "sweep", "created", "duration_s")
# Keras' names for what its TensorBoard callback writes, so `metric="val_accuracy"` finds "validation/epoch_accuracy".
_KERAS = (("val_", "validation/epoch_"), ("", "train/epoch_"))


def pandas() -> Any:
    """The pandas module, or an install hint."""
    try:
        import pandas as pd
    except ImportError:
        raise WorkbenchError("comparing runs needs pandas: pip install 'pandas>=2'") from None
    return pd


def mode_of(tag: str) -> str:
    """How a metric improves: "min" for losses and errors, else "max"."""
    last = tag.rsplit("/", 1)[-1].lower()
    return "min" if any(word in last for word in ("loss", "error", "mse", "mae", "perplexity")) else "max"


def find_tag(series: Series, metric: str) -> str | None:
    """The tag ``metric`` names in ``series``: itself, a unique tag ending in ``/metric``, or Keras'
    ``validation/epoch_X`` for ``val_X`` (``train/epoch_X`` for ``X``)."""
    if metric in series:
        return metric
    ending = [tag for tag in series if tag.endswith("/" + metric)]
    if len(ending) == 1:
        return ending[0]
    for prefix, keras in _KERAS:
        if metric.startswith(prefix) and keras + metric[len(prefix) :] in series:
            return keras + metric[len(prefix) :]
    return None


def best_of(points: list[tuple[int, float]], mode: str) -> float:
    values = [v for _, v in points]
    return min(values) if mode == "min" else max(values)


def _records(workspace: Workspace, name: str | None, sweep: str | None, status: str | None) -> list[JobRecord]:
    from workbench.backends import get_backend, reconcile

    reconcile(workspace)
    out = []
    for r in get_backend().records(workspace).list():  # the SQLite job store locally, the cluster on Kubernetes
        if (name is None or r.name == name) and (sweep is None or r.spec.get("sweep") == sweep):
            if status is None or r.state == status:
                out.append(r)
    return out


def run_row(
    workspace: Workspace, record: JobRecord, columns: tuple[set[str], set[str]] | None = None
) -> dict[str, Any]:
    """One run as a flat dict: the fixed columns, its params, then ``<tag>`` (final value) and ``<tag> best``.
    ``columns``: sets to add the names of its param columns and scalar tags to."""
    columns = columns or (set(), set())
    from workbench.params import logged

    paths = workspace.run(record.id)
    try:
        run = read_json(paths.run_json)
    except (OSError, ValueError):
        run = {}
    end = record.ended or (time.time() if record.started else None)
    row: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "status": record.state,
        "sweep": record.spec.get("sweep"),
        "created": record.created,
        "duration_s": round(end - record.started, 3) if end and record.started else None,
    }
    for key, value in {**(run.get("params") or record.spec.get("params") or {}), **logged(paths.root)}.items():
        column = key if key not in FIXED else f"param:{key}"
        row[column] = value
        columns[0].add(column)
    workspace.pull(paths.tb)  # an s3:// workspace: the event files uploaded since the last look
    for tag, points in sorted(read_scalars(paths.tb).items()):
        if points:
            row[tag] = points[-1][1]
            columns[1].add(tag)
            row[f"{tag} best"] = best_of(points, mode_of(tag))
    return row


def runs(
    name: str | None = None,
    sweep: str | None = None,
    status: str | None = None,
    workspace: Workspace | None = None,
) -> pd.DataFrame:
    """Runs of the workspace, newest first, as a DataFrame: ``id``, ``name``, ``status``, ``sweep``, ``created``,
    ``duration_s`` (running ones: so far), one column per param, and for each TensorBoard scalar tag its final
    value (``validation/epoch_accuracy``) and best value (``validation/epoch_accuracy best``: the minimum for
    losses and errors, else the maximum). Filters: job ``name``, ``sweep`` id, ``status``."""
    pd = pandas()
    workspace = workspace or Workspace.current()
    rows: list[dict[str, Any]] = []
    params: set[str] = set()
    metrics: set[str] = set()
    for record in _records(workspace, name, sweep, status):
        row = run_row(workspace, record, columns=(params, metrics))
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else list(FIXED))
    table.attrs["params"] = sorted(params)  # which columns are params, which scalars (their final value)
    table.attrs["metrics"] = sorted(metrics)
    return table


def _jobs(items: Any, workspace: Workspace) -> list[Job]:
    from workbench.job import Job

    if hasattr(items, "columns") and "id" in items.columns:  # a DataFrame from runs()
        items = list(items["id"])
    elif hasattr(items, "trial_jobs"):  # a Sweep
        items = items.trial_jobs()
    if isinstance(items, (str, Job)):
        items = [items]
    return [i if isinstance(i, Job) else Job(str(i), workspace) for i in items]


def compare(items: Iterable[Any] | Any, metric: str, workspace: Workspace | None = None) -> Any:
    """Plot ``metric`` of several runs on one axis (x: the step each was logged at).

    ``items``: Jobs, run ids, a :func:`runs` DataFrame or a sweep. In a notebook it shows the plot and returns
    None; elsewhere it returns the matplotlib Figure. Raises :class:`WorkbenchError` when no run logged ``metric``.
    """
    from matplotlib.figure import Figure

    from workbench.watch import in_notebook

    workspace = workspace or Workspace.current()
    fig = Figure(figsize=(7, 3.8), dpi=90)
    ax = fig.add_subplot()
    drawn = 0
    for job in _jobs(items, workspace):
        workspace.pull(job.paths.tb)  # an s3:// workspace: the event files uploaded since the last look
        series = read_scalars(job.paths.tb)
        tag = find_tag(series, metric)
        if tag is None:
            continue
        params = job.record.spec.get("params") or {}
        label = job.name + (" " + " ".join(f"{k}={v}" for k, v in params.items()) if params else "")
        steps, values = zip(*series[tag], strict=True)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        drawn += 1
    if not drawn:
        raise WorkbenchError(f"none of these runs logged a scalar {metric!r} (yet)")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    if in_notebook():  # a PNG, as job.watch() shows: a bare Figure has no display form without pyplot's backend
        import io

        from IPython.display import Image, display

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        display(Image(buf.getvalue()))
        return None
    return fig
