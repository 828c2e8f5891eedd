"""``workbench serve``: the model server over the workspace's ``models/``, until SIGINT/SIGTERM.

REST (:mod:`workbench.serving.transport.http`, an ASGI app) runs on uvicorn with httptools and uvloop; gRPC
(:mod:`workbench.serving.transport.grpc`) on grpcio, in the same process. Several server processes are
uvicorn's own workers (``--workers``): each runs the whole server, loads every model and watches ``models/``
itself, and they share the REST port (uvicorn's socket) and the gRPC port (``SO_REUSEPORT``). Why uvicorn
rather than granian: see docs/architecture.md and bench/RESULTS.md.

Every option is a setting (:mod:`workbench.settings`); :func:`serve` writes the ones given as arguments into
the environment, where each worker process reads them in :func:`create_app`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import sys
import tempfile
from typing import Any

from workbench import settings
from workbench.errors import WorkbenchError
from workbench.workspace import Workspace

log = logging.getLogger("workbench.serving")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HOST_VAR = "WORKBENCH_SERVE_HOST"  # where serve() tells its workers the gRPC host
_GROUP_VAR = "WORKBENCH_SERVE_GROUP"  # and, with several workers, its own pid: their Peers folder


def serve(
    host: str = "127.0.0.1",
    port: int = 8501,
    workspace: Workspace | None = None,
    *,
    grpc_port: int | None = None,
    workers: int | str | None = None,
    **options: Any,
) -> int:
    """Serve every model in ``workspace/models`` over REST on ``host:port`` and gRPC on ``host:grpc_port`` (0: no
    gRPC); blocks; returns an exit code. ``options`` are settings by their lower-case names without the
    prefix (``poll``, ``max_batch``, ``max_wait_ms``, ``keep``, ``log_sample``, ``max_body_mb``...); unset ones
    keep their environment or default."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT, stream=sys.stderr)
    ws = (workspace or Workspace.current()).ensure()
    os.environ[settings.WORKSPACE.name] = ws.location  # a bucket's URL, not its cache: the workers mirror it
    os.environ[_HOST_VAR] = host
    given = {"grpc_port": grpc_port, "workers": workers, **options}
    for key, value in given.items():
        if value is not None:
            os.environ[_setting(key).name] = str(value)
    count = _workers(settings.SERVE_WORKERS.get())
    # Each process's framework gets its share of the CPUs for its intra-op pool (unless set), not all of them.
    threads = str(max(1, int(usable_cpus()) // count))
    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, threads)
    grpc = int(settings.SERVE_GRPC_PORT.get())
    if grpc:
        _check_free(host, grpc, "gRPC")
    metrics_dir = None
    os.environ.pop(_GROUP_VAR, None)
    if count > 1:
        os.environ[_GROUP_VAR] = str(
            os.getpid()
        )  # prometheus_client's multiprocess mode: each worker writes its values to files there
        metrics_dir = tempfile.mkdtemp(prefix="workbench-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from workbench.registry.store import clean

    for path in clean(ws):  # what crashed promotes left behind
        log.info("removed %s, left by a promote that did not finish", path)
    grpc_text = f" and gRPC on {host}:{grpc}" if grpc else ""
    print(f"serving models from {ws.models} on http://{host}:{port}{grpc_text}", flush=True)
    try:
        uvicorn.run(
            "workbench.serving.server:create_app",
            factory=True,
            host=host,
            port=port,
            workers=count,
            loop="uvloop",
            http="workbench.serving.transport.connections:HeadDeadlineProtocol",
            lifespan="on",
            limit_concurrency=int(settings.SERVE_MAX_CONNECTIONS.get()),
            timeout_keep_alive=int(float(settings.SERVE_KEEP_ALIVE_S.get())),
            timeout_graceful_shutdown=10,
            access_log=False,
            log_level="info",
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if count > 1:
            shutil.rmtree(ws.state / "serving" / str(os.getpid()), ignore_errors=True)
    return 0


def create_app() -> Any:
    """The server of one process, from the settings: the ASGI app, with the model watcher and the gRPC server
    starting in its lifespan."""
    import prometheus_client

    from workbench.serving.metrics import ServerMetrics
    from workbench.serving.model.repository import ModelRepository
    from workbench.serving.predlog import open_log
    from workbench.serving.transport.http import HTTPApp, Limits

    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT, stream=sys.stderr)
    prometheus_client.disable_created_metrics()  # the *_created series only double what /metrics shows
    # Each model version runs its batches on a thread of its own, so the framework's pool for running
    # independent ops side by side only adds thread hand-offs.
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ws = Workspace.current().ensure()
    peers = None
    if os.environ.get(_GROUP_VAR):  # one of several worker processes
        from workbench.serving.model.peers import Peers

        _die_with_parent(int(os.environ[_GROUP_VAR]))
        peers = Peers(ws.state / "serving" / os.environ[_GROUP_VAR])
    sample = float(settings.SERVE_LOG_SAMPLE.get())
    metrics = ServerMetrics(log_sample=sample)
    if sample > 0:
        metrics.prediction_log = open_log(ws, on_drop=metrics.dropped)
    repo = ModelRepository(
        ws,
        metrics,
        max_batch=int(settings.SERVE_MAX_BATCH.get()),
        max_wait=float(settings.SERVE_MAX_WAIT_MS.get()) / 1000.0,
        keep=int(settings.SERVE_KEEP_VERSIONS.get()),
        poll=float(settings.SERVE_POLL_S.get()),
        peers=peers,
    )
    limits = Limits(
        max_body=int(float(settings.SERVE_MAX_BODY_MB.get()) * 1024 * 1024),
        body_timeout=float(settings.SERVE_BODY_TIMEOUT_S.get()),
        token=settings.SERVER_TOKEN.get(),
        token_scope=settings.SERVER_TOKEN_SCOPE.get(),
    )
    grpc_server: list[Any] = []

    def startup() -> None:
        port = int(settings.SERVE_GRPC_PORT.get())
        if port:  # first: its TF Serving protos import TensorFlow, which the watcher's preload must not race
            from workbench.serving.transport.grpc import GRPCServer

            server = GRPCServer(
                repo, metrics, os.environ.get(_HOST_VAR, "127.0.0.1"), port, limits.token, limits.token_scope
            )
            server.start()
            grpc_server.append(server)
        repo.start(prepare=lambda: _preload(repo, settings.SERVE_PRELOAD.get()))
        log.info("server process %d ready", os.getpid())

    def shutdown() -> None:
        for server in grpc_server:
            server.stop(grace=5)
        repo.stop()
        if metrics.prediction_log is not None:
            metrics.prediction_log.close()

    return HTTPApp(repo, metrics, limits, on_startup=startup, on_shutdown=shutdown)


def _die_with_parent(supervisor: int) -> None:
    """A worker process gets SIGTERM when the server's supervisor dies (even by SIGKILL), so none serves on
    unsupervised (Linux's parent-death signal; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the call (in a container the supervisor may be pid 1)
        os.kill(os.getpid(), signal.SIGTERM)


def _preload(repo: Any, names: str) -> None:
    """Import (and settle) frameworks now, so the first model promoted goes live without waiting for the import.
    Runs on the watcher thread before its first scan: TensorFlow imported from two threads at once can fail."""
    from workbench.errors import RegistryError
    from workbench.serving.model.frameworks import get_framework

    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            repo.settle(get_framework(name))
        except (RegistryError, ImportError) as e:
            log.warning("cannot preload %s: %s", name, e)


def _setting(key: str) -> settings.Setting:
    names = {
        "grpc_port": settings.SERVE_GRPC_PORT,
        "workers": settings.SERVE_WORKERS,
        "poll": settings.SERVE_POLL_S,
        "max_batch": settings.SERVE_MAX_BATCH,
        "max_wait_ms": settings.SERVE_MAX_WAIT_MS,
        "keep": settings.SERVE_KEEP_VERSIONS,
        "log_sample": settings.SERVE_LOG_SAMPLE,
        "max_body_mb": settings.SERVE_MAX_BODY_MB,
        "max_connections": settings.SERVE_MAX_CONNECTIONS,
        "header_timeout": settings.SERVE_HEADER_TIMEOUT_S,
        "body_timeout": settings.SERVE_BODY_TIMEOUT_S,
        "keep_alive": settings.SERVE_KEEP_ALIVE_S,
    }
    if key not in names:
        raise WorkbenchError(f"unknown server option {key!r}; known: {', '.join(sorted(names))}")
    return names[key]


def usable_cpus() -> float:
    """CPUs this process may use: its affinity, within its cgroup's quota (a pod's CPU limit) if one is set."""
    from workbench.background import cpu_quota

    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    quota = cpu_quota()
    return min(cpus, quota.cpus) if quota is not None else cpus


def _workers(value: str) -> int:
    text = str(value).strip().lower()
    if text == "auto":  # a second process overlaps one's Python (HTTP, JSON) with the other's model calls
        return 2 if usable_cpus() >= 2 else 1
    if not text.isdigit() or int(text) < 1:
        raise WorkbenchError(f"workers must be a positive number or 'auto', got {value!r}")
    return int(text)


def _check_free(host: str, port: int, what: str) -> None:
    """Fail at once when another program listens on ``port``: the workers bind it with SO_REUSEPORT, which would
    otherwise share it silently with that program."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise WorkbenchError(
                    f"the {what} port {host}:{port} is in use; pick another with --grpc-port (0: no gRPC)"
                ) from None
            raise WorkbenchError(f"cannot listen on {host}:{port} for {what} ({e})") from None
