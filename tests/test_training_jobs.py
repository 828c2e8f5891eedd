"""Real TensorFlow training jobs (LeNet on real MNIST, small): single, 2 workers, restart, TensorBoard API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import workbench as wb
from workbench.backends.local.processes import free_ports, wait_for

from .conftest import LENET

pytestmark = pytest.mark.slow

SMALL = ["--epochs", "2", "--limit", "2000"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, wb.Job]:
    """A single-process and a 2-worker job, trained side by side once for this module."""
    ws = tmp_path_factory.mktemp("trained")
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_WORKSPACE", str(ws))
    jobs = {
        "single": wb.submit(str(LENET), args=SMALL, name="lenet-single"),
        "multi": wb.submit(str(LENET), args=SMALL, workers=2, name="lenet-2w"),
    }
    for job in jobs.values():
        assert job.wait(timeout=600) == "succeeded", job.logs()
    yield jobs
    mp.undo()


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_job_trains_with_checkpoints_and_event_files(trained, kind):
    job = trained[kind]
    ckpts = job.checkpoints()
    assert [c.step for c in ckpts] == [1, 2]
    assert all(c.path.suffix == ".keras" and c.path.stat().st_size > 10_000 for c in ckpts)
    assert 0.0 < ckpts[-1].metrics["val_accuracy"] <= 1.0
    assert list(job.paths.tb.rglob("*tfevents*"))
    series = job.scalars()
    assert [s for s, _ in series["train/epoch_loss"]] == [1, 2]
    assert series["train/epoch_loss"][1][1] < series["train/epoch_loss"][0][1]  # it learns
    assert "test_accuracy=" in job.logs()


def test_two_workers_really_train_in_sync(trained):
    logs = trained["multi"].logs()
    assert "[worker-0] replica worker-0: 2 replica(s) in sync" in logs
    assert "[worker-1] replica worker-1: 2 replica(s) in sync" in logs
    spec = json.loads(trained["multi"].paths.run_json.read_text())["spec"]
    assert spec["workers"] == 2


def test_watch_prints_status_outside_jupyter(trained, capsys):
    assert trained["single"].watch(interval=0.1) == "succeeded"
    out = capsys.readouterr().out
    assert "succeeded" in out and "train/epoch_loss" in out and "| epoch 2 |" in out  # epochs counted as such


def test_tensorboard_http_api_serves_the_job_loss(trained):
    ws = trained["single"].workspace
    port = free_ports(1)[0]
    tb = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", f"--logdir={ws.runs}", "--host=127.0.0.1", f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = f"{trained['single'].id}/tb/train"
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run={run}&tag=epoch_loss"

    def fetch():
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    try:
        assert wait_for(lambda: fetch() is not None, 90, interval=1), "TensorBoard did not answer"
        points = fetch()
        assert [p[1] for p in points] == [1, 2]  # [wall_time, step, value]
        expected = [v for _, v in trained["single"].scalars()["train/epoch_loss"]]
        assert [p[2] for p in points] == pytest.approx(expected)
    finally:
        tb.terminate()
        tb.wait(20)


def test_killed_worker_restarts_and_resumes_from_checkpoint(workspace):
    job = wb.submit(
        str(LENET), args=["--epochs", "3", "--limit", "2000", "--sleep", "2"], workers=2, max_restarts=1, name="resume"
    )
    first = job.paths.checkpoints / "ckpt-0001.keras"
    assert wait_for(first.exists, 400, interval=0.5), job.logs()
    victim = next(r for r in json.loads((job.paths.root / "replicas.json").read_text()) if r["index"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)
    assert job.wait(timeout=600) == "succeeded", job.logs()
    logs = job.logs()
    assert job.record.attempt == 1
    assert "restart 1" in logs
    assert "resumed from ckpt-000" in logs
    assert [c.step for c in job.checkpoints()] == [1, 2, 3]


def test_cancel_a_training_job(workspace):
    job = wb.submit(str(LENET), args=["--epochs", "50", "--limit", "2000"], workers=2, name="cancel-me")
    assert wait_for(lambda: "epoch 1/" in job.logs(), 400, interval=0.5), job.logs()
    started = time.monotonic()
    assert job.cancel() == "cancelled"
    assert time.monotonic() - started < 30
    pids = [r["pid"] for r in json.loads((job.paths.root / "replicas.json").read_text())]
    from workbench.backends.local.processes import alive

    assert not any(alive(p) for p in pids)


def test_lenet_script_runs_outside_the_workbench(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    out = subprocess.run(
        [sys.executable, str(LENET), "--epochs", "1", "--limit", "500"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "checkpoints" / "ckpt-0001.keras").exists()
