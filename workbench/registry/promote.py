"""``promote``: pick a checkpoint of a run, export it, validate it in a fresh process, publish it as a version."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.checkpoints import Checkpoint
from workbench.errors import CheckpointError, JobNotFound, RegistryError
from workbench.registry import worker
from workbench.registry.store import VERSION_JSON, ModelStore, check_name, clean
from workbench.serving.model import frameworks
from workbench.serving.model.signature import Signature
from workbench.workspace import Workspace, read_json, write_json_atomic

# Tried in order when checkpoint="best" and no metric is named.
DEFAULT_METRICS = ("val_accuracy", "validation/epoch_accuracy", "val_acc", "accuracy", "val_loss", "loss")


@dataclass(frozen=True)
class ModelVersion:
    """A published version: ``models/<model>/<version>/`` and its ``model.json`` entry."""

    model: str
    version: int
    path: Path
    framework: str
    signature: Signature
    source: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        step = self.source.get("step")
        return f"ModelVersion(model={self.model!r}, version={self.version}, step={step}, framework={self.framework!r})"

    def __int__(self) -> int:
        return self.version


def promote(
    job: Any = None,
    model: str | None = None,
    checkpoint: str | int | Path = "latest",
    *,
    metric: str | None = None,
    mode: str | None = None,
    builder: str | None = None,
    framework: str | None = None,
    sample: Any = None,
    label: str | None = None,
    live: bool = True,
    warm: bool = True,
    workspace: Workspace | None = None,
) -> ModelVersion:
    """Export a checkpoint of ``job`` as the next version of ``model``, after it passes the validation gate.

    ``job``: a :class:`~workbench.job.Job` or run id; or None with ``checkpoint``
    a path. ``model``: default the job's name. ``checkpoint``: "latest", "best"
    (by ``metric``, ``mode`` "max"/"min", guessed from the name: losses are
    minimized), a step number, or a path. ``builder``: "module:function" that
    builds the model, for weights-only checkpoints. ``sample``: the validation
    input (default: random, from the signature). ``label``: also point this
    label at the new version. ``live=False``: publish without moving
    unversioned traffic to it. ``warm=False``: leave starting the idle workers
    for the next promote to the caller (:func:`warm_workers`), e.g. until the
    server has loaded this version, so their framework imports do not compete
    with it. Nothing is published when a step fails.
    """
    ws = workspace or Workspace.current()
    run = _run_info(ws, job)
    name = check_name(model or run.get("name") or "")
    chosen = choose_checkpoint(run, checkpoint, metric, mode)
    if checkpoint == "best" and metric is None:
        metric = next((m for m in DEFAULT_METRICS if m in chosen.metrics), None)
    fw_name = framework or _framework_of(run, chosen.path)
    fw = frameworks.get_framework(fw_name)
    store = ModelStore(ws.ensure(), name)
    clean(ws)  # what promotes killed earlier left behind (their staging folders, their workers)
    # taken now, so that a cold validation worker imports its framework while the export runs, not after it
    validator = worker.POOL.take("validate", fw.name, fw.python())
    staging = store.staging_dir()
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        exported = worker.run(
            "export",
            fw.name,
            fw.python(),
            {
                "op": "export",
                "checkpoint": str(chosen.path),
                "dest": str(staging),
                "builder": builder,
                "code_dir": str(run["code_dir"]) if run.get("code_dir") else None,
            },
        )
        timings["export_s"] = round(time.perf_counter() - t0, 3)
        signature = Signature.from_dict(exported["signature"])
        t0 = time.perf_counter()
        validation = worker.run(
            "validate",
            fw.name,
            fw.python(),
            {"op": "validate", "dir": str(staging), "sample": _jsonable(sample)},
            worker=validator,
        )
        timings["validate_s"] = round(time.perf_counter() - t0, 3)
        try:
            write_json_atomic(
                staging / VERSION_JSON, {"framework": fw.name, "format": fw.format, "signature": signature.to_dict()}
            )
        except OSError as e:
            raise RegistryError(
                f"cannot write {staging / VERSION_JSON} ({e.strerror or e}); nothing was published"
            ) from e
        source = {
            "run_id": run.get("id"),
            "checkpoint": str(chosen.path),
            "step": chosen.step,
            "metrics": chosen.metrics,
            "selected_by": _selected_by(checkpoint, metric),
        }
        entry: dict[str, Any] = {
            "framework": fw.name,
            "format": fw.format,
            "source": source,
            "code": run.get("lineage") or {},
            "signature": signature.to_dict(),
            "validation": {**validation, **timings},
        }
        entry["validation"].pop("signature", None)
        entry["validation"]["export_priority"] = exported["priority"]  # (its own "priority": the validation's)
        version = store.publish(staging, entry, live=live, label=label)
    except BaseException:
        validator.discard()  # (a no-op when it ran)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if warm:
            warm_workers(fw.name)
    return ModelVersion(name, version, store.dir / str(version), fw.name, signature, source, timings)


def warm_workers(framework: str) -> None:
    """Start the idle export and validation workers of ``framework`` (when ``WORKBENCH_PROMOTE_WARM`` allows)."""
    fw = frameworks.get_framework(framework)
    worker.POOL.replenish("export", fw.name, fw.python())
    worker.POOL.replenish("validate", fw.name, fw.python())


def _run_info(ws: Workspace, job: Any) -> dict[str, Any]:
    if job is None:
        return {}
    from workbench.job import Job

    try:
        j = job if isinstance(job, Job) else Job(str(job), ws)
    except JobNotFound as e:
        raise RegistryError(f"{e}; pass a job, a run id, or job=None with checkpoint=<path>") from None
    paths = j.paths
    if ws.url and not paths.code.is_dir():  # an s3:// workspace, the job submitted elsewhere: its code and run.json
        ws.pull(paths.code)
        ws.remote.get_file(ws.relative(paths.run_json), paths.run_json)  # type: ignore[union-attr]
    run = read_json(paths.run_json) if paths.run_json.exists() else {}
    return {
        "id": j.id,
        "name": j.record.name,
        "framework": (run.get("spec") or j.record.spec).get("framework"),
        "lineage": run.get("lineage"),
        "code_dir": paths.code if paths.code.is_dir() else None,
        "checkpoints": j.checkpoints,
        "checkpoint_dir": paths.checkpoints,
    }


def choose_checkpoint(run: dict[str, Any], which: str | int | Path, metric: str | None, mode: str | None) -> Checkpoint:
    """The checkpoint ``which`` names among the run's: "latest", "best", a step, or a path."""
    if isinstance(which, Path) or (isinstance(which, str) and which not in ("latest", "best") and not which.isdigit()):
        path = Path(which)
        if not path.is_absolute() and run.get("checkpoint_dir") and (run["checkpoint_dir"] / path).exists():
            path = run["checkpoint_dir"] / path
        if not path.exists() and not Path(f"{path}.index").exists():
            raise CheckpointError(f"checkpoint {which} does not exist")
        return Checkpoint(-1, path.resolve(), {})
    if not run:
        raise RegistryError(
            "give a job (or run id) to pick a checkpoint by 'latest', 'best' or step; or a checkpoint path"
        )
    found = run["checkpoints"]()
    if not found:
        raise CheckpointError(f"job {run['id']} has no checkpoints in {run['checkpoint_dir']} yet")
    steps = ", ".join(str(c.step) for c in found)
    if which == "latest":
        return found[-1]
    if which == "best":
        return _best(found, metric, mode, run["id"])
    step = int(which)
    for c in found:
        if c.step == step:
            return c
    raise CheckpointError(f"job {run['id']} has no checkpoint at step {step}; steps: {steps}")


