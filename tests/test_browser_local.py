"""TensorBoard inside the JupyterLab of ``workbench up`` (one port), in a real headless browser.

Debian's chromium driven by Playwright (installed by scripts/setup-k8s.sh, as for tests/k8s/test_browser.py).
Two runs written with TensorBoard's hparams summary API must show in the HPARAMS dashboard, loaded through
JupyterLab's proxy at ``/tensorboard/``, with no request failing or leaving that prefix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.backends.local.processes import free_ports, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
RUNS = {"hp-run-a-0001": {"lr": 0.01, "units": 32}, "hp-run-b-0002": {"lr": 0.1, "units": 64}}

HPARAMS = """
import json, sys, time
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api as hp
from tensorboard.summary.writer.event_file_writer import EventFileWriter

runs = json.loads(sys.argv[2])
for run_id, params in runs.items():
    writer = EventFileWriter(f"{sys.argv[1]}/{run_id}/tb")
    writer.add_event(Event(wall_time=time.time(), summary=hp.hparams_pb(params, trial_id=run_id)))
    for step in range(3):
        value = Summary.Value(tag="accuracy", simple_value=0.5 + 0.1 * step + params["lr"])
        writer.add_event(Event(step=step, wall_time=time.time(), summary=Summary(value=[value])))
    writer.close()
"""


@pytest.fixture
def up(workspace: Path, tmp_path: Path):
    """``workbench up`` (JupyterLab and TensorBoard) over a workspace holding the two hparams runs."""
    runs = workspace / "runs"
    runs.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", HPARAMS, str(runs), json.dumps(RUNS)], check=True, timeout=300)
    jupyter_port, tb_port = free_ports(2)
    env = {**os.environ, "WORKBENCH_JUPYTER_TOKEN": "browser-token", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "workbench", "up", "--without", "server", "--root-dir", str(tmp_path)]
    cmd += ["--jupyter-port", str(jupyter_port), "--tensorboard-port", str(tb_port)]
    log = tmp_path / "up.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        assert wait_for(lambda: "Ctrl-C" in log.read_text() or proc.poll() is not None, 180, 0.5), log.read_text()
        assert proc.poll() is None, log.read_text()
        yield f"http://127.0.0.1:{jupyter_port}/", "browser-token"
    finally:
        proc.terminate()
        proc.wait(60)
        print(log.read_text()[-3000:])


def test_tensorboard_through_jupyterlab_shows_the_hparams_of_runs(up, tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "chromium is missing: run scripts/setup-k8s.sh"
    base, token = up
    failed: list[str] = []
    escaped: list[str] = []
    groups: list = []

    def watch(response) -> None:
        url = response.url
        if url.startswith("http://127.0.0.1") and not url.startswith(base):
            escaped.append(url)
        if "/tensorboard/" in url and response.status >= 400:
            failed.append(f"{response.status} {url}")
        if response.ok and url.startswith(f"{base}tensorboard/data/plugin/hparams/session_groups"):
            groups.append(response)

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
            page.goto(f"{base}lab?token={token}", wait_until="domcontentloaded")  # the login: JupyterLab's cookie
            page.locator(".jp-LauncherCard", has_text="TensorBoard").wait_for(timeout=90_000)
            page.goto(f"{base}tensorboard/#hparams", wait_until="domcontentloaded")
            for run_id in RUNS:
                page.get_by_text(run_id).first.wait_for(timeout=120_000)
            page.get_by_text("units").first.wait_for(timeout=30_000)
            deadline = time.monotonic() + 30
            while not groups and time.monotonic() < deadline:
                page.wait_for_timeout(500)
            data = [r.text() for r in groups]
        finally:
            page.screenshot(path=str(tmp_path / "hparams.png"))
            browser.close()

    assert groups, "the HPARAMS dashboard never fetched its session groups through the proxy"
    assert any(all(run_id in d for run_id in RUNS) and '"lr"' in d for d in data), data[:2]
    assert not failed, f"requests through the proxy failed: {failed}"
    assert not escaped, f"requests left JupyterLab's address: {escaped}"
