"""Fixtures for the PyTorch and MXNet tests: the example scripts, the MXNet environment, trained jobs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import workbench as wb
from workbench import environments

REPO = Path(__file__).resolve().parents[2]
TORCH_TRAIN = REPO / "examples" / "mnist_torch" / "train.py"
MXNET_TRAIN = REPO / "examples" / "mnist_mxnet" / "train.py"
SMALL = ["--epochs", "2", "--limit", "2000"]


@pytest.fixture(scope="session")
def mxnet_python() -> str:
    """The MXNet environment's interpreter (.venv-mxnet, built by scripts/setup-frameworks.sh)."""
    python = environments.for_framework("mxnet")
    if python is None:
        if os.environ.get("WORKBENCH_WITH_MXNET") == "0":
            pytest.skip("WORKBENCH_WITH_MXNET=0: the MXNet environment was not built")
        pytest.fail("no MXNet environment (.venv-mxnet): run scripts/setup-frameworks.sh")
    return python


def submit_all(workspace: Path, specs: dict[str, dict]) -> dict[str, wb.Job]:
    """Submit every job in ``specs`` into ``workspace`` at once, wait for all, return them by key."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_WORKSPACE", str(workspace))
    mp.setenv("WORKBENCH_KILL_GRACE", "2")
    jobs: dict[str, wb.Job] = {}
    try:
        jobs = {key: wb.submit(**spec) for key, spec in specs.items()}
        for job in jobs.values():
            assert job.wait(timeout=600) == "succeeded", f"{job.message}\n{job.logs()[-5000:]}"
    finally:
        for job in jobs.values():  # a failure must not leave training processes behind
            if not job.done():
                job.cancel()
        mp.undo()
    return jobs
