"""The server's HTTP app in this process, over models that are plain numpy functions: for tests that send many
requests (fuzzing, limits) without a framework. Requests go through httpx's ASGI transport, the same app
object uvicorn serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np

from workbench.serving.metrics import ServerMetrics
from workbench.serving.model.batching import Batcher
from workbench.serving.model.frameworks.base import Runtime
from workbench.serving.model.repository import ModelRepository, ModelState, Servable
from workbench.serving.model.signature import Signature, TensorSpec
from workbench.serving.transport.http import HTTPApp, Limits
from workbench.workspace import Workspace

DENSE = Signature((TensorSpec("x", "float32", (None, 4)),), (TensorSpec("y", "float32", (None, 2)),))
MULTI = Signature(
    (TensorSpec("a", "float32", (None, 2)), TensorSpec("n", "int64", (None,)), TensorSpec("text", "object", (None,))),
    (TensorSpec("total", "float64", (None,)), TensorSpec("length", "int64", (None,))),
)


class NumpyRuntime(Runtime):
    """A model as a numpy function; ``fail`` makes every call raise (a model that breaks at run time)."""

    def __init__(self, signature: Signature, fail: str = ""):
        self.signature, self.fail = signature, fail

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fail:
            raise RuntimeError(self.fail)
        if "x" in inputs:
            x = inputs["x"]
            return {"y": np.stack([x.sum(axis=1), x.max(axis=1)], axis=1).astype("float32")}
        lengths = np.array([len(t) for t in inputs["text"]], dtype="int64")
        return {"total": inputs["a"].sum(axis=1) + inputs["n"], "length": lengths}


def make_app(tmp: Path, limits: Limits | None = None, **models: Runtime) -> HTTPApp:
    """An app whose repository serves ``models`` (name -> runtime) as version 1, labeled "stable"."""
    repo = ModelRepository(Workspace(tmp).ensure())
    for name, runtime in models.items():
        servable = Servable(name, 1, "numpy", runtime, Batcher(runtime.predict, 16, name=f"batch-{name}"))
        data = {"name": name, "versions": {"1": {}}, "live": None, "labels": {"stable": 1}, "traffic": None}
        repo._set(name, ModelState(name, data, {1: servable}, {}))
    repo.ready.set()
    return HTTPApp(repo, ServerMetrics(), limits)


def client(app: HTTPApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inprocess")


def stop(app: HTTPApp) -> None:
    for state in app.repo.models().values():
        for s in state.servables.values():
            s.batcher.close()


def check_answer(r: httpx.Response, what: Any) -> None:
    """Every answer is a 2xx, or a 4xx whose JSON says what is wrong: never a 5xx."""
    assert r.status_code < 500, (what, r.status_code, r.text[:500])
    if r.request.method == "HEAD":
        assert r.content == b"", (what, r.content[:100])  # a HEAD answer carries no body
    elif r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error, str) and error, (what, r.text[:500])
