"""The local job queue: a job's launcher starts only when what the job asks for is free.

No daemon keeps the queue. Its state is the job store (queued jobs, their specs, priorities, creation times) and
each run's ``run.json`` (``queue.admitted``, ``queue.devices``: when the job was let in and which GPUs it holds), so
it survives ``workbench down``/``up``, a notebook restart or a reboot. :func:`admit` lets in what fits, in order; it
runs whenever something may have freed up or been added: at submit, when a job's launcher records the job's end,
and on every listing or status of jobs (so a queue whose last launcher died moves on at the next look). Admitters
take ``state/queue.lock`` first, so two of them never hand out the same GPU or CPU slot.

Resources (see docs/jobs.md):

- GPUs: ``WORKBENCH_GPUS`` (else what ``nvidia-smi`` lists); each admitted job holds disjoint device indices.
- CPU slots: ``WORKBENCH_CPU_SLOTS`` (default: the CPUs this process may use); a job costs its ``cpus`` option, else
  one slot per replica. A job larger than the machine runs alone (its cost is capped at the slots there are).
- ``WORKBENCH_MAX_JOBS``: most jobs running at once (0: no limit beyond the slots).

Order: higher ``priority`` first, then first submitted first. The head of the queue is never overtaken: when it does
not fit yet, nothing behind it starts (so a large job is not starved by a stream of small ones).

The head of the queue gets its launcher at once, which waits (imports done) until it is let in: the next job then
starts within a second of the last one ending, even on a busy machine, and that waiting launcher looks at the queue
every few seconds, so the queue moves on even when every running job's launcher died. Only the head waits so: a
long queue costs no processes. A launcher that is gone is started again by the next admitter.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from filelock import FileLock

from workbench import gpus, settings
from workbench.conventions import replicas
from workbench.spec import JobSpec
from workbench.store import FINAL_STATES, JobRecord, JobStore, record_in_run_json
from workbench.workspace import Workspace, open_private, private_dir, read_json

LOCK_TIMEOUT_S = 60
LAUNCH_GRACE_S = 30  # a launcher started this long ago that has not recorded its pid counts as gone


def cpu_slots() -> int:
    """CPU slots of this machine: ``WORKBENCH_CPU_SLOTS``, else the CPUs this process may run on."""
    configured = settings.CPU_SLOTS.get()
    if configured:
        return max(1, int(configured))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def max_jobs() -> int:
    """Most jobs running at once; 0 means no limit beyond the CPU slots."""
    return max(0, int(settings.MAX_JOBS.get()))


@dataclass(frozen=True)
class Demand:
    """What one job holds while it runs."""

    gpus_per_replica: int
    gpu_replicas: int
    cpus: int

    @classmethod
    def of(cls, spec: JobSpec, slots: int) -> Demand:
        roles = spec.roles()
        compute = [r for r in replicas(roles) if r.role in ("worker", "chief")]
        cpus = spec.cpus if spec.cpus else sum(roles.values())
        return cls(spec.gpus, len(compute), min(cpus, slots))


def _allocation(workspace: Workspace, job_id: str) -> dict | None:  # type: ignore[type-arg]
    try:
        queue = read_json(workspace.run(job_id).run_json).get("queue")
    except (OSError, ValueError):
        return None
    return queue if isinstance(queue, dict) and queue.get("admitted") else None


def allocation(workspace: Workspace, job_id: str) -> dict | None:  # type: ignore[type-arg]
    """``{"admitted": time, "devices": [CUDA_VISIBLE_DEVICES per training replica]}`` once the job was let in."""
    return _allocation(workspace, job_id)


def _order(record: JobRecord) -> tuple[int, float, str]:
    return (-int(record.spec.get("priority") or 0), record.created, record.id)


def _active_local(store: JobStore) -> list[JobRecord]:
    return [r for r in store.list() if r.backend == "local" and r.state not in FINAL_STATES]


def _held(workspace: Workspace, record: JobRecord, slots: int) -> dict | None:  # type: ignore[type-arg]
    """What an active job holds: its allocation; for a job started before the queue existed (running with no
    allocation in run.json) what it took then (GPUs from 0, one slot per replica)."""
    held = _allocation(workspace, record.id)
    if held is None and record.state != "queued":
        spec = JobSpec.from_dict(record.spec)
        demand = Demand.of(spec, slots)
        held = {"devices": gpus.assign(0, demand.gpu_replicas), "cpus": demand.cpus}
        if demand.gpus_per_replica:
            n = demand.gpus_per_replica
            held["devices"] = [",".join(str(i * n + k) for k in range(n)) for i in range(demand.gpu_replicas)]
    return held


def waiting(workspace: Workspace) -> list[JobRecord]:
    """Queued jobs not let in yet, in the order they will start."""
    active = _active_local(JobStore(workspace))
    slots = cpu_slots()
    return sorted((r for r in active if _held(workspace, r, slots) is None), key=_order)


def positions(workspace: Workspace) -> dict[str, int]:
    """Queue position (1: next to start) of each waiting job."""
    return {r.id: i for i, r in enumerate(waiting(workspace), start=1)}


def lock(workspace: Workspace) -> FileLock:
    """The queue's lock; hold it to let jobs in or to take one out of the queue (cancel, delete)."""
    private_dir(workspace.state)
    return FileLock(str(workspace.state / "queue.lock"), mode=0o600, timeout=LOCK_TIMEOUT_S)


