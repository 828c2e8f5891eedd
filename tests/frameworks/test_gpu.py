"""PyTorch jobs on GPUs: one replica on cuda, and DDP over nccl with a GPU per replica.

They need a CUDA build of torch (the pinned wheel here is the CPU one) and GPUs
(``nvidia-smi``, or ``WORKBENCH_GPUS``); without them they skip.
"""

from __future__ import annotations

import pytest

import workbench as wb
from workbench import gpus

from .conftest import SMALL, TORCH_TRAIN

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def needs(count: int) -> None:
    import torch

    if not torch.cuda.is_available() or gpus.count() < count:
        pytest.skip(f"needs a CUDA build of torch and {count} GPU(s)")


def test_single_replica_trains_on_its_gpu(workspace):
    needs(1)
    job = wb.submit(str(TORCH_TRAIN), args=SMALL, framework="pytorch", gpus=1, name="torch-gpu")
    assert job.wait(timeout=600) == "succeeded", job.logs()
    assert "rank 0 of 1 on cuda:0" in job.logs()
    assert [c.step for c in job.checkpoints()] == [1, 2]


def test_ddp_uses_nccl_with_one_gpu_per_replica(workspace):
    needs(2)
    job = wb.submit(str(TORCH_TRAIN), args=SMALL, framework="pytorch", workers=2, gpus=1, name="torch-nccl")
    assert job.wait(timeout=600) == "succeeded", job.logs()
    logs = job.logs()
    for rank in (0, 1):
        assert f"[worker-{rank}] replica worker-{rank}: rank {rank} of 2 on cuda:0 (process group: nccl)" in logs
