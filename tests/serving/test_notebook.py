"""notebooks/03_promote_and_serve runs end to end (papermill, small): train, promote, predict over HTTP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "03_promote_and_serve.ipynb"
KERNEL = "workbench-serving-test"


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A Jupyter kernel that runs this interpreter (the venv's) and inherits the environment."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "serving tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def test_promote_and_serve_notebook(kernel, server, tmp_path):
    import papermill

    output = tmp_path / NOTEBOOK.name
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(output),
        kernel_name=kernel,
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
        execution_timeout=300,
        parameters={"epochs": 2, "limit": 2000, "model_name": "nb-lenet", "server_url": server.url},
    )
    cells = json.loads(output.read_text())["cells"]
    text = "\n".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for c in cells
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
    )
    assert "version 1: accuracy" in text
    accuracy = float(text.split("version 1: accuracy ")[1].split()[0])
    assert accuracy > 0.5, text  # 2 epochs on 2000 images already classify most digits
    assert "after promote: 2" in text and "after rollback: 1" in text
    assert "canary serves 2" in text
    assert "ModelVersion(model='nb-lenet', version=1" in text
