"""Manifests of the Kubernetes backend: validated offline against the Kubernetes 1.37 schemas
(``kubernetes-validate --strict``), and each replica's environment checked as its pod would get it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LENET
from tests.k8s.fake_apiserver import container_env, pod_from_job
from workbench import conventions
from workbench.backends.kubernetes import entrypoint, manifests
from workbench.spec import JobSpec

pytestmark = pytest.mark.k8s

RUN = "lenet-20260101-120000-ab12"
IMAGES = {"tensorflow": "reg/tf:1", "pytorch": "reg/torch:1", "mxnet": "reg/mxnet:1", "none": "reg/tf:1"}
CONFIG = manifests.PodConfig(namespace="ml", images=IMAGES, workspace_mount="/workspace", claim="shared-ws")

# name -> (spec arguments, roles expected); single, multi-worker and parameter-server jobs of each framework
CASES: dict[str, dict[str, Any]] = {
    "tf-single": dict(framework="tensorflow", workers=1),
    "tf-multiworker": dict(framework="tensorflow", workers=2, gpus=1),
    "tf-ps": dict(framework="tensorflow", workers=2, ps=1, max_restarts=2),
    "torch-single": dict(framework="pytorch", workers=1, gpus=2),
    "torch-ddp": dict(framework="pytorch", workers=3),
    "mxnet-single": dict(framework="mxnet", workers=1),
    "mxnet-ps": dict(framework="mxnet", workers=2, ps=2, gpus=1),
    "none": dict(framework="none", workers=1, env={"FOO": "bar"}),
}


def spec_for(case: str) -> JobSpec:
    return JobSpec(script=str(LENET), args=("--epochs", "1"), **CASES[case]).validated()


def jobs_of(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["labels"][manifests.ROLE_LABEL]: o for o in objects if o["kind"] == "Job"}


def replica_env(job: dict[str, Any], index: int) -> dict[str, str]:
    """The script's environment in pod ``index`` of ``job``: kubelet's env, then the entrypoint's additions."""
    return entrypoint.replica_environment(container_env(pod_from_job(job, index)))


