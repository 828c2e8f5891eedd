"""Fixtures for the PyTorch and MXNet tests: the example scripts, the MXNet environment, and the jobs
every test module reads, trained once per session side by side in one workspace."""

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


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, wb.Job]:
    """Small PyTorch and MXNet jobs: single, distributed, and distributed with a failure and a restart.

    None names its environment: framework="mxnet" finds .venv-mxnet by itself. Without that
    environment there are no MXNet jobs (the MXNet tests fail or skip through ``mxnet_python``).
    """
    torch = {"script": str(TORCH_TRAIN), "framework": "pytorch"}
    mxnet = {"script": str(MXNET_TRAIN), "framework": "mxnet"}
    fail_once = {"args": [*SMALL, "--fail-at-epoch", "1"], "max_restarts": 1}
    specs = {
        "torch-single": {**torch, "args": SMALL, "name": "torch-single"},
        "torch-ddp": {**torch, "args": SMALL, "workers": 2, "name": "torch-ddp"},
        "torch-restart": {**torch, **fail_once, "workers": 2, "name": "torch-restart"},
        "mx-single": {**mxnet, "args": SMALL, "name": "mx-single"},
        "mx-dist": {**mxnet, "args": SMALL, "workers": 2, "ps": 1, "name": "mx-dist"},
        "mx-restart": {**mxnet, **fail_once, "workers": 2, "ps": 1, "name": "mx-restart"},
    }
    if environments.for_framework("mxnet") is None:
        specs = {k: v for k, v in specs.items() if v["framework"] != "mxnet"}
    return submit_all(tmp_path_factory.mktemp("frameworks"), specs)
