"""``workbench serve``: run the model server over the workspace's ``models/`` until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Coroutine
from typing import Any

from workbench import settings
from workbench.errors import WorkbenchError
from workbench.serving.app import ServerApp
from workbench.serving.http import HTTPServer
from workbench.serving.metrics import ServerMetrics
from workbench.serving.native import NativeFrontend
from workbench.serving.predlog import PredictionLog, db_path
from workbench.serving.repository import ModelRepository
from workbench.serving.workers import Balancer, PeerApp, Peers, intra_op_threads, listen, parse_workers, supervise
from workbench.workspace import Workspace


def serve(
    host: str = "127.0.0.1",
    port: int = 8501,
    workspace: Workspace | None = None,
    *,
    poll: float | None = None,
    max_batch: int | None = None,
    max_wait_ms: float | None = None,
    keep: int | None = None,
    log_sample: float | None = None,
    max_body_mb: float | None = None,
    workers: int | str | None = None,
    native: str | None = None,
) -> int:
    """Serve every model in ``workspace/models`` on ``host:port``; blocks; returns an exit code. Unset options come
    from settings. ``workers`` > 1 (or "auto", the default: see :func:`workbench.serving.workers.auto_workers`):
    that many server processes on the port (:mod:`workbench.serving.workers`). ``native`` "auto" (the default)
    or "off": whether the C front end answers the common predict requests (:mod:`workbench.serving.native`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ws = (workspace or Workspace.current()).ensure()
    options = {
        "host": host,
        "port": port,
        "poll": poll or float(settings.SERVE_POLL_S.get()),
        "max_batch": max_batch or int(settings.SERVE_MAX_BATCH.get()),
        "max_wait_ms": max_wait_ms if max_wait_ms is not None else float(settings.SERVE_MAX_WAIT_MS.get()),
        "keep": keep or int(settings.SERVE_KEEP_VERSIONS.get()),
        "log_sample": log_sample if log_sample is not None else float(settings.SERVE_LOG_SAMPLE.get()),
        "max_body_mb": max_body_mb or float(settings.SERVE_MAX_BODY_MB.get()),
    }
    options["native"] = _native_wanted(native or settings.SERVE_NATIVE.get(), options)
    count = parse_workers(workers if workers is not None else settings.SERVE_WORKERS.get())
    if count > 1:
        return supervise(count, host, port, ws.root, options)
    run_worker(ws, options)
    return 0


def _native_wanted(choice: str, options: dict[str, Any]) -> bool:
    from workbench.serving import native

    choice = str(choice).strip().lower()
    if choice not in ("auto", "off"):
        raise WorkbenchError(f"native must be 'auto' or 'off', got {choice!r}")
    if choice == "off":
        return False
    log = logging.getLogger("workbench.serving")
    if not native.available():
        log.info("the native front end is not built (no C compiler at install): every request is served in Python")
        return False
    return True


def run_worker(
    ws: Workspace, options: dict[str, Any], *, sock: socket.socket | None = None, peers: Peers | None = None
) -> None:
    """One server process: the whole server, or (``sock``, ``peers``) one of several accepting on ``sock``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Loading a version (Python-heavy in TensorFlow) runs on the watcher thread; a shorter GIL switch interval
    # keeps it from holding up request handling for the default 5 ms at a time (measured: bench/serve_hotswap).
    sys.setswitchinterval(0.0005)
    # Each model version runs its batches on a thread of its own, so TensorFlow's pool for running independent ops
    # side by side only adds thread hand-offs: one thread served LeNet at c=1 and c=8 ~25% faster here.
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    if options.get("native") and peers is None:
        # The front end's thread (and, on a small machine, the clients) need a CPU the model's thread pool does not
        # fight them for: LeNet served 1.1-1.4x faster at every concurrency with 1 intra-op thread than 2 here.
        # (Worker processes get theirs from the supervisor: workers.supervise.)
        threads = str(intra_op_threads(1, native=True))
        for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(var, threads)
    metrics = ServerMetrics()
    repo = ModelRepository(
        ws,
        metrics,
        max_batch=int(options["max_batch"]),
        max_wait=float(options["max_wait_ms"]) / 1000.0,
        keep=int(options["keep"]),
        poll=float(options["poll"]),
        peers=peers,
    )
    sample = float(options["log_sample"])
    predlog = PredictionLog(db_path(ws), on_drop=lambda: metrics.log_dropped.inc()) if sample > 0 else None
    max_body = int(float(options["max_body_mb"]) * 1024 * 1024)
    app = ServerApp(repo, metrics, predlog, sample, peers=peers)
    preload = settings.SERVE_PRELOAD.get()
    server = HTTPServer(app, max_body=max_body, keep_alive=60)
    frontend = None
    if options.get("native"):
        frontend = NativeFrontend(
            sock if sock is not None else listen(options["host"], int(options["port"])),
            server,
            max_body=max_body,
            keep_alive=60,
        )
        repo.native = frontend  # before the first scan, so that every version loaded gets its lane
        repo.gather = float(settings.SERVE_GATHER_US.get()) / 1e6
        repo.prediction_log, repo.log_sample = predlog, sample
    repo.start(prepare=lambda: _preload(repo, preload))
    try:
        if peers is None:
            _run(_serve_until_signal(server, str(ws.models), options["host"], int(options["port"]), frontend=frontend))
        else:
            private = HTTPServer(PeerApp(repo, metrics))
            # A worker started in place of one that died takes connections only once it serves what the others do.
            ready = repo.ready if options.get("restart") else None
            _run(
                _serve_until_signal(
                    server,
                    str(ws.models),
                    sock=sock,
                    private=private,
                    ready=ready,
                    peers=peers,
                    repo=repo,
                    frontend=frontend,
                )
            )
    finally:
        repo.stop()
        if predlog is not None:
            predlog.close()


def _preload(repo: ModelRepository, names: str) -> None:
    """Import (and settle) frameworks now, so the first model promoted goes live without waiting for the import.

    Runs on the watcher thread before its first scan: TensorFlow imported from two threads at once can fail
    ("Registering two gradient with name ...")."""
    from workbench.errors import RegistryError
    from workbench.registry.frameworks import get_framework

    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            repo.settle(get_framework(name))
        except (RegistryError, ImportError) as e:
            logging.getLogger("workbench.serving").warning("cannot preload %s: %s", name, e)


async def _serve_until_signal(
    server: HTTPServer,
    models: str,
    host: str | None = None,
    port: int | None = None,
    *,
    sock: socket.socket | None = None,
    private: HTTPServer | None = None,
    ready: threading.Event | None = None,
    peers: Peers | None = None,
    repo: ModelRepository | None = None,
    frontend: NativeFrontend | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if private is not None and peers is not None:  # the endpoint the other worker processes ask
        await private.start_unix(peers.socket_path(peers.index))
        loop.create_task(_stop_when_orphaned(stop))
    if ready is not None:
        await loop.run_in_executor(None, ready.wait)
    if peers is not None:
        balancer = Balancer(peers)
        balancer.start(server, frontend)
        if repo is not None:
            repo.balancer = balancer
    if frontend is not None:
        server.loop = loop  # (it only takes the connections the front end hands over)
        frontend.start()
        port = int(frontend.sock.getsockname()[1])
    else:
        port = await server.start(host, port, sock=sock)
    if sock is None:
        print(f"serving models from {models} on http://{host}:{port}", flush=True)
    elif peers is not None:
        logging.getLogger("workbench.serving").info(
            "worker process %d (pid %d) takes connections", peers.index, os.getpid()
        )
    await stop.wait()
    if frontend is not None:
        await asyncio.gather(loop.run_in_executor(None, frontend.stop, 10.0), server.shutdown(grace=10))
    else:
        await server.shutdown(grace=10)
    if private is not None:
        await private.shutdown(grace=1)


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker process stops when its supervisor is gone (killed without a chance to stop it)."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            logging.getLogger("workbench.serving").error("the server's supervisor exited; stopping this worker")
            stop.set()
        await asyncio.sleep(1.0)


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
