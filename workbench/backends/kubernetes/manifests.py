"""JobSpec -> Kubernetes manifests: one Indexed Job per role and a headless Service.

Plain dicts in the API's own (camelCase) shape: what ``kubectl apply`` would
read, what the tests validate offline, what the client sends. Nothing here
talks to a cluster.

Naming gives every replica a stable DNS name: an Indexed Job's pods get the
hostname ``<job>-<index>``, and with ``subdomain`` set to a headless Service
that selects them they resolve as ``<job>-<index>.<service>``
(https://kubernetes.io/docs/concepts/workloads/controllers/job/#completion-mode).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import conventions, settings
from workbench.backends.kubernetes.entrypoint import CONFIG_ERROR_EXIT, CONTAINER
from workbench.spec import JobSpec
from workbench.workspace import Workspace

Manifest = dict[str, Any]

GROUP = "workbench.dev"
RUN_LABEL = f"{GROUP}/run"  # a DNS-safe form of the run id; selects everything of one run
ROLE_LABEL = f"{GROUP}/role"
RUN_ID_ANNOTATION = f"{GROUP}/run-id"  # the exact run id
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"  # set on each pod by the Job controller
FAILURES_ANNOTATION = "batch.kubernetes.io/job-index-failure-count"  # set when backoffLimitPerIndex is used
COMMON_LABELS = {"app.kubernetes.io/managed-by": "workbench", "app.kubernetes.io/component": "training"}
ENTRYPOINT = ["python", "-m", "workbench.backends.kubernetes.entrypoint"]
GPU_RESOURCE = "nvidia.com/gpu"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # Kueue admits (unsuspends) the Job when its LocalQueue has room
_BASE_MAX = 45  # leaves room for "-<role>-<index>" within a 63-character DNS label


@dataclass(frozen=True)
class PodConfig:
    """Where and how a job's pods run; :meth:`from_settings` reads the ``WORKBENCH_K8S_*`` settings."""

    namespace: str
    images: dict[str, str]
    workspace_mount: str
    claim: str = "workbench-workspace"
    pull_policy: str = "IfNotPresent"
    service_account: str = ""
    cpu: str = "1"
    memory: str = "2Gi"
    port: int = 2222
    ttl_s: int = 604800
    s3_endpoint: str = ""
    s3_secret: str = ""
    s3_region: str = "us-east-1"
    grace_s: int = 5
    workspace_url: str = ""  # s3://bucket/prefix: pods get an emptyDir at workspace_mount (their cache), no claim
    queue_name: str = ""  # a Kueue LocalQueue; empty: the cluster scheduler alone decides when pods start

    @classmethod
    def from_settings(cls, namespace: str, workspace: Workspace) -> PodConfig:
        return cls(
            namespace=namespace,
            images={
                "tensorflow": settings.K8S_IMAGE_TENSORFLOW.get(),
                "pytorch": settings.K8S_IMAGE_PYTORCH.get(),
                "mxnet": settings.K8S_IMAGE_MXNET.get(),
                "none": settings.K8S_IMAGE_TENSORFLOW.get(),
            },
            # Same path in every pod as here by default, so paths in run.json and logs mean the same everywhere.
            workspace_mount=settings.K8S_WORKSPACE_MOUNT.get() or str(workspace.root),
            claim=settings.K8S_WORKSPACE_CLAIM.get(),
            workspace_url=workspace.url or "",
            pull_policy=settings.K8S_IMAGE_PULL_POLICY.get(),
            service_account=settings.K8S_SERVICE_ACCOUNT.get(),
            cpu=settings.K8S_CPU.get(),
            memory=settings.K8S_MEMORY.get(),
            port=int(settings.K8S_PORT.get()),
            ttl_s=int(settings.K8S_TTL_S.get()),
            s3_endpoint=settings.K8S_S3_ENDPOINT.get(),
            s3_secret=settings.K8S_S3_SECRET.get(),
            s3_region=settings.K8S_S3_REGION.get(),
            grace_s=round(float(settings.KILL_GRACE_S.get())),
            queue_name=settings.K8S_QUEUE_NAME.get(),
        )


# --- names -------------------------------------------------------------------------------------


