"""notebooks/04_mxnet and 05_pytorch run end to end (papermill, small) in a temporary workspace with a
real model server: train in the notebook, single and distributed jobs, promote, predict over REST."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import workbench as wb

from ..serving.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "workbench-frameworks-test"
SMALL = {"epochs": 1, "limit": 2000, "notebook_epochs": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A workspace made current, a model server over it, and a kernel of this interpreter (the .venv's)."""
    root = tmp_path_factory.mktemp("notebooks")
    kernel = root / "jupyter" / "kernels" / KERNEL
    kernel.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernel / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    workspace = root / "workspace"
    workspace.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(root / "jupyter"))
    mp.setenv("WORKBENCH_WORKSPACE", str(workspace))
    mp.setenv("WORKBENCH_KILL_GRACE", "2")
    srv = start_server(workspace, root / "server.log", "--poll", "0.2")
    yield srv
    for job in wb.jobs():  # a failed run must not leave training processes behind
        if not job.done():
            job.cancel()
    stop_server(srv)
    mp.undo()


def execute(name: str, server: Server, **parameters: object) -> str:
    """Run the notebook; return everything its cells printed or displayed as text."""
    import papermill

    output = server.workspace.parent / name
    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(output),
        kernel_name=KERNEL,
        cwd=str(NOTEBOOKS),
        progress_bar=False,
        execution_timeout=400,
        parameters={**SMALL, "server_url": server.url, **parameters},
    )
    cells = json.loads(output.read_text())["cells"]
    return "\n".join(  # a cell's stream outputs are pieces of one text
        "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) for o in c["outputs"])
        for c in cells
        if c["cell_type"] == "code"
    )


def test_pytorch_notebook(server):
    text = execute("05_pytorch.ipynb", server)
    assert float(re.search(r"val_accuracy=([0-9.]+)", text)[1]) > 0.3, text  # in the notebook; chance is 0.1
    assert "lenet-torch: succeeded" in text
    assert "[worker-1] replica worker-1: rank 1 of 2 on cpu (process group: gloo)" in text
    assert "lenet-torch-ddp: succeeded" in text
    assert "ModelVersion(model='lenet-torch', version=1" in text
    assert float(re.search(r"REST vs in-process: max abs difference (\S+)", text)[1]) < 1e-5
    assert "'name': 'image'" in text  # the served signature, from the metadata endpoint
    assert list((server.workspace / "runs").glob("notebook-*/tb/train/*tfevents*"))


@pytest.mark.usefixtures("mxnet_python")
def test_mxnet_notebook(server):
    text = execute("04_mxnet.ipynb", server)
    assert "mxnet 1.9.1 numpy 1.23.5" in text  # the %%script cell ran in the MXNet environment
    assert float(re.search(r"epoch 1: \d+ steps, .* val_accuracy=([0-9.]+)", text)[1]) > 0.3, text
    assert "lenet-mxnet: succeeded in " in text and ".venv-mxnet" in text
    assert "[scheduler-0] train.py: starting as scheduler" in text and "[server-0] train.py: starting as server" in text
    assert len(re.findall(r"\[worker-\d\] replica worker-\d: kvstore dist_sync, rank \d of 2", text)) == 2
    assert "ModelVersion(model='lenet-mxnet', version=1" in text
    assert float(re.search(r"REST vs MXNet: max abs difference (\S+)", text)[1]) < 1e-5
    assert "'name': 'data'" in text
