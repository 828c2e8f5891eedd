"""Jobs on an s3:// workspace (MinIO stand-in): replicas write locally, the supervisor uploads while they run,
and a restarted job gets its checkpoints back from the bucket. Plain Python jobs: no TensorFlow here."""

from __future__ import annotations

import json
import time

import workbench as wb
from workbench.backends.local.processes import wait_for
from workbench.storage import Remote

from .conftest import bucket_files

SCRIPT = """
import os, sys, time
from pathlib import Path

ckpt, tb = Path(os.environ["WORKBENCH_CHECKPOINT_DIR"]), Path(os.environ["WORKBENCH_LOG_DIR"])
attempt = int(os.environ["WORKBENCH_ATTEMPT"])
print(f"attempt {attempt} writes to {ckpt}", flush=True)
if attempt == 0:
    (ckpt / "ckpt-1.txt").write_text("weights of step 1")
    (tb / "progress.txt").write_bytes(b"x" * 100)
    go = Path(sys.argv[1])
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:  # the test looks at the bucket meanwhile
        time.sleep(0.1)
    sys.exit("attempt 0 fails on purpose")
found = sorted(p.name for p in ckpt.iterdir() if not p.name.startswith("."))
print(f"attempt {attempt} found {found}", flush=True)
assert (ckpt / "ckpt-1.txt").read_text() == "weights of step 1"
(ckpt / "ckpt-2.txt").write_text("weights of step 2")
"""


def test_a_job_uploads_while_it_runs_and_resumes_from_the_bucket(s3_workspace, write_script, tmp_path):
    go = tmp_path / "go"
    job = wb.submit(str(write_script(SCRIPT)), args=[str(go)], framework="none", max_restarts=1, name="sync")
    run = f"runs/{job.id}"
    assert {"code/job.py", "run.json"} <= set(bucket_files(s3_workspace, run))  # at submit, before it runs

    t0 = time.monotonic()
    assert wait_for(lambda: "ckpt-1.txt" in bucket_files(s3_workspace, f"{run}/checkpoints"), 30)
    assert wait_for(lambda: "progress.txt" in bucket_files(s3_workspace, f"{run}/tb"), 10)
    assert job.status() == "running"  # seen in the bucket while the job runs
    assert time.monotonic() - t0 < 20
    assert [c.step for c in job.checkpoints()] == [1]  # read from the bucket into the cache
    local = job.checkpoints()[0].path
    assert local == job.paths.checkpoints / "ckpt-1.txt" and local.read_text() == "weights of step 1"

    go.touch()
    assert job.wait(timeout=60) == "succeeded", job.logs()
    logs = job.logs()
    assert "attempt 1 found ['ckpt-1.txt']" in logs
    work = job.workspace.work_dir(job.id)
    assert f"attempt 0 writes to {work / '0' / 'checkpoints'}" in logs  # each attempt starts from an empty folder,
    assert f"attempt 1 writes to {work / '1' / 'checkpoints'}" in logs  # filled from the bucket
    assert not work.exists()  # dropped once all was uploaded

    files = bucket_files(s3_workspace, run)
    assert {"checkpoints/ckpt-1.txt", "checkpoints/ckpt-2.txt", "logs/worker-0.log"} <= set(files)
    remote = Remote(s3_workspace)
    run_json = json.loads(remote.fs.cat(remote.path(f"{run}/run.json")))
    assert run_json["state"] == "succeeded" and run_json["attempt"] == 1
    assert "attempt 1 found" in remote.fs.cat(remote.path(f"{run}/logs/worker-0.log")).decode()
    assert [c.step for c in job.checkpoints()] == [1, 2]
