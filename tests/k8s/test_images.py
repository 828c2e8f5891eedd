"""The container images (images/): hadolint on every Dockerfile; then the docker tier builds every image
for real with images/build.sh on a Debian bookworm base made with debootstrap, and smoke-runs them:

- each trainer image runs a tiny job of the project's own example against a mounted workspace
  (``workbench submit ... --follow``: checkpoints and TensorBoard events land in the workspace);
- the TensorFlow trainer image promotes that job's checkpoint; the serving image serves it over REST;
- the jupyter image answers ``/api/status`` (403 without the token) and proxies TensorBoard;
- the tensorboard image shows the job's scalars from the workspace, and from an ``s3://`` logdir on
  moto's S3 server (a stand-in for MinIO, which cannot be installed here).

The docker tier skips, saying why, only when the engine cannot start.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.k8s import tooling
from tests.k8s.tooling import IMAGE_NAMES, REPO, free_port, image, wait_http

# The first docker test sets up the whole tier (debootstrap, wheelhouse, six builds): longer than the suite's
# per-test timeout on a cold machine.
pytestmark = [pytest.mark.k8s, pytest.mark.timeout(3000)]
docker_tier = [pytest.mark.docker, pytest.mark.slow]


class Container:
    """``docker run -d`` of a long-running server on the host network; logs shown on failure."""

    def __init__(self, engine: tooling.DockerEngine, *args: str) -> None:
        self.engine = engine
        self.name = f"wb-test-{uuid.uuid4().hex[:8]}"
        engine.docker("run", "-d", "--name", self.name, "--network", "host", *args)

    def logs(self) -> str:
        done = self.engine.docker("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-4000:]

    def stop(self) -> None:
        self.engine.docker("rm", "-f", self.name, check=False)


@pytest.fixture
def container(docker_engine: tooling.DockerEngine) -> Iterator[Any]:
    started: list[Container] = []

    def start(*args: str) -> Container:
        c = Container(docker_engine, *args)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


# --- hadolint -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_hadolint(name: str) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is missing: run scripts/setup-k8s.sh"
    done = subprocess.run([str(hadolint), str(REPO / "images" / name / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


# --- builds ---------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGE_NAMES)
@pytest.mark.usefixtures("built_images")
def test_image_is_built_and_runs_as_non_root(name: str, docker_engine: tooling.DockerEngine) -> None:
    info = json.loads(docker_engine.docker("image", "inspect", image(name)).stdout)[0]
    assert info["Config"]["User"] == "1000:1000"
    whoami = docker_engine.docker("run", "--rm", "--network", "none", "--entrypoint", "id", image(name), "-u")
    assert whoami.stdout.strip() == "1000"
    print(f"{image(name)}: {info['Size'] / 1e6:.0f} MB")


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.usefixtures("built_images")
def test_jupyter_and_serving_share_the_tensorflow_layers(docker_engine: tooling.DockerEngine) -> None:
    def layers(name: str) -> list[str]:
        return json.loads(docker_engine.docker("image", "inspect", image(name)).stdout)[0]["RootFS"]["Layers"]

    trainer = layers("trainer-tensorflow")
    for name in ("jupyter", "serving"):
        assert layers(name)[: len(trainer)] == trainer, name


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.usefixtures("built_images")
def test_tensorboard_image_has_no_tensorflow(docker_engine: tooling.DockerEngine) -> None:
    done = docker_engine.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python",
        image("tensorboard"),
        "-c",
        "import importlib.util as u; print(u.find_spec('tensorflow'), u.find_spec('boto3') is not None)",
    )
    assert done.stdout.split() == ["None", "True"]


# --- trainers: a tiny job against a mounted workspace --------------------------------------------


def run_job(
    engine: tooling.DockerEngine, ws: Path, name: str, example: str, framework: str, workers: int, then: str = ""
) -> subprocess.CompletedProcess[str]:
    """The example's train.py submitted inside the image, as on one machine; MNIST mounted read-only."""
    from workbench.datasets import mnist

    data = mnist.default_path()
    assert data.exists(), "MNIST is missing: run scripts/setup.sh"
    shutil.copytree(REPO / "examples" / example, ws / "code" / example, ignore=shutil.ignore_patterns("__pycache__"))
    for p in [ws, *ws.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o666)
    script = (
        f"workbench submit --framework {framework} --workers {workers} --name smoke --follow "
        f"/workspace/code/{example}/train.py -- --epochs 1 --limit 512"
    )
    return engine.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{ws}:/workspace",
        "-v",
        f"{data.parent}:/data:ro",
        "-e",
        "WORKBENCH_DATA_DIR=/data",
        image(name),
        "bash",
        "-c",
        script + (f" && {then}" if then else ""),
        check=False,
        timeout=900,
    )


