"""``job.watch()``: status, step and a loss plot that update in place in a notebook; text outside."""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

from workbench.metrics import ScalarReader, loss_series
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
    steps = [s for points in series.values() for s, _ in points]
    parts = [f"{job.id}: {state}", f"step {max(steps)}" if steps else "no step yet"]
    for tag, points in loss_series(series).items():
        parts.append(f"{tag} {points[-1][1]:.4f}")
    return " | ".join(parts)


def plot_png(series: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), dpi=90)
    ax = fig.add_subplot()
    for tag, points in loss_series(series).items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker=".", label=tag)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    if ax.lines:
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


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
