"""A FAKE Kubernetes API server for tests: a stand-in for a real cluster's API, not a cluster.

It speaks the API's REST paths over real HTTP on 127.0.0.1 (a port picked at
run time), so the backend is driven through the real ``kubernetes`` client,
configured by a kubeconfig that points here. It stores the Services and Jobs
it is sent, lists them by label selector, serves pod logs, and deletes with a
recorded propagation policy.

It runs no controller: tests play the Job controller and the kubelet through
:meth:`FakeApiServer.make_pods`, :meth:`set_pod` and :meth:`set_job_condition`,
so every state a test asserts on was put there by that test.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

Obj = dict[str, Any]

_ROUTE = re.compile(
    r"^/(?:api/v1|apis/batch/v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>services|jobs|pods)"
    r"(?:/(?P<name>[^/]+))?(?P<log>/log)?$"
)
_KINDS = {"services": "Service", "jobs": "Job", "pods": "Pod"}
_API_VERSIONS = {"Service": "v1", "Job": "batch/v1", "Pod": "v1"}
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


class FakeApiServer:
    """Start with :meth:`start` (or as a context manager); ``url`` is its address."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (plural, namespace, name) -> object
        self.logs: dict[str, Callable[[], str]] = {}  # pod name -> its log so far
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []  # method, path, query
        self.deletes: list[tuple[str, str, str | None]] = []  # plural, name, propagationPolicy
        self.failures: dict[tuple[str, str], int] = {}  # (method, plural) -> HTTP status to answer once
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeApiServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose current context is this fake server, for ``KUBECONFIG``."""
        return write_kubeconfig(path, self.url, namespace)

    # --- the test plays the Job controller and the kubelet -------------------------------------

    def get(self, plural: str, name: str, namespace: str | None = None) -> Obj:
        with self.lock:
            for (p, ns, n), obj in self.objects.items():
                if p == plural and n == name and namespace in (None, ns):
                    return obj
        raise KeyError(f"no {plural} {name}")

    def names(self, plural: str) -> list[str]:
        with self.lock:
            return sorted(n for (p, _ns, n) in self.objects if p == plural)

    def make_pods(self, job_name: str, phase: str = "Pending", indexes: list[int] | None = None) -> list[str]:
        """Create a pod per index of a Job (or for ``indexes``), as the Job controller would."""
        job = self.get("jobs", job_name)
        names = []
        for index in range(job["spec"]["completions"]) if indexes is None else indexes:
            failures = sum(
                1
                for p in self._pods_of(job_name)
                if p["metadata"]["annotations"][INDEX_ANNOTATION] == str(index) and p["status"]["phase"] == "Failed"
            )
            pod = pod_from_job(job, index, failures)
            pod["status"] = {"phase": phase}
            self._store("pods", job["metadata"]["namespace"], pod)
            names.append(pod["metadata"]["name"])
        return names

    def set_pod(
        self,
        name: str,
        phase: str,
        *,
        exit_code: int | None = None,
        waiting: tuple[str, str] | None = None,
        unschedulable: str | None = None,
    ) -> None:
        """Set a pod's phase, and its container's exit code or waiting reason, as a kubelet reports them."""
        with self.lock:
            pod = next(o for (p, _ns, n), o in self.objects.items() if p == "pods" and n == name)
            status: Obj = {"phase": phase}
            state: Obj = {}
            if exit_code is not None:
                state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}}
            elif waiting is not None:
                state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
            elif phase == "Running":
                state = {"running": {"startedAt": _now()}}
            if state:
                status["containerStatuses"] = [
                    {
                        "name": "replica",
                        "image": "x",
                        "imageID": "",
                        "ready": phase == "Running",
                        "restartCount": 0,
                        "state": state,
                    }
                ]
            if unschedulable:
                status["conditions"] = [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
                ]
            pod["status"] = status

    def set_log(self, pod: str, source: str | Path) -> None:
        """The pod's log: fixed text, or whatever a file holds when asked (a process writing it)."""
        if isinstance(source, Path):
            path = source
            self.logs[pod] = lambda: path.read_text(errors="replace") if path.exists() else ""
        else:
            self.logs[pod] = lambda: str(source)

    def set_job_condition(self, job_name: str, kind: str, reason: str = "", message: str = "") -> None:
        """Add a condition (Complete, SuccessCriteriaMet, Failed, FailureTarget) as the Job controller does."""
        with self.lock:
            job = next(o for (p, _ns, n), o in self.objects.items() if p == "jobs" and n == job_name)
            conditions = job.setdefault("status", {}).setdefault("conditions", [])
            conditions.append(
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": _now(),
                    "lastProbeTime": _now(),
                }
            )

    def fail_next(self, method: str, plural: str, status: int) -> None:
        """Answer the next ``method`` on ``plural`` with an error ``status``."""
        self.failures[(method, plural)] = status

    # --- HTTP ------------------------------------------------------------------------------------

    def _pods_of(self, job_name: str) -> list[Obj]:
        return [
            o
            for (p, _ns, _n), o in self.objects.items()
            if p == "pods" and o["metadata"].get("labels", {}).get("job-name") == job_name
        ]

    def _store(self, plural: str, ns: str, obj: Obj) -> None:
        meta = obj["metadata"]
        meta.setdefault("namespace", ns)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion=str(time.monotonic_ns()))
        with self.lock:
            self.objects[(plural, ns, meta["name"])] = obj

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(req.path)
        query = parse_qs(url.query)
        self.requests.append((method, url.path, query))
        match = _ROUTE.match(url.path)
        if not match:
            return _send(req, 404, _status(404, "NotFound", f"the fake serves no {url.path}"))
        ns, plural, name, log = match["ns"], match["plural"], match["name"], match["log"]
        injected = self.failures.pop((method, plural), None)
        if injected:
            return _send(
                req,
                injected,
                _status(
                    injected,
                    "Forbidden" if injected == 403 else "Invalid",
                    f"{plural} is refused by the fake (status {injected})",
                ),
            )
        if method == "POST" and not name:
            body = json.loads(req.rfile.read(int(req.headers.get("Content-Length") or 0)))
            if (plural, ns, body["metadata"]["name"]) in self.objects:
                return _send(req, 409, _status(409, "AlreadyExists", f"{body['metadata']['name']} already exists"))
            body.setdefault("status", {})
            self._store(plural, ns, body)
            return _send(req, 201, body)
        if method == "GET" and not name:
            selector = dict(kv.split("=", 1) for kv in query.get("labelSelector", [""])[0].split(",") if kv)
            with self.lock:
                items = [
                    o
                    for (p, n_s, _n), o in self.objects.items()
                    if p == plural
                    and n_s == ns
                    and all(o["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
                ]
            kind = _KINDS[plural]
            return _send(
                req,
                200,
                {
                    "apiVersion": _API_VERSIONS[kind],
                    "kind": f"{kind}List",
                    "metadata": {"resourceVersion": "1"},
                    "items": items,
                },
            )
        obj = self.objects.get((plural, ns, name or ""))
        if obj is None:
            return _send(req, 404, _status(404, "NotFound", f'{plural} "{name}" not found'))
        if method == "GET" and log:
            if obj["status"].get("phase") == "Pending":
                return _send(
                    req, 400, _status(400, "BadRequest", f'container "replica" in pod "{name}" is waiting to start')
                )
            text = self.logs.get(name, lambda: "")()
            return _send(req, 200, text.encode(), "text/plain")
        if method == "GET":
            return _send(req, 200, obj)
        if method == "DELETE":
            policy = query.get("propagationPolicy", [None])[0]
            self.deletes.append((plural, name or "", policy))
            with self.lock:
                del self.objects[(plural, ns, name or "")]
                if plural == "jobs" and policy != "Orphan":
                    for pod in [
                        o
                        for o in self.objects.values()
                        if o["kind"] == "Pod" and o["metadata"].get("labels", {}).get("job-name") == name
                    ]:
                        del self.objects[("pods", ns, pod["metadata"]["name"])]
            if plural == "jobs" and policy == "Foreground":
                # As the real API: the object is returned, marked for deletion, while its pods go first.
                gone = {
                    **obj,
                    "metadata": {**obj["metadata"], "deletionTimestamp": _now(), "finalizers": ["foregroundDeletion"]},
                }
                return _send(req, 200, gone)
            if plural == "jobs":
                return _send(req, 200, _status(200, "", "", success=True))
            return _send(req, 200, obj)  # Services and Pods: the deleted object, as the real API answers
        return _send(req, 405, _status(405, "MethodNotAllowed", method))


def write_kubeconfig(path: Path, server: str, namespace: str = "default") -> Path:
    """A kubeconfig with one context: ``server`` (plain HTTP, a bearer token), ``namespace``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        "current-context": "fake",
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def pod_from_job(job: Obj, index: int, failures: int = 0) -> Obj:
    """The pod the Job controller makes for ``index`` of an Indexed Job: the template, plus the hostname,
    labels and annotations it adds (completion index; failure count under backoffLimitPerIndex)."""
    name = job["metadata"]["name"]
    template = copy.deepcopy(job["spec"]["template"])
    meta = template["metadata"]
    meta["labels"] = {
        **meta.get("labels", {}),
        "job-name": name,
        "batch.kubernetes.io/job-completion-index": str(index),
    }
    meta["annotations"] = {**meta.get("annotations", {}), INDEX_ANNOTATION: str(index)}
    if "backoffLimitPerIndex" in job["spec"]:
        meta["annotations"]["batch.kubernetes.io/job-index-failure-count"] = str(failures)
    meta.update(name=f"{name}-{index}-{uuid.uuid4().hex[:5]}", namespace=job["metadata"].get("namespace", "default"))
    spec = template["spec"]
    spec["hostname"] = f"{name}-{index}"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


_FIELD = re.compile(r"^metadata\.(annotations|labels)\['(?P<key>[^']+)'\]$")


def container_env(pod: Obj) -> dict[str, str]:
    """What a kubelet puts in the container's environment from the pod spec: HOSTNAME, each ``value``,
    and downward-API ``fieldRef``s (a missing annotation gives ""). Secrets are not faked: they fail."""
    env = {"HOSTNAME": pod["spec"]["hostname"]}
    meta = pod["metadata"]
    for var in pod["spec"]["containers"][0].get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        path = var["valueFrom"]["fieldRef"]["fieldPath"]  # KeyError for secretKeyRef: not faked
        match = _FIELD.match(path)
        if match:
            env[var["name"]] = meta.get(match[1], {}).get(match["key"], "")
        else:
            env[var["name"]] = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"]}[path]
    return env


def _send(req: BaseHTTPRequestHandler, code: int, body: Obj | bytes, content_type: str = "application/json") -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req.send_response(code)
    req.send_header("Content-Type", content_type)
    req.send_header("Content-Length", str(len(data)))
    req.end_headers()
    req.wfile.write(data)


def _status(code: int, reason: str, message: str, success: bool = False) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Success" if success else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
