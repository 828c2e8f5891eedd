"""The whole loop on an s3:// workspace (moto's S3 server as the MinIO stand-in), with real TensorFlow jobs:
single and 2-worker LeNet jobs whose files reach the bucket while they run, a restart that resumes from the
bucket's checkpoints, promote into the bucket, a model server with a cache of its own (so everything it serves
came through the bucket) answering REST, hot swap, rollback, and TensorBoard reading the bucket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
import requests

import workbench as wb
from workbench.backends.local.processes import free_ports, wait_for

from ..conftest import LENET
from ..serving.conftest import start_server, stop_server
from .conftest import REPO, bucket_files

pytestmark = pytest.mark.slow

SMALL = ["--limit", "2000"]


@pytest.fixture(scope="module")
def loop(minio, tmp_path_factory):
    """One s3:// workspace, a single-process job and a 2-worker job that is killed once and resumes."""
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
    single = wb.submit(str(LENET), args=[*SMALL, "--epochs", "2"], name="lenet")
    multi = wb.submit(str(LENET), args=[*SMALL, "--epochs", "2", "--sleep", "4"], workers=2, max_restarts=1, name="2w")
    seen = {}
    ckpt = f"runs/{multi.id}/checkpoints"
    assert wait_for(lambda: "ckpt-0001.keras" in bucket_files("s3://loop/ws", ckpt), 400, interval=0.5), multi.logs()
    seen["running"] = multi.status()
    seen["events"] = [f for f in bucket_files("s3://loop/ws", f"runs/{multi.id}/tb") if "tfevents" in f]
    victim = next(r for r in json.loads((multi.paths.root / "replicas.json").read_text()) if r["index"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)
    for job in (single, multi):
        assert job.wait(timeout=600) == "succeeded", job.logs()
    yield {"single": single, "multi": multi, "seen": seen, "tmp": tmp, "env": env}
    mp.undo()


def test_events_and_checkpoints_reach_the_bucket_while_the_job_runs(loop):
    assert loop["seen"]["running"] == "running"
    assert loop["seen"]["events"]  # TensorBoard event files, uploaded before the job ended
    for kind in ("single", "multi"):
        job = loop[kind]
        files = bucket_files("s3://loop/ws", f"runs/{job.id}")
        assert {"checkpoints/ckpt-0001.keras", "checkpoints/ckpt-0002.keras", "logs/worker-0.log"} <= set(files)
        assert [c.step for c in job.checkpoints()] == [1, 2]
        assert job.checkpoints()[-1].path.is_relative_to(job.workspace.root)  # local copies, for the exporter
        series = job.scalars()["train/epoch_loss"]
        assert [s for s, _ in series] == [1, 2] and series[1][1] < series[0][1]


def test_a_killed_2_worker_job_resumes_from_checkpoints_pulled_from_the_bucket(loop):
    job = loop["multi"]
    logs = job.logs()
    assert job.record.attempt == 1
    assert "restored 1 checkpoint file(s) from s3://loop/ws" in (job.paths.logs / "launcher.log").read_text() or (
        "restored" in (job.paths.logs / "launcher.log").read_text()
    )
    assert "resumed from ckpt-0001" in logs
    assert "[worker-1] replica worker-1: 2 replica(s) in sync" in logs


def test_promote_serve_hot_swap_and_rollback_through_the_bucket(loop, tmp_path):
    from ..serving.conftest import Server  # noqa: F401 - the same server helper as the serving tests

    job = loop["single"]
    v1 = wb.promote(job, model="lenet", checkpoint=1, wait=0)
    assert v1.version == 1
    published = bucket_files("s3://loop/ws", "models/lenet")
    assert "model.json" in published and any(f.startswith("1/") for f in published)

    server = start_server(
        "s3://loop/ws",  # type: ignore[arg-type]
        tmp_path / "server.log",
        "--poll",
        "0.2",
        env={"WORKBENCH_CACHE_DIR": str(tmp_path / "server-cache")},  # nothing shared with the promote's cache
    )
    try:
        server.wait_version("lenet", 1, timeout=120)
        from workbench.datasets import mnist

        (_, _), (x, _), _ = mnist.load_data(limit=2)
        r = requests.post(f"{server.url}/v1/models/lenet:predict", json={"instances": x[:2].tolist()}, timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2, r.text

        v2 = wb.promote(job, model="lenet", checkpoint="latest", wait=0)
        assert v2.version == 2
        server.wait_version("lenet", 2, timeout=120)  # hot swap: the server copied version 2 from the bucket
        assert _served_version(server.url, x) == "2"

        assert wb.rollback("lenet") == 1
        assert wait_for(lambda: _served_version(server.url, x) == "1", 30), server.log_text()[-2000:]
        assert (tmp_path / "server-cache" / "models" / "lenet" / "2" / "workbench.json").is_file()
    finally:
        stop_server(server)


def _served_version(url: str, x) -> str:
    body = {"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "FP32", "data": x[:1].ravel().tolist()}]}
    meta = requests.get(f"{url}/v2/models/lenet", timeout=10).json()
    body["inputs"][0]["name"] = meta["inputs"][0]["name"]
    body["inputs"][0]["shape"] = [1, *[int(d) for d in meta["inputs"][0]["shape"][1:]]]
    r = requests.post(f"{url}/v2/models/lenet/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


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
    run = f"{loop['single'].id}/tb/train"
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
        expected = [v for _, v in loop["single"].scalars()["train/epoch_loss"]]
        assert [p[2] for p in points] == pytest.approx(expected)
    finally:
        tb.terminate()
        tb.wait(20)


def test_nothing_of_the_workspace_is_written_outside_the_cache(loop):
    assert not Path("s3:").exists()
