"""The example notebooks run headless (papermill), small, in a temporary workspace, and do what they say."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import workbench as wb

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "workbench-test-python3"
SMALL = {"epochs": 2, "limit": 2000}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace, and a kernel that runs this interpreter (the venv's) and inherits the environment."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "workbench tests",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    root = tmp_path / "workspace"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(root))
    monkeypatch.setenv("WORKBENCH_KILL_GRACE", "3")
    yield root
    for job in wb.jobs():  # a failed run must not leave training processes behind
        if not job.done():
            job.cancel()


def execute(name: str, out_dir: Path, **parameters: object) -> dict:
    import papermill

    output = out_dir / name
    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(output),
        parameters=parameters,
        kernel_name=KERNEL,
        cwd=str(NOTEBOOKS),
        progress_bar=False,
        execution_timeout=240,
    )
    return json.loads(output.read_text())


def text_of(nb: dict) -> str:
    """Everything the executed cells printed or displayed as text."""
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            parts.append("".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def images_in(nb: dict) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb["cells"] for out in cell.get("outputs", []))


def committed_notebooks() -> dict[str, str]:
    """Each notebook as git's index holds it (what gets committed), not as the working tree has it: running the
    notebooks in JupyterLab saves their outputs into the files, and that must not fail the suite. A notebook git
    does not track yet is read from disk."""
    found = {p.name: p.read_text() for p in NOTEBOOKS.glob("*.ipynb")}
    listed = subprocess.run(
        ["git", "ls-files", "-s", "--", "*.ipynb"], cwd=NOTEBOOKS, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked release): the files are what ships
        return found
    for line in listed.stdout.splitlines():
        meta, path = line.split("\t", 1)
        blob = meta.split()[1]
        found[Path(path).name] = subprocess.run(
            ["git", "cat-file", "blob", blob], cwd=NOTEBOOKS, capture_output=True, text=True, check=True
        ).stdout
    return found


def test_notebooks_are_committed_without_outputs():
    notebooks = committed_notebooks()
    assert "01_quickstart.ipynb" in notebooks
    for name, text in sorted(notebooks.items()):
        path = Path(name)
        nb = json.loads(text)
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), path.name
        assert any("parameters" in c["metadata"].get("tags", []) for c in code), path.name


@pytest.mark.slow
def test_quickstart_trains_in_the_notebook_and_logs_to_tensorboard(workspace, tmp_path):
    nb = execute("01_quickstart.ipynb", tmp_path, **SMALL)
    text = text_of(nb)
    accuracy = float(re.search(r"test_accuracy=([0-9.]+)", text)[1])
    assert accuracy > 0.6, text  # chance is 0.1
    assert f"workspace: {workspace}" in text
    assert "No TensorBoard link" in text  # no `workbench up` for this workspace
    assert images_in(nb) >= 2  # loss curves, predictions
    (run,) = (workspace / "runs").glob("notebook-*")
    for split in ("train", "validation"):
        assert list((run / "tb" / split).glob("events.out.tfevents.*")), split


@pytest.mark.slow
def test_jobs_notebook_runs_single_and_two_worker_jobs_and_cancels(workspace, tmp_path):
    nb = execute("02_jobs.ipynb", tmp_path, **SMALL, long_epochs=200, watch_before_cancel=15)
    text = text_of(nb)
    assert "lenet: succeeded" in text
    assert "lenet-2w: succeeded" in text
    assert re.search(r"lenet-long: cancelled", text), text
    assert images_in(nb) >= 2  # job.watch() plots

    jobs = {j.name: j for j in wb.jobs()}
    assert {n: j.status() for n, j in jobs.items()} == {
        "lenet": "succeeded",
        "lenet-2w": "succeeded",
        "lenet-long": "cancelled",
    }
    for name in ("lenet", "lenet-2w"):
        assert [c.step for c in jobs[name].checkpoints()] == [1, 2], name
        assert all(c.path.is_file() and "val_accuracy" in c.metrics for c in jobs[name].checkpoints())
    two = jobs["lenet-2w"].logs()
    assert "[worker-0] replica worker-0: 2 replica(s) in sync" in two
    assert "[worker-1] replica worker-1: 2 replica(s) in sync" in two
    assert "test_accuracy=" in jobs["lenet"].logs()
    replicas = json.loads((jobs["lenet-long"].paths.root / "replicas.json").read_text())
    assert not [r for r in replicas if running(r["pid"])]  # cancel stopped the training process


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_sweep_notebook_runs_a_grid_compares_and_promotes_the_best(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_PROMOTE_WARM", "0")  # no idle export workers left behind by the kernel
    nb = execute("06_sweep.ipynb", tmp_path, **SMALL, learning_rates=[0.0005, 0.003], parallel=2)
    text = text_of(nb)
    assert images_in(nb) >= 1  # wb.compare's plot
    (sweep,) = wb.sweeps()
    trials = sweep.trials()
    assert list(trials["state"]) == ["complete", "complete"] and sorted(trials["lr"]) == [0.0005, 0.003]
    best = sweep.best()
    assert f"best: {best.name} lr=" in text
    assert re.search(rf"lenet-swept version 1 from {best.id}: val_accuracy 0\.\d+", text), text
    assert "No TensorBoard link" in text  # no `workbench up` for this workspace
    assert set(wb.runs(sweep=sweep.id)["status"]) == {"succeeded"}
