"""A smoke run of ``bench.s3_tensorboard_latency``: a job's scalar reaches TensorBoard through the bucket."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow  # starts the MinIO stand-in, TensorBoard and a job (~20 s)
def test_s3_tensorboard_latency_smoke_run_meets_the_goal(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "s3_tensorboard_latency", "--", "--steps", "3", "--every", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    m = re.search(r"median ([0-9.]+) s, max ([0-9.]+) s \(goal <= 10 s\): OK", done.stdout)
    assert m and float(m[2]) <= 10, done.stdout
