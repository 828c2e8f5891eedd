"""``workbench up / down / status``: the workbench's long-running services as local processes.

``up`` starts each service in a process group of its own, records them in
``state/services.json`` and stays in the foreground; Ctrl-C, SIGTERM or
``workbench down`` stop them all (whole process trees, no orphans).

One ``up`` per workspace: it holds an OS lock on ``state/up.lock`` (released by
the kernel however it ends) for as long as its services run. It records itself
in ``services.json`` before it starts anything and each service as it starts,
and it stops on SIGTERM at any moment of its start-up, so ``down`` never leaves
a process behind. The JupyterLab token goes through the environment
(``JUPYTER_TOKEN``), never the command line, where any local user could read it.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from workbench import settings
from workbench.backends.local import processes
from workbench.errors import ServiceError
from workbench.workspace import Workspace, open_private, read_json, write_json_atomic


@dataclass(frozen=True)
class Options:
    host: str = "127.0.0.1"
    root_dir: Path = Path(".")
    token: str = ""
    ports: dict[str, int] | None = None  # service name -> port; missing or 0 -> default, else a free one
    enabled: tuple[str, ...] = ()  # empty: all


@dataclass(frozen=True)
class ServiceDef:
    name: str
    default_port: int
    command: Callable[[Workspace, Options, int], list[str]]
    health_path: Callable[[Options], str]
    url: Callable[[Options, int], str]
    env: Callable[[Options], dict[str, str]] = lambda o: {}  # secrets go here, never into ``command``


def _jupyter(ws: Workspace, o: Options, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--ip={o.host}",
        f"--port={port}",
        f"--ServerApp.root_dir={o.root_dir.resolve()}",
        "--ServerApp.port_retries=0",
        *(["--allow-root"] if os.geteuid() == 0 else []),  # containers and CI often run as root
    ]


def _tensorboard(ws: Workspace, o: Options, port: int) -> list[str]:
    return [
        tensorboard_python(ws),
        "-m",
        "tensorboard.main",
        f"--logdir={ws.url + '/runs' if ws.url else ws.runs}",
        f"--host={o.host}",
        f"--port={port}",
        f"--path_prefix=/{TB_PREFIX}",  # as proxied by JupyterLab at /tensorboard/ (workbench.jupyter_config)
        "--reload_interval=2",
        "--reload_multifile=true",
    ]


def tensorboard_python(ws: Workspace) -> str:
    """The interpreter TensorBoard runs in. TensorBoard reads an ``s3://`` logdir only without TensorFlow beside
    it (with TensorFlow it answers "Unsupported filename scheme"), so a bucket workspace needs an environment of
    its own: ``WORKBENCH_TENSORBOARD_PYTHON``, else ``.venv-tensorboard`` (scripts/setup-tensorboard.sh)."""
    given = settings.TENSORBOARD_PYTHON.get()
    if given:
        return given
    if not ws.url:
        return sys.executable
    for root in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = root / ".venv-tensorboard" / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    raise ServiceError(
        f"TensorBoard for {ws.url} needs an environment with tensorboard and boto3 and without TensorFlow: run "
        f"scripts/setup-tensorboard.sh, or set {settings.TENSORBOARD_PYTHON.name} to such a Python"
    )


def _s3_env() -> dict[str, str]:
    """TensorBoard's S3 reader (boto3) takes its endpoint from ``S3_ENDPOINT``; the workbench's is AWS's name."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return {"S3_ENDPOINT": endpoint} if endpoint and not os.environ.get("S3_ENDPOINT") else {}


TB_PREFIX = "tensorboard"

SERVICES: dict[str, ServiceDef] = {
    # TensorBoard first: JupyterLab proxies it at /tensorboard/ and learns its port at start.
    "tensorboard": ServiceDef(
        "tensorboard",
        6006,
        _tensorboard,
        lambda o: f"/{TB_PREFIX}/data/runs",
        lambda o, p: f"http://{o.host}:{p}/{TB_PREFIX}/",
    ),
    "jupyter": ServiceDef(
        "jupyter",
        8888,
        _jupyter,
        lambda o: f"/api/status?token={o.token}",
        lambda o, p: f"http://{o.host}:{p}/lab?token={o.token}",
        lambda o: {"JUPYTER_TOKEN": o.token},  # IdentityProvider.token's environment variable
    ),
    # The model server (workbench.serving): TF Serving's REST port; predict() finds it through services.json.
    "server": ServiceDef(
        "server",
        8501,
        lambda ws, o, port: [
            *(sys.executable, "-m", "workbench", "serve", "--host", o.host, "--port", str(port)),
            *("--grpc-port", str(_port_for("the server's gRPC", 8500, o.host))),
        ],
        lambda o: "/v2/health/live",
        lambda o, p: f"http://{o.host}:{p}",
    ),
}