def _best(found: list[Checkpoint], metric: str | None, mode: str | None, run_id: str) -> Checkpoint:
    logged = sorted({k for c in found for k in c.metrics})
    if metric is None:
        metric = next((m for m in DEFAULT_METRICS if m in logged), None)
        if metric is None:
            raise CheckpointError(
                f"job {run_id} logged no metric to pick the best checkpoint by; name one with metric="
            )
    scored = [c for c in found if metric in c.metrics]
    if not scored:
        raise CheckpointError(
            f"no checkpoint of job {run_id} has metric {metric!r}; metrics: {', '.join(logged) or 'none'}"
        )
    mode = mode or ("min" if any(w in metric.lower() for w in ("loss", "error", "mse", "mae")) else "max")
    if mode not in ("min", "max"):
        raise RegistryError(f"mode must be 'min' or 'max', got {mode!r}")
    pick = min if mode == "min" else max
    return pick(reversed(scored), key=lambda c: c.metrics[metric])  # ties: the later step


def _framework_of(run: dict[str, Any], path: Path) -> str:
    fw = run.get("framework")
    if fw and fw != "none":
        return str(fw)
    detected = frameworks.detect_checkpoint(path)
    if detected is None:
        raise RegistryError(
            f"cannot tell which framework wrote {path}; pass framework= ({', '.join(frameworks.known())})"
        )
    return detected


def _selected_by(which: Any, metric: str | None) -> str:
    return f"best {metric}" if which == "best" and metric else str(which)


def _jsonable(sample: Any) -> Any:
    if sample is None:
        return None
    if isinstance(sample, dict):
        return {k: np.asarray(v).tolist() for k, v in sample.items()}
    return np.asarray(sample).tolist()
