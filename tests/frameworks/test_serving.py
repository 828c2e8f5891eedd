"""Promote PyTorch and MXNet checkpoints through the validation gate and predict over REST from a real
model server: the answers equal what the trained model computes in its own framework, in-process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

import workbench as wb
from workbench.backends.local.processes import alive, wait_for
from workbench.datasets import mnist

from ..serving.conftest import Server, start_server, stop_server
from .conftest import MXNET_TRAIN, TORCH_TRAIN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(trained: dict[str, wb.Job], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``workbench serve`` over the trained jobs' workspace, made current for promote and predict."""
    workspace = trained["torch-ddp"].workspace.root
    srv = start_server(workspace, tmp_path_factory.mktemp("server") / "server.log", "--poll", "0.2")
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_WORKSPACE", str(workspace))
    mp.setenv("WORKBENCH_SERVER_URL", srv.url)
    yield srv
    mp.undo()
    stop_server(srv)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    _, _, (x_test, _) = mnist.load_data(limit=16)
    return x_test


def torch_outputs(checkpoint: Path, x: np.ndarray) -> np.ndarray:
    """The trained network (example model code + training state), in this process."""
    import torch

    sys.path.insert(0, str(TORCH_TRAIN.parent))
    try:
        from model import LeNet, Probabilities
    finally:
        sys.path.remove(str(TORCH_TRAIN.parent))
    net = LeNet()
    net.load_state_dict(torch.load(checkpoint / "train_state.pt", weights_only=True)["model"])
    with torch.no_grad():
        return Probabilities(net).eval()(torch.from_numpy(x)).numpy()


def mxnet_outputs(python: str, checkpoint: Path, x: np.ndarray, tmp: Path) -> np.ndarray:
    """The trained network (example model code + its saved parameters), in an MXNet process."""
    np.save(tmp / "x.npy", x)
    code = (
        "import sys, mxnet as mx, numpy as np; sys.path.insert(0, sys.argv[1]);"
        "from model import build_lenet; net = build_lenet(); net.load_parameters(sys.argv[2]);"
        "x = np.load(sys.argv[3]); np.save(sys.argv[4], mx.nd.softmax(net(mx.nd.array(x))).asnumpy())"
    )
    args = [str(MXNET_TRAIN.parent), str(checkpoint / "net.params"), str(tmp / "x.npy"), str(tmp / "y.npy")]
    subprocess.run([python, "-c", code, *args], check=True, capture_output=True, timeout=120)
    return np.load(tmp / "y.npy")


def version_entry(workspace: Path, model: str, version: int) -> dict:
    return json.loads((workspace / "models" / model / "model.json").read_text())["versions"][str(version)]


def test_pytorch_checkpoint_promotes_and_serves_what_it_computes(trained, server, digits):
    job = trained["torch-ddp"]
    version = wb.promote(job, model="torch-lenet", checkpoint="best")
    assert version.framework == "pytorch" and (version.path / "model.pt2").is_file()
    best = max(job.checkpoints(), key=lambda c: c.metrics["val_accuracy"])
    assert version.source["step"] == best.step
    entry = version_entry(job.workspace.root, "torch-lenet", version.version)
    assert entry["format"] == "torch_export"
    assert entry["validation"]["output_shapes"] == {"output_0": [2, 10]}  # the gate ran it in a fresh process
    assert entry["signature"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": [None, 28, 28]}]

    served = wb.predict("torch-lenet", instances=digits)
    assert served.version == version.version
    np.testing.assert_allclose(np.array(served), torch_outputs(best.path, digits), rtol=1e-5, atol=1e-6)
    columnar = wb.predict("torch-lenet", inputs=digits[:2])
    np.testing.assert_allclose(np.array(columnar), np.array(served)[:2], rtol=1e-6, atol=1e-7)


def test_mxnet_checkpoint_promotes_and_serves_what_it_computes(trained, server, digits, mxnet_python, tmp_path):
    job = trained["mx-dist"]
    version = wb.promote(job, model="mx-lenet", checkpoint="best")
    assert version.framework == "mxnet"
    assert {"model-symbol.json", "model-0000.params", "model-signature.json"} <= {
        p.name for p in version.path.iterdir()
    }
    best = max(job.checkpoints(), key=lambda c: c.metrics["val_accuracy"])
    entry = version_entry(job.workspace.root, "mx-lenet", version.version)
    assert entry["format"] == "mxnet_symbol" and entry["validation"]["output_shapes"] == {"output_0": [2, 10]}

    served = wb.predict("mx-lenet", instances=digits)
    assert served.version == version.version
    expected = mxnet_outputs(mxnet_python, best.path, digits, tmp_path)
    np.testing.assert_allclose(np.array(served), expected, rtol=1e-5, atol=1e-6)


def test_the_server_runs_mxnet_models_in_a_worker_of_the_mxnet_environment(trained, server, digits, mxnet_python):
    wb.promote(trained["mx-single"], model="mx-worker", checkpoint="latest")
    before = wb.predict("mx-worker", instances=digits[:4])
    workers = [
        p
        for p in psutil.Process(server.proc.pid).children(recursive=True)
        if "workbench.serving.model.frameworks.remote" in p.cmdline()
    ]
    assert len(workers) >= 1 and all(Path(p.cmdline()[0]) == Path(mxnet_python) for p in workers)
    mine = next(p for p in workers if any("mx-worker" in part for part in p.cmdline()))

    mine.kill()  # a worker that dies is started again by the next request
    assert wait_for(lambda: not alive(mine.pid), 10)
    np.testing.assert_allclose(np.array(wb.predict("mx-worker", instances=digits[:4])), np.array(before), rtol=1e-6)

    bad = requests.post(f"{server.url}/v1/models/mx-worker:predict", json={"instances": digits[:2, :5].tolist()})
    assert bad.status_code == 400 and "28" in bad.json()["error"]  # checked against the signature, not by MXNet


def test_the_gate_stops_broken_checkpoints_and_publishes_nothing(trained, server, tmp_path):
    torch_ckpt = tmp_path / "torch-ckpt-0001"
    shutil.copytree(trained["torch-single"].checkpoints()[0].path, torch_ckpt)
    (torch_ckpt / "model.pt2").write_bytes(b"not a zip archive")
    with pytest.raises(wb.WorkbenchError, match="not a loadable torch.export program"):
        wb.promote(None, model="broken", checkpoint=torch_ckpt, framework="pytorch")

    mx_ckpt = tmp_path / "mx-ckpt-0001"
    shutil.copytree(trained["mx-single"].checkpoints()[0].path, mx_ckpt)
    (mx_ckpt / "model-0000.params").write_bytes(b"\0" * 64)
    with pytest.raises(wb.CheckpointError, match="does not load or run"):
        wb.promote(None, model="broken", checkpoint=mx_ckpt, framework="mxnet")
    # With the outputs declared, export only copies the files: the validation gate is what loads them.
    signature = json.loads((mx_ckpt / "model-signature.json").read_text())
    signature["outputs"] = [{"name": "output_0", "dtype": "float32", "shape": [None, 10]}]
    (mx_ckpt / "model-signature.json").write_text(json.dumps(signature))
    with pytest.raises(wb.ValidationError, match="Invalid NDArray file format"):
        wb.promote(None, model="broken", checkpoint=mx_ckpt, framework="mxnet")
    folder = trained["mx-single"].workspace.models / "broken"
    assert not folder.exists() or not [p.name for p in folder.iterdir() if not p.name.startswith(".")]