def register(service: ServiceDef) -> None:
    """Add a service that ``workbench up`` starts (the model server registers itself this way)."""
    SERVICES[service.name] = service


def read_services(ws: Workspace) -> dict[str, Any]:
    try:
        data: dict[str, Any] = read_json(ws.services_file)
    except (OSError, ValueError):
        return {}
    return data.get("services", {}) if processes.alive(data.get("pid")) else {}


def _port_for(name: str, wanted: int, host: str) -> int:
    with socket.socket() as s:
        try:
            s.bind((host, wanted))
            return wanted
        except OSError:
            pass
    free = processes.free_ports(1)[0]
    print(f"  port {wanted} is taken; {name} uses {free}", flush=True)
    return free


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status < 500)
    except (urllib.error.URLError, OSError):
        return False


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Stopped(Exception):
    """``workbench down`` (SIGTERM) or Ctrl-C came while ``up`` was starting."""


class Services:
    """The running services of one ``workbench up``."""

    def __init__(self, workspace: Workspace, options: Options):
        self.workspace = workspace
        self.options = options
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self.lock = FileLock(str(workspace.state / "up.lock"), mode=0o600)
        self.stopping = False

    def start(self, timeout: float = 90) -> dict[str, dict[str, Any]]:
        """Take the workspace's lock, then start and record each service; wait until all answer. SIGTERM or
        Ctrl-C at any moment stops what was started and raises :class:`ServiceError`."""
        ws = self.workspace
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise ServiceError(
                f"the workbench already runs for {ws.root} (pid {_up_pid(ws) or 'starting'}); run `workbench down` "
                "first"
            ) from None
        self._catch_stop_signals()
        try:
            self._record()  # before anything starts: `down` finds this process from now on
            self._start_all()
            self._wait_healthy(timeout)
        except BaseException as e:
            self.stop()
            if isinstance(e, Stopped):
                raise ServiceError("stopped while starting (`workbench down` or Ctrl-C)") from None
            raise
        return self.info

    def _catch_stop_signals(self) -> None:
        def on_signal(signum: int, frame: object) -> None:
            self.stopping = True

        if not _main_thread():
            return  # (signals reach the main thread only) started from a notebook's thread: stop() ends it
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _check_stop(self) -> None:
        if self.stopping:
            raise Stopped()

    def _record(self) -> None:
        write_json_atomic(
            self.workspace.services_file, {"pid": os.getpid(), "services": self.info, "started": time.time()}
        )

    def _start_all(self) -> None:
        ws, o = self.workspace, self.options
        logs = ws.state / "logs"
        logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {
            **os.environ,
            **_s3_env(),
            "WORKBENCH_WORKSPACE": ws.location,
            # quiet TensorFlow C++ logs in notebook kernels and the model server, unless the user set a level
            "TF_CPP_MIN_LOG_LEVEL": settings.TF_CPP_MIN_LOG_LEVEL.get(),
        }
        names = [n for n in SERVICES if not o.enabled or n in o.enabled]
        for name in names:
            self._check_stop()
            svc = SERVICES[name]
            wanted = (o.ports or {}).get(name) or svc.default_port
            port = _port_for(name, wanted, o.host)
            with open_private(logs / f"{name}.log") as log:
                self.procs[name] = subprocess.Popen(
                    svc.command(ws, o, port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**env, **svc.env(o), **(self._jupyter_env(env) if name == "jupyter" else {})},
                    start_new_session=True,
                    # a service dies with this process even on kill -9 (then the lock is free for the next `up`)
                    preexec_fn=processes.dying_with_parent() if _main_thread() else None,
                )
            self.info[name] = {
                "pid": self.procs[name].pid,
                "port": port,
                "url": svc.url(o, port),
                "health": f"http://{o.host}:{port}{svc.health_path(o)}",
                "log": str(logs / f"{name}.log"),
            }
            self._record()

    def _jupyter_env(self, env: dict[str, str]) -> dict[str, str]:
        """JupyterLab's settings for TensorBoard at /tensorboard/ (workbench.jupyter_config), the user's own
        Jupyter config still read (``JUPYTER_CONFIG_PATH`` adds a folder)."""
        from workbench.jupyter_config import config_dir

        extra = {
            "JUPYTER_CONFIG_PATH": os.pathsep.join(p for p in (str(config_dir()), env.get("JUPYTER_CONFIG_PATH")) if p)
        }
        if "tensorboard" in self.info:
            extra[settings.TENSORBOARD_PORT_VAR] = str(self.info["tensorboard"]["port"])
        return extra

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.info)
        while pending:
            for name in sorted(pending):
                self._check_stop()
                if self.procs[name].poll() is not None:
                    raise ServiceError(f"{name} exited at start; see {self.info[name]['log']}")
                if _healthy(self.info[name]["health"]):
                    pending.discard(name)
                    print(f"  {name:<12} ready  {self.info[name]['url']}", flush=True)
            if pending and time.monotonic() > deadline:
                raise ServiceError(f"{', '.join(sorted(pending))} did not answer within {timeout:.0f} s")
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop every service started (whole process trees), forget them, release the workspace's lock."""
        processes.kill_trees([p.pid for p in self.procs.values()], grace=10)
        for p in self.procs.values():
            p.wait()
        try:
            if read_json(self.workspace.services_file).get("pid") == os.getpid():
                self.workspace.services_file.unlink()
        except (OSError, ValueError):
            pass
        if self.lock.is_locked:
            self.lock.release(force=True)

    def run_forever(self) -> None:
        """Block until Ctrl-C / SIGTERM, then stop everything. A service that dies is reported."""
        self._catch_stop_signals()
        reported: set[str] = set()
        try:
            while not self.stopping:
                for name, p in self.procs.items():
                    if p.poll() is not None and name not in reported:
                        reported.add(name)
                        print(f"{name} exited with code {p.returncode}; see {self.info[name]['log']}", flush=True)
                time.sleep(0.5)
        finally:
            print("stopping the workbench...", flush=True)
            self.stop()
            print("stopped", flush=True)


