"""Sweeps: trials are real jobs (tiny scripts writing scalars), at most `parallel` at a time, judged by Optuna;
a grid and a TPE sweep run to the end, another process reattaches, the best trial promotes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import workbench as wb
from workbench.errors import SpecError

from .test_params import SCALARS

SLOW_SCALARS = SCALARS + "\nimport time; time.sleep(float(params.get('sleep', 0)))\n"  # trial: runs `sleep` s


def most_at_once(jobs: list[wb.Job]) -> int:
    """The most jobs whose [started, ended] intervals overlap (from their run.json)."""
    edges = []
    for job in jobs:
        run = json.loads(job.paths.run_json.read_text())
        edges += [(run["started"], 1), (run["ended"], -1)]
    now = peak = 0
    for _, delta in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        now += delta
        peak = max(peak, now)
    return peak


def test_grid_sweep_runs_every_combination_two_at_a_time(workspace, write_script):
    script = write_script(SLOW_SCALARS)
    space = {"lr": [0.05, 0.1, 0.2], "sleep": [1.5]}
    sweep = wb.sweep(str(script), space, metric="val_accuracy", parallel=2, framework="none", name="grid")
    assert sweep.config.trials == 3 and len(sweep.trial_jobs()) == 2  # the first two started at once
    sweep.wait(timeout=120, poll=0.2)

    jobs = sweep.trial_jobs()
    assert sorted(j.record.spec["params"]["lr"] for j in jobs) == [0.05, 0.1, 0.2]  # each grid point once
    assert [j.status() for j in jobs] == ["succeeded"] * 3
    assert [j.name for j in jobs] == ["grid-0", "grid-1", "grid-2"]
    assert most_at_once(jobs) == 2
    assert all(json.loads(j.paths.run_json.read_text())["sweep"] == sweep.id for j in jobs)
    assert {j.id for j in wb.jobs(sweep=sweep.id)} == {j.id for j in jobs}

    trials = sweep.trials()
    assert list(trials["state"]) == ["complete"] * 3
    by_lr = dict(zip(trials["lr"], trials["value"], strict=True))
    assert by_lr == pytest.approx({0.05: 0.15, 0.1: 0.3, 0.2: 0.6})  # the best val_accuracy, not the final one
    best = sweep.best()
    assert best.record.spec["params"]["lr"] == 0.2
    table = wb.runs(sweep=sweep.id)
    assert len(table) == 3 and set(table["sweep"]) == {sweep.id}
    assert wb.sweep_by_id(sweep.id[:12]).best().id == best.id


def test_tpe_sweep_minimizing_a_loss_is_finished_by_another_process(workspace, write_script):
    script = write_script(SCALARS)
    sweep = wb.sweep(
        str(script),
        {"lr": (0.01, 0.5, "log"), "opt": ["adam", "sgd"]},
        metric="epoch_loss",
        mode="min",
        strategy="tpe",
        trials=4,
        parallel=2,
        seed=1,
        framework="none",
    )
    # A notebook restart: the sweep goes on from another process, which knows it by id alone.
    code = f"import workbench as wb; s = wb.sweep_by_id({sweep.id!r}).wait(timeout=120, poll=0.2); print(s)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "4/4 trials" in out.stdout

    trials = sweep.trials()
    assert list(trials["state"]) == ["complete"] * 4 and list(trials["status"]) == ["succeeded"] * 4
    assert trials["lr"].between(0.01, 0.5).all() and set(trials["opt"]) <= {"adam", "sgd"}
    # train/epoch_loss is 1/(epoch*lr*10), least at the last epoch: the largest lr wins.
    best = sweep.best()
    assert best.record.spec["params"]["lr"] == max(trials["lr"])
    assert trials.loc[trials["value"].idxmin(), "id"] == best.id
    assert most_at_once(sweep.trial_jobs()) <= 2
    assert [s.id for s in wb.sweeps()] == [sweep.id]


def test_pruned_trials_are_cancelled(workspace, write_script):
    # Each epoch's accuracy is lr * epoch, all logged at once; then a trial sleeps (3 s, the poor one 60 s). The
    # third is far below the median of the first two at every step and is stopped during its sleep.
    script = write_script(SCALARS + "\nimport time; time.sleep(3 if lr > 0.01 else 60)\n")  # trials' durations
    sweep = wb.sweep(str(script), {"lr": [0.3, 0.25, 0.001]}, metric="val_accuracy", prune=True, framework="none")
    sweep.wait(timeout=200, poll=0.2)
    trials = sweep.trials()
    assert list(trials["state"]) == ["complete", "complete", "pruned"], trials
    assert trials["status"].iloc[2] == "cancelled"
    assert trials["duration_s"].iloc[2] < 50


def test_cancel_stops_the_running_trials_and_starts_no_more(workspace, write_script):
    script = write_script(SLOW_SCALARS)
    sweep = wb.sweep(str(script), {"lr": [0.1, 0.2, 0.3], "sleep": [60]}, metric="val_accuracy", framework="none")
    (running,) = sweep.trial_jobs()
    sweep.cancel()
    assert running.status() == "cancelled"
    assert sweep.wait(timeout=10).trials()["state"].tolist() == ["fail"]
    assert len(wb.jobs()) == 1


@pytest.mark.parametrize(
    "space, options, message",
    [
        ({"lr": (0.1, 1.0)}, {}, "a grid sweep takes lists of values only"),
        ({"lr": "fast"}, {}, "give a list of values"),
        ({"lr": [1]}, {"strategy": "bayes"}, "unknown strategy 'bayes'"),
        ({"lr": (0.1, 1.0)}, {"strategy": "random"}, "trials must be a positive integer"),
        ({"lr": [1]}, {"parallel": 0}, "parallel must be a positive integer"),
    ],
)
def test_bad_sweeps_are_refused(workspace, write_script, space, options, message):
    script = write_script("print('never')\n")
    with pytest.raises(SpecError, match=message):
        wb.sweep(str(script), space, metric="loss", framework="none", **options)
    assert wb.jobs() == []


TINY_KERAS = """
import os
from pathlib import Path
import keras
from workbench import runtime

lr = runtime.params()["lr"]
model = keras.Sequential(
    [keras.Input((28, 28), name="image"), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
)
import tensorflow as tf
with tf.summary.create_file_writer(os.path.join(os.environ["WORKBENCH_LOG_DIR"], "validation")).as_default(step=1):
    tf.summary.scalar("epoch_accuracy", lr)
ckpt = Path(os.environ["WORKBENCH_CHECKPOINT_DIR"]) / "ckpt-0001.keras"
model.save(ckpt)
runtime.record_checkpoint(ckpt, 1, val_accuracy=lr)
"""


@pytest.mark.slow  # TensorFlow in each trial and in promote's export and validation
def test_best_trial_of_a_keras_sweep_promotes(workspace, write_script, monkeypatch):
    monkeypatch.setenv("WORKBENCH_PROMOTE_WARM", "0")
    script = write_script(TINY_KERAS)
    sweep = wb.sweep(str(script), {"lr": [0.3, 0.7]}, metric="val_accuracy", parallel=2, name="tiny")
    sweep.wait(timeout=300, poll=0.5)
    best = sweep.best()
    assert best.record.spec["params"] == {"lr": 0.7}
    version = wb.promote(best, model="swept", checkpoint="best", metric="val_accuracy", wait=0)
    assert version.version == 1 and version.source["run_id"] == best.id
    assert version.source["metrics"] == {"val_accuracy": pytest.approx(0.7)}
