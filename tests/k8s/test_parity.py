"""Parity: the pods the Kubernetes backend asks for, run here as local processes, really train.

A 2-worker TensorFlow job is submitted through the kubernetes backend to the FAKE API server
(tests/k8s/fake_apiserver.py; no cluster). The Job it received is turned into pods as the Job
controller would, and each pod's container runs as a local process with its command, args, working
directory and exactly the environment a kubelet would give it (values and downward-API fields). Two
things come from outside the manifest, as they would in a cluster: the image's PATH (here: this
venv's ``python``) and HOME. One thing must differ: pod DNS names do not resolve here, so in
``WORKBENCH_CLUSTER`` each ``<pod>.<service>:2222`` becomes 127.0.0.1 with a port of its own (every
replica shares this machine). The test reports the processes to the fake API server as a kubelet
would, and follows the job through the backend (status, logs) to the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import workbench as wb
from tests.conftest import LENET
from tests.k8s.fake_apiserver import FakeApiServer, container_env
from workbench import settings
from workbench.backends.kubernetes import manifests

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

TRAIN_TIMEOUT_S = 480


@pytest.fixture
def fake(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "kubeconfig", namespace="ml")))
        monkeypatch.setenv("WORKBENCH_BACKEND", "kubernetes")
        yield server


def loopback_addresses(cluster_json: str) -> dict[str, str]:
    """Each pod address of the cluster -> 127.0.0.1 on a distinct free port: the stand-in for cluster DNS."""
    addresses = [a for role in json.loads(cluster_json).values() for a in role]
    socks = [socket.socket() for _ in addresses]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return {a: f"127.0.0.1:{s.getsockname()[1]}" for a, s in zip(addresses, socks, strict=True)}
    finally:
        for s in socks:
            s.close()


def remap(cluster_json: str, addresses: dict[str, str]) -> str:
    cluster = json.loads(cluster_json)
    return json.dumps({role: [addresses[a] for a in members] for role, members in cluster.items()}, sort_keys=True)


def test_pods_rendered_for_a_two_worker_tensorflow_job_train_to_completion(fake: FakeApiServer, tmp_path: Path) -> None:
    job = wb.submit(str(LENET), args=["--epochs", "1", "--limit", "2000"], workers=2, name="lenet")
    name = manifests.job_name(job.id, "worker")
    pods = [fake.get("pods", pod) for pod in fake.make_pods(name)]
    envs = [container_env(pod) for pod in pods]
    dns = {a.split(":")[0] for a in json.loads(envs[0][settings.CLUSTER_VAR])["worker"]}
    assert dns == {f"{job.id}-worker-{i}.{job.id}" for i in range(2)}  # what the cluster would resolve
    addresses = loopback_addresses(envs[0][settings.CLUSTER_VAR])
    image = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": os.environ["HOME"]}

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for pod, env in zip(pods, envs, strict=True):
            container = pod["spec"]["containers"][0]
            env = {**env, settings.CLUSTER_VAR: remap(env[settings.CLUSTER_VAR], addresses), **image}
            log = tmp_path / f"{pod['metadata']['name']}.log"
            with open(log, "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [*container["command"], *container["args"]],
                        cwd=container["workingDir"],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            fake.set_pod(pod["metadata"]["name"], "Running")
            fake.set_log(pod["metadata"]["name"], log)
        assert job.status() == "running"

        deadline = time.monotonic() + TRAIN_TIMEOUT_S
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            assert job.status() == "running"
            time.sleep(2)
        codes = [p.poll() for p in procs]
        for pod, code in zip(pods, codes, strict=True):
            if code is not None:
                fake.set_pod(pod["metadata"]["name"], "Succeeded" if code == 0 else "Failed", exit_code=code)
        assert codes == [0, 0], job.logs()
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    fake.set_job_condition(name, "SuccessCriteriaMet", "CompletionsReached")
    assert job.status() == "succeeded"
    # The chief (worker 0) wrote the checkpoint and TensorBoard events into the shared workspace.
    assert [c.step for c in job.checkpoints()] == [1]
    assert (job.paths.checkpoints / "ckpt-0001.keras").is_file()
    assert list((job.paths.tb / "train").glob("events.out.tfevents.*"))
    # Both replicas formed one 2-worker cluster from TF_CONFIG; their logs come back through the API...
    logs = job.logs()
    results = []
    for i in range(2):
        assert f"[worker-{i}] replica worker-{i}: 2 replica(s) in sync, global batch 128" in logs
        mine = [line.split("] ", 1)[1] for line in logs.splitlines() if line.startswith(f"[worker-{i}] ")]
        results.append([line.split(" (")[0] for line in mine if line.startswith(("epoch 1/1 ", "test_loss="))])
        # ...and the entrypoint kept a copy in the workspace, where pods' logs outlive the pods.
        assert "2 replica(s) in sync" in job.paths.replica_log("worker", i).read_text()
    assert len(results[0]) == 2 and results[0] == results[1], logs  # synchronous training: the same losses
