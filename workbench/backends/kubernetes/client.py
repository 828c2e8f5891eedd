"""The thin wrapper over the official ``kubernetes`` client: configuration, the few calls the backend makes,
and API errors turned into :class:`KubernetesError` with a message that says what to do.

Objects go in and come out as plain dicts in the API's camelCase shape, the
same shape :mod:`.manifests` builds, so the rest of the backend never sees the
client's model classes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from workbench import settings
from workbench.backends.kubernetes.incluster import in_cluster, pod_namespace
from workbench.errors import WorkbenchError

Obj = dict[str, Any]
TIMEOUT = (5.0, 30.0)  # connect, read (seconds): a hung API server fails a call instead of a notebook cell

# What a user can do about each API status, in one table.
_HINTS = {
    401: "the API refused the credentials: renew the kubeconfig's, or check the pod's service account token",
    403: "the service account lacks a permission: the workbench needs create/get/list/watch/delete on jobs "
    "and services, and get/list on pods and pods/log, in this namespace (the chart's Role grants them)",
    404: "not found: check that the namespace exists (WORKBENCH_K8S_NAMESPACE)",
    409: "an object of that name already exists",
    422: "Kubernetes rejected the object as invalid",
}


class KubernetesError(WorkbenchError):
    """The Kubernetes API cannot be reached, or refused a request."""


def load_configuration() -> k8s.Configuration:
    """Connection settings: the pod's service account inside a cluster, else the kubeconfig (``KUBECONFIG``)."""
    configuration = k8s.Configuration()
    try:
        if in_cluster():
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(_kubeconfig(), client_configuration=configuration, persist_config=False)
    except (ConfigException, OSError) as e:
        raise KubernetesError(
            f"no Kubernetes configuration ({e}); run inside a pod with a service account, "
            "or point KUBECONFIG at a kubeconfig file"
        ) from e
    return configuration


def default_namespace() -> str:
    """``WORKBENCH_K8S_NAMESPACE``, else this pod's namespace, else the kubeconfig context's, else "default"."""
    explicit = settings.K8S_NAMESPACE.get() or (pod_namespace() if in_cluster() else None)
    if explicit:
        return explicit
    try:
        _contexts, active = k8s_config.list_kube_config_contexts(_kubeconfig())
    except (ConfigException, OSError):
        return "default"
    return str((active or {}).get("context", {}).get("namespace") or "default")


def _kubeconfig() -> str:
    # Passed explicitly: the client reads KUBECONFIG once, when it is imported. It expands "~" itself.
    return settings.KUBECONFIG.get()


class Cluster:
    """A connection to one namespace of the API. Use it in a ``with`` block, which closes the connection pool."""

    def __init__(self, namespace: str, configuration: k8s.Configuration | None = None):
        self.namespace = namespace
        self.api = k8s.ApiClient(configuration or load_configuration())
        self.core = k8s.CoreV1Api(self.api)
        self.batch = k8s.BatchV1Api(self.api)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.close()

    def create(self, manifest: Obj) -> Obj:
        """Create a Service or Job from its manifest; return the object as the API stored it."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        body: Any
        create: Callable[..., Any]
        if kind == "Service":
            body, create = k8s.V1Service.from_dict(manifest), self.core.create_namespaced_service
        elif kind == "Job":
            body, create = k8s.V1Job.from_dict(manifest), self.batch.create_namespaced_job
        else:
            raise ValueError(f"cannot create a {kind}")
        return self._call(f"create {kind} {name}", create, self.namespace, body)

    def jobs(self, selector: str) -> list[Obj]:
        """The Jobs matching a label selector."""
        found = self._call(
            f"list Jobs {selector}", self.batch.list_namespaced_job, self.namespace, label_selector=selector
        )
        return list(found.get("items") or [])

    def pods(self, selector: str) -> list[Obj]:
        """The Pods matching a label selector."""
        found = self._call(
            f"list Pods {selector}", self.core.list_namespaced_pod, self.namespace, label_selector=selector
        )
        return list(found.get("items") or [])

    def pod_log(self, name: str) -> str | None:
        """Everything the pod's container wrote so far; None when the pod is gone or its container has not started."""
        try:
            return str(self.core.read_namespaced_pod_log(name, self.namespace, _request_timeout=TIMEOUT))
        except ApiException as e:
            if e.status in (400, 404):  # 400: "container ... is waiting to start"
                return None
            raise self._error(f"read the log of Pod {name}", e) from e
        except urllib3.exceptions.HTTPError as e:
            raise self._unreachable(e) from e

    def delete(self, kind: str, name: str, propagation: str = "Foreground") -> bool:
        """Delete a Job (with its pods, as ``propagation`` says) or a Service; False if it was already gone."""
        delete = {"Job": self.batch.delete_namespaced_job, "Service": self.core.delete_namespaced_service}[kind]
        try:
            # The answer is not parsed: it is a Status or the object itself, depending on the kind and
            # on whether deletion is still pending (Foreground), and nothing in it is needed.
            # With _preload_content=False the client returns urllib3's response, which its annotations do not say.
            response: Any = delete(
                name, self.namespace, propagation_policy=propagation, _request_timeout=TIMEOUT, _preload_content=False
            )
            response.read()
            response.release_conn()
        except ApiException as e:
            if e.status == 404:
                return False
            raise self._error(f"delete {kind} {name}", e) from e
        except urllib3.exceptions.HTTPError as e:
            raise self._unreachable(e) from e
        return True

    def _call(self, action: str, method: Any, *args: Any, **kwargs: Any) -> Obj:
        try:
            result = method(*args, _request_timeout=TIMEOUT, **kwargs)
        except ApiException as e:
            raise self._error(action, e) from e
        except urllib3.exceptions.HTTPError as e:
            raise self._unreachable(e) from e
        plain: Obj = self.api.sanitize_for_serialization(result)
        return plain

    def _error(self, action: str, e: ApiException) -> KubernetesError:
        try:
            detail = json.loads(e.body or "{}").get("message") or e.reason
        except ValueError:
            detail = e.body or e.reason
        hint = _HINTS.get(e.status or 0, "")
        return KubernetesError(
            f"Kubernetes API: {action} in namespace {self.namespace} failed ({e.status} {e.reason}: {detail})"
            + (f"; {hint}" if hint else "")
        )

    def _unreachable(self, e: Exception) -> KubernetesError:
        return KubernetesError(f"cannot reach the Kubernetes API at {self.api.configuration.host}: {e}")
