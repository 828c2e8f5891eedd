"""The model server's HTTP API: one request handler over the repository (no framework: the per-request cost is ours).

Routes (TF Serving REST, KServe V2, operations)::

    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]              version status
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata     signature
    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict      {"instances": ...} | {"inputs": ...}
    GET  /v2  /v2/health/live  /v2/health/ready                 server metadata, probes
    GET  /v2/models/{m}[/versions/{v}][/ready]                  model metadata, readiness
    POST /v2/models/{m}[/versions/{v}]/infer                    V2 inference
    GET  /metrics                                               Prometheus
    POST /workbench/reload                                      rescan models/ now (promote calls it)

Every error is ``{"error": "..."}`` with a 4xx status (5xx only for a model
that fails at run time); a bad request never takes the server down.
"""

from __future__ import annotations

import inspect
import logging
import random
import re
import time
from typing import TYPE_CHECKING, Any

import orjson

from workbench.errors import WorkbenchError
from workbench.registry.signature import InputError
from workbench.serving import fastjson, http, tfserving, v2
from workbench.serving.metrics import ServerMetrics, labels
from workbench.serving.predlog import PredictionLog
from workbench.serving.repository import ModelRepository, NotFound, Unavailable

if TYPE_CHECKING:
    from workbench.serving.workers import Peers

log = logging.getLogger("workbench.serving")

