"""``workbench up / down / status``: the workbench's long-running services as local processes.

``up`` starts each service in a process group of its own, records them in
``state/services.json`` and stays in the foreground; Ctrl-C, SIGTERM or
``workbench down`` stop them all (whole process trees, no orphans).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.backends.local import processes
from workbench.errors import ServiceError
from workbench.workspace import Workspace, read_json, write_json_atomic


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


def _jupyter(ws: Workspace, o: Options, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--ip={o.host}",
        f"--port={port}",
        f"--IdentityProvider.token={o.token}",
        f"--ServerApp.root_dir={o.root_dir.resolve()}",
        "--ServerApp.port_retries=0",
        *(["--allow-root"] if os.geteuid() == 0 else []),  # containers and CI often run as root
    ]


def _tensorboard(ws: Workspace, o: Options, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tensorboard.main",
        f"--logdir={ws.runs}",
        f"--host={o.host}",
        f"--port={port}",
        "--reload_interval=2",
        "--reload_multifile=true",
    ]


SERVICES: dict[str, ServiceDef] = {
    "jupyter": ServiceDef(
        "jupyter",
        8888,
        _jupyter,
        lambda o: f"/api/status?token={o.token}",
        lambda o, p: f"http://{o.host}:{p}/lab?token={o.token}",
    ),
    "tensorboard": ServiceDef(
        "tensorboard", 6006, _tensorboard, lambda o: "/data/runs", lambda o, p: f"http://{o.host}:{p}/"
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


class Services:
    """The running services of one ``workbench up``."""

    def __init__(self, workspace: Workspace, options: Options):
        self.workspace = workspace
        self.options = options
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.info: dict[str, dict[str, Any]] = {}

    def start(self, timeout: float = 90) -> dict[str, dict[str, Any]]:
        ws = self.workspace
        o = self.options
        existing = read_json(ws.services_file) if ws.services_file.exists() else {}
        if existing and processes.alive(existing.get("pid")):
            raise ServiceError(
                f"the workbench already runs for {ws.root} (pid {existing['pid']}); run `workbench down` first"
            )
        logs = ws.state / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "WORKBENCH_WORKSPACE": str(ws.root)}
        names = [n for n in SERVICES if not o.enabled or n in o.enabled]
        for name in names:
            svc = SERVICES[name]
            wanted = (o.ports or {}).get(name) or svc.default_port
            port = _port_for(name, wanted, o.host)
            log = open(logs / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(
                svc.command(ws, o, port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            log.close()
            self.info[name] = {
                "pid": self.procs[name].pid,
                "port": port,
                "url": svc.url(o, port),
                "health": f"http://{o.host}:{port}{svc.health_path(o)}",
                "log": str(logs / f"{name}.log"),
            }
        write_json_atomic(ws.services_file, {"pid": os.getpid(), "services": self.info, "started": time.time()})
        self._wait_healthy(timeout)
        return self.info

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.info)
        while pending:
            for name in sorted(pending):
                if self.procs[name].poll() is not None:
                    self.stop()
                    raise ServiceError(f"{name} exited at start; see {self.info[name]['log']}")
                if _healthy(self.info[name]["health"]):
                    pending.discard(name)
                    print(f"  {name:<12} ready  {self.info[name]['url']}", flush=True)
            if pending and time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{', '.join(sorted(pending))} did not answer within {timeout:.0f} s")
            time.sleep(0.3)

    def stop(self) -> None:
        processes.kill_trees([p.pid for p in self.procs.values()], grace=10)
        for p in self.procs.values():
            p.wait()
        try:
            if read_json(self.workspace.services_file).get("pid") == os.getpid():
                self.workspace.services_file.unlink()
        except (OSError, ValueError):
            pass

    def run_forever(self) -> None:
        """Block until Ctrl-C / SIGTERM, then stop everything. A service that dies is reported."""
        stop = {"now": False}

        def on_signal(signum: int, frame: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        reported: set[str] = set()
        try:
            while not stop["now"]:
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
    if not options.token:
        options = Options(**{**options.__dict__, "token": secrets.token_hex(16)})
    services = Services(workspace.ensure(), options)
    services.start()
    return services


def down(workspace: Workspace, timeout: float = 30) -> bool:
    """Stop the ``workbench up`` of this workspace; return False when none ran."""
    try:
        data = read_json(workspace.services_file)
    except (OSError, ValueError):
        return False
    pid = data.get("pid")
    if processes.alive(pid):
        os.kill(pid, signal.SIGTERM)
        if processes.wait_for(lambda: not processes.alive(pid), timeout):
            return True
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
