"""Job and Pod conditions -> the workbench's job state (queued, running, succeeded, failed).

Pure functions over the API's objects as plain dicts, so every rule here is
tested without a cluster. The cluster is the only source: nothing here reads
what an earlier observation concluded. Cancellation is not observed here: it is
the backend's own act, recorded in the run's ``run.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workbench import conventions
from workbench.backends.kubernetes.entrypoint import completion_roles
from workbench.backends.kubernetes.manifests import FAILURES_ANNOTATION, INDEX_ANNOTATION, ROLE_LABEL
from workbench.spec import JobSpec

Obj = dict[str, Any]
STARTED_PHASES = ("Running", "Succeeded", "Failed")


@dataclass(frozen=True)
class Observed:
    """What the cluster says about a job; ``unfinished`` names the Jobs to stop once the job is decided.
    ``started``: when its first pod started (once every replica has); ``ended``: when the Job controller decided."""

    state: str
    message: str
    attempt: int = 0
    unfinished: tuple[str, ...] = ()
    started: float | None = None
    ended: float | None = None


def observe(spec: JobSpec, jobs: list[Obj], pods: list[Obj]) -> Observed:
    """The job's state from its Jobs (one per role) and their Pods."""
    by_role = {_labels(j).get(ROLE_LABEL, ""): j for j in jobs}
    attempt = max((_failures(p) for p in pods), default=0)
    started = min(filter(None, (_started(p) for p in pods)), default=None)
    missing = [role for role in spec.roles() if role not in by_role]
    if missing:
        return Observed(
            "failed",
            f"the Kubernetes Job of {', '.join(missing)} is gone (deleted outside the workbench, or expired)",
            attempt,
            _unfinished(by_role),
            started,
        )
    for role, job in by_role.items():
        if _condition(job, "Failed") or _condition(job, "FailureTarget"):
            ended = _decided(job, ("Failed", "FailureTarget"))
            return Observed("failed", _failure(role, job, pods), attempt, _unfinished(by_role), started, ended)
    done = [by_role[role] for role in completion_roles(spec.framework, spec.roles())]
    if all(_succeeded(job) for job in done):
        ended = max(filter(None, (_decided(j, ("SuccessCriteriaMet", "Complete")) for j in done)), default=None)
        return Observed("succeeded", "all replicas finished", attempt, _unfinished(by_role), started, ended)
    waiting = _waiting(spec, pods)
    if waiting:
        return Observed("queued", waiting, attempt)
    running = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running")
    return Observed("running", f"{running} replica(s) running", attempt, started=started)


def replica_pods(pods: list[Obj], role: str, index: int) -> list[Obj]:
    """The pods that ran ``role``-``index``, oldest first (one more per restart)."""
    mine = [p for p in pods if _labels(p).get(ROLE_LABEL) == role and pod_index(p) == index]
    # The failure count orders attempts even when two pods were created within the same second.
    return sorted(
        mine, key=lambda p: (_failures(p), p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"])
    )


def pod_index(pod: Obj) -> int | None:
    value = (pod["metadata"].get("annotations") or {}).get(INDEX_ANNOTATION)
    return int(value) if value is not None and str(value).isdigit() else None


def pod_finished(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _waiting(spec: JobSpec, pods: list[Obj]) -> str | None:
    """Why not every replica has started, or None once all have. A replica whose pod ran once and is being
    replaced (a restart) has started: a restart does not send the job back to the queue."""
    waiting = []
    for r in conventions.replicas(spec.roles()):
        mine = replica_pods(pods, r.role, r.index)
        if not any((p.get("status") or {}).get("phase") in STARTED_PHASES for p in mine):
            waiting.append(f"{r.role}-{r.index}: {_pending_reason(mine[-1]) if mine else 'no pod yet'}")
    if not waiting:
        return None
    return f"waiting for {len(waiting)} pod(s) to start; " + "; ".join(waiting[:3])


def _pending_reason(pod: Obj) -> str:
    """The most useful reason a pod has not started: unschedulable, image pull errors..."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return ": ".join(x for x in (waiting["reason"], waiting.get("message")) if x)
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return ": ".join(x for x in (condition.get("reason"), condition.get("message")) if x)
    return status.get("phase") or "Pending"


def _failure(role: str, job: Obj, pods: list[Obj]) -> str:
    """Which replica failed how, then what the Job controller concluded."""
    condition = next(
        c
        for c in (job.get("status") or {}).get("conditions") or []
        if c.get("type") in ("Failed", "FailureTarget") and c.get("status") == "True"
    )
    verdict = ": ".join(x for x in (condition.get("reason"), condition.get("message")) if x)
    failed = [
        p for p in pods if _labels(p).get(ROLE_LABEL) == role and (p.get("status") or {}).get("phase") == "Failed"
    ]
    if not failed:
        return f"{role}: {verdict}"
    last = max(failed, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    name = f"{role}-{pod_index(last)}"
    code = _exit_code(last)
    how = f"exited with code {code}" if code is not None else (last.get("status") or {}).get("reason") or "failed"
    return f"{name} {how} (see logs/{name}.log); {verdict}"


def _exit_code(pod: Obj) -> int | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated and terminated.get("exitCode") is not None:
            return int(terminated["exitCode"])
    return None


def _succeeded(job: Obj) -> bool:
    # SuccessCriteriaMet comes first (Kubernetes >= 1.31); Complete follows once pods are gone.
    return _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet")


def _unfinished(by_role: dict[str, Obj]) -> tuple[str, ...]:
    ended = ("Complete", "SuccessCriteriaMet", "Failed", "FailureTarget")
    return tuple(j["metadata"]["name"] for j in by_role.values() if not any(_condition(j, c) for c in ended))


def _condition(obj: Obj, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True" for c in (obj.get("status") or {}).get("conditions") or []
    )


def _decided(job: Obj, kinds: tuple[str, ...]) -> float | None:
    """When the Job controller set the first of ``kinds`` (its completionTime for Complete)."""
    times = [
        c.get("lastTransitionTime")
        for c in (job.get("status") or {}).get("conditions") or []
        if c.get("type") in kinds and c.get("status") == "True"
    ]
    return min(
        filter(None, (timestamp(t) for t in times)), default=timestamp((job.get("status") or {}).get("completionTime"))
    )


def _started(pod: Obj) -> float | None:
    """When the pod's container started: its running or terminated state's startedAt (the pod's own startTime is
    when the kubelet took it, before the image was pulled)."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        for state in ((container.get("state") or {}).get(k) or {} for k in ("running", "terminated")):
            if state.get("startedAt"):
                return timestamp(state["startedAt"])
    return None


def timestamp(value: str | None) -> float | None:
    """An API timestamp (RFC 3339, e.g. ``2026-12-06T15:04:05Z``) as seconds since the epoch."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _labels(obj: Obj) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _failures(pod: Obj) -> int:
    value = (pod["metadata"].get("annotations") or {}).get(FAILURES_ANNOTATION, "0")
    return int(value) if str(value).isdigit() else 0
