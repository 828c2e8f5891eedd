"""Every environment variable and default the workbench reads, declared once.

Values are read at call time (never cached at import), so tests and notebooks
can change them with ``os.environ`` and see the effect at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str

    def get(self) -> str:
        value = os.environ.get(self.name, "")
        return value if value != "" else self.default


WORKSPACE = Setting(
    "WORKBENCH_WORKSPACE",
    str(Path.home() / "workbench"),
    "root of the workspace (runs/, models/, state/): a local directory or s3://bucket/prefix",
)
CACHE_DIR = Setting(
    "WORKBENCH_CACHE_DIR",
    "",
    "local folder of an s3:// workspace (job database, replicas' files, mirrored runs and models); "
    "empty: ~/.cache/workbench/<hash of the URL>",
)
SYNC_INTERVAL_S = Setting(
    "WORKBENCH_SYNC_INTERVAL", "2", "seconds between uploads of a running job's new files to an s3:// workspace"
)
TENSORBOARD_PYTHON = Setting(
    "WORKBENCH_TENSORBOARD_PYTHON",
    "",
    "interpreter `workbench up` runs TensorBoard with; an s3:// workspace needs one without TensorFlow "
    "(scripts/setup-tensorboard.sh makes .venv-tensorboard); empty: this one, or .venv-tensorboard for s3://",
)
BACKEND = Setting(
    "WORKBENCH_BACKEND",
    "auto",
    "job backend: local, kubernetes, or auto (kubernetes in a pod with a service account token, else local)",
)
DATA_DIR = Setting(
    "WORKBENCH_DATA_DIR",
    str(Path.home() / ".cache" / "workbench" / "datasets"),
    "where example datasets (MNIST) are cached",
)
CODE_SNAPSHOT_MAX_MB = Setting("WORKBENCH_CODE_MAX_MB", "50", "size cap of a job's code snapshot, in MB")
KILL_GRACE_S = Setting("WORKBENCH_KILL_GRACE", "5", "seconds between SIGTERM and SIGKILL when stopping replicas")
GPU_COUNT = Setting("WORKBENCH_GPUS", "", "GPUs on this machine; empty means ask nvidia-smi")
SERVE_POLL_S = Setting("WORKBENCH_SERVE_POLL", "0.5", "seconds between the model server's scans of models/")
SERVER_URL = Setting("WORKBENCH_SERVER_URL", "", "model server predict() talks to; empty: the one `workbench up` runs")
SERVE_MAX_BATCH = Setting(
    "WORKBENCH_SERVE_MAX_BATCH", "64", "most rows the model server runs in one batched model call"
)
SERVE_MAX_WAIT_MS = Setting(
    "WORKBENCH_SERVE_MAX_WAIT_MS", "0", "ms a batch waits for more requests (0: only those queued)"
)
SERVE_MAX_BODY_MB = Setting("WORKBENCH_SERVE_MAX_BODY_MB", "16", "largest request body the model server accepts, in MB")
SERVE_KEEP_VERSIONS = Setting("WORKBENCH_SERVE_KEEP", "2", "newest versions per model kept loaded besides labeled ones")
SERVE_LOAD_YIELD = Setting(
    "WORKBENCH_SERVE_LOAD_YIELD", "1,2", "while serving traffic, a version loads in slices: run ms, pause ms (0: off)"
)
SERVE_LOG_SAMPLE = Setting(
    "WORKBENCH_SERVE_LOG_SAMPLE",
    "0",
    "fraction of predictions logged to the prediction log (WORKBENCH_SERVE_LOG_DB; `workbench serve --log-sample`)",
)
SERVE_LOG_DB = Setting(
    "WORKBENCH_SERVE_LOG_DB",
    "",
    "prediction log database: a postgresql://user:password@host:5432/db URL (pip install 'workbench[postgres]'); empty: the workspace's state/predictions.sqlite",
)
SERVE_LOG_QUEUE = Setting(
    "WORKBENCH_SERVE_LOG_QUEUE",
    "10000",
    "sampled predictions held per server process while the log database is slow or down (past it: dropped, counted)",
)
JUPYTER_TOKEN = Setting(
    "WORKBENCH_JUPYTER_TOKEN",
    "",
    "JupyterLab token of `workbench up` (empty: random), passed in its environment, never its command line",
)
PROMOTE_WARM = Setting("WORKBENCH_PROMOTE_WARM", "1", "keep idle export/validation workers so the next promote is fast")
PROMOTE_PRIORITY = Setting(
    "WORKBENCH_PROMOTE_PRIORITY",
    "auto",
    "export/validation workers: 'idle' (run only on free CPUs), a niceness to add, or 'auto' (idle while >= half a CPU is free, within the cgroup's CPU limit if any, else nice 10)",
)
SERVE_WORKERS = Setting(
    "WORKBENCH_SERVE_WORKERS",
    "auto",
    "model server processes (uvicorn workers) sharing the REST and gRPC ports, each loading every model; auto: 2 "
    "where the server may use 2 CPUs or more (a pod's CPU limit counts), else 1",
)
SERVE_GRPC_PORT = Setting(
    "WORKBENCH_SERVE_GRPC_PORT", "8500", "model server's gRPC port (TF Serving and KServe V2 services); 0: no gRPC"
)
SERVE_MAX_CONNECTIONS = Setting(
    "WORKBENCH_SERVE_MAX_CONNECTIONS", "1000", "open HTTP connections per server process; past it requests get a 503"
)
SERVE_HEADER_TIMEOUT_S = Setting(
    "WORKBENCH_SERVE_HEADER_TIMEOUT", "10", "seconds a client has to send a request's line and headers (0: no limit)"
)
SERVE_BODY_TIMEOUT_S = Setting(
    "WORKBENCH_SERVE_BODY_TIMEOUT", "30", "seconds a client has to send a request's body once its headers arrived"
)
SERVE_KEEP_ALIVE_S = Setting(
    "WORKBENCH_SERVE_KEEP_ALIVE", "60", "seconds an idle keep-alive HTTP connection stays open"
)
SERVER_TOKEN = Setting(
    "WORKBENCH_SERVER_TOKEN",
    "",
    "bearer token of the model server: required on /workbench/* routes when set (clients send it too)",
)
SERVER_TOKEN_SCOPE = Setting(
    "WORKBENCH_SERVER_TOKEN_SCOPE", "admin", "what the token guards: 'admin' (/workbench/*) or 'all' (all but health)"
)
SERVE_PRELOAD = Setting(
    "WORKBENCH_SERVE_PRELOAD", "tensorflow", "frameworks the model server imports at start (comma list)"
)
ENVIRONMENTS = Setting(
    "WORKBENCH_ENVIRONMENTS",
    "",
    "named job environments, 'name=/path/to/python,...' (e.g. mxnet=.venv-mxnet/bin/python)",
)

# The local job queue (workbench.backends.local.queue; docs/jobs.md).
CPU_SLOTS = Setting(
    "WORKBENCH_CPU_SLOTS", "", "CPU slots local jobs share (a job takes cpus=, else one per replica); empty: the CPUs"
)
MAX_JOBS = Setting("WORKBENCH_MAX_JOBS", "0", "most local jobs running at once; 0: no limit beyond the CPU slots")
# TensorFlow's C++ log level for jobs, `workbench up` (JupyterLab kernels, model server) and `workbench serve`:
# the user's own TF_CPP_MIN_LOG_LEVEL wins; 2 hides INFO and WARNING lines (cpu_feature_guard and friends).
TF_CPP_MIN_LOG_LEVEL = Setting(
    "TF_CPP_MIN_LOG_LEVEL",
    "2",
    "TensorFlow's C++ log level given to jobs, `workbench up`'s services and `workbench serve` unless set",
)

# Kubernetes backend (workbench.backends.kubernetes); the Helm chart sets these in the Jupyter pod.
K8S_NAMESPACE = Setting("WORKBENCH_K8S_NAMESPACE", "", "training Jobs' namespace; empty: this pod's, else kubeconfig's")
K8S_IMAGE_TENSORFLOW = Setting(
    "WORKBENCH_K8S_IMAGE_TENSORFLOW",
    "workbench/trainer-tensorflow:0.1.0",
    "trainer image for tensorflow jobs, and for framework none",
)
K8S_IMAGE_PYTORCH = Setting(
    "WORKBENCH_K8S_IMAGE_PYTORCH", "workbench/trainer-pytorch:0.1.0", "trainer image for pytorch jobs"
)
K8S_IMAGE_MXNET = Setting("WORKBENCH_K8S_IMAGE_MXNET", "workbench/trainer-mxnet:0.1.0", "trainer image for mxnet jobs")
K8S_IMAGE_PULL_POLICY = Setting("WORKBENCH_K8S_IMAGE_PULL_POLICY", "IfNotPresent", "imagePullPolicy of training pods")
K8S_WORKSPACE_CLAIM = Setting(
    "WORKBENCH_K8S_WORKSPACE_CLAIM",
    "workbench-workspace",
    "PVC (ReadWriteMany) holding the workspace; every training pod mounts it",
)
K8S_WORKSPACE_MOUNT = Setting("WORKBENCH_K8S_WORKSPACE_MOUNT", "", "claim's path in pods; empty: WORKBENCH_WORKSPACE's")
K8S_SERVICE_ACCOUNT = Setting(
    "WORKBENCH_K8S_SERVICE_ACCOUNT",
    "",
    "training pods' service account (no API token is mounted in them); empty: the namespace's default",
)
K8S_CPU = Setting("WORKBENCH_K8S_CPU", "1", "CPU request of each training replica")
K8S_MEMORY = Setting("WORKBENCH_K8S_MEMORY", "2Gi", "memory request and limit of each training replica")
K8S_PORT = Setting("WORKBENCH_K8S_PORT", "2222", "port of each replica in TF_CONFIG / MASTER_PORT / DMLC_PS_ROOT_PORT")
K8S_TTL_S = Setting("WORKBENCH_K8S_TTL", "604800", "seconds finished Jobs and their pods (logs) are kept")
K8S_S3_ENDPOINT = Setting("WORKBENCH_K8S_S3_ENDPOINT", "", "S3/MinIO URL for pods (S3_ENDPOINT, AWS_ENDPOINT_URL)")
K8S_S3_SECRET = Setting("WORKBENCH_K8S_S3_SECRET", "", "Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY for pods")
K8S_QUEUE_NAME = Setting(
    "WORKBENCH_K8S_QUEUE_NAME", "", "Kueue LocalQueue for training Jobs (label kueue.x-k8s.io/queue-name); empty: none"
)
K8S_S3_REGION = Setting("WORKBENCH_K8S_S3_REGION", "us-east-1", "AWS_REGION for training pods with an S3 endpoint")
KUBECONFIG = Setting("KUBECONFIG", "~/.kube/config", "kubeconfig file(s) used outside a cluster (kubectl's variable)")

# Variables the launcher sets for each training replica (the script's contract).
RUN_ID_VAR = "WORKBENCH_RUN_ID"
LOG_DIR_VAR = "WORKBENCH_LOG_DIR"
CHECKPOINT_DIR_VAR = "WORKBENCH_CHECKPOINT_DIR"
WORKSPACE_VAR = WORKSPACE.name
ROLE_VAR = "WORKBENCH_ROLE"
REPLICA_INDEX_VAR = "WORKBENCH_REPLICA_INDEX"
ATTEMPT_VAR = "WORKBENCH_ATTEMPT"
PARAMS_VAR = "WORKBENCH_PARAMS"  # JSON object of the job's params (also given as --NAME VALUE arguments)
# Set in Kubernetes pods for workbench.backends.kubernetes.entrypoint, which derives the replica's environment.
CLUSTER_VAR = "WORKBENCH_CLUSTER"  # JSON: role -> ["host:port", ...] of every replica
FRAMEWORK_VAR = "WORKBENCH_FRAMEWORK"  # the job's framework (tensorflow, pytorch, mxnet, none)
# Set by `workbench up` for JupyterLab (and by the chart): the local port of the TensorBoard it proxies at /tensorboard/.
TENSORBOARD_PORT_VAR = "WORKBENCH_TENSORBOARD_PORT"


def workspace_root() -> Path:
    """The workspace root, absolute (``WORKBENCH_WORKSPACE`` or ``~/workbench``): for an ``s3://`` workspace, its
    local cache folder (:func:`cache_dir`). Raises WorkspaceError for a URL the workbench cannot use."""
    from workbench import storage

    url = storage.parse(WORKSPACE.get())
    return storage.local_path(WORKSPACE.get()) if url is None else cache_dir(url)


def cache_dir(url: str) -> Path:
    """The local folder of remote workspace ``url`` (``WORKBENCH_CACHE_DIR``, else one per URL)."""
    import hashlib

    given = CACHE_DIR.get()
    if given:
        return Path(given).expanduser().resolve()
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "workbench" / digest


def all_settings() -> list[Setting]:
    """Every setting of this module, in declaration order (the docs' settings reference is generated from it)."""
    return [v for v in globals().values() if isinstance(v, Setting)]
