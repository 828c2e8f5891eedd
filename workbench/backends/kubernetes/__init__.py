"""The Kubernetes backend: each role of a job an Indexed Job, one pod per replica, behind a headless Service.

Split by role (as Metaflow's kubernetes plugin is):

- :mod:`.incluster`: whether this process runs in a pod (picks the backend; stdlib only)
- :mod:`.manifests`: JobSpec -> Job and Service manifests (plain dicts; no client needed)
- :mod:`.entrypoint`: runs in each pod: derives the replica's environment, runs the script
- :mod:`.client`: the thin wrapper over the ``kubernetes`` client, errors mapped to ours
- :mod:`.state`: Job and Pod conditions -> queued / running / succeeded / failed
- :mod:`.logs`: per-replica line iterators over pod logs
- :mod:`.backend`: :class:`~workbench.backends.kubernetes.backend.KubernetesBackend`, tying them together

Only :mod:`.client` (and :mod:`.backend`, through it) imports the
``kubernetes`` package, so the manifests and the entrypoint work without it.
"""
