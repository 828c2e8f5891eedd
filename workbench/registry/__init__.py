"""The model registry: promote checkpoints to versioned, validated serving exports in ``models/<name>/``.

``promote`` exports through a framework plugin (:mod:`workbench.serving.model.frameworks`),
validates in a fresh process and publishes atomically; :class:`ModelStore`
keeps versions, labels, the live version and the traffic split in ``model.json``.
"""

from __future__ import annotations

from typing import Any

from workbench.registry.promote import ModelVersion, promote
from workbench.registry.store import ModelStore, live_version, names
from workbench.workspace import Workspace


def models(workspace: Workspace | None = None) -> dict[str, dict[str, Any]]:
    """Every model: its versions (step, metrics, run), labels, live version and traffic split."""
    ws = workspace or Workspace.current()
    out = {}
    for name in names(ws):
        data = ModelStore(ws, name).read()
        out[name] = {
            "live": live_version(data),
            "labels": data["labels"],
            "traffic": data["traffic"],
            "versions": {
                int(v): {
                    "run_id": e.get("source", {}).get("run_id"),
                    "step": e.get("source", {}).get("step"),
                    "metrics": e.get("source", {}).get("metrics", {}),
                    "created": e.get("created"),
                    "rolled_back": bool(e.get("rolled_back")),
                }
                for v, e in sorted(data["versions"].items(), key=lambda kv: int(kv[0]))
            },
        }
    return out


def rollback(model: str, version: int | str | None = None, workspace: Workspace | None = None) -> int:
    """Serve ``version`` (default: the one before the live one) to unversioned requests; return it."""
    return ModelStore(workspace or Workspace.current(), model).rollback(version)


def label(model: str, name: str, version: int | str | None, workspace: Workspace | None = None) -> None:
    """Point label ``name`` (e.g. "stable", "canary") at ``version``; ``None`` removes the label."""
    ModelStore(workspace or Workspace.current(), model).set_label(name, version)


def split(model: str, weights: dict[str, float] | None, workspace: Workspace | None = None) -> None:
    """Split unversioned traffic, e.g. ``{"stable": 90, "canary": 10}`` (labels or versions); ``None`` ends it."""
    ModelStore(workspace or Workspace.current(), model).set_traffic(weights)


__all__ = ["ModelStore", "ModelVersion", "label", "models", "promote", "rollback", "split"]


def delete_version(model: str, version: int | str, workspace: Workspace | None = None) -> None:
    """Remove a version no label, traffic split or rollback pin points at (see :meth:`ModelStore.delete_version`)."""
    ModelStore(workspace or Workspace.current(), model).delete_version(version)
