"""``job.watch()``'s header and plot: epoch-level and step-level series never share an axis."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from workbench.metrics import read_scalars
from workbench.watch import loss_figure, plot_png, summary_line


def write_keras_like_run(logdir: Path) -> None:
    """What Keras' TensorBoard callback writes with update_freq: epoch_* per epoch, batch_* per batch step."""
    writer = EventFileWriter(str(logdir / "train"))
    for epoch in range(14):
        for batch in range(epoch * 152, (epoch + 1) * 152, 8):
            value = Summary.Value(tag="batch_loss", simple_value=2.0 / (1 + batch))
            writer.add_event(Event(step=batch, wall_time=time.time(), summary=Summary(value=[value])))
        value = Summary.Value(tag="epoch_loss", simple_value=1.0 / (1 + epoch))
        writer.add_event(Event(step=epoch, wall_time=time.time(), summary=Summary(value=[value])))
    writer.close()


def test_header_says_epoch_and_step_from_their_own_series(tmp_path):
    write_keras_like_run(tmp_path)
    series = read_scalars(tmp_path)
    line = summary_line(SimpleNamespace(id="lenet-1"), "running", series)
    assert line.startswith("lenet-1: running | epoch 13 | step 2120 | train/epoch_loss 0.0714 | train/batch_loss")


def test_epoch_and_step_series_are_plotted_on_their_own_axes(tmp_path):
    write_keras_like_run(tmp_path)
    series = read_scalars(tmp_path)
    fig = loss_figure(series, "lenet-1")
    epoch_ax, step_ax = fig.axes
    assert epoch_ax.get_xlabel() == "epoch" and step_ax.get_xlabel() == "step"
    assert [line.get_label() for line in epoch_ax.lines] == ["train/epoch_loss"]
    assert [line.get_label() for line in step_ax.lines] == ["train/batch_loss"]
    assert max(epoch_ax.lines[0].get_xdata()) == 13 and max(step_ax.lines[0].get_xdata()) == 2120
    assert plot_png(series, "lenet-1").startswith(b"\x89PNG")


def test_a_run_with_only_step_series_gets_one_step_axis(tmp_path):
    writer = EventFileWriter(str(tmp_path))
    for step in range(5):
        value = Summary.Value(tag="loss", simple_value=1.0 / (1 + step))
        writer.add_event(Event(step=step * 100, wall_time=time.time(), summary=Summary(value=[value])))
    writer.close()
    series = read_scalars(tmp_path)
    (ax,) = loss_figure(series, "torch-1").axes
    assert ax.get_xlabel() == "step"
    assert (
        summary_line(SimpleNamespace(id="torch-1"), "succeeded", series)
        == "torch-1: succeeded | step 400 | loss 0.2000"
    )
    assert "no step yet" in summary_line(SimpleNamespace(id="new"), "queued", {})
