"""The chart's MinIO mode with the bucket as the workspace (issue 19): every pod reads and writes the bucket, the
workspace PVC is optional, TF Serving gets its models from a sync sidecar; rendered with Helm 3 and 4 and
validated with ``kubernetes-validate --strict``, like tests/k8s/test_chart.py. The training pods' manifests of
the Kubernetes backend for an s3:// workspace are validated alongside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LENET
from tests.k8s.tooling import CHART, HELMS
from workbench.backends.kubernetes import manifests
from workbench.spec import JobSpec

pytestmark = pytest.mark.k8s

CACHE = "/var/cache/workbench"
VALUE_SETS: dict[str, dict[str, Any]] = {
    "bucket-only": {"storage": {"type": "minio", "minio": {"prefix": "team-a/"}, "workspace": {"enabled": False}}},
    "bucket-tfserving": {
        "storage": {"type": "minio", "workspace": {"enabled": False}},
        "serving": {"engine": "tfserving", "tfserving": {"models": ["lenet"]}},
    },
    "bucket-with-notebook-volume": {"storage": {"type": "minio"}},
}


def helm(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    tmp = tmp_path_factory.mktemp("chart-bucket")
    out = {}
    for helm_name, binary in HELMS.items():
        for name, values in VALUE_SETS.items():
            (tmp / f"{name}.values.yaml").write_text(yaml.safe_dump(values))
            done = helm(binary, "template", "wb", str(CHART), "-n", "ml", "-f", str(tmp / f"{name}.values.yaml"))
            assert done.returncode == 0, f"helm {helm_name} template with {name}: {done.stderr}"
            out[(helm_name, name)] = tmp / f"{helm_name}-{name}.yaml"
            out[(helm_name, name)].write_text(done.stdout)
    spec = JobSpec(script=str(LENET), args=("--epochs", "1"), framework="tensorflow", workers=2).validated()
    config = manifests.PodConfig(
        namespace="ml",
        images={"tensorflow": "reg/tf:1"},
        workspace_mount=CACHE,
        s3_endpoint="http://wb-workbench-minio:9000",
        s3_secret="wb-workbench-minio-user",
        workspace_url="s3://workbench/team-a",
    )
    out[("backend", "training-pods")] = tmp / "training-pods.yaml"
    out[("backend", "training-pods")].write_text(
        yaml.safe_dump_all(manifests.render("lenet-20260101-120000-ab12", spec, config), sort_keys=False)
    )
    return out


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_name(objs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (found,) = [d for d in objs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return found


def pod(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod(obj)["containers"] if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def test_everything_passes_strict_validation(rendered):
    tool = Path(sys.executable).parent / "kubernetes-validate"
    assert tool.exists(), "kubernetes-validate is missing: run scripts/setup-k8s.sh"
    done = subprocess.run(
        [str(tool), "--strict", *map(str, rendered.values())], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("helm_name", HELMS)
def test_without_a_pvc_every_pod_works_from_the_bucket(rendered, helm_name):
    objs = docs(rendered[(helm_name, "bucket-only")])
    assert not [d for d in objs if d["kind"] == "PersistentVolumeClaim"]
    for d in objs:
        if d["kind"] in ("Deployment", "Job"):
            assert not [v for v in pod(d).get("volumes", []) if "persistentVolumeClaim" in v], d["metadata"]["name"]
    jupyter = env(container(by_name(objs, "Deployment", "-jupyter"), "jupyter"))
    assert jupyter["WORKBENCH_WORKSPACE"] == "s3://workbench/team-a"
    assert jupyter["WORKBENCH_CACHE_DIR"] == CACHE
    assert jupyter["WORKBENCH_K8S_WORKSPACE_MOUNT"] == CACHE and "WORKBENCH_K8S_WORKSPACE_CLAIM" not in jupyter
    assert jupyter["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "wb-workbench-minio-user"  # the scoped user
    server = env(container(by_name(objs, "Deployment", "-serving"), "server"))
    assert server["WORKBENCH_WORKSPACE"] == "s3://workbench/team-a" and server["WORKBENCH_CACHE_DIR"] == CACHE
    assert server["AWS_ENDPOINT_URL"] == "http://wb-workbench-minio:9000"
    assert server["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "wb-workbench-minio-user"
    tb = container(by_name(objs, "Deployment", "-tensorboard"), "tensorboard")
    assert "--logdir=s3://workbench/team-a/runs" in tb["args"] and not tb.get("volumeMounts")


@pytest.mark.parametrize("helm_name", HELMS)
def test_tf_serving_gets_the_models_from_a_sync_sidecar(rendered, helm_name):
    objs = docs(rendered[(helm_name, "bucket-tfserving")])
    serving = by_name(objs, "Deployment", "-serving")
    sync = container(serving, "model-sync")
    assert sync["args"][:3] == ["python", "-m", "workbench.registry.remote"]
    assert env(sync)["WORKBENCH_WORKSPACE"] == "s3://workbench"
    config = by_name(objs, "ConfigMap", "-tfserving")["data"]["models.config"]
    assert f'base_path: "{CACHE}/models/lenet"' in config
    mounts = {m["name"]: m for m in container(serving, "server")["volumeMounts"]}
    assert mounts["cache"]["mountPath"] == CACHE and mounts["cache"]["readOnly"] is True


@pytest.mark.parametrize("helm_name", HELMS)
def test_with_a_volume_it_keeps_only_jupyters_notebooks_and_job_database(rendered, helm_name):
    objs = docs(rendered[(helm_name, "bucket-with-notebook-volume")])
    assert by_name(objs, "PersistentVolumeClaim", "-workspace")
    jupyter = by_name(objs, "Deployment", "-jupyter")
    assert env(container(jupyter, "jupyter"))["WORKBENCH_CACHE_DIR"] == "/workspace/.workbench-cache"
    claims = [
        d["metadata"]["name"]
        for d in objs
        if d["kind"] == "Deployment"
        for v in pod(d).get("volumes", [])
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["wb-workbench-jupyter"]  # serving, TensorBoard and training pods use the bucket


def test_training_pods_of_a_bucket_workspace_mount_no_claim(rendered):
    objs = docs(rendered[("backend", "training-pods")])
    (job,) = [d for d in objs if d["kind"] == "Job"]
    assert pod(job)["volumes"] == [{"name": "workspace", "emptyDir": {}}]
    e = env(pod(job)["containers"][0])
    assert e["WORKBENCH_WORKSPACE"] == "s3://workbench/team-a" and e["WORKBENCH_CACHE_DIR"] == CACHE


def test_pvc_storage_cannot_drop_its_volume():
    binary = next(iter(HELMS.values()))
    done = helm(binary, "template", "wb", str(CHART), "--set", "storage.workspace.enabled=false")
    assert done.returncode != 0
    assert "storage.workspace.enabled=false needs storage.type=minio" in done.stderr
