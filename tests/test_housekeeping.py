"""Job names and id prefixes, ``delete`` and ``gc`` of finished jobs, ``workbench models delete``, with real jobs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import workbench as wb
from workbench.backends.local.processes import wait_for
from workbench.registry.store import ModelStore
from workbench.store import JobStore
from workbench.workspace import Workspace


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )


@pytest.fixture
def quick(write_script):
    script = write_script("import sys; print('hello from', sys.argv[1:])\n")

    def submit(name: str, *args: str) -> wb.Job:
        job = wb.submit(str(script), args=list(args), framework="none", name=name)
        assert job.wait(60) == "succeeded", job.logs()
        return job

    return submit


def test_a_job_is_found_by_id_unique_prefix_or_name(workspace, quick):
    old = quick("lenet", "old")
    new = quick("lenet", "new")
    other = quick("resnet")
    assert wb.job("lenet").id == new.id  # a name: its newest run
    assert wb.job(old.id).id == old.id
    assert wb.job(other.id[:8]).id == other.id  # "resnet-2" is unique
    with pytest.raises(wb.AmbiguousJob) as e:
        wb.job("lenet-")
    assert old.id in str(e.value) and new.id in str(e.value)
    with pytest.raises(wb.JobNotFound, match="no job 'vgg'"):
        wb.job("vgg")
    r = cli("logs", "lenet")
    assert r.returncode == 0 and "hello from ['new']" in r.stdout, r.stderr
    r = cli("logs", "lenet-")
    assert r.returncode == 2 and "starts several job ids" in r.stderr and old.id in r.stderr and new.id in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("wait", "resnet")
    assert r.returncode == 0 and r.stdout.strip() == "succeeded"


def test_delete_refuses_a_running_job_and_removes_a_finished_one(workspace, write_script):
    job = wb.submit(str(write_script("import time; time.sleep(600)\n")), framework="none", name="long")
    assert wait_for(lambda: job.status() == "running", 30)
    with pytest.raises(wb.WorkbenchError, match="is running; cancel it first"):
        wb.delete(job)
    assert job.paths.root.is_dir()
    assert job.cancel() == "cancelled"
    r = cli("delete", "long")
    assert r.returncode == 0 and f"deleted {job.id}" in r.stdout, r.stderr
    assert not job.paths.root.exists()
    with pytest.raises(wb.JobNotFound):
        wb.job(job.id)
    # The database rebuilt from the run folders does not bring it back.
    for p in Path(workspace, "state").glob("jobs.sqlite*"):
        p.unlink()
    assert [r.id for r in JobStore(Workspace.current()).list()] == []


def test_gc_keeps_the_newest_and_deletes_old_finished_jobs(workspace, quick, write_script):
    done = [quick(f"j{i}") for i in range(4)]
    running = wb.submit(str(write_script("import time; time.sleep(600)\n", folder="long")), framework="none")
    assert wait_for(lambda: running.status() == "running", 30)
    r = cli("gc", "--keep", "3", "--older-than", "1h")
    assert r.returncode == 0 and "jobs: 0 finished jobs deleted" in r.stdout, r.stdout + r.stderr
    r = cli("gc", "--keep", "2")
    assert r.returncode == 0, r.stderr
    assert "models: 0 leftovers" in r.stdout and "jobs: 2 finished jobs deleted" in r.stdout
    left = {j.id for j in wb.jobs()}
    assert left == {running.id, done[2].id, done[3].id}
    assert not done[0].paths.root.exists() and not done[1].paths.root.exists()
    r = cli("gc", "--older-than", "0s")
    assert r.returncode == 0 and "jobs: 2 finished jobs deleted" in r.stdout
    assert {j.id for j in wb.jobs()} == {running.id}  # never a job that has not ended
    r = cli("gc", "--older-than", "soon")
    assert r.returncode == 2 and "not a duration" in r.stderr
    running.cancel()


def publish(name: str, **options) -> int:
    store = ModelStore(Workspace.current(), name)
    staging = store.staging_dir()
    (staging / "weights.bin").write_bytes(b"x")
    return store.publish(staging, {"framework": "none", "format": "test"}, **options)


def test_models_delete_refuses_a_version_in_use(workspace):
    Workspace.current().ensure()
    for _ in range(4):
        publish("m")
    wb.label("m", "stable", 1)
    wb.split("m", {"stable": 90, "2": 10})
    wb.rollback("m", 3)  # pins version 3 live (and ends the split)
    wb.split("m", {"stable": 90, "2": 10})
    model_dir = Workspace.current().model_dir("m")
    for version, user in (("1", "label 'stable'"), ("2", "the traffic split ('2')"), ("3", "the live pin")):
        r = cli("models", "delete", "m", version)
        assert r.returncode == 2 and user in r.stderr, r.stderr
        assert (model_dir / version).is_dir()
    r = cli("models", "delete", "m", "4")
    assert r.returncode == 0, r.stderr
    assert not (model_dir / "4").exists()
    assert sorted(wb.models()["m"]["versions"]) == [1, 2, 3]
    assert publish("m") == 5  # a deleted number is never given out again
    r = cli("models", "delete", "m", "9")
    assert r.returncode == 2 and "has no version 9" in r.stderr
    shutil.rmtree(model_dir)
