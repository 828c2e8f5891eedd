"""``submit``: validate a spec, create the run (code snapshot, run.json, job record), hand it to a backend."""

from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path

from workbench import gpus
from workbench.backends import get_backend
from workbench.conventions import replicas
from workbench.errors import WorkbenchError
from workbench.params import write_hparams
from workbench.snapshot import lineage, snapshot
from workbench.spec import JobSpec
from workbench.store import JobRecord
from workbench.workspace import Workspace, write_json_atomic


def new_run_id(name: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:40] or "job"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def submit(spec: JobSpec, workspace: Workspace | None = None, backend: str | None = None) -> str:
    """Create a run for ``spec`` and start it; return the run id at once.

    Everything that can be wrong with the request is checked before anything
    is written, and a failure part-way removes what was created.
    """
    spec = spec.validated()
    workspace = (workspace or Workspace.current()).ensure()
    runner = get_backend(backend)
    compute = [r for r in replicas(spec.roles()) if r.role in ("worker", "chief")]
    if runner.name == "local":
        gpus.assign(spec.gpus, len(compute))  # too many GPUs is an error now, not in the job's log
    store = runner.records(workspace)
    store.list(limit=1)  # a corrupt database fails here, before any run dir exists

    run_id = new_run_id(spec.name or "job")
    final = workspace.run(run_id)
    staging = workspace.run(f".staging-{run_id}")
    try:
        code_hash = snapshot(Path(spec.script), staging.code)
        for d in (staging.logs, staging.tb, staging.checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        created = time.time()
        if spec.params:  # TensorBoard's HPARAMS tab, also for scripts that never look at their params
            write_hparams(staging.tb, spec.params, run_id, created)
        write_json_atomic(
            staging.run_json,
            {
                "id": run_id,
                "name": spec.name,
                "backend": runner.name,
                "spec": spec.to_dict(),
                "params": dict(spec.params),
                "sweep": spec.sweep,
                "lineage": lineage(Path(spec.script), code_hash, spec.python or ""),
                "created": created,
                "state": "queued",
            },
        )
        staging.root.rename(final.root)  # the run dir appears whole or not at all
        workspace.push(final.root)  # a bucket workspace: code snapshot and run.json, before anything runs
        store.insert(
            JobRecord(
                run_id,
                spec.name or run_id,
                runner.name,
                "queued",
                created,
                None,
                None,
                0,
                None,
                False,
                None,
                spec.to_dict(),
            )
        )
    except BaseException:
        shutil.rmtree(staging.root, ignore_errors=True)
        shutil.rmtree(final.root, ignore_errors=True)
        raise
    try:
        runner.submit(workspace, run_id, spec)
    except Exception as e:
        store.transition(run_id, "failed", f"could not start: {e}")
        raise WorkbenchError(f"job {run_id} could not start: {e}") from e
    return run_id