def base_name(run_id: str) -> str:
    """A DNS-1035 label (lowercase, starts with a letter, at most 45 characters) naming the run's objects.

    The run id itself when it qualifies, which it usually does; otherwise a
    readable prefix plus a hash of the run id, so distinct runs stay distinct.
    """
    clean = re.sub(r"[^a-z0-9-]", "-", run_id.lower()).strip("-")
    if clean == run_id and clean[:1].isalpha() and len(clean) <= _BASE_MAX:
        return clean
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:6]
    prefix = clean if clean[:1].isalpha() else f"wb-{clean}"
    return f"{prefix[: _BASE_MAX - 7].rstrip('-')}-{digest}"


def service_name(run_id: str) -> str:
    return base_name(run_id)


def job_name(run_id: str, role: str) -> str:
    return f"{base_name(run_id)}-{role}"


def pod_hostname(run_id: str, role: str, index: int) -> str:
    return f"{job_name(run_id, role)}-{index}"


def selector(run_id: str, role: str | None = None) -> str:
    """The label selector (``key=value,...``) of a run's objects, or of one role's."""
    labels = {RUN_LABEL: base_name(run_id)} | ({ROLE_LABEL: role} if role else {})
    return ",".join(f"{k}={v}" for k, v in labels.items())


def cluster(run_id: str, spec: JobSpec, port: int) -> dict[str, list[str]]:
    """Every replica's ``host:port``, by role: the addresses conventions.replica_env is given."""
    svc = service_name(run_id)
    return {
        role: [f"{pod_hostname(run_id, role, i)}.{svc}:{port}" for i in range(count)]
        for role, count in spec.roles().items()
    }


# --- manifests ---------------------------------------------------------------------------------


def render(run_id: str, spec: JobSpec, config: PodConfig) -> list[Manifest]:
    """Every object of the job, in creation order: the Service first, so DNS names exist when pods start."""
    roles = [r.role for r in conventions.replicas(spec.roles()) if r.index == 0]
    return [service(run_id, config), *(job(run_id, spec, role, config) for role in roles)]


