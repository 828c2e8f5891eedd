"""Whether this process runs inside a Kubernetes pod with API access (stdlib only: the registry asks it)."""

from __future__ import annotations

import os
from pathlib import Path

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster() -> bool:
    """True in a pod that can talk to its cluster's API: the same test ``load_incluster_config`` makes."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT_DIR / "token").is_file()


def pod_namespace() -> str | None:
    """The namespace of the pod this process runs in, if any."""
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or None
    except OSError:
        return None
