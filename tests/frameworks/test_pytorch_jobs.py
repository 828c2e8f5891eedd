"""Real PyTorch jobs (LeNet on real MNIST, small): single process, 2-worker DDP over gloo, restart and resume."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["torch-single", "torch-ddp"])
def test_job_writes_a_checkpoint_and_scalars_per_epoch(trained, kind):
    job = trained[kind]
    ckpts = job.checkpoints()
    assert [c.step for c in ckpts] == [1, 2]
    for c in ckpts:
        assert (c.path / "model.pt2").stat().st_size > 10_000 and (c.path / "train_state.pt").is_file()
    assert 0.1 < ckpts[-1].metrics["val_accuracy"] <= 1.0  # better than chance
    series = job.scalars()
    assert [s for s, _ in series["train/epoch_loss"]] == [1, 2]
    assert series["train/epoch_loss"][1][1] < series["train/epoch_loss"][0][1]  # it learns
    assert [s for s, _ in series["validation/epoch_accuracy"]] == [1, 2]
    assert ckpts[-1].metrics["val_accuracy"] == pytest.approx(series["validation/epoch_accuracy"][-1][1])
    assert "test_accuracy=" in job.logs()


def test_single_job_runs_without_a_process_group(trained):
    assert "replica worker-0: rank 0 of 1 on cpu (process group: none)" in trained["torch-single"].logs()


def test_ddp_workers_form_one_gloo_group_and_end_with_equal_weights(trained):
    logs = trained["torch-ddp"].logs()
    for rank in (0, 1):
        assert f"[worker-{rank}] replica worker-{rank}: rank {rank} of 2 on cpu (process group: gloo)" in logs
    sums = {r: float(m) for r, m in re.findall(r"\[worker-(\d)\] weights checksum=(\S+)", logs)}
    assert set(sums) == {"0", "1"} and sums["0"] == pytest.approx(sums["1"], abs=1e-6)
    assert len(re.findall(r"\[worker-\d\] epoch \d/2", logs)) == 2  # only rank 0 reports and writes
    spec = json.loads(trained["torch-ddp"].paths.run_json.read_text())["spec"]
    assert spec["framework"] == "pytorch" and spec["workers"] == 2


def test_failed_ddp_job_restarts_and_resumes_from_its_checkpoint(trained):
    job = trained["torch-restart"]
    logs = job.logs()
    assert job.record.attempt == 1 and "restart 1" in logs
    assert "failing on purpose after epoch 1" in logs
    assert "resumed from ckpt-0001 (epoch 1)" in logs
    assert [c.step for c in job.checkpoints()] == [1, 2]
