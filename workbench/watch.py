"""``job.watch()``: status, step and a loss plot that update in place in a notebook; text outside."""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

from workbench.metrics import ScalarReader, by_level, loss_series
from workbench.store import FINAL_STATES

if TYPE_CHECKING:
    from workbench.job import Job


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def summary_line(job: Job, state: str, series: dict[str, list[tuple[int, float]]]) -> str:
    """``<id>: running | epoch 13 | step 1972 | train/epoch_loss 0.0412 ...``: epoch and step each from the
    series that count them."""
    epochs, steps = by_level(series)
    parts = [f"{job.id}: {state}"]
    last_epoch = max((s for points in epochs.values() for s, _ in points), default=None)
    last_step = max((s for points in steps.values() for s, _ in points), default=None)
    if last_epoch is not None:
        parts.append(f"epoch {last_epoch}")
    if last_step is not None:
        parts.append(f"step {last_step}")
    if last_epoch is None and last_step is None:
        parts.append("no step yet")
    for tag, points in loss_series(series).items():
        parts.append(f"{tag} {points[-1][1]:.4f}")
    return " | ".join(parts)


def plot_png(series: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    """:func:`loss_figure` as PNG."""
    fig = loss_figure(series, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def loss_figure(series: dict[str, list[tuple[int, float]]], title: str) -> Any:
    """Loss curves: epoch-level series against epochs and step-level ones against steps, each on its own axes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs, steps = by_level(loss_series(series))
    panels = [(xs, label) for xs, label in ((epochs, "epoch"), (steps, "step")) if xs] or [({}, "step")]
    fig = Figure(figsize=(6 if len(panels) == 1 else 10, 3.2), dpi=90)
    for i, (curves, label) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        for tag, points in curves.items():
            ax.plot([s for s, _ in points], [v for _, v in points], marker="." if label == "epoch" else "", label=tag)
        ax.set_xlabel(label)
        ax.set_ylabel("loss")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def watch(job: Job, interval: float = 2.0, timeout: float | None = None) -> str:
    """Update until the job ends (or ``timeout`` s pass); return the last status seen."""
    reader = ScalarReader(job.paths.tb)
    notebook = in_notebook()
    text_handle: Any = None
    plot_handle: Any = None
    last = ""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = job.status()
        job.workspace.pull(job.paths.tb)  # an s3:// workspace: the event files uploaded since the last look
        series = reader.update()
        line = summary_line(job, state, series)
        if notebook:
            from IPython.display import Image, display

            if text_handle is None:
                text_handle = display({"text/plain": line}, raw=True, display_id=True)
                plot_handle = display(Image(plot_png(series, job.id)), display_id=True)
            else:
                text_handle.update({"text/plain": line}, raw=True)
                plot_handle.update(Image(plot_png(series, job.id)))
        elif line != last:
            print(line, flush=True)
        last = line
        if state in FINAL_STATES or (deadline is not None and time.monotonic() > deadline):
            return state
        time.sleep(interval)
