"""``workbench up / status / down`` with the real JupyterLab and TensorBoard processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from workbench.backends.local.processes import alive, free_ports, wait_for

pytestmark = pytest.mark.slow


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def start_up(workspace: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], dict]:
    ports = free_ports(3)
    cmd = [
        sys.executable,
        "-m",
        "workbench",
        "up",
        "--token",
        "sekret",
        "--root-dir",
        str(tmp_path),
        "--jupyter-port",
        str(ports[0]),
        "--tensorboard-port",
        str(ports[1]),
        "--server-port",
        str(ports[2]),
    ]
    with open(tmp_path / "up.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=os.environ)
    services = workspace / "state" / "services.json"
    ready = lambda: "Ctrl-C" in (tmp_path / "up.log").read_text()  # noqa: E731
    assert wait_for(lambda: ready() or proc.poll() is not None, 180, interval=0.5), (tmp_path / "up.log").read_text()
    assert proc.poll() is None, (tmp_path / "up.log").read_text()
    return proc, json.loads(services.read_text())


def test_up_status_down(workspace, tmp_path):
    proc, state = start_up(workspace, tmp_path)
    info = state["services"]
    try:
        out = (tmp_path / "up.log").read_text()
        jupyter = info["jupyter"]
        assert f"http://127.0.0.1:{jupyter['port']}/lab?token=sekret" in out
        assert http_status(f"http://127.0.0.1:{jupyter['port']}/api/status?token=sekret") == 200
        assert http_status(f"http://127.0.0.1:{jupyter['port']}/api/status") == 403  # token required
        assert http_status(f"http://127.0.0.1:{info['tensorboard']['port']}/tensorboard/data/runs") == 200
        # one port: TensorBoard inside JupyterLab, behind its token
        inside = f"http://127.0.0.1:{jupyter['port']}/tensorboard/data/runs"
        assert http_status(f"{inside}?token=sekret") == 200
        try:
            with urllib.request.urlopen(inside, timeout=5) as r:
                landed = r.url  # redirected to the login page
        except urllib.error.HTTPError as e:
            landed = str(e.code)
        assert "login" in landed or landed == "403", landed
        assert psutil.Process(jupyter["pid"]).environ()["TF_CPP_MIN_LOG_LEVEL"] == "2"  # kernels inherit it

        status = subprocess.run([sys.executable, "-m", "workbench", "status"], capture_output=True, text=True)
        assert status.returncode == 0
        assert "jupyter" in status.stdout and "tensorboard" in status.stdout and " up " in status.stdout

        again = subprocess.run([sys.executable, "-m", "workbench", "up"], capture_output=True, text=True)
        assert again.returncode == 2 and "already runs" in again.stderr

        down = subprocess.run([sys.executable, "-m", "workbench", "down"], capture_output=True, text=True)
        assert down.returncode == 0 and "stopped" in down.stdout
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    pids = [s["pid"] for s in info.values()]
    assert wait_for(lambda: not any(alive(p) for p in pids), 20), "a service outlived `workbench down`"
    assert not (workspace / "state" / "services.json").exists()
    status = subprocess.run([sys.executable, "-m", "workbench", "status"], capture_output=True, text=True)
    assert "not running" in status.stdout


def test_ctrl_c_stops_everything(workspace, tmp_path):
    proc, state = start_up(workspace, tmp_path)
    pids = [s["pid"] for s in state["services"].values()]
    assert all(alive(p) for p in pids)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    assert not any(alive(p) for p in pids)
    assert "stopped" in (tmp_path / "up.log").read_text()


def test_jupyter_token_is_in_no_command_line(workspace, tmp_path):
    token = "tok-" + os.urandom(8).hex()
    port = free_ports(1)[0]
    env = {**os.environ, "WORKBENCH_JUPYTER_TOKEN": token}
    cmd = [sys.executable, "-m", "workbench", "up", "--without", "tensorboard", "--without", "server"]
    with open(tmp_path / "up.log", "w") as log:
        proc = subprocess.Popen(
            [*cmd, "--jupyter-port", str(port), "--root-dir", str(tmp_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        ready = lambda: "Ctrl-C" in (tmp_path / "up.log").read_text()  # noqa: E731
        assert wait_for(lambda: ready() or proc.poll() is not None, 120, interval=0.5), (
            tmp_path / "up.log"
        ).read_text()
        assert http_status(f"http://127.0.0.1:{port}/api/status?token={token}") == 200
        assert http_status(f"http://127.0.0.1:{port}/api/status") == 403
        seen = []
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and token.encode() in (p / "cmdline").read_bytes():
                    seen.append(p.name)
            except OSError:
                continue
        assert not seen, f"the token is in the command line of {seen}"
        services = workspace / "state" / "services.json"
        assert oct(services.stat().st_mode & 0o777) == "0o600"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