def env_file(workspace: Workspace, job_id: str):  # type: ignore[no-untyped-def]
    """Where a queued job's submitter environment waits (``state/queue/<id>.env.json``, 0600): its launcher starts
    with it, whichever process lets the job in."""
    return workspace.state / "queue" / f"{job_id}.env.json"


def save_env(workspace: Workspace, job_id: str, env: dict[str, str]) -> None:
    path = env_file(workspace, job_id)
    private_dir(path.parent)
    with open_private(path, "w") as f:
        json.dump(env, f)


def load_env(workspace: Workspace, job_id: str) -> dict[str, str]:
    try:
        return dict(read_json(env_file(workspace, job_id)))
    except (OSError, ValueError):
        return dict(os.environ)


def admit(workspace: Workspace, start: Callable[[str, dict[str, str]], None]) -> list[str]:
    """Let in every waiting job that fits, in order; ``start(job_id, env)`` launches each. Returns their ids."""
    started: list[str] = []
    with lock(workspace):
        store = JobStore(workspace)
        active = _active_local(store)
        slots, most = cpu_slots(), max_jobs()
        held = {r.id: a for r in active if (a := _held(workspace, r, slots)) is not None}
        used_gpus = {d for a in held.values() for devs in a.get("devices", []) for d in devs.split(",") if d}
        used_cpus = sum(int(a.get("cpus", 0)) for a in held.values())
        running = len(held)
        have_gpus = None
        for record in sorted((r for r in active if r.id not in held), key=_order):
            if record.cancel_requested:
                continue  # its cancel takes it out of the queue
            demand = Demand.of(JobSpec.from_dict(record.spec), slots)
            if most and running >= most:
                break
            if used_cpus + demand.cpus > slots:
                break
            devices = [""] * demand.gpu_replicas
            if demand.gpus_per_replica:
                have_gpus = gpus.count() if have_gpus is None else have_gpus
                free = [str(i) for i in range(have_gpus) if str(i) not in used_gpus]
                need = demand.gpus_per_replica * demand.gpu_replicas
                if need > len(free):
                    break
                n = demand.gpus_per_replica
                devices = [",".join(free[i * n : (i + 1) * n]) for i in range(demand.gpu_replicas)]
                used_gpus.update(free[:need])
            record_in_run_json(
                workspace, record.id, queue={"admitted": time.time(), "devices": devices, "cpus": demand.cpus}
            )
            if not has_launcher(workspace, record.id):  # else its launcher, waiting, sees this and starts
                launch(workspace, record.id, start)
            used_cpus += demand.cpus
            running += 1
            started.append(record.id)
        head = next((r for r in sorted(active, key=_order) if r.id not in held and r.id not in started), None)
        if head is not None and not head.cancel_requested and not has_launcher(workspace, head.id):
            launch(workspace, head.id, start)  # waits, warm, so that it starts at once when let in
    return started


def has_launcher(workspace: Workspace, job_id: str) -> bool:
    """Whether the job has a launcher (supervisor) process: alive, or started by an admitter less than
    :data:`LAUNCH_GRACE_S` ago and not yet recorded (so that two admitters never start two)."""
    from workbench.backends.local.processes import alive

    try:
        run = read_json(workspace.run(job_id).run_json)
    except (OSError, ValueError):
        return False
    pid = run.get("supervisor_pid")
    if pid:
        return alive(pid, job_id)
    return time.time() - float(run.get("launcher_started") or 0) < LAUNCH_GRACE_S


def launch(workspace: Workspace, job_id: str, start: Callable[[str, dict[str, str]], None]) -> None:
    """Start the job's launcher with its submitter's environment; recorded first (under the queue's lock)."""
    record_in_run_json(workspace, job_id, supervisor_pid=None, launcher_started=time.time())
    start(job_id, load_env(workspace, job_id))
