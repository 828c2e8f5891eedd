"""Talking to the model server from Python: ``predict``, and what ``promote`` uses to see a version go live."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson

from workbench import settings
from workbench.errors import ServingError
from workbench.workspace import Workspace


class Predictions(list):  # type: ignore[type-arg]
    """``predict``'s answer: the predictions (a list, one per instance), plus the ``version`` that served them."""

    version: int | None = None


def server_url(url: str | None = None, workspace: Workspace | None = None) -> str:
    """``url``, else ``WORKBENCH_SERVER_URL``, else the server ``workbench up`` runs for the workspace."""
    url = url or settings.SERVER_URL.get()
    if not url:
        from workbench.services import read_services

        info = read_services(workspace or Workspace.current()).get("server")
        url = info["url"] if info else ""
    if not url:
        raise ServingError(
            "no model server is known for this workspace: start one with `workbench up` (or `workbench serve`), "
            f"or set {settings.SERVER_URL.name}"
        )
    return url.rstrip("/")


def request(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One HTTP exchange (httpx) with JSON in and out; (status, body, headers). 4xx/5xx are returned, not raised.
    Sends ``WORKBENCH_SERVER_TOKEN`` as a bearer token when it is set."""
    import httpx

    headers = {"content-type": "application/json"}
    token = settings.SERVER_TOKEN.get()
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY, default=_np) if body is not None else None
    try:
        r = httpx.request(method, url, content=data, headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise ServingError(f"the model server at {url} cannot be reached ({e})") from e
    try:
        payload = orjson.loads(r.content or b"{}")
    except orjson.JSONDecodeError:
        payload = {"error": r.text or r.reason_phrase}
    return r.status_code, payload, dict(r.headers)


def _np(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def predict(
    model: str,
    instances: Any = None,
    *,
    inputs: Any = None,
    version: int | None = None,
    label: str | None = None,
    url: str | None = None,
    timeout: float = 30,
) -> Any:
    """Predict through the model server (TF Serving REST API).

    ``instances``: row format, one entry per example (a list or an array whose
    first axis is the batch); or ``inputs``: columnar format. ``version`` or
    ``label`` pick a version (default: the live one, or the traffic split).
    Returns :class:`Predictions` (row format) or the ``outputs`` (columnar).
    Raises :class:`~workbench.errors.ServingError` with the server's message.
    """
    if (instances is None) == (inputs is None):
        raise ServingError("give instances= (row format) or inputs= (columnar format)")
    path = f"/v1/models/{model}"
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label is not None:
        path += f"/labels/{label}"
    body = {"instances": instances} if instances is not None else {"inputs": inputs}
    status, answer, headers = request("POST", server_url(url) + path + ":predict", body, timeout)
    if status != 200:
        raise ServingError(f"{model}: {answer.get('error', answer)} (HTTP {status})", status)
    served = headers.get("x-model-version") or headers.get("X-Model-Version")
    if instances is None:
        return answer["outputs"]
    result = Predictions(answer["predictions"])
    result.version = int(served) if served else None
    return result


def notify(url: str) -> None:
    """Ask the server to rescan ``models/`` now (best effort: it polls anyway)."""
    try:
        request("POST", url + "/workbench/reload", {}, timeout=2)
    except ServingError:
        pass


def wait_available(url: str, model: str, version: int, timeout: float = 60) -> bool:
    """Wait until the server serves ``version`` of ``model``; False if it failed to load or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body, _ = request("GET", f"{url}/v1/models/{model}/versions/{version}", timeout=10)
        except ServingError:  # busy loading, or restarting: ask again until the deadline
            time.sleep(0.2)
            continue
        states = [s["state"] for s in body.get("model_version_status", [])] if status == 200 else []
        if "AVAILABLE" in states:
            return True
        if "END" in states:
            return False
        time.sleep(0.02)
    return False
