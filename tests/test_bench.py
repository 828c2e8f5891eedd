"""``python -m bench``: discovery, and a smoke run of the launch-overhead benchmark."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_lists_benchmarks_and_rejects_unknown_names():
    listed = bench("--list")
    assert listed.returncode == 0 and "launch_overhead" in listed.stdout.split()
    unknown = bench("no_such_bench")
    assert unknown.returncode == 2 and "known: " in unknown.stderr and "launch_overhead" in unknown.stderr


@pytest.mark.slow
def test_launch_overhead_smoke_run_prints_its_figures(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = bench(
        "launch_overhead",
        "--",
        "--epochs",
        "1",
        "--limit",
        "1000",
        "--rounds",
        "1",
        "--workspace",
        str(tmp_path / "workspace"),
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ratio = float(re.search(r"wall-time ratio job/direct: ([0-9.]+)", done.stdout)[1])
    assert 0.3 < ratio < 3, done.stdout  # same work on both sides, but the machine may be busy
    cpu_ratio = float(re.search(r"CPU-time ratio job/direct: ([0-9.]+)", done.stdout)[1])
    assert 0.7 < cpu_ratio < 1.5, done.stdout  # CPU time hardly depends on the load
    assert re.search(r"first log line [0-9.]+ s after submit returned", done.stdout)
    for mode in ("direct", "job"):
        assert re.search(rf"test accuracy after 1 epoch\(s\), {mode}: 0\.\d{{4}}", done.stdout), mode
    assert len(list((tmp_path / "workspace" / "runs").glob("bench-lenet-1-*/checkpoints/ckpt-0001.keras"))) == 1
