"""The servers the serving benchmarks start and stop (a helper, not a benchmark of its own).

All listen on 127.0.0.1, on ports picked at run time, and log to a file each.

- :func:`start_workbench`: ``python -m workbench serve`` over a workspace, this checkout's, or with ``checkout``
  another one's (``bench/out/old-server``, the C server of ``5a4e060``; ``scripts/bench-setup.sh`` builds it), by
  ``PYTHONPATH``. gRPC on ``--grpc-port`` when that server has the flag.
- :func:`start_mlserver`: MLServer 1.7 from ``.venv-mlserver`` serving the same SavedModel version folders
  through ``bench/_mlserver_runtime.py``, with its adaptive batching, REST and gRPC (KServe V2 both).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MLSERVER = ROOT / ".venv-mlserver" / "bin" / "mlserver"
OLD_SERVER = ROOT / "bench" / "out" / "old-server"
OLD_SERVER_COMMIT = "5a4e060"


@dataclass
class Server:
    """A started server: its process, REST base URL and gRPC address (``host:port``, or None without gRPC)."""

    name: str
    proc: subprocess.Popen[bytes]
    rest: str
    grpc: str | None
    log: Path

    def stop(self) -> None:
        stop(self.proc)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 just now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"{url} not ready after {timeout} s; see {log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def old_server_missing() -> str | None:
    """Why the old C server cannot run here, or None."""
    if not list((OLD_SERVER / "workbench" / "serving").glob("_native*.so")):
        return f"no built checkout of {OLD_SERVER_COMMIT} in {OLD_SERVER} (bash scripts/bench-setup.sh)"
    return None


def mlserver_missing() -> str | None:
    """Why MLServer cannot run here, or None."""
    return None if MLSERVER.exists() else f"{MLSERVER} is missing (bash scripts/bench-setup.sh)"


def _env(workspace: Path, checkout: Path | None) -> dict[str, str]:
    env = {**os.environ, "WORKBENCH_WORKSPACE": str(workspace), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def serve_flags(checkout: Path | None = None) -> str:
    """``workbench serve --help`` of that checkout (which flags it has)."""
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "serve", "--help"],
        env=_env(Path("."), checkout),
        cwd=checkout or ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout


def start_workbench(
    name: str,
    workspace: Path,
    log: Path,
    models: list[str],
    *,
    checkout: Path | None = None,
    workers: str | None = None,
    grpc: bool = True,
    own_session: bool = False,
) -> Server:
    """``workbench serve`` (of ``checkout`` if given) over ``workspace``, ready once each of ``models`` is (with
    none, once it answers);
    ``own_session``: in a session of its own, as ``workbench up`` starts it."""
    env = _env(workspace, checkout)
    if checkout is not None:  # the old code must be what runs, not this checkout's
        where = subprocess.run(
            [sys.executable, "-c", "import workbench; print(workbench.__file__)"],
            env=env,
            cwd=checkout,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not where.startswith(str(checkout)):
            raise RuntimeError(f"PYTHONPATH={checkout} imports workbench from {where}")
    flags = serve_flags(checkout)
    if grpc and "--grpc-port" in flags:
        try:
            return _start(name, env, checkout, log, models, workers, own_session, grpc=True)
        except RuntimeError as e:  # a server whose gRPC does not start yet: its REST rows still count
            print(f"{name} server: no gRPC ({e}); starting it with --grpc-port 0", flush=True)
            log = log.with_suffix(".no-grpc.log")
    return _start(name, env, checkout, log, models, workers, own_session, grpc=False, flag="--grpc-port" in flags)


def _start(
    name: str,
    env: dict[str, str],
    checkout: Path | None,
    log: Path,
    models: list[str],
    workers: str | None,
    own_session: bool,
    *,
    grpc: bool,
    flag: bool = True,
) -> Server:
    port, grpc_port = free_ports(2)
    args = [sys.executable, "-m", "workbench", "serve", "--port", str(port)]
    if flag:
        args += ["--grpc-port", str(grpc_port if grpc else 0)]
    if workers:
        args += ["--workers", workers]
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=checkout or ROOT, start_new_session=own_session
        )
    url = f"http://127.0.0.1:{port}"
    for ready in [f"{url}/v2/models/{model}/ready" for model in models] or [f"{url}/v2/health/live"]:
        wait_ready(ready, proc, log)
    return Server(name, proc, url, f"127.0.0.1:{grpc_port}" if grpc else None, log)


def start_mlserver(models: dict[str, Path], folder: Path, log: Path) -> Server:
    """MLServer serving each ``name -> SavedModel version folder`` of ``models``."""
    http, grpc, metrics = free_ports(3)
    for name, version_dir in models.items():
        model = folder / name
        model.mkdir(parents=True)
        # MLServer puts a model's folder on sys.path and imports its runtime from there
        shutil.copy(Path(__file__).with_name("_mlserver_runtime.py"), model / "bench_runtime.py")
        settings = {
            "name": name,
            "implementation": "bench_runtime.SavedModelRuntime",
            "parameters": {"uri": str(version_dir)},
            "max_batch_size": 64,
            "max_batch_time": 0.002,
        }
        (model / "model-settings.json").write_text(json.dumps(settings))
    server = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "debug": False,
        # inference in the server process: MLServer 1.7's worker pool fails at start with uvloop >= 0.22, and
        # for small models one process is also MLServer's faster setting
        "parallel_workers": 0,
    }
    (folder / "settings.json").write_text(json.dumps(server))
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [str(MLSERVER), "start", str(folder)],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    url = f"http://127.0.0.1:{http}"
    for name in models:
        wait_ready(f"{url}/v2/models/{name}/ready", proc, log, timeout=180)
    return Server("MLServer", proc, url, f"127.0.0.1:{grpc}", log)