_V1 = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?(?P<rest>/metadata|:[A-Za-z]+)?$"
)
_V2 = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer)?$")
_JSON = [(b"content-type", b"application/json")]
_DUMP = orjson.OPT_SERIALIZE_NUMPY


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def reply(body: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> http.Response:
    """A JSON response."""
    return http.Response(status, orjson.dumps(body, option=_DUMP), headers or _JSON)


class ServerApp:
    """The request handler (:class:`workbench.serving.http.HTTPServer` calls it) over a :class:`ModelRepository`."""

    def __init__(
        self,
        repository: ModelRepository,
        metrics: ServerMetrics,
        prediction_log: PredictionLog | None = None,
        log_sample: float = 0.0,
        peers: Peers | None = None,
    ):
        self.repo = repository
        self.metrics = metrics
        self.predlog = prediction_log
        self.log_sample = log_sample
        self.peers = peers  # the server's other worker processes, if any

    async def __call__(self, request: http.Request) -> http.Response:
        try:
            return await self._route(request)
        except HTTPError as e:
            return http.error(e.status, e.message)
        except Exception as e:  # a bug of ours: answer, log, keep serving
            log.exception("unexpected error on %s %s", request.method, request.path)
            return http.error(500, f"internal error: {type(e).__name__}: {e}")

    async def _route(self, request: http.Request) -> http.Response:
        method, path = request.method, request.path
        m = _V1.match(path)
        if m:
            return await self._v1(method, m, request)
        m = _V2.match(path)
        if m:
            return await self._v2(method, m, request)
        simple = {
            ("GET", "/metrics"): self._metrics,
            ("GET", "/v2/health/live"): lambda: reply({"live": True}),
            ("GET", "/v2/health/ready"): self._ready,
            ("GET", "/v2"): lambda: reply({"name": "workbench", "version": "0.1.0", "extensions": []}),
            ("GET", "/"): lambda: reply({"models": sorted(self.repo.models()), "ready": self.repo.ready.is_set()}),
            ("POST", "/workbench/reload"): self._reload,
        }
        handler = simple.get((method, path))
        if handler is not None:
            response = handler()
            return await response if inspect.isawaitable(response) else response  # type: ignore[no-any-return]
        if any(p == path for _, p in simple):
            raise HTTPError(405, f"{method} is not allowed on {path}")
        raise HTTPError(
            404, f"no endpoint {method} {path}; see /v1/models/<model>[:predict] or /v2/models/<model>/infer"
        )

    # ------------------------------------------------------------------ TF Serving

    async def _v1(self, method: str, m: re.Match[str], request: http.Request) -> http.Response:
        name, label, rest = m["name"], m["label"], m["rest"]
        version = _version(m["version"])
        if rest is None or rest == "/metadata":
            _allow(method, "GET", request.path)
            state = self._state(name)
            if rest == "/metadata":
                s = self._pick(name, version, label)
                return reply(tfserving.metadata_body(name, s.version, s.signature))
            rows = [(v, "AVAILABLE", "") for v in state.available()]
            rows += [(v, "LOADING", "") for v in state.loading | state.unconfirmed]
            rows += [(v, "END", e) for v, e in state.failed.items()]
            if label is not None:
                version = self._pick(name, None, label).version
            if version is not None:
                rows = [r for r in rows if r[0] == version]
                if not rows:
                    raise HTTPError(
                        404, f"model {name!r} has no version {version}; versions: {sorted(state.servables)}"
                    )
            return reply(tfserving.status_body(rows))
        if rest != ":predict":
            raise HTTPError(400, f"{rest[1:]!r} is not supported; this server answers :predict")
        _allow(method, "POST", request.path)
        raw = _body(request)
        t0 = time.perf_counter()
        servable = self._pick(name, version, label)
        fast = fastjson.tfserving(raw, servable.signature)
        if fast is not None:
            inputs, fmt = fast
        else:
            try:
                inputs, fmt = tfserving.parse_predict(_loads(raw), servable.signature)
            except InputError as e:
                self._count(name, servable.version, "rest", 400)
                raise HTTPError(400, str(e)) from None
        servable, outputs = await self._run(servable, inputs, version, label, request.connections <= 1)
        response = reply(
            tfserving.predict_body(outputs, servable.signature, fmt), headers=self._headers(servable.version)
        )
        self._observe(name, servable.version, "rest", t0, inputs, outputs)
        return response

    # ------------------------------------------------------------------ KServe V2

    async def _v2(self, method: str, m: re.Match[str], request: http.Request) -> http.Response:
        name, rest = m["name"], m["rest"]
        version = _version(m["version"])
        if rest != "/infer":
            _allow(method, "GET", request.path)
            state = self._state(name)
            if rest == "/ready":
                ready = (version if version is not None else state.live()) in state.available()
                return reply({"name": name, "ready": ready}, 200 if ready else 503)
            s = self._pick(name, version, None)
            return reply(v2.metadata_body(name, sorted(state.servables), s.framework, s.signature))
        _allow(method, "POST", request.path)
        raw = _body(request)
        t0 = time.perf_counter()
        servable = self._pick(name, version, None)
        fast = fastjson.v2(raw, servable.signature)
        if fast is not None:
            (inputs, request_id), wanted = fast, None
        else:
            body = _loads(raw)
            try:
                inputs, wanted = v2.parse_infer(body, servable.signature)
            except InputError as e:
                self._count(name, servable.version, "v2", 400)
                raise HTTPError(400, str(e)) from None
            request_id = body.get("id") if isinstance(body, dict) else None
        servable, outputs = await self._run(servable, inputs, version, None, request.connections <= 1)
        response = reply(
            v2.infer_body(name, servable.version, outputs, servable.signature, wanted, request_id),
            headers=self._headers(servable.version),
        )
        self._observe(name, servable.version, "v2", t0, inputs, outputs)
        return response

    # ------------------------------------------------------------------ shared

    def _state(self, name: str) -> Any:
        try:
            return self.repo.state(name)
        except NotFound as e:
            raise HTTPError(404, str(e)) from None

    def _pick(self, name: str, version: int | None, label: str | None) -> Any:
        try:
            return self.repo.resolve(name, version, label)
        except NotFound as e:
            raise HTTPError(404, str(e)) from None
        except Unavailable as e:
            raise HTTPError(503, str(e)) from None

    async def _run(self, servable: Any, inputs: Any, version: int | None, label: str | None, alone: bool) -> Any:
        try:
            return await self.repo.run(servable, inputs, version, label, alone)
        except (NotFound, Unavailable) as e:
            raise HTTPError(503, str(e)) from None
        except WorkbenchError as e:
            raise HTTPError(400, str(e)) from None
        except Exception as e:
            self._count(servable.model, servable.version, "model", 500)
            raise HTTPError(500, f"the model failed on this input: {type(e).__name__}: {e}") from None

    def _headers(self, version: int) -> list[tuple[bytes, bytes]]:
        return [*_JSON, (b"x-model-version", str(version).encode())]

    def _count(self, model: str, version: int, protocol: str, code: int) -> None:
        self.metrics.requests.inc(labels(model, version, protocol=protocol, code=str(code)))

    def _observe(self, model: str, version: int, protocol: str, t0: float, inputs: Any, outputs: Any) -> None:
        elapsed = time.perf_counter() - t0
        self._count(model, version, protocol, 200)
        self.metrics.latency.observe(labels(model, version), elapsed)
        if self.predlog is not None and random.random() < self.log_sample:
            self.predlog.record(model, version, protocol, elapsed, inputs, outputs)

    async def _metrics(self) -> http.Response:
        others = []
        if self.peers is not None:  # every worker process's values, added up
            others = [orjson.loads(body) for body in await self.peers.ask_others("GET", "/metrics-snapshot") if body]
        if self.repo.native is not None:
            self.repo.native.report(self.metrics)
        text = self.metrics.render(others)
        return http.Response(200, text.encode(), [(b"content-type", b"text/plain; version=0.0.4")])

    def _ready(self) -> http.Response:
        ready = self.repo.ready.is_set()
        return reply({"ready": ready}, 200 if ready else 503)

    async def _reload(self) -> http.Response:
        self.repo.wake()
        if self.peers is not None:
            await self.peers.ask_others("POST", "/reload")
        return reply({"reloading": True})


def _body(request: http.Request) -> bytes:
    if not request.body:
        raise HTTPError(400, "empty body; send a JSON object")
    return request.body


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise HTTPError(400, f"malformed JSON: {e}") from None


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise HTTPError(400, f"version must be a positive integer, got {text!r}")
    return int(text)


def _allow(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise HTTPError(405, f"{method} is not allowed on {path}; use {allowed}")
