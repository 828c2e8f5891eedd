"""``workbench up`` on an s3:// workspace runs TensorBoard from its own environment without TensorFlow, over the
bucket (TensorBoard reads s3:// only without TensorFlow beside it)."""

from __future__ import annotations

import json
import urllib.request

import psutil

from workbench import services
from workbench.backends.local.processes import free_ports
from workbench.workspace import Workspace

from .conftest import REPO


def test_up_runs_tensorboard_over_the_bucket_from_its_own_environment(s3_workspace, s3_env, tmp_path):
    ws = Workspace.current()
    port = free_ports(1)[0]
    started = services.up(ws, services.Options(enabled=("tensorboard",), ports={"tensorboard": port}))
    try:
        info = started.info["tensorboard"]
        cmdline = psutil.Process(info["pid"]).cmdline()
        assert cmdline[0] == str(REPO / ".venv-tensorboard" / "bin" / "python")
        assert f"--logdir={s3_workspace}/runs" in cmdline
        assert psutil.Process(info["pid"]).environ()["S3_ENDPOINT"] == s3_env["AWS_ENDPOINT_URL"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/tensorboard/data/runs", timeout=10) as r:
            assert json.loads(r.read()) == []
        assert services.read_services(ws)["tensorboard"]["port"] == port  # state/ lives in the local cache
        assert (tmp_path / "cache" / "state" / "services.json").is_file()
    finally:
        started.stop()
