"""The Kubernetes pod entrypoint on an s3:// workspace (MinIO stand-in), run as a real process with a kubelet's
environment: the code comes from the bucket, the checkpoints come back before the script starts, and what the
script writes locally goes to the bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from workbench.storage import Remote

from .conftest import bucket_files

SCRIPT = """
import os
from pathlib import Path
ckpt = Path(os.environ["WORKBENCH_CHECKPOINT_DIR"])
print("found", sorted(p.name for p in ckpt.iterdir() if not p.name.startswith(".")), flush=True)
(ckpt / "ckpt-2.txt").write_text("two")
(Path(os.environ["WORKBENCH_LOG_DIR"]) / "scalars.txt").write_text("loss 0.5")
print("workspace", os.environ["WORKBENCH_WORKSPACE"], flush=True)
from workbench.runtime import log_params
log_params(lr=0.1)
"""


def test_a_pod_runs_the_bucket_snapshot_resumes_and_uploads(s3_workspace, tmp_path):
    remote = Remote(s3_workspace)
    run = "runs/pod-run"
    (tmp_path / "job.py").write_text(SCRIPT)
    (tmp_path / "ckpt-1.txt").write_text("one")
    remote.put_file(tmp_path / "job.py", f"{run}/code/job.py")
    remote.put_file(tmp_path / "ckpt-1.txt", f"{run}/checkpoints/ckpt-1.txt")
    env = {
        **os.environ,
        "WORKBENCH_CACHE_DIR": str(tmp_path / "pod-cache"),  # the pod's own disk
        "WORKBENCH_FRAMEWORK": "none",
        "WORKBENCH_ROLE": "worker",
        "JOB_COMPLETION_INDEX": "0",
        "WORKBENCH_CLUSTER": json.dumps({"worker": ["127.0.0.1:2222"]}),
        "WORKBENCH_RUN_ID": "pod-run",
        "WORKBENCH_ATTEMPT": "1",
        # what the manifest names: the script in the workspace
        "WORKBENCH_LOG_DIR": "/workspace/runs/pod-run/tb",
    }
    out = subprocess.run(
        [sys.executable, "-m", "workbench.backends.kubernetes.entrypoint", "/workspace/runs/pod-run/code/job.py"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "found ['ckpt-1.txt']" in out.stdout
    assert f"workspace {tmp_path / 'pod-cache'}" in out.stdout  # the script sees the local copy
    files = bucket_files(s3_workspace, run)
    assert {"checkpoints/ckpt-2.txt", "tb/scalars.txt", "logs/worker-0.log", "params.json"} <= set(files), files
    assert "found ['ckpt-1.txt']" in remote.fs.cat(remote.path(f"{run}/logs/worker-0.log")).decode()
