"""The whole loop on an s3:// workspace (moto's S3 server as the MinIO stand-in), with real TensorFlow jobs:
single and 2-worker LeNet jobs whose files reach the bucket while they run, a restart that resumes from the
bucket's checkpoints, TensorBoard reading the bucket, and notebook 03 (train, promote into the bucket, predict
over REST from a model server with a cache of its own, hot swap, rollback, labels and a traffic split)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest

import workbench as wb
from workbench.backends.local.processes import free_ports, wait_for

from ..conftest import LENET
from ..serving.conftest import start_server, stop_server
from .conftest import REPO, bucket_files

pytestmark = pytest.mark.slow

NOTEBOOK = REPO / "notebooks" / "03_promote_and_serve.ipynb"

SMALL = ["--limit", "2000"]


@pytest.fixture(scope="module")
def loop(minio, tmp_path_factory):
    """One s3:// workspace and a 2-worker job that is killed once and resumes (notebook 03 runs the single-process
    job)."""
    from .conftest import CREDENTIALS, make_bucket

    tmp = tmp_path_factory.mktemp("s3loop")
    make_bucket(minio, "loop")
    mp = pytest.MonkeyPatch()
    env = {
        "AWS_ENDPOINT_URL": minio,
        "AWS_REGION": "us-east-1",
        **CREDENTIALS,
        "WORKBENCH_WORKSPACE": "s3://loop/ws",
        "WORKBENCH_CACHE_DIR": str(tmp / "cache"),
        "WORKBENCH_KILL_GRACE": "2",
        "WORKBENCH_SYNC_INTERVAL": "1",
    }
    for k, v in env.items():
        mp.setenv(k, v)
    multi = wb.submit(str(LENET), args=[*SMALL, "--epochs", "2", "--sleep", "4"], workers=2, max_restarts=1, name="2w")
    seen = {}
    ckpt = f"runs/{multi.id}/checkpoints"
    assert wait_for(lambda: "ckpt-0001.keras" in bucket_files("s3://loop/ws", ckpt), 400, interval=0.5), multi.logs()
    seen["running"] = multi.status()
    seen["events"] = [f for f in bucket_files("s3://loop/ws", f"runs/{multi.id}/tb") if "tfevents" in f]
    victim = next(r for r in json.loads((multi.paths.root / "replicas.json").read_text()) if r["index"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)
    assert multi.wait(timeout=600) == "succeeded", multi.logs()
    yield {"multi": multi, "seen": seen, "tmp": tmp, "env": env}
    mp.undo()


def test_events_and_checkpoints_reach_the_bucket_while_the_job_runs(loop):
    assert loop["seen"]["running"] == "running"
    assert loop["seen"]["events"]  # TensorBoard event files, uploaded before the job ended
    job = loop["multi"]
    files = bucket_files("s3://loop/ws", f"runs/{job.id}")
    assert {"checkpoints/ckpt-0001.keras", "checkpoints/ckpt-0002.keras", "logs/worker-1.log"} <= set(files)
    assert [c.step for c in job.checkpoints()] == [1, 2]
    assert job.checkpoints()[-1].path.is_relative_to(job.workspace.root)  # local copies, for the exporter
    series = job.scalars()["train/epoch_loss"]
    assert [s for s, _ in series] == [1, 2]


def test_a_killed_2_worker_job_resumes_from_checkpoints_pulled_from_the_bucket(loop):
    job = loop["multi"]
    logs = job.logs()
    assert job.record.attempt == 1
    launcher = (job.paths.logs / "launcher.log").read_text()
    assert re.search(
        r"restarting \(restart 1 of 1\)\n.*restored [1-9]\d* checkpoint file\(s\) from s3://loop/ws", launcher
    )
    assert "resumed from ckpt-0001" in logs
    assert "[worker-1] replica worker-1: 2 replica(s) in sync" in logs


def test_watch_follows_the_curves_in_the_bucket(loop, capsys):
    job = loop["multi"]
    shutil.rmtree(job.paths.tb, ignore_errors=True)  # the local copy: watch() fetches the event files again
    assert job.watch(interval=0.1) == "succeeded"
    out = capsys.readouterr().out
    assert "succeeded" in out and "train/epoch_loss" in out and "epoch 2" in out  # epochs counted as such


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A Jupyter kernel that runs this interpreter (the venv's) and inherits the environment (the s3 settings)."""
    spec = tmp_path / "jupyter" / "kernels" / "workbench-s3-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "s3 tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "workbench-s3-test"


def test_notebook_03_promotes_serves_hot_swaps_and_rolls_back_through_the_bucket(loop, kernel, tmp_path):
    """notebooks/03 on the s3:// workspace, against a model server whose cache is its own: every version it
    serves came through the bucket."""
    import papermill

    server = start_server(
        "s3://loop/ws",  # type: ignore[arg-type]
        tmp_path / "server.log",
        "--poll",
        "0.2",
        env={"WORKBENCH_CACHE_DIR": str(tmp_path / "server-cache")},  # nothing shared with the notebook's cache
    )
    try:
        output = tmp_path / NOTEBOOK.name
        papermill.execute_notebook(
            str(NOTEBOOK),
            str(output),
            kernel_name=kernel,
            cwd=str(NOTEBOOK.parent),
            progress_bar=False,
            execution_timeout=300,
            parameters={"epochs": 2, "limit": 2000, "model_name": "nb-lenet", "server_url": server.url},
        )
    finally:
        stop_server(server)
    cells = json.loads(output.read_text())["cells"]
    text = "\n".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for c in cells
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
    )
    accuracy = float(text.split("version 1: accuracy ")[1].split()[0])
    assert accuracy > 0.5, text
    assert "after promote: 2" in text and "after rollback: 1" in text  # hot swap, rollback
    assert "canary serves 2" in text
    published = bucket_files("s3://loop/ws", "models/nb-lenet")
    assert "model.json" in published and {"1/workbench.json", "2/workbench.json"} <= set(published)
    mirrored = tmp_path / "server-cache" / "models" / "nb-lenet"
    assert (mirrored / "1" / "workbench.json").is_file() and (mirrored / "2" / "workbench.json").is_file()
    assert json.loads((mirrored / "model.json").read_text())["labels"] == {"stable": 1, "canary": 2}
    assert wb.models()["nb-lenet"]["live"] == 1
    (job,) = [j for j in wb.jobs() if j.name == "nb-lenet"]  # the notebook's single-process job
    files = bucket_files("s3://loop/ws", f"runs/{job.id}")
    assert {"code/train.py", "checkpoints/ckpt-0002.keras", "logs/worker-0.log", "run.json"} <= set(files)
    assert any("tfevents" in f for f in files)


def test_tensorboard_reads_the_loss_from_the_bucket(loop):
    python = REPO / ".venv-tensorboard" / "bin" / "python"
    assert python.exists(), "run scripts/setup-tensorboard.sh (TensorBoard without TensorFlow reads s3://)"
    port = free_ports(1)[0]
    env = {**os.environ, **loop["env"], "S3_ENDPOINT": loop["env"]["AWS_ENDPOINT_URL"]}
    tb = subprocess.Popen(
        [str(python), "-m", "tensorboard.main", "--logdir=s3://loop/ws/runs", "--host=127.0.0.1", f"--port={port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = f"{loop['multi'].id}/tb/train"
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
        assert [p[1] for p in points] == [1, 2]
        expected = [v for _, v in loop["multi"].scalars()["train/epoch_loss"]]
        assert [p[2] for p in points] == pytest.approx(expected)
    finally:
        tb.terminate()
        tb.wait(20)