def job_dir(ws: Path) -> Path:
    runs = [p for p in (ws / "runs").iterdir() if (p / "run.json").exists()]
    assert len(runs) == 1, runs
    return runs[0]


def assert_finished_job(ws: Path, done: subprocess.CompletedProcess[str], events: bool = True) -> Path:
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    run = job_dir(ws)
    assert json.loads((run / "run.json").read_text())["state"] == "succeeded"
    assert list((run / "checkpoints").iterdir()), "no checkpoint written"
    if events:
        assert list((run / "tb").rglob("events.out.tfevents.*")), "no TensorBoard events written"
    return run


@pytest.fixture(scope="module")
def tf_workspace(
    built_images: dict[str, float], docker_engine: tooling.DockerEngine, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A workspace where the TensorFlow trainer image ran LeNet for one epoch and promoted it as 'lenet'."""
    ws = tmp_path_factory.mktemp("tf") / "workspace"
    (ws / "code").mkdir(parents=True)
    done = run_job(
        docker_engine,
        ws,
        "trainer-tensorflow",
        "lenet",
        "tensorflow",
        1,
        then="workbench promote smoke --model lenet --checkpoint latest",
    )
    return ws, done


@pytest.mark.docker
@pytest.mark.slow
def test_tensorflow_trainer_runs_a_job_and_promotes_it(tf_workspace: tuple[Path, Any]) -> None:
    ws, done = tf_workspace
    assert_finished_job(ws, done)
    versions = [p.name for p in (ws / "models" / "lenet").iterdir() if p.name.isdigit()]
    assert versions == ["1"]
    assert (ws / "models" / "lenet" / "1" / "saved_model.pb").exists()


@pytest.mark.parametrize(
    ("name", "example", "framework", "workers"),
    [
        pytest.param("trainer-pytorch", "mnist_torch", "pytorch", 2, marks=docker_tier, id="pytorch-ddp-2-workers"),
        pytest.param("trainer-mxnet", "mnist_mxnet", "mxnet", 1, marks=docker_tier, id="mxnet"),
    ],
)
@pytest.mark.usefixtures("built_images")
def test_trainer_runs_a_job(
    name: str, example: str, framework: str, workers: int, docker_engine: tooling.DockerEngine, shared_dir: Path
) -> None:
    ws = shared_dir / "workspace"
    (ws / "code").mkdir(parents=True)
    run = assert_finished_job(ws, run_job(docker_engine, ws, name, example, framework, workers))
    logs = sorted(p.name for p in (run / "logs").glob("worker-*.log"))
    assert logs == [f"worker-{i}.log" for i in range(workers)]


# --- servers --------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_serving_image_serves_the_promoted_model(tf_workspace: tuple[Path, Any], container: Any) -> None:
    from workbench.datasets import mnist

    ws, done = tf_workspace
    assert done.returncode == 0, done.stderr[-3000:]
    port = free_port()
    server = container(
        "-v", f"{ws}:/workspace", image("serving"), "workbench", "serve", "--host", "127.0.0.1", "--port", str(port)
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_http(f"{base}/v2/health/live", timeout=120).status_code == 200
        deadline = time.monotonic() + 60
        while requests.get(f"{base}/v2/health/ready", timeout=5).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        status = requests.get(f"{base}/v1/models/lenet", timeout=10).json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE", status
        _, _, (x_test, _) = mnist.load_data(limit=2)
        r = requests.post(f"{base}/v1/models/lenet:predict", json={"instances": x_test[:2].tolist()}, timeout=30)
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert len(predictions) == 2 and len(predictions[0]) == 10
    except AssertionError:
        print(server.logs())
        raise


@pytest.mark.docker
@pytest.mark.slow
def test_jupyter_image_answers_and_proxies_tensorboard(tf_workspace: tuple[Path, Any], container: Any) -> None:
    ws, _ = tf_workspace
    port, token = free_port(), uuid.uuid4().hex
    lab = container(
        "-v",
        f"{ws}:/workspace",
        "-e",
        f"JUPYTER_TOKEN={token}",
        image("jupyter"),
        "jupyter",
        "lab",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--no-browser",
        "--ServerApp.base_url=/wb/",
    )
    base = f"http://127.0.0.1:{port}/wb"
    try:
        r = wait_http(f"{base}/api/status", params={"token": token}, timeout=120)
        assert r.status_code == 200 and "started" in r.json()
        assert requests.get(f"{base}/api/status", timeout=10).status_code == 403
        # TensorBoard, started by jupyter-server-proxy on the first visit, under the same prefix.
        runs = wait_http(f"{base}/tensorboard/data/runs", params={"token": token}, timeout=120)
        assert runs.status_code == 200, runs.text
        deadline = time.monotonic() + 60
        while not runs.json() and time.monotonic() < deadline:
            time.sleep(1)
            runs = requests.get(f"{base}/tensorboard/data/runs", params={"token": token}, timeout=10)
        assert any("smoke" in run for run in runs.json()), runs.json()
    except AssertionError:
        print(lab.logs())
        raise


def scalar_tags(base: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    tags: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            tags = requests.get(f"{base}/data/plugin/scalars/tags", timeout=5).json()
            if tags:
                return tags
        except (requests.ConnectionError, ValueError):
            pass
        time.sleep(1)
    return tags


@pytest.mark.docker
@pytest.mark.slow
def test_tensorboard_image_reads_the_workspace(tf_workspace: tuple[Path, Any], container: Any) -> None:
    ws, _ = tf_workspace
    port = free_port()
    tb = container(
        "-v",
        f"{ws}:/workspace:ro",
        image("tensorboard"),
        "--logdir=/workspace/runs",
        "--host=127.0.0.1",
        f"--port={port}",
        "--reload_interval=1",
    )
    tags = scalar_tags(f"http://127.0.0.1:{port}")
    assert any("smoke" in run and values for run, values in tags.items()), (tags, tb.logs())


@pytest.fixture
def moto_s3() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1: a stand-in for MinIO (no MinIO binary can be installed here)."""
    server = REPO / ".venv-moto" / "bin" / "moto_server"
    assert server.exists(), "moto is missing: run scripts/setup-k8s.sh"
    port = free_port()
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.docker
@pytest.mark.slow
def test_tensorboard_image_reads_an_s3_logdir(tf_workspace: tuple[Path, Any], moto_s3: str, container: Any) -> None:
    ws, _ = tf_workspace
    upload = """
import sys, pathlib, boto3
endpoint, root = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket="workbench")
for f in pathlib.Path(root, "runs").rglob("events.out.tfevents.*"):
    s3.upload_file(str(f), "workbench", str(f.relative_to(root)))
"""
    python = REPO / ".venv-moto" / "bin" / "python"
    subprocess.run([str(python), "-c", upload, moto_s3, str(ws)], check=True, timeout=60)
    port = free_port()
    tb = container(
        "-e",
        f"S3_ENDPOINT={moto_s3}",
        "-e",
        "AWS_ACCESS_KEY_ID=test",
        "-e",
        "AWS_SECRET_ACCESS_KEY=test",
        "-e",
        "AWS_REGION=us-east-1",
        image("tensorboard"),
        "--logdir=s3://workbench/runs",
        "--host=127.0.0.1",
        f"--port={port}",
        "--reload_interval=1",
    )
    tags = scalar_tags(f"http://127.0.0.1:{port}")
    assert any("smoke" in run and values for run, values in tags.items()), (tags, tb.logs())