def kubernetes_validate(*files: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert tool, "kubernetes-validate is missing: pip install -e '.[dev]'"
    return subprocess.run([tool, "--strict", *map(str, files)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every case rendered to its own YAML file and validated in one kubernetes-validate run; output per file."""
    folder = tmp_path_factory.mktemp("manifests")
    files = {}
    for case in CASES:
        files[case] = folder / f"{case}.yaml"
        files[case].write_text(yaml.safe_dump_all(manifests.render(RUN, spec_for(case), CONFIG), sort_keys=False))
    s3 = manifests.PodConfig(**{**CONFIG.__dict__, "s3_endpoint": "http://minio:9000", "s3_secret": "minio-creds"})
    files["s3"] = folder / "s3.yaml"
    files["s3"].write_text(yaml.safe_dump_all(manifests.render(RUN, spec_for("tf-ps"), s3), sort_keys=False))
    done = kubernetes_validate(*files.values())
    assert done.returncode == 0, done.stdout + done.stderr
    return {
        case: "\n".join(line for line in done.stdout.splitlines() if f"/{path.name} " in line)
        for case, path in files.items()
    }


@pytest.mark.parametrize("case", [*CASES, "s3"])
def test_manifests_pass_strict_schema_validation(validated: dict[str, str], case: str) -> None:
    spec = spec_for("tf-ps" if case == "s3" else case)
    lines = validated[case].splitlines()
    assert len(lines) == 1 + len(spec.roles()), validated[case]  # the Service and one Job per role
    assert all(" passed for resource " in line for line in lines), validated[case]


def test_the_validator_rejects_type_errors_and_unknown_fields(tmp_path: Path) -> None:
    """The control for the test above: the same validation fails a broken manifest."""
    service, job = manifests.render(RUN, spec_for("tf-multiworker"), CONFIG)
    job["spec"]["completions"] = "2"
    service["spec"]["headless"] = True
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all([service, job]))
    done = kubernetes_validate(path)
    assert done.returncode != 0
    assert "'2' is not of type 'integer'" in done.stdout
    assert "'headless' was unexpected" in done.stdout


@pytest.mark.parametrize("case", CASES)
def test_one_indexed_job_per_role_behind_one_headless_service(case: str) -> None:
    spec = spec_for(case)
    service, *jobs = manifests.render(RUN, spec, CONFIG)
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert [j["metadata"]["labels"][manifests.ROLE_LABEL] for j in jobs] == [
        r.role for r in conventions.replicas(spec.roles()) if r.index == 0
    ]
    for job in jobs:
        role = job["metadata"]["labels"][manifests.ROLE_LABEL]
        template = job["spec"]["template"]
        assert job["metadata"]["name"] == f"{RUN}-{role}"
        assert job["spec"]["completionMode"] == "Indexed"
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == spec.roles()[role]
        # The Service selects every pod of the run, and its name is the pods' subdomain: stable DNS names.
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        assert template["spec"]["subdomain"] == service["metadata"]["name"]
        assert template["spec"]["restartPolicy"] == "Never"
        for obj in (job, template):
            assert obj["metadata"]["annotations"][manifests.RUN_ID_ANNOTATION] == RUN


@pytest.mark.parametrize("case", CASES)
def test_pods_run_the_code_snapshot_from_the_workspace_claim_in_the_framework_image(case: str) -> None:
    spec = spec_for(case)
    for job in jobs_of(manifests.render(RUN, spec, CONFIG)).values():
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == IMAGES[spec.framework]
        assert container["command"] == ["python", "-m", "workbench.backends.kubernetes.entrypoint"]
        assert container["args"] == [f"/workspace/runs/{RUN}/code/train.py", "--epochs", "1"]
        assert container["workingDir"] == f"/workspace/runs/{RUN}/code"
        assert pod["volumes"] == [{"name": "workspace", "persistentVolumeClaim": {"claimName": "shared-ws"}}]
        assert container["volumeMounts"] == [{"name": "workspace", "mountPath": "/workspace"}]
        assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("case", CASES)
def test_gpus_go_to_training_replicas_only(case: str) -> None:
    spec = spec_for(case)
    for role, job in jobs_of(manifests.render(RUN, spec, CONFIG)).items():
        pod = job["spec"]["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        wanted = spec.gpus if role in ("worker", "chief") else 0
        assert int(limits.get("nvidia.com/gpu", 0)) == wanted, role
        assert ("tolerations" in pod) == bool(wanted)


def test_restarts_are_per_replica_and_a_broken_setup_fails_at_once() -> None:
    spec = spec_for("tf-ps")
    for job in jobs_of(manifests.render(RUN, spec, CONFIG)).values():
        assert job["spec"]["backoffLimitPerIndex"] == spec.max_restarts == 2
        assert job["spec"]["maxFailedIndexes"] == 0
        fail_job, ignore = job["spec"]["podFailurePolicy"]["rules"]
        assert fail_job["action"] == "FailJob"
        assert fail_job["onExitCodes"]["values"] == [entrypoint.CONFIG_ERROR_EXIT]
        assert fail_job["onExitCodes"]["containerName"] == job["spec"]["template"]["spec"]["containers"][0]["name"]
        assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def dns(role: str, index: int) -> str:
    return f"{RUN}-{role}-{index}.{RUN}:2222"


def test_tensorflow_workers_get_tf_config_with_pod_dns_names() -> None:
    jobs = jobs_of(manifests.render(RUN, spec_for("tf-multiworker"), CONFIG))
    for index in (0, 1):
        env = replica_env(jobs["worker"], index)
        config = json.loads(env["TF_CONFIG"])
        assert config == {
            "cluster": {"worker": [dns("worker", 0), dns("worker", 1)]},
            "task": {"type": "worker", "index": index},
        }
        assert (env["WORKBENCH_ROLE"], env["WORKBENCH_REPLICA_INDEX"], env["WORKBENCH_ATTEMPT"]) == (
            "worker",
            str(index),
            "0",
        )
        assert env["WORKBENCH_RUN_ID"] == RUN
        assert env["WORKBENCH_LOG_DIR"] == f"/workspace/runs/{RUN}/tb"
        assert env["WORKBENCH_CHECKPOINT_DIR"] == f"/workspace/runs/{RUN}/checkpoints"
        assert env["WORKBENCH_WORKSPACE"] == "/workspace"
        assert env["HOSTNAME"] == f"{RUN}-worker-{index}"  # the pod's hostname is the first label of its DNS name


def test_tensorflow_parameter_server_job_has_chief_workers_and_ps() -> None:
    jobs = jobs_of(manifests.render(RUN, spec_for("tf-ps"), CONFIG))
    cluster = {"chief": [dns("chief", 0)], "worker": [dns("worker", 0), dns("worker", 1)], "ps": [dns("ps", 0)]}
    for role, count in (("chief", 1), ("worker", 2), ("ps", 1)):
        for index in range(count):
            config = json.loads(replica_env(jobs[role], index)["TF_CONFIG"])
            assert config == {"cluster": cluster, "task": {"type": role, "index": index}}


def test_single_replica_jobs_get_no_cluster_variables() -> None:
    for case in ("tf-single", "torch-single", "mxnet-single", "none"):
        env = replica_env(jobs_of(manifests.render(RUN, spec_for(case), CONFIG))["worker"], 0)
        assert not {"TF_CONFIG", "DMLC_ROLE"} & env.keys(), case
    torch = replica_env(jobs_of(manifests.render(RUN, spec_for("torch-single"), CONFIG))["worker"], 0)
    assert (torch["WORLD_SIZE"], torch["RANK"]) == ("1", "0")


def test_pytorch_ranks_and_master_address() -> None:
    jobs = jobs_of(manifests.render(RUN, spec_for("torch-ddp"), CONFIG))
    for index in range(3):
        env = replica_env(jobs["worker"], index)
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == (f"{RUN}-worker-0.{RUN}", "2222")
        assert (env["WORLD_SIZE"], env["RANK"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == (
            "3",
            str(index),
            "0",
            "1",
        )


def test_mxnet_scheduler_servers_and_workers() -> None:
    jobs = jobs_of(manifests.render(RUN, spec_for("mxnet-ps"), CONFIG))
    for role, count in (("scheduler", 1), ("server", 2), ("worker", 2)):
        for index in range(count):
            env = replica_env(jobs[role], index)
            assert env["DMLC_ROLE"] == role
            assert (env["DMLC_PS_ROOT_URI"], env["DMLC_PS_ROOT_PORT"]) == (f"{RUN}-scheduler-0.{RUN}", "2222")
            assert (env["DMLC_NUM_SERVER"], env["DMLC_NUM_WORKER"]) == ("2", "2")
            assert "DMLC_INTERFACE" not in env  # pods have their own interfaces, unlike local processes


def test_replica_env_is_the_shared_conventions_function_with_dns_addresses() -> None:
    """No Kubernetes-only distributed logic: what a pod gets is conventions.replica_env of the DNS cluster."""
    spec = spec_for("tf-ps")
    cluster = manifests.cluster(RUN, spec, 2222)
    for role, job in jobs_of(manifests.render(RUN, spec, CONFIG)).items():
        for index in range(spec.roles()[role]):
            want = conventions.replica_env("tensorflow", cluster, conventions.Replica(role, index))
            got = replica_env(job, index)
            assert {k: got[k] for k in want} == want


def test_restarted_pod_learns_its_attempt_from_the_failure_count() -> None:
    job = jobs_of(manifests.render(RUN, spec_for("tf-ps"), CONFIG))["worker"]
    env = entrypoint.replica_environment(container_env(pod_from_job(job, 1, failures=2)))
    assert env["WORKBENCH_ATTEMPT"] == "2"


def test_user_env_is_passed_but_cannot_override_the_workbench_variables() -> None:
    spec = JobSpec(script=str(LENET), env={"FOO": "bar", "WORKBENCH_RUN_ID": "mine", "TF_CONFIG": "x"}).validated()
    env = replica_env(jobs_of(manifests.render(RUN, spec, CONFIG))["worker"], 0)
    assert env["FOO"] == "bar" and env["WORKBENCH_RUN_ID"] == RUN
    names = [
        e["name"]
        for e in jobs_of(manifests.render(RUN, spec, CONFIG))["worker"]["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    ]
    assert len(names) == len(set(names))


def test_s3_settings_reach_the_pods_with_credentials_from_a_secret() -> None:
    s3 = manifests.PodConfig(**{**CONFIG.__dict__, "s3_endpoint": "http://minio:9000", "s3_secret": "minio-creds"})
    container = jobs_of(manifests.render(RUN, spec_for("tf-single"), s3))["worker"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["S3_ENDPOINT"]["value"] == env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"] == {"secretKeyRef": {"name": "minio-creds", "key": key}}
    plain = jobs_of(manifests.render(RUN, spec_for("tf-single"), CONFIG))["worker"]["spec"]["template"]["spec"]
    assert not any(e["name"].startswith(("AWS_", "S3_")) for e in plain["containers"][0]["env"])


def test_pod_config_reads_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from workbench.workspace import Workspace

    monkeypatch.setenv("WORKBENCH_K8S_IMAGE_PYTORCH", "example.org/torch:2")
    monkeypatch.setenv("WORKBENCH_K8S_WORKSPACE_CLAIM", "team-nfs")
    monkeypatch.setenv("WORKBENCH_K8S_CPU", "4")
    monkeypatch.delenv("WORKBENCH_K8S_WORKSPACE_MOUNT", raising=False)
    config = manifests.PodConfig.from_settings("team", Workspace(tmp_path / "ws"))
    assert (config.images["pytorch"], config.claim, config.cpu) == ("example.org/torch:2", "team-nfs", "4")
    assert config.workspace_mount == str(tmp_path / "ws")  # by default pods see the workspace where we do
    monkeypatch.setenv("WORKBENCH_K8S_WORKSPACE_MOUNT", "/mnt/ws")
    assert manifests.PodConfig.from_settings("team", Workspace(tmp_path / "ws")).workspace_mount == "/mnt/ws"


def test_a_configured_kueue_queue_labels_each_job_and_nothing_else(monkeypatch, tmp_path: Path) -> None:
    from workbench.workspace import Workspace

    spec = JobSpec(script="train.py", framework="tensorflow", workers=2, ps=1)
    plain = manifests.render(RUN, spec, CONFIG)
    assert not any(manifests.KUEUE_QUEUE_LABEL in o["metadata"]["labels"] for o in plain)
    monkeypatch.setenv("WORKBENCH_K8S_QUEUE_NAME", "team-a")
    queued = manifests.PodConfig.from_settings("ml", Workspace(tmp_path / "ws"))
    service, *jobs = manifests.render(RUN, spec, queued)
    assert len(jobs) == 3 and all(j["metadata"]["labels"][manifests.KUEUE_QUEUE_LABEL] == "team-a" for j in jobs)
    assert manifests.KUEUE_QUEUE_LABEL not in service["metadata"]["labels"]
    for job in jobs:  # pods carry the run's labels only (Kueue reads the Job's)
        assert manifests.KUEUE_QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize(
    "run_id",
    [
        RUN,
        "9lives-20260101-120000-ab12",
        "Ünïcode_name-20260101-120000-ab12",
        "a-very-long-experiment-name-that-goes-on-and-on-20260101-120000-ab12",
    ],
)
def test_names_are_valid_dns_labels_even_for_odd_run_ids(run_id: str) -> None:
    label = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    spec = spec_for("mxnet-ps")  # "scheduler" is the longest role name
    service, *jobs = manifests.render(run_id, spec, CONFIG)
    assert label.match(service["metadata"]["name"]) and len(service["metadata"]["name"]) <= 63
    for job in jobs:
        host = f"{job['metadata']['name']}-{job['spec']['completions'] - 1}"
        assert label.match(host) and len(host) <= 63, host
        assert job["metadata"]["annotations"][manifests.RUN_ID_ANNOTATION] == run_id
    other = manifests.base_name(run_id + "x")
    assert other != manifests.base_name(run_id)


def test_params_reach_every_pod_as_arguments_and_workbench_params() -> None:
    spec = JobSpec(
        script=str(LENET), args=("--epochs", "1"), framework="tensorflow", workers=2, params={"lr": 0.01, "opt": "sgd"}
    ).validated()
    for job in jobs_of(manifests.render(RUN, spec, CONFIG)).values():
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["args"][1:] == ["--epochs", "1", "--lr", "0.01", "--opt", "sgd"]
        for index in range(job["spec"]["completions"]):
            assert json.loads(replica_env(job, index)["WORKBENCH_PARAMS"]) == {"lr": 0.01, "opt": "sgd"}
