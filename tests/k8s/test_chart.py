"""The Helm chart (charts/workbench), offline: ``helm lint`` and ``helm template`` with Helm 3 and Helm 4
over several value sets, every rendered object validated with ``kubernetes-validate --strict``, what
each value set must produce, and bad values rejected with a message naming the problem.

No cluster runs here: what needs one (pods starting, ``helm test``) is listed in docs/kubernetes.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.tooling import CHART, HELMS

pytestmark = pytest.mark.k8s

# name -> values (merged over values.yaml)
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "pvc-existing-claim": {"storage": {"workspace": {"existingClaim": "team-nfs", "mountPath": "/data/ws"}}},
    "pvc-storage-class": {"storage": {"workspace": {"storageClass": "nfs-client", "size": "500Gi"}}},
    "minio-bundled": {"storage": {"type": "minio", "minio": {"prefix": "team-a/"}}},
    "minio-external": {
        "storage": {
            "type": "minio",
            "minio": {"bundled": False, "endpoint": "https://minio.example.com", "existingSecret": "s3-creds"},
        }
    },
    "gpu": {
        "jupyter": {"gpus": 1},
        "serving": {"gpus": 1},
        "images": {
            "trainerTensorflow": "registry.example.com/wb/trainer-tensorflow:0.1.0-gpu",
            "trainerPytorch": "registry.example.com/wb/trainer-pytorch:0.1.0-gpu",
        },
    },
    "ingress": {
        "jupyter": {"baseUrl": "/wb/"},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "host": "wb.example.com",
            "tensorboardHost": "tb.example.com",
            "servingHost": "models.example.com",
            "tlsSecret": "wb-tls",
        },
        "networkPolicy": {
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
        },
    },
    "tfserving-hpa": {
        "serving": {
            "engine": "tfserving",
            "tfserving": {"models": ["lenet", "mnist"]},
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        }
    },
    "tfserving-gpu-minio": {
        "storage": {"type": "minio"},
        "serving": {
            "engine": "tfserving",
            "gpus": 1,
            "tfserving": {"models": ["lenet"], "image": "tensorflow/serving:2.19.0-gpu"},
        },
    },
    "minimal": {"serving": {"enabled": False}, "networkPolicy": {"enabled": False}},
    "postgresql-bundled": {
        "predictionLog": {"sample": 0.1, "postgresql": {"bundled": True}},
        "serving": {"replicas": 2},
    },
    "postgresql-existing": {
        "predictionLog": {"sample": 1, "postgresql": {"existingSecret": "monitoring-db"}},
        "serving": {"autoscaling": {"enabled": True}},
    },
}

POD_KINDS = {"Deployment", "StatefulSet", "Job", "Pod"}


def helm(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120)


def values_file(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.values.yaml"
    path.write_text(yaml.safe_dump(VALUE_SETS[name]))
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """(helm, value set) -> the rendered manifests file, for every pair."""
    tmp = tmp_path_factory.mktemp("chart")
    out = {}
    for helm_name, binary in HELMS.items():
        for name in VALUE_SETS:
            done = helm(binary, "template", "wb", str(CHART), "--namespace", "ml", "-f", str(values_file(tmp, name)))
            assert done.returncode == 0, f"helm {helm_name} template with {name}: {done.stderr}"
            path = tmp / f"{helm_name}-{name}.yaml"
            path.write_text(done.stdout)
            out[(helm_name, name)] = path
    return out


@pytest.fixture(scope="module")
def validation(rendered: dict[tuple[str, str], Path]) -> dict[Path, str]:
    """kubernetes-validate --strict over every rendered file at once (it is slow to start); output per file."""
    tool = Path(sys.executable).parent / "kubernetes-validate"
    assert tool.exists(), "kubernetes-validate is missing: run scripts/setup-k8s.sh"
    files = list(rendered.values())
    done = subprocess.run([str(tool), "--strict", *map(str, files)], capture_output=True, text=True, timeout=600)
    lines = (done.stdout + done.stderr).splitlines()
    return {f: "\n".join(line for line in lines if str(f) in line) for f in files} | {Path("rc"): str(done.returncode)}


def objects(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(matches) == 1, f"expected one {kind} *{suffix}, found {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(obj)["containers"] if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


# --- lint, render, validate --------------------------------------------------------------------


@pytest.mark.parametrize("helm_name", HELMS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint(helm_name: str, name: str, tmp_path: Path) -> None:
    done = helm(HELMS[helm_name], "lint", "--strict", str(CHART), "-f", str(values_file(tmp_path, name)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("helm_name", HELMS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_passes_strict_validation(
    helm_name: str, name: str, rendered: dict[tuple[str, str], Path], validation: dict[Path, str]
) -> None:
    path = rendered[(helm_name, name)]
    docs = objects(path)
    report = validation[path]
    assert "fail" not in report.lower() and "error" not in report.lower(), report
    passed = [line for line in report.splitlines() if "passed for resource" in line]
    assert len(passed) == len(docs), f"{len(docs)} objects, {len(passed)} validated:\n{report}"


def test_helm3_and_helm4_render_the_same_objects(rendered: dict[tuple[str, str], Path]) -> None:
    for name in VALUE_SETS:
        three, four = (objects(rendered[(h, name)]) for h in ("helm3", "helm4"))
        # Generated secrets differ between renders; everything else must not.
        strip = [d for d in three if d["kind"] != "Secret"], [d for d in four if d["kind"] != "Secret"]
        assert strip[0] == strip[1], name


# --- what each value set produces ----------------------------------------------------------------


def docs_of(rendered: dict[tuple[str, str], Path], name: str) -> list[dict[str, Any]]:
    return objects(rendered[("helm4", name)])


def test_defaults_wire_jupyter_to_the_job_backend(rendered: dict[tuple[str, str], Path]) -> None:
    docs = docs_of(rendered, "defaults")
    jupyter = find(docs, "Deployment", "-jupyter")
    spec = pod_spec(jupyter)
    assert spec["serviceAccountName"] == "wb-workbench-jupyter"
    e = env(container(jupyter, "jupyter"))
    assert e["JUPYTER_TOKEN"] == {"secretKeyRef": {"name": "wb-workbench-jupyter", "key": "token"}}
    assert e["WORKBENCH_BACKEND"] == "kubernetes"
    assert e["WORKBENCH_K8S_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert e["WORKBENCH_K8S_WORKSPACE_CLAIM"] == "wb-workbench-workspace"
    assert e["WORKBENCH_K8S_IMAGE_PYTORCH"] == "workbench/trainer-pytorch:0.1.0"
    assert e["WORKBENCH_SERVER_URL"] == "http://wb-workbench-serving:8501"
    pvc = find(docs, "PersistentVolumeClaim", "-workspace")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for d in docs
        if d["kind"] == "Deployment"
        for v in pod_spec(d)["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"wb-workbench-workspace"}


def test_every_workbench_variable_the_chart_sets_is_a_declared_setting(rendered: dict[tuple[str, str], Path]) -> None:
    """The chart and the code agree on names: each WORKBENCH_* variable is declared in workbench.settings."""
    from workbench import settings

    declared = {s.name for s in settings.all_settings()}
    # Read by images/jupyter/jupyter_server_config.py, not by the package.
    image_only = {"WORKBENCH_TENSORBOARD_PORT"}
    for name in ("defaults", "minio-bundled"):
        for doc in docs_of(rendered, name):
            if doc["kind"] not in POD_KINDS:
                continue
            for c in pod_spec(doc)["containers"]:
                unknown = {k for k in env(c) if k.startswith("WORKBENCH_")} - declared - image_only
                assert not unknown, f"{doc['metadata']['name']}/{c['name']}: {unknown} not in workbench.settings"


def test_launcher_role_allows_only_what_the_backend_needs(rendered: dict[tuple[str, str], Path]) -> None:
    role = find(docs_of(rendered, "defaults"), "Role", "-launcher")
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "services"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
    }
    assert not [d for d in docs_of(rendered, "defaults") if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_run_as_non_root_with_requests_and_limits(name: str, rendered: dict[tuple[str, str], Path]) -> None:
    for doc in docs_of(rendered, name):
        if doc["kind"] not in POD_KINDS:
            continue
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert spec["securityContext"]["runAsUser"] != 0
        for c in spec["containers"]:
            where = f"{doc['metadata']['name']}/{c['name']}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where


@pytest.mark.parametrize("name", VALUE_SETS)
def test_each_service_selects_exactly_its_server(name: str, rendered: dict[tuple[str, str], Path]) -> None:
    """No Service picks up a hook Job's or test's pod, and each reaches the port it names."""
    docs = docs_of(rendered, name)
    pods = [
        (d, d["metadata"]["labels"] if d["kind"] == "Pod" else d["spec"]["template"]["metadata"]["labels"])
        for d in docs
        if d["kind"] in POD_KINDS
    ]
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        selected = [d for d, labels in pods if selector <= labels.items()]
        assert [d["kind"] for d in selected] in (["Deployment"], ["StatefulSet"]), (
            service["metadata"]["name"],
            selected,
        )
        ports = {p["name"] for c in pod_spec(selected[0])["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, service["metadata"]["name"]


def test_tensorboard_inside_jupyter_shares_its_path_prefix(rendered: dict[tuple[str, str], Path]) -> None:
    for name, prefix in (("defaults", "/"), ("ingress", "/wb/")):
        jupyter = find(docs_of(rendered, name), "Deployment", "-jupyter")
        assert f"--ServerApp.base_url={prefix}" in container(jupyter, "jupyter")["args"]
        sidecar = container(jupyter, "tensorboard")
        assert f"--path_prefix={prefix}tensorboard" in sidecar["args"]
        assert "--host=127.0.0.1" in sidecar["args"]  # only through JupyterLab's proxy
        assert env(container(jupyter, "jupyter"))["WORKBENCH_TENSORBOARD_PORT"] == "6006"
        assert "--port=6006" in sidecar["args"]


def test_pvc_storage_options(rendered: dict[tuple[str, str], Path]) -> None:
    docs = docs_of(rendered, "pvc-existing-claim")
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    tb = find(docs, "Deployment", "-tensorboard")
    assert "--logdir=/data/ws/runs" in container(tb, "tensorboard")["args"]
    assert pod_spec(tb)["volumes"][0]["persistentVolumeClaim"]["claimName"] == "team-nfs"
    assert (
        env(container(find(docs, "Deployment", "-jupyter"), "jupyter"))["WORKBENCH_K8S_WORKSPACE_MOUNT"] == "/data/ws"
    )
    pvc = find(docs_of(rendered, "pvc-storage-class"), "PersistentVolumeClaim", "-workspace")
    assert pvc["spec"]["storageClassName"] == "nfs-client"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "500Gi"


def test_bundled_minio(rendered: dict[tuple[str, str], Path]) -> None:
    docs = docs_of(rendered, "minio-bundled")
    sts = find(docs, "StatefulSet", "-minio")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    secret = find(docs, "Secret", "-minio")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    hook = find(docs, "Job", "-minio-bucket")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert "mc mb --ignore-existing" in container(hook, "create-bucket")["args"][0]
    for deployment, name in (("-tensorboard", "tensorboard"), ("-jupyter", "tensorboard")):
        c = container(find(docs, "Deployment", deployment), name)
        assert "--logdir=s3://workbench/team-a/runs" in c["args"]
        e = env(c)
        assert e["S3_ENDPOINT"] == "http://wb-workbench-minio:9000"
        assert e["AWS_ACCESS_KEY_ID"] == {
            "secretKeyRef": {"name": "wb-workbench-minio-user", "key": "AWS_ACCESS_KEY_ID"}
        }  # the bucket-scoped user, not MinIO's root keys
    j = env(container(find(docs, "Deployment", "-jupyter"), "jupyter"))
    assert j["WORKBENCH_K8S_S3_ENDPOINT"] == "http://wb-workbench-minio:9000"
    assert j["WORKBENCH_K8S_S3_SECRET"] == "wb-workbench-minio-user"
    assert j["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "wb-workbench-minio-user"
    user = find(docs, "Secret", "-minio-user")
    assert set(user["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    root_users = {
        d["metadata"]["name"]
        for d in docs
        if d["kind"] in POD_KINDS
        for c in pod_spec(d)["containers"]
        for v in c.get("env", [])
        if v.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "wb-workbench-minio"
    }
    assert root_users == {"wb-workbench-minio", "wb-workbench-minio-bucket"}  # MinIO itself and the hook Job only
    script = container(hook, "create-bucket")["args"][0]
    assert "mc admin user add" in script and "mc admin policy attach" in script
    hook_env = env(container(hook, "create-bucket"))
    assert hook_env["USER_ACCESS_KEY"]["secretKeyRef"]["name"] == "wb-workbench-minio-user"
    policy = find(docs, "NetworkPolicy", "-minio")
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 9000, "protocol": "TCP"}]


def test_external_minio(rendered: dict[tuple[str, str], Path]) -> None:
    docs = docs_of(rendered, "minio-external")
    assert not [d for d in docs if d["kind"] in ("StatefulSet", "Secret") and "minio" in d["metadata"]["name"]]
    tb = container(find(docs, "Deployment", "-tensorboard"), "tensorboard")
    e = env(tb)
    assert e["S3_ENDPOINT"] == "https://minio.example.com"
    assert e["S3_USE_HTTPS"] == "1"
    assert e["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "s3-creds"
    assert find(docs, "Job", "-minio-bucket")  # createBucket works against an external endpoint too


def test_gpu_values(rendered: dict[tuple[str, str], Path]) -> None:
    docs = docs_of(rendered, "gpu")
    for deployment, name in (("-jupyter", "jupyter"), ("-serving", "server")):
        d = find(docs, "Deployment", deployment)
        assert container(d, name)["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(d)["tolerations"]
    e = env(container(find(docs, "Deployment", "-jupyter"), "jupyter"))
    assert e["WORKBENCH_K8S_IMAGE_TENSORFLOW"].endswith("-gpu")
    assert e["WORKBENCH_K8S_IMAGE_MXNET"] == "workbench/trainer-mxnet:0.1.0"
    for d in docs_of(rendered, "defaults"):
        if d["kind"] in POD_KINDS:
            assert all("nvidia.com/gpu" not in c["resources"].get("limits", {}) for c in pod_spec(d)["containers"])


def test_ingress(rendered: dict[tuple[str, str], Path]) -> None:
    ingress = find(docs_of(rendered, "ingress"), "Ingress", "wb-workbench")
    routes = {
        r["host"]: (r["http"]["paths"][0]["path"], r["http"]["paths"][0]["backend"]["service"]["name"])
        for r in ingress["spec"]["rules"]
    }
    assert routes == {
        "wb.example.com": ("/wb/", "wb-workbench-jupyter"),
        "tb.example.com": ("/", "wb-workbench-tensorboard"),
        "models.example.com": ("/", "wb-workbench-serving"),
    }
    assert ingress["spec"]["tls"][0]["secretName"] == "wb-tls"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert not [d for d in docs_of(rendered, "defaults") if d["kind"] == "Ingress"]


def test_network_policies(rendered: dict[tuple[str, str], Path]) -> None:
    docs = docs_of(rendered, "defaults")
    jupyter = find(docs, "NetworkPolicy", "-jupyter")["spec"]["ingress"][0]
    assert "from" not in jupyter  # token-protected; any source by default
    tb = find(docs, "NetworkPolicy", "-tensorboard")["spec"]["ingress"][0]
    assert tb["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "workbench", "app.kubernetes.io/instance": "wb"}}}
    ]
    release = {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "workbench", "app.kubernetes.io/instance": "wb"}}
    }
    serving = find(docs, "NetworkPolicy", "-serving")["spec"]["ingress"][0]
    assert serving["from"] == [release, {"podSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "workbench"}}}]
    training = find(docs, "NetworkPolicy", "-training")["spec"]
    assert training["podSelector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "workbench"}}
    restricted = find(docs_of(rendered, "ingress"), "NetworkPolicy", "-jupyter")["spec"]["ingress"][0]
    assert restricted["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert not [d for d in docs_of(rendered, "minimal") if d["kind"] == "NetworkPolicy"]


def test_serving_token_reaches_the_server_and_jupyter(rendered: dict[tuple[str, str], Path]) -> None:
    docs = docs_of(rendered, "defaults")
    secret = find(docs, "Secret", "-serving")
    assert set(secret["data"]) == {"token"}
    ref = {"secretKeyRef": {"name": "wb-workbench-serving", "key": "token"}}
    assert env(container(find(docs, "Deployment", "-serving"), "server"))["WORKBENCH_SERVER_TOKEN"] == ref
    assert env(container(find(docs, "Deployment", "-jupyter"), "jupyter"))["WORKBENCH_SERVER_TOKEN"] == ref
    minimal = docs_of(rendered, "minimal")
    assert "WORKBENCH_SERVER_TOKEN" not in env(container(find(minimal, "Deployment", "-jupyter"), "jupyter"))


def test_serving_engines(rendered: dict[tuple[str, str], Path]) -> None:
    workbench = find(docs_of(rendered, "defaults"), "Deployment", "-serving")
    server = container(workbench, "server")
    assert server["image"] == "workbench/serving:0.1.0"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["args"][-2:] == ["--grpc-port", "8500"]
    assert {"name": "grpc", "containerPort": 8500} in server["ports"]
    assert workbench["spec"]["replicas"] == 1
    service = find(docs_of(rendered, "defaults"), "Service", "-serving")
    assert {"name": "grpc", "port": 8500, "targetPort": "grpc"} in service["spec"]["ports"]
    policy = find(docs_of(rendered, "defaults"), "NetworkPolicy", "-serving")
    assert {"port": 8500, "protocol": "TCP"} in policy["spec"]["ingress"][0]["ports"]

    docs = docs_of(rendered, "tfserving-hpa")
    tfs = find(docs, "Deployment", "-serving")
    server = container(tfs, "server")
    assert server["image"].startswith("tensorflow/serving:")
    assert "--rest_api_port=8501" in server["args"] and "--port=8500" in server["args"]
    assert "replicas" not in tfs["spec"]  # the HPA owns it
    config = find(docs, "ConfigMap", "-tfserving")["data"]["models.config"]
    assert 'name: "lenet" base_path: "/workspace/models/lenet"' in config
    assert 'name: "mnist"' in config
    hpa = find(docs, "HorizontalPodAutoscaler", "-serving")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert not [d for d in docs_of(rendered, "minimal") if d["metadata"]["name"].endswith("-serving")]


def test_prediction_log_database(rendered: dict[tuple[str, str], Path]) -> None:
    import base64

    docs = docs_of(rendered, "defaults")  # the workspace's SQLite file, nothing logged until sample is set
    server = env(container(find(docs, "Deployment", "-serving"), "server"))
    assert server["WORKBENCH_SERVE_LOG_SAMPLE"] == "0" and "WORKBENCH_SERVE_LOG_DB" not in server
    assert not [d for d in docs if d["metadata"]["name"].endswith("-postgresql")]

    docs = docs_of(rendered, "postgresql-bundled")
    sts = find(docs, "StatefulSet", "-postgresql")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    db = container(sts, "postgresql")
    assert env(db)["PGDATA"].startswith(db["volumeMounts"][0]["mountPath"] + "/")
    assert find(docs, "Service", "-postgresql")["spec"]["ports"] == [
        {"name": "postgresql", "port": 5432, "targetPort": "postgresql"}
    ]
    secret = {k: base64.b64decode(v).decode() for k, v in find(docs, "Secret", "-postgresql")["data"].items()}
    assert len(secret["password"]) == 32
    assert secret["url"] == f"postgresql://workbench:{secret['password']}@wb-workbench-postgresql:5432/workbench"
    ref = {"secretKeyRef": {"name": "wb-workbench-postgresql", "key": "url"}}
    server = env(container(find(docs, "Deployment", "-serving"), "server"))
    assert server["WORKBENCH_SERVE_LOG_SAMPLE"] == "0.1" and server["WORKBENCH_SERVE_LOG_DB"] == ref
    assert env(container(find(docs, "Deployment", "-jupyter"), "jupyter"))["WORKBENCH_SERVE_LOG_DB"] == ref
    policy = find(docs, "NetworkPolicy", "-postgresql")["spec"]["ingress"][0]
    assert policy["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert policy["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "workbench", "app.kubernetes.io/instance": "wb"}}}
    ]

    docs = docs_of(rendered, "postgresql-existing")  # a server of the user's: only its Secret is referred to
    assert not [d for d in docs if d["metadata"]["name"].endswith("-postgresql")]
    server = env(container(find(docs, "Deployment", "-serving"), "server"))
    assert server["WORKBENCH_SERVE_LOG_DB"] == {"secretKeyRef": {"name": "monitoring-db", "key": "url"}}


def test_helm_test_hook_checks_each_service(rendered: dict[tuple[str, str], Path]) -> None:
    for name, expected in (
        (
            "defaults",
            ["/api/status?token=", "/tensorboard/data/runs", "-tensorboard:6006/data/runs", "/v2/health/live"],
        ),
        ("tfserving-gpu-minio", ["/v1/models/lenet", "-minio:9000/minio/health/live"]),
    ):
        pod = find(docs_of(rendered, name), "Pod", "-test-services")
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        script = container(pod, "check")["args"][0]
        compile(script, "helm-test", "exec")  # the rendered check is valid Python
        for fragment in expected:
            assert fragment in script, (name, fragment)


def test_notes(tmp_path: Path) -> None:
    # Helm 4 renders NOTES.txt in a client-only dry run (Helm 3 wants a cluster for that).
    done = helm(
        HELMS["helm4"],
        "install",
        "wb",
        str(CHART),
        "--dry-run=client",
        "-n",
        "ml",
        "-f",
        str(values_file(tmp_path, "minio-bundled")),
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n ml port-forward svc/wb-workbench-jupyter 8888:8888" in notes
    assert "http://127.0.0.1:8888/tensorboard/" in notes
    assert "logdir s3://workbench/team-a/runs" in notes
    assert "helm test wb -n ml" in notes


# --- bad values ---------------------------------------------------------------------------------

BAD_VALUES = [
    (["--set", "storage.type=nfs"], "at '/storage/type': value must be one of 'pvc', 'minio'"),
    (["--set", "serving.engine=torchserve"], "at '/serving/engine': value must be one of 'workbench', 'tfserving'"),
    (["--set", "serving.replica=2"], "at '/serving': additional properties 'replica' not allowed"),
    (["--set", "serving.replicas=0"], "at '/serving/replicas': minimum: got 0, want 1"),
    (["--set", "jupyter.gpus=-1"], "at '/jupyter/gpus': minimum: got -1, want 0"),
    (
        ["--set", "jupyter.resources.limits.memory=lots"],
        "at '/jupyter/resources/limits/memory': 'lots' does not match pattern",
    ),
    (["--set", "jupyter.baseUrl=wb"], "at '/jupyter/baseUrl': 'wb' does not match pattern"),
    (["--set", "storage.minio.bucket=My_Bucket"], "at '/storage/minio/bucket': 'My_Bucket' does not match pattern"),
    (
        ["--set", "storage.workspace.accessMode=ReadOnlyMany"],
        "at '/storage/workspace/accessMode': value must be one of",
    ),
    (["--set", "ingress.enabled=yes"], "at '/ingress/enabled': got string, want boolean"),
    # Rules across keys: the chart's own messages.
    (
        ["--set", "storage.type=minio", "--set", "storage.minio.bundled=false"],
        "storage.minio.endpoint is required when storage.minio.bundled is false",
    ),
    (["--set", "serving.engine=tfserving"], "serving.tfserving.models is required with serving.engine=tfserving"),
    (["--set", "ingress.enabled=true"], "ingress.host is required when ingress.enabled is true"),
    (
        ["--set", "predictionLog.postgresql.bundled=true", "--set", "predictionLog.postgresql.existingSecret=db"],
        "predictionLog.postgresql: set existingSecret (a server you run) or bundled (one in this release), not both",
    ),
    (
        ["--set-json", "predictionLog.sample=0.5", "--set", "serving.replicas=2"],
        "predictionLog.sample > 0 with several serving pods needs PostgreSQL",
    ),
    (["--set-json", "predictionLog.sample=2"], "at '/predictionLog/sample': maximum"),
    (
        [
            "--set",
            "serving.autoscaling.enabled=true",
            "--set",
            "serving.autoscaling.minReplicas=5",
            "--set",
            "serving.autoscaling.maxReplicas=2",
        ],
        "serving.autoscaling.minReplicas (5) must not exceed serving.autoscaling.maxReplicas (2)",
    ),
]


@pytest.mark.parametrize("helm_name", HELMS)
@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[m.split(":")[0][:60] for _, m in BAD_VALUES])
def test_bad_values_are_rejected_with_a_clear_message(helm_name: str, args: list[str], message: str) -> None:
    done = helm(HELMS[helm_name], "template", "wb", str(CHART), *args)
    assert done.returncode != 0, f"accepted {args}"
    assert message in done.stderr, done.stderr


def test_schema_is_valid_json_schema() -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)
