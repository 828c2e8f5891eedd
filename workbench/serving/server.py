"""``workbench serve``: run the model server over the workspace's ``models/`` until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from workbench import settings
from workbench.serving.app import ServerApp
from workbench.serving.http import HTTPServer
from workbench.serving.metrics import ServerMetrics
from workbench.serving.predlog import PredictionLog, db_path
from workbench.serving.repository import ModelRepository
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
) -> None:
    """Serve every model in ``workspace/models`` on ``host:port``; blocks. Unset options come from settings."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ws = (workspace or Workspace.current()).ensure()
    # Loading a version (Python-heavy in TensorFlow) runs on the watcher thread; a shorter GIL switch interval
    # keeps it from holding up request handling for the default 5 ms at a time (measured: bench/serve_hotswap).
    sys.setswitchinterval(0.0005)
    # Each model version runs its batches on a thread of its own, so TensorFlow's pool for running independent ops
    # side by side only adds thread hand-offs: one thread served LeNet at c=1 and c=8 ~25% faster here.
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    metrics = ServerMetrics()
    repo = ModelRepository(
        ws, metrics,
        max_batch=max_batch or int(settings.SERVE_MAX_BATCH.get()),
        max_wait=(max_wait_ms if max_wait_ms is not None else float(settings.SERVE_MAX_WAIT_MS.get())) / 1000.0,
        keep=keep or int(settings.SERVE_KEEP_VERSIONS.get()),
        poll=poll or float(settings.SERVE_POLL_S.get()),
    )
    sample = log_sample if log_sample is not None else float(settings.SERVE_LOG_SAMPLE.get())
    predlog = PredictionLog(db_path(ws), on_drop=lambda: metrics.log_dropped.inc()) if sample > 0 else None
    max_body = int((max_body_mb or float(settings.SERVE_MAX_BODY_MB.get())) * 1024 * 1024)
    app = ServerApp(repo, metrics, predlog, sample)
    preload = settings.SERVE_PRELOAD.get()
    repo.start(prepare=lambda: _preload(repo, preload))
    try:
        _run(_serve_until_signal(HTTPServer(app, max_body=max_body, keep_alive=60), host, port, str(ws.models)))
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


async def _serve_until_signal(server: HTTPServer, host: str, port: int, models: str) -> None:
    await server.start(host, port)
    print(f"serving models from {models} on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown(grace=10)


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
