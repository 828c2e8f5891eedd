"""Serving fixtures: one small trained LeNet job and one real model server process per test session.

Tests share them to stay within the time budget; each test promotes into a
model name of its own, so they do not see each other's versions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

import workbench as wb
from workbench.backends.local.processes import free_ports

from ..conftest import LENET

SMALL = ["--epochs", "2", "--limit", "2000"]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    workspace: Path
    grpc: str = ""  # host:port of its gRPC services

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_version(self, model: str, version: int, timeout: float = 60) -> None:
        """Wait until the server serves ``version`` of ``model``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = requests.get(f"{self.url}/v1/models/{model}/versions/{version}", timeout=5)
            if r.status_code == 200 and r.json()["model_version_status"][0]["state"] == "AVAILABLE":
                return
            time.sleep(0.1)
        raise AssertionError(f"{model} version {version} not served after {timeout} s:\n{self.log_text()[-3000:]}")


def start_server(workspace: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    port, grpc_port = free_ports(2)
    if "--workers" not in args:
        args = ("--workers", "1", *args)  # one process unless the test is about several: half the memory and start-up
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workbench",
                "serve",
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WORKBENCH_WORKSPACE": str(workspace), **(env or {})},
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log, workspace, f"127.0.0.1:{grpc_port}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited:\n{server.log_text()}"
        try:
            if requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200:
                return server
        except requests.RequestException:  # not listening yet, or too busy starting to answer
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise AssertionError(f"the server did not get ready:\n{server.log_text()}")


def metric_samples(text: str) -> dict[str, float]:
    """``/metrics`` text as {'name{label="value",...}': value}, labels in the order the tests write them, read
    with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    order = ["model", "version", "code", "protocol", "le"]
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            keys = sorted(s.labels, key=lambda k: order.index(k) if k in order else len(order))
            labels = ",".join(f'{k}="{s.labels[k]}"' for k in keys)
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def serving_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's workspace, current (WORKBENCH_WORKSPACE) for every serving test."""
    ws = tmp_path_factory.mktemp("serving") / "workspace"
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_WORKSPACE", str(ws))
    mp.setenv("WORKBENCH_KILL_GRACE", "2")
    yield ws
    mp.undo()


@pytest.fixture(scope="session")
def trained(serving_ws: Path) -> wb.Job:
    """LeNet trained 2 epochs on 2000 MNIST examples, as a real job."""
    job = wb.submit(str(LENET), args=SMALL, name="lenet")
    assert job.wait(timeout=600) == "succeeded", job.logs()
    assert [c.step for c in job.checkpoints()] == [1, 2]
    return job


@pytest.fixture(scope="session")
def server(serving_ws: Path) -> Iterator[Server]:
    """``workbench serve`` on a free port over the session workspace, logging every prediction, max body 1 MB."""
    log = serving_ws.parent / "server.log"
    serving_ws.mkdir(parents=True, exist_ok=True)
    srv = start_server(serving_ws, log, "--poll", "0.2", "--log-sample", "1", env={"WORKBENCH_SERVE_MAX_BODY_MB": "1"})
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_SERVER_URL", srv.url)
    yield srv
    mp.undo()
    stop_server(srv)


@pytest.fixture(scope="session")
def digits() -> list[list[list[float]]]:
    """Four real MNIST validation images, as JSON-ready nested lists."""
    from workbench.datasets import mnist

    (_, _), (x_val, _), _ = mnist.load_data(limit=4)
    return x_val[:4].tolist()


@pytest.fixture(scope="session")
def base(trained, server):
    """One real promote (step 1 of the trained job), whose export the ``publish`` fixture copies."""
    return wb.promote(trained, model="base", checkpoint=1)


@pytest.fixture(scope="session")
def publish(base):
    """``publish(model)``: a new version of ``model`` that is a copy of ``base``'s export, without export or
    validation (tests about routing and swapping need versions, not the cost of making them)."""
    import shutil

    from workbench.registry.store import ModelStore
    from workbench.workspace import Workspace

    entry = ModelStore(Workspace.current(), "base").read()["versions"]["1"]

    def make(model: str, **kwargs) -> int:
        store = ModelStore(Workspace.current(), model)
        staging = store.staging_dir()
        shutil.copytree(base.path, staging, dirs_exist_ok=True)
        return store.publish(staging, entry, **kwargs)

    return make
