"""KubernetesBackend: submit, status, cancel and logs of jobs whose replicas are pods.

The cluster is the truth about a job: its state, replicas and timestamps come from its Jobs and Pods
(:mod:`.state`), and its record from the run's ``run.json`` (:mod:`.records`); no job database is written.
Which namespace a run's objects live in is kept in its ``run.json``, so any process sharing the workspace can
follow the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from workbench.backends.base import Backend
from workbench.backends.kubernetes import manifests
from workbench.backends.kubernetes.client import Cluster, default_namespace, load_configuration
from workbench.backends.kubernetes.logs import replica_lines
from workbench.backends.kubernetes.records import RunRecords
from workbench.backends.kubernetes.state import Observed, observe
from workbench.conventions import replicas
from workbench.spec import JobSpec
from workbench.store import FINAL_STATES
from workbench.workspace import Workspace, read_json, write_json_atomic

RUN_JSON_KEY = "kubernetes"
CANCELLED = "cancelled by request"


class KubernetesBackend(Backend):
    name = "kubernetes"

    def records(self, workspace: Workspace) -> RunRecords:
        """Records from run.json and the cluster: no job database on the shared volume."""
        return RunRecords(workspace, lambda run_id, data: self._observe(workspace, run_id, data))

    def submit(self, workspace: Workspace, job_id: str, spec: JobSpec) -> None:
        """Create the run's Service and Jobs; on any failure, delete what was created and raise."""
        namespace = default_namespace()
        config = manifests.PodConfig.from_settings(namespace, workspace)
        objects = manifests.render(job_id, spec, config)
        self._remember(workspace, job_id, namespace, objects)
        created: list[manifests.Manifest] = []
        with Cluster(namespace) as cluster:
            try:
                for obj in objects:
                    cluster.create(obj)
                    created.append(obj)
            except BaseException:
                for obj in reversed(created):
                    cluster.delete(obj["kind"], obj["metadata"]["name"], "Background")
                raise

    def status(self, workspace: Workspace, job_id: str) -> str:
        return self.records(workspace).get(job_id).state

    def cancel(self, workspace: Workspace, job_id: str) -> str:
        """Delete the run's Jobs (their pods first: Foreground propagation) and Service; the job is cancelled.

        The request is written first, so a process that finds the Jobs gone meanwhile knows why."""
        records = self.records(workspace)
        record = records.get(job_id)
        if record.state in FINAL_STATES:
            return record.state
        records.update(record.id, cancel_requested=True)
        with Cluster(self._namespace(workspace, record.id)) as cluster:
            self._delete(cluster, record.id, JobSpec.from_dict(record.spec))
        records.transition(record.id, "cancelled", CANCELLED)
        return records.get(record.id).state

    def _observe(self, workspace: Workspace, run_id: str, data: dict[str, Any]) -> Observed:
        """What the cluster says about a run that has not ended; once it has, stop what still runs."""
        spec = JobSpec.from_dict(data["spec"])
        selector = manifests.selector(run_id)
        with Cluster(self._namespace(workspace, run_id)) as cluster:
            if data.get("cancel_requested"):  # a cancel another process started and did not finish
                self._delete(cluster, run_id, spec)
                return Observed("cancelled", CANCELLED)
            observed = observe(spec, cluster.jobs(selector), cluster.pods(selector))
            if observed.state in FINAL_STATES:
                # As locally, the job ends as a whole: stop helpers (ps) and peers of a failed replica.
                for name in observed.unfinished:
                    cluster.delete("Job", name)
                cluster.delete("Service", manifests.service_name(run_id), "Background")
        return observed

    def log_sources(self, workspace: Workspace, job_id: str) -> dict[str, Iterator[str]]:
        spec = JobSpec.from_dict(self.records(workspace).get(job_id).spec)
        namespace = self._namespace(workspace, job_id)
        configuration = load_configuration()
        paths = workspace.run(job_id)
        return {
            f"{r.role}-{r.index}": replica_lines(  # type: ignore[misc]  # None marks "nothing new now"
                lambda: Cluster(namespace, configuration), job_id, r.role, r.index, paths.replica_log(r.role, r.index)
            )
            for r in replicas(spec.roles())
        }

    def _delete(self, cluster: Cluster, run_id: str, spec: JobSpec) -> None:
        for role in spec.roles():
            cluster.delete("Job", manifests.job_name(run_id, role), "Foreground")
        cluster.delete("Service", manifests.service_name(run_id), "Background")

    def _remember(self, workspace: Workspace, job_id: str, namespace: str, objects: list[manifests.Manifest]) -> None:
        path = workspace.run(job_id).run_json
        data = read_json(path)
        data[RUN_JSON_KEY] = {
            "namespace": namespace,
            "objects": [f"{o['kind']}/{o['metadata']['name']}" for o in objects],
            "images": sorted(
                {c["image"] for o in objects if o["kind"] == "Job" for c in o["spec"]["template"]["spec"]["containers"]}
            ),
        }
        write_json_atomic(path, data)

    def _namespace(self, workspace: Workspace, job_id: str) -> str:
        try:
            return str(read_json(workspace.run(job_id).run_json)[RUN_JSON_KEY]["namespace"])
        except (OSError, ValueError, KeyError):
            return default_namespace()