def service(run_id: str, config: PodConfig) -> Manifest:
    """The headless Service that gives the run's pods their DNS names."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(run_id, service_name(run_id), config),
        "spec": {
            "clusterIP": "None",
            "selector": {RUN_LABEL: base_name(run_id)},
            # Peers must resolve each other while still starting, before any readiness.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "replica", "port": config.port, "targetPort": config.port, "protocol": "TCP"}],
        },
    }


def job(run_id: str, spec: JobSpec, role: str, config: PodConfig) -> Manifest:
    """The Indexed Job running every replica of ``role``: completions = parallelism = replicas."""
    replicas = spec.roles()[role]
    metadata = _metadata(run_id, job_name(run_id, role), config, role)
    if config.queue_name:
        metadata["labels"][KUEUE_QUEUE_LABEL] = config.queue_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "completionMode": "Indexed",
            "completions": replicas,
            "parallelism": replicas,
            # Per index rather than backoffLimit: each replica may be restarted max_restarts times and
            # learns its attempt from the failure-count annotation; the first index out of restarts
            # fails the whole Job (maxFailedIndexes 0), as the local backend fails the whole job.
            "backoffLimitPerIndex": spec.max_restarts,
            "maxFailedIndexes": 0,
            "podFailurePolicy": {
                "rules": [
                    # A script or workspace the entrypoint cannot use fails the same way every time.
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [CONFIG_ERROR_EXIT]},
                    },
                    # Evictions, preemptions and node drains are not the script's fault: retry without counting.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            # A replacement pod starts only once the old one is gone: two pods never share a hostname.
            "podReplacementPolicy": "Failed",
            "ttlSecondsAfterFinished": config.ttl_s,
            "template": {
                "metadata": {
                    "labels": _labels(run_id, role),
                    "annotations": {RUN_ID_ANNOTATION: run_id},
                },
                "spec": _pod_spec(run_id, spec, role, config),
            },
        },
    }


def _pod_spec(run_id: str, spec: JobSpec, role: str, config: PodConfig) -> Manifest:
    compute = role in ("worker", "chief")  # as locally: GPUs go to the replicas that train
    gpus = spec.gpus if compute else 0
    pod: Manifest = {
        "restartPolicy": "Never",
        # SIGTERM, then SIGKILL: a TF worker whose peers are gone ignores SIGTERM (see DESIGN.md).
        "terminationGracePeriodSeconds": config.grace_s,
        "subdomain": service_name(run_id),
        "enableServiceLinks": False,  # keeps the replica's environment what the manifest says
        "automountServiceAccountToken": False,  # training code needs no Kubernetes API access
        "containers": [_container(run_id, spec, role, config, gpus)],
        "volumes": [_workspace_volume(config)],
    }
    if config.service_account:
        pod["serviceAccountName"] = config.service_account
    if gpus:
        # GPU node pools are commonly tainted so that only pods asking for GPUs land there.
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return pod


def _container(run_id: str, spec: JobSpec, role: str, config: PodConfig, gpus: int) -> Manifest:
    paths = Workspace(Path(config.workspace_mount)).run(run_id)
    limits = {"memory": config.memory} | ({GPU_RESOURCE: str(gpus)} if gpus else {})
    return {
        "name": CONTAINER,
        "image": config.images[spec.framework],
        "imagePullPolicy": config.pull_policy,
        # Code comes from the run's snapshot in the workspace, never from a per-job image.
        "command": list(ENTRYPOINT),
        "args": [str(paths.code / Path(spec.script).name), *spec.command_args()],
        "workingDir": str(paths.code),
        "env": _env(run_id, spec, role, config),
        "ports": [{"name": "replica", "containerPort": config.port, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": config.cpu, "memory": config.memory}, "limits": limits},
        "volumeMounts": [{"name": "workspace", "mountPath": config.workspace_mount}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def _env(run_id: str, spec: JobSpec, role: str, config: PodConfig) -> list[Manifest]:
    workspace = Workspace(Path(config.workspace_mount))
    paths = workspace.run(run_id)
    ours: list[Manifest] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": settings.RUN_ID_VAR, "value": run_id},
        {"name": settings.WORKSPACE_VAR, "value": config.workspace_url or str(workspace.root)},
        {"name": settings.LOG_DIR_VAR, "value": str(paths.tb)},
        {"name": settings.CHECKPOINT_DIR_VAR, "value": str(paths.checkpoints)},
        {"name": settings.FRAMEWORK_VAR, "value": spec.framework},
        {"name": settings.ROLE_VAR, "value": role},
        {"name": settings.CLUSTER_VAR, "value": json.dumps(cluster(run_id, spec, config.port), sort_keys=True)},
        # The Job controller adds JOB_COMPLETION_INDEX itself; declared here so the manifest says it all.
        _from_annotation("JOB_COMPLETION_INDEX", INDEX_ANNOTATION),
        # Empty on a first attempt; the entrypoint turns that into 0.
        _from_annotation(settings.ATTEMPT_VAR, FAILURES_ANNOTATION),
        *_s3_env(config),
        *_bucket_workspace_env(config),
    ]
    taken = {e["name"] for e in ours}
    user = [{"name": k, "value": v} for k, v in spec.command_env().items() if k not in taken]  # ours win, as locally
    return user + ours


def _workspace_volume(config: PodConfig) -> Manifest:
    """The shared claim; for an s3:// workspace the pod's own scratch space, where the entrypoint copies the code
    and the replica writes before its files are uploaded (workbench.sync)."""
    if config.workspace_url:
        return {"name": "workspace", "emptyDir": {}}
    return {"name": "workspace", "persistentVolumeClaim": {"claimName": config.claim}}


def _bucket_workspace_env(config: PodConfig) -> list[Manifest]:
    """An s3:// workspace: the emptyDir is the entrypoint's cache of the bucket."""
    if not config.workspace_url:
        return []
    return [{"name": settings.CACHE_DIR.name, "value": config.workspace_mount}]


def _from_annotation(name: str, annotation: str) -> Manifest:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{annotation}']"}}}


def _s3_env(config: PodConfig) -> list[Manifest]:
    if not config.s3_endpoint:
        return []
    env: list[Manifest] = [
        {"name": "S3_ENDPOINT", "value": config.s3_endpoint},  # TensorFlow / TensorBoard
        {"name": "AWS_ENDPOINT_URL", "value": config.s3_endpoint},  # boto3, s3fs
        {"name": "AWS_REGION", "value": config.s3_region},
    ]
    if config.s3_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": config.s3_secret, "key": key}}})
    return env


def _labels(run_id: str, role: str | None = None) -> dict[str, str]:
    labels = {**COMMON_LABELS, RUN_LABEL: base_name(run_id)}
    return labels | ({ROLE_LABEL: role} if role else {})


def _metadata(run_id: str, name: str, config: PodConfig, role: str | None = None) -> Manifest:
    return {
        "name": name,
        "namespace": config.namespace,
        "labels": _labels(run_id, role),
        "annotations": {RUN_ID_ANNOTATION: run_id},
    }
