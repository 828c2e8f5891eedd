"""TensorBoard inside JupyterLab, in a real headless browser (Debian's chromium driven by Playwright).

JupyterLab runs behind a path prefix (``--ServerApp.base_url=/wb/``) with the jupyter image's own
settings (images/jupyter/jupyter_server_config.py): jupyter-server-proxy serves TensorBoard at
``/wb/tensorboard/``. The browser logs in with the token, opens TensorBoard from JupyterLab's
launcher, and must see the job's scalars, with no request of the page failing or escaping the prefix.
Both ways the image works are checked: TensorBoard started by the proxy (the image on its own), and an
already running TensorBoard on a local port (the chart's sidecar, WORKBENCH_TENSORBOARD_PORT).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.tooling import IMAGES, free_port, wait_http

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
RUN_ID = "browser-smoke-0001"
TAGS = ("epoch_loss", "epoch_accuracy")

EVENTS = """
import sys
import tensorflow as tf
logdir = sys.argv[1]
for run, offset in (("train", 0.0), ("validation", 0.1)):
    with tf.summary.create_file_writer(f"{logdir}/{run}").as_default():
        for step in range(5):
            tf.summary.scalar("epoch_loss", 1.0 / (step + 1) + offset, step=step)
            tf.summary.scalar("epoch_accuracy", 0.5 + 0.1 * step - offset, step=step)
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with one run's TensorBoard events, as a Keras job writes them (train / validation)."""
    ws = tmp_path_factory.mktemp("browser") / "workspace"
    tb = ws / "runs" / RUN_ID / "tb"
    tb.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", EVENTS, str(tb)], check=True, timeout=300, capture_output=True)
    return ws


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)  # the whole group: jupyter and the TensorBoard its proxy started
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.fixture(params=["started-by-proxy", "sidecar"])
def jupyterlab(request: pytest.FixtureRequest, workspace: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """JupyterLab at http://127.0.0.1:<port>/wb/ with the jupyter image's settings; yields (base URL, token)."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "WORKBENCH_WORKSPACE": str(workspace),
        "JUPYTER_TOKEN": uuid.uuid4().hex,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "HOME": str(tmp_path),
    }
    procs = []
    if request.param == "sidecar":  # as in the chart: its own process, same prefix, found by port
        tb_port = free_port()
        procs.append(
            start(
                [
                    str(bin_dir / "tensorboard"),
                    f"--logdir={workspace / 'runs'}",
                    "--host=127.0.0.1",
                    f"--port={tb_port}",
                    "--path_prefix=/wb/tensorboard",
                ],
                tmp_path / "tensorboard.log",
                env,
            )
        )
        env["WORKBENCH_TENSORBOARD_PORT"] = str(tb_port)
    port = free_port()
    procs.append(
        start(
            [
                str(bin_dir / "jupyter"),
                "lab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={port}",
                "--ServerApp.base_url=/wb/",
                f"--ServerApp.root_dir={workspace}",
                "--allow-root",
                f"--config={IMAGES / 'jupyter' / 'jupyter_server_config.py'}",
            ],
            tmp_path / "jupyter.log",
            env,
        )
    )
    base = f"http://127.0.0.1:{port}/wb/"
    try:
        wait_http(f"{base}api/status", 90, procs[-1], params={"token": env["JUPYTER_TOKEN"]})
        yield base, env["JUPYTER_TOKEN"]
    finally:
        for proc in procs:
            stop(proc)
        for log in tmp_path.glob("*.log"):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def test_tensorboard_in_jupyterlab_shows_the_jobs_scalars(jupyterlab: tuple[str, str], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "chromium is missing: run scripts/setup-k8s.sh"
    base, token = jupyterlab
    failed: list[str] = []
    escaped: list[str] = []
    scalars: list = []  # responses carrying scalar data (the Time Series dashboard, or the Scalars one)

    seen: list[str] = []

    def watch(response) -> None:  # every response of every page in the context
        url = response.url
        seen.append(f"{response.request.method} {response.status} {url}")
        if url.startswith("http://127.0.0.1") and not url.startswith(base):
            escaped.append(url)
        if response.status >= 400 and "/tensorboard/" in url:
            failed.append(f"{response.status} {url}")
        series = ("/data/plugin/timeseries/timeSeries", "/data/plugin/scalars/scalars")
        if response.ok and url.startswith(f"{base}tensorboard/") and any(p in url for p in series):
            scalars.append(response)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.on("response", watch)
        page = context.new_page()
        try:
            page.goto(f"{base}lab?token={token}", wait_until="domcontentloaded")
            card = page.locator(".jp-LauncherCard", has_text="TensorBoard")
            card.wait_for(timeout=90_000)  # jupyter-server-proxy's launcher entry, in JupyterLab itself
            with context.expect_page(timeout=60_000) as opened:
                card.click()
            tb = opened.value
            tb.wait_for_url(f"{base}tensorboard/**", timeout=90_000)
            # The scalars dashboard lists the run and draws a card per tag.
            for tag in TAGS:
                tb.get_by_text(tag, exact=True).first.wait_for(timeout=120_000)
            tb.get_by_text(f"{RUN_ID}/tb/train").first.wait_for(timeout=30_000)
            tb.locator("canvas, svg path.line, .line-chart").first.wait_for(timeout=60_000)
            deadline = time.monotonic() + 30
            while not scalars and time.monotonic() < deadline:
                tb.wait_for_timeout(500)
            data = [r.text() for r in scalars]
        finally:
            page.screenshot(path=str(tmp_path / "jupyterlab.png"))
            for other in context.pages[1:]:
                other.screenshot(path=str(tmp_path / "tensorboard.png"))
            browser.close()

    assert scalars, f"the page never fetched scalar data through the proxy: {[u for u in seen if '/data/' in u]}"
    # The series drawn are the job's: its run, its tag, its last step's value (0.2 = 1 / 5).
    assert any(RUN_ID in d and "epoch_loss" in d and "0.2" in d for d in data), data[:3]
    assert not failed, f"requests through the proxy failed: {failed}"
    assert not escaped, f"requests escaped the /wb/ prefix: {escaped}"