def up(workspace: Workspace, options: Options) -> Services:
    """Start the services (see :class:`Services`); the token is ``options.token``, else
    ``WORKBENCH_JUPYTER_TOKEN``, else a random one."""
    if not options.token:
        token = settings.JUPYTER_TOKEN.get() or secrets.token_hex(16)
        options = Options(**{**options.__dict__, "token": token})
    services = Services(workspace.ensure(), options)
    services.start()
    try:
        from workbench.backends import reconcile

        reconcile(workspace)  # jobs whose supervisor died while nothing watched are failed now
    except Exception as e:  # noqa: BLE001 - the services run; a job database problem is reported, not fatal here
        print(f"note: the job database could not be checked: {e}", flush=True)
    return services


def _up_pid(workspace: Workspace) -> int | None:
    try:
        pid = read_json(workspace.services_file).get("pid")
    except (OSError, ValueError):
        return None
    return pid if processes.alive(pid) else None


def down(workspace: Workspace, timeout: float = 30) -> bool:
    """Stop the ``workbench up`` of this workspace, also one still starting; return False when none ran."""
    lock = FileLock(str(workspace.state / "up.lock"), mode=0o600)
    if workspace.state.is_dir():
        try:
            lock.acquire(timeout=0)
            lock.release()  # nobody holds it: no `up` runs (what services.json says is stale)
        except Timeout:
            # an `up` holds it; it records its pid before it starts anything
            processes.wait_for(lambda: _up_pid(workspace) is not None, 10)
    try:
        data = read_json(workspace.services_file)
    except (OSError, ValueError):
        return False
    pid = data.get("pid")
    if processes.alive(pid):
        os.kill(pid, signal.SIGTERM)
        if processes.wait_for(lambda: not processes.alive(pid), timeout):
            return True
        data = read_json(workspace.services_file) if workspace.services_file.exists() else data
    # The `up` process is gone or stuck: stop what it started ourselves.
    pids = [s["pid"] for s in data.get("services", {}).values() if processes.alive(s["pid"])]
    processes.kill_trees(pids, grace=10)
    if pid and processes.alive(pid):
        os.kill(pid, signal.SIGKILL)
    workspace.services_file.unlink(missing_ok=True)
    return True


def status(workspace: Workspace) -> dict[str, dict[str, Any]]:
    """Each service of this workspace's ``workbench up``, with whether it answers now."""
    info = read_services(workspace)
    for item in info.values():
        item["alive"] = processes.alive(item["pid"])
        item["healthy"] = item["alive"] and _healthy(item["health"])
    return info
