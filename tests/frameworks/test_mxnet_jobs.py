"""Real MXNet jobs in the MXNet environment (LeNet on real MNIST, small): single process,
parameter-server dist_sync (scheduler + 1 server + 2 workers), restart and resume."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("mxnet_python")]


def test_jobs_run_in_the_mxnet_environment_without_naming_it(trained, mxnet_python):
    for job in (trained["mx-single"], trained["mx-dist"], trained["mx-restart"]):
        assert json.loads(job.paths.run_json.read_text())["spec"]["python"] == mxnet_python


@pytest.mark.parametrize("kind", ["mx-single", "mx-dist"])
def test_job_writes_a_checkpoint_and_scalars_per_epoch(trained, kind):
    job = trained[kind]
    ckpts = job.checkpoints()
    assert [c.step for c in ckpts] == [1, 2]
    for c in ckpts:
        assert (c.path / "model-symbol.json").is_file() and (c.path / "model-0000.params").stat().st_size > 10_000
    assert (ckpts[-1].path / "trainer.states").is_file() == (kind == "mx-single")  # dist: optimizer lives on the server
    assert 0.1 < ckpts[-1].metrics["val_accuracy"] <= 1.0  # better than chance
    series = job.scalars()  # written with tensorboardX: no TensorFlow in that environment
    assert [s for s, _ in series["train/epoch_loss"]] == [1, 2]
    assert series["train/epoch_loss"][1][1] < series["train/epoch_loss"][0][1]  # it learns
    assert [s for s, _ in series["validation/epoch_accuracy"]] == [1, 2]
    assert "test_accuracy=" in job.logs()


def test_single_job_uses_a_local_kvstore(trained):
    assert "kvstore device, rank 0 of 1" in trained["mx-single"].logs()


def test_dist_sync_job_runs_scheduler_server_and_two_synchronised_workers(trained):
    job = trained["mx-dist"]
    logs = job.logs()
    assert "[scheduler-0] train.py: starting as scheduler" in logs
    assert "[server-0] train.py: starting as server" in logs
    ranks = sorted(re.findall(r"\[worker-\d\] replica worker-\d: kvstore dist_sync, rank (\d) of 2", logs))
    assert ranks == ["0", "1"]
    sums = re.findall(r"\[worker-\d\] weights checksum=(\S+)", logs)
    assert len(sums) == 2 and float(sums[0]) == pytest.approx(float(sums[1]), abs=1e-6)
    replicas = json.loads((job.paths.root / "replicas.json").read_text())
    assert sorted((r["role"], r["index"]) for r in replicas) == [
        ("scheduler", 0),
        ("server", 0),
        ("worker", 0),
        ("worker", 1),
    ]


def test_failed_dist_job_restarts_every_role_and_resumes(trained):
    job = trained["mx-restart"]
    logs = job.logs()
    assert job.record.attempt == 1 and "restart 1" in logs
    assert logs.count("[scheduler-0] train.py: starting as scheduler") == 2
    assert "resumed from ckpt-0001 (epoch 1)" in logs
    assert [c.step for c in job.checkpoints()] == [1, 2]
