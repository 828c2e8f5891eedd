"""Distributed conventions: the environment each replica of a job needs.

One function for every backend. The local backend passes 127.0.0.1 addresses
on free ports; the Kubernetes backend passes stable pod DNS names. The result
is what the framework reads: ``TF_CONFIG`` for TensorFlow, ``MASTER_ADDR`` /
``RANK``... for PyTorch, ``DMLC_*`` for MXNet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# The port a role's address list is built with is chosen by the backend; these
# are the roles each framework knows, in the order replicas are numbered.
ROLE_ORDER = ("scheduler", "chief", "server", "ps", "worker")


@dataclass(frozen=True)
class Replica:
    role: str
    index: int


def replicas(roles: dict[str, int]) -> list[Replica]:
    """All replicas of a job, in launch order (schedulers and servers before workers)."""
    ordered = sorted(roles, key=lambda r: ROLE_ORDER.index(r) if r in ROLE_ORDER else len(ROLE_ORDER))
    return [Replica(role, i) for role in ordered for i in range(roles[role])]


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def replica_env(
    framework: str,
    cluster: dict[str, list[str]],
    replica: Replica,
    *,
    loopback: bool = False,
) -> dict[str, str]:
    """Environment variables for ``replica`` of a job whose roles live at ``cluster``.

    ``cluster`` maps each role to its replicas' ``host:port`` addresses.
    ``loopback`` says every replica shares this machine's loopback interface
    (the local backend), which MXNet's ps-lite must be told.
    """
    env = {"WORKBENCH_ROLE": replica.role, "WORKBENCH_REPLICA_INDEX": str(replica.index)}
    if framework == "tensorflow":
        env.update(_tensorflow(cluster, replica))
    elif framework == "pytorch":
        env.update(_pytorch(cluster, replica))
    elif framework == "mxnet":
        env.update(_mxnet(cluster, replica, loopback))
    return env


def _tensorflow(cluster: dict[str, list[str]], replica: Replica) -> dict[str, str]:
    if sum(len(v) for v in cluster.values()) == 1:
        return {}  # a single replica needs no TF_CONFIG; setting one makes TF wait for peers
    config = {"cluster": cluster, "task": {"type": replica.role, "index": replica.index}}
    return {"TF_CONFIG": json.dumps(config, sort_keys=True)}


def _pytorch(cluster: dict[str, list[str]], replica: Replica) -> dict[str, str]:
    workers = cluster["worker"]
    master = workers[0]
    me = workers[replica.index]
    same_host = [a for a in workers[: replica.index] if host_of(a) == host_of(me)]
    return {
        "MASTER_ADDR": host_of(master),
        "MASTER_PORT": str(port_of(master)),
        "WORLD_SIZE": str(len(workers)),
        "RANK": str(replica.index),
        "LOCAL_RANK": str(len(same_host)),
        "LOCAL_WORLD_SIZE": str(sum(host_of(a) == host_of(me) for a in workers)),
    }


def _mxnet(cluster: dict[str, list[str]], replica: Replica, loopback: bool) -> dict[str, str]:
    if "scheduler" not in cluster:
        return {}  # single-process MXNet: local kvstore, no ps-lite
    scheduler = cluster["scheduler"][0]
    env = {
        "DMLC_ROLE": replica.role,
        "DMLC_PS_ROOT_URI": host_of(scheduler),
        "DMLC_PS_ROOT_PORT": str(port_of(scheduler)),
        "DMLC_NUM_SERVER": str(len(cluster.get("server", []))),
        "DMLC_NUM_WORKER": str(len(cluster.get("worker", []))),
    }
    if loopback:
        env["DMLC_INTERFACE"] = "lo"
        env["DMLC_NODE_HOST"] = "127.0.0.1"
    return env
