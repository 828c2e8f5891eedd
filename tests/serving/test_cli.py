"""``workbench promote``, ``workbench models`` and the server that ``workbench up`` starts, as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import workbench as wb
from workbench.backends.local.processes import free_ports

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=600)


def test_promote_and_models_commands(trained, server):
    r = cli("promote", trained.id[:12], "--model", "cli", "--checkpoint", "best", "--metric", "val_accuracy")
    assert r.returncode == 0, r.stderr
    best = max(trained.checkpoints(), key=lambda c: c.metrics["val_accuracy"])
    assert r.stdout.startswith(f"cli version 1  (step {best.step}")
    r = cli("models", "cli", "--label", "stable=1")
    assert r.returncode == 0, r.stderr
    assert "cli  live 1  stable=1" in r.stdout and trained.id in r.stdout
    r = cli("models", "cli", "--rollback")
    assert r.returncode == 2 and "error: model 'cli' has no version before 1 to roll back to" in r.stderr
    r = cli("promote", "no-such-job", "--model", "cli")
    assert r.returncode == 2 and "no-such-job" in r.stderr


def test_workbench_up_starts_the_server_and_predict_finds_it(publish, serving_ws, digits, monkeypatch):
    publish("upped")
    monkeypatch.delenv("WORKBENCH_SERVER_URL")  # predict must find the server through state/services.json
    port = free_ports(1)[0]
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workbench",
            "up",
            "--without",
            "jupyter",
            "--without",
            "tensorboard",
            "--server-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            line = up.stdout.readline()
            assert line and time.monotonic() < deadline, "workbench up did not report the server ready"
            if "server" in line and "ready" in line:
                break
        services = json.loads((serving_ws / "state" / "services.json").read_text())["services"]
        assert services["server"]["url"] == f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                out = wb.predict("upped", digits[:1])
                break
            except wb.ServingError as e:
                assert time.monotonic() < deadline, e
                time.sleep(0.3)
        assert out.version == 1 and len(out[0]) == 10
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.communicate(timeout=60)
    assert not (serving_ws / "state" / "services.json").exists()


def test_predict_command_reads_json_or_npy_and_picks_version_or_label(publish, server, digits, tmp_path):
    import numpy as np

    publish("clipredict")
    publish("clipredict", live=False, label="canary")
    server.wait_version("clipredict", 2)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(digits[:2]))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"instances": digits[:2]}))
    array = tmp_path / "rows.npy"
    np.save(array, np.asarray(digits[:2], dtype=np.float32))
    expected = np.asarray(wb.predict("clipredict", instances=digits[:2], version=1))
    for args, version in (
        (("--input", str(rows)), 1),
        (("--input", str(wrapped), "--version", "2"), 2),
        (("--input", str(array), "--label", "canary"), 2),
    ):
        r = cli("predict", "clipredict", *args)
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        assert answer["version"] == version
        assert np.allclose(np.asarray(answer["predictions"]), expected, atol=1e-5)
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    r = cli("predict", "clipredict", "--input", str(bad))
    assert r.returncode == 2 and "'instances' (rows) or 'inputs' (columns)" in r.stderr
    r = cli("predict", "clipredict", "--input", str(rows), "--label", "nope")
    assert r.returncode == 2 and "nope" in r.stderr
