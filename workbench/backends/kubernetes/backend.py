"""KubernetesBackend: submit, status, cancel and logs of jobs whose replicas are pods.

The job record stays in the workspace's job store, as for every backend
(``launcher.submit`` writes it); the cluster is the truth about what runs, and
:meth:`KubernetesBackend.status` reconciles the record with it. Which namespace
a run's objects live in is kept in its ``run.json``, so any process sharing
the workspace can follow the job.
"""

from __future__ import annotations

from collections.abc import Iterator

from workbench.backends.base import Backend
from workbench.backends.kubernetes import manifests
from workbench.backends.kubernetes.client import Cluster, default_namespace, load_configuration
from workbench.backends.kubernetes.logs import replica_lines
from workbench.backends.kubernetes.state import Observed, observe
from workbench.conventions import replicas
from workbench.spec import JobSpec
from workbench.store import FINAL_STATES, JobRecord, JobStore
from workbench.workspace import Workspace, read_json, write_json_atomic

RUN_JSON_KEY = "kubernetes"


class KubernetesBackend(Backend):
    name = "kubernetes"

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
        store = JobStore(workspace)
        record = store.get(job_id)
        if record.state in FINAL_STATES:
            return record.state
        spec = JobSpec.from_dict(record.spec)
        selector = manifests.selector(job_id)
        with Cluster(self._namespace(workspace, job_id)) as cluster:
            observed = observe(spec, cluster.jobs(selector), cluster.pods(selector))
            if store.get(job_id).cancel_requested:
                return self._cancel(cluster, store, job_id, spec)
            if observed.state in FINAL_STATES:
                # As locally, the job ends as a whole: stop helpers (ps) and peers of a failed replica.
                for name in observed.unfinished:
                    cluster.delete("Job", name)
                cluster.delete("Service", manifests.service_name(job_id), "Background")
        self._record(store, record, observed)
        return store.get(job_id).state

    def cancel(self, workspace: Workspace, job_id: str) -> str:
        """Delete the run's Jobs (their pods first: Foreground propagation) and Service; the job is cancelled."""
        store = JobStore(workspace)
        store.update(job_id, cancel_requested=1)
        record = store.get(job_id)
        if record.state in FINAL_STATES:
            return record.state
        with Cluster(self._namespace(workspace, job_id)) as cluster:
            return self._cancel(cluster, store, job_id, JobSpec.from_dict(record.spec))

    def log_sources(self, workspace: Workspace, job_id: str) -> dict[str, Iterator[str]]:
        spec = JobSpec.from_dict(JobStore(workspace).get(job_id).spec)
        namespace = self._namespace(workspace, job_id)
        configuration = load_configuration()
        paths = workspace.run(job_id)
        return {
            f"{r.role}-{r.index}": replica_lines(  # type: ignore[misc]  # None marks "nothing new now"
                lambda: Cluster(namespace, configuration), job_id, r.role, r.index, paths.replica_log(r.role, r.index)
            )
            for r in replicas(spec.roles())
        }

    def _cancel(self, cluster: Cluster, store: JobStore, job_id: str, spec: JobSpec) -> str:
        for role in spec.roles():
            cluster.delete("Job", manifests.job_name(job_id, role), "Foreground")
        cluster.delete("Service", manifests.service_name(job_id), "Background")
        store.transition(job_id, "cancelled", "cancelled by request")
        return store.get(job_id).state

    def _record(self, store: JobStore, record: JobRecord, observed: Observed) -> None:
        state = observed.state
        if state == "queued" and record.state == "running":
            state = "running"  # a replica being restarted does not send the job back to the queue
        message = observed.message if state == observed.state else record.message
        if state != record.state:
            store.transition(record.id, state, message, attempt=observed.attempt)
        elif (message, observed.attempt) != (record.message, record.attempt):
            store.update(record.id, message=message, attempt=observed.attempt)

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
