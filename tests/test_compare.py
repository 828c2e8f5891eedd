"""runs(): params against final and best metrics as a DataFrame; compare(): curves together; `workbench jobs
--params --metric`. Jobs are tiny scripts that write TensorBoard scalars (no training)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import workbench as wb
from workbench.errors import WorkbenchError

from .test_params import SCALARS


@pytest.fixture
def two_runs(workspace, write_script):
    script = write_script(SCALARS)
    jobs = [wb.submit(str(script), framework="none", name="lr", params={"lr": lr}) for lr in (0.05, 0.2)]
    failing = write_script("raise SystemExit(3)\n", name="bad.py")
    jobs.append(wb.submit(str(failing), framework="none", name="bad"))
    for job in jobs:
        job.wait(60)
    return jobs


def test_runs_table_has_params_final_and_best_metrics(two_runs):
    low, high, bad = two_runs
    table = wb.runs()
    assert list(table["id"]) == [bad.id, high.id, low.id]  # newest first
    assert list(table["status"]) == ["failed", "succeeded", "succeeded"]
    assert table.attrs["params"] == ["lr"]
    assert {"train/epoch_loss", "validation/epoch_accuracy"} <= set(table.attrs["metrics"])
    rows = table.set_index("id")
    # lr=0.2: accuracy 0.2, 0.4, 0.6 at epochs 1-3, then 0.2 at step 4: final 0.2, best (max) 0.6.
    assert rows.loc[high.id, "lr"] == 0.2
    assert rows.loc[high.id, "validation/epoch_accuracy"] == pytest.approx(0.2)
    assert rows.loc[high.id, "validation/epoch_accuracy best"] == pytest.approx(0.6)
    # A loss is best at its minimum: 1/(epoch*lr*10) falls, so best == final == 1/(3*0.5).
    assert rows.loc[low.id, "train/epoch_loss best"] == pytest.approx(1 / 1.5)
    assert rows.loc[low.id, "duration_s"] > 0
    assert list(wb.runs(name="lr", status="succeeded")["id"]) == [high.id, low.id]
    assert wb.runs(status="cancelled").empty


def test_compare_draws_each_run_on_one_axis(two_runs):
    low, high, bad = two_runs
    fig = wb.compare(wb.runs(name="lr"), "val_accuracy")  # Keras' name for validation/epoch_accuracy
    (ax,) = fig.axes
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines.keys() == {"lr lr=0.05", "lr lr=0.2"}
    assert lines["lr lr=0.2"] == pytest.approx([0.2, 0.4, 0.6, 0.2])
    with pytest.raises(WorkbenchError, match="none of these runs logged a scalar 'nothing'"):
        wb.compare([low, high.id], "nothing")


def test_cli_jobs_shows_params_and_a_metric(two_runs):
    low, high, bad = two_runs
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "jobs", "--params", "--metric", "val_accuracy"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
    assert lines[high.id][1:] == ["succeeded", "0.2", "0.6", "lr=0.2"]
    assert lines[low.id][1:] == ["succeeded", "0.05", "0.15", "lr=0.05"]
    assert lines[bad.id][1:] == ["failed", "-", "-"]
