"""The model server's HTTP API: a plain ASGI app (served by uvicorn: :mod:`workbench.serving.server`).

Routes (TF Serving REST, KServe V2, operations)::

    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]              version status
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata     signature
    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict      {"instances": ...} | {"inputs": ...}
    GET  /v2  /v2/health/live  /v2/health/ready                 server metadata, probes
    GET  /v2/models/{m}[/versions/{v}][/ready]                  model metadata, readiness
    POST /v2/models/{m}[/versions/{v}]/infer                    V2 inference (JSON or binary extension)
    GET  /metrics                                               Prometheus
    POST /workbench/reload                                      rescan models/ now (promote calls it)

Every error is ``{"error": "..."}`` with a 4xx status; a 5xx (a model that fails at run time, a bug of ours)
says what failed without the framework's internals, which go to the server's log. HEAD answers as GET with no
body. With a token set (``WORKBENCH_SERVER_TOKEN``) the ``/workbench/`` routes need ``Authorization: Bearer
<token>``, and every route but the health probes does when ``WORKBENCH_SERVER_TOKEN_SCOPE`` is ``all``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError
from workbench.serving.metrics import CONTENT_TYPE, ServerMetrics
from workbench.serving.model.repository import ModelRepository, ModelState, NotFound, Servable, Unavailable
from workbench.serving.protocol import InputError, tfserving, v2

log = logging.getLogger("workbench.serving")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_V1 = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?(?P<rest>/metadata|:[A-Za-z]+)?$"
)
_V2 = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer)?$")
_JSON = (b"content-type", b"application/json")
_OPEN = ("/v2/health/live", "/v2/health/ready")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or []


@dataclass
class Response:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


def reply(body: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return Response(status, tfserving.dumps(body), [_JSON, *(headers or [])])


@dataclass
class Limits:
    max_body: int = 16 * 1024 * 1024  # bytes
    body_timeout: float = 30.0  # s to receive a whole body once its headers arrived
    token: str = ""
    token_scope: str = "admin"  # or "all"


class HTTPApp:
    """The ASGI app over a :class:`ModelRepository`; ``on_startup``/``on_shutdown`` run in its lifespan."""

    def __init__(
        self,
        repository: ModelRepository,
        metrics: ServerMetrics,
        limits: Limits | None = None,
        on_startup: Callable[[], None] | None = None,
        on_shutdown: Callable[[], None] | None = None,
    ):
        self.repo, self.metrics, self.limits = repository, metrics, limits or Limits()
        self.on_startup, self.on_shutdown = on_startup, on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.on_startup is not None:
                        await asyncio.get_running_loop().run_in_executor(None, self.on_startup)
                except Exception as e:
                    log.exception("the server could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.on_shutdown is not None:
                    await asyncio.get_running_loop().run_in_executor(None, self.on_shutdown)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        head = method == "HEAD"
        try:
            self._authorize(scope, path)
            response = await self._route("GET" if head else method, path, scope, receive)
        except HTTPError as e:
            response = reply({"error": e.message}, e.status, e.headers)
        except Exception as e:  # a bug of ours: answer, log, keep serving
            log.exception("unexpected error on %s %s", method, path)
            response = reply({"error": f"internal error ({type(e).__name__}); see the server's log"}, 500)
        headers = [*response.headers, (b"content-length", str(len(response.body)).encode())]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else response.body})

    def _authorize(self, scope: Scope, path: str) -> None:
        token = self.limits.token
        if not token or path in _OPEN:
            return
        if self.limits.token_scope != "all" and not path.startswith("/workbench/"):
            return
        given = _header(scope, b"authorization") or ""
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPError(401, "this route needs 'Authorization: Bearer <token>'", [(b"www-authenticate", b"Bearer")])

    async def _route(self, method: str, path: str, scope: Scope, receive: Receive) -> Response:
        m = _V1.match(path)
        if m:
            return await self._v1(method, m, scope, receive)
        m = _V2.match(path)
        if m:
            return await self._v2(method, m, scope, receive)
        simple: dict[tuple[str, str], Callable[[], Response]] = {
            ("GET", "/metrics"): lambda: Response(
                200, self.metrics.render(), [(b"content-type", CONTENT_TYPE.encode())]
            ),
            ("GET", "/v2/health/live"): lambda: reply({"live": True}),
            ("GET", "/v2/health/ready"): self._ready,
            ("GET", "/v2"): lambda: reply(
                {"name": "workbench", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
            ),
            ("GET", "/"): lambda: reply({"models": sorted(self.repo.models()), "ready": self.repo.ready.is_set()}),
            ("POST", "/workbench/reload"): self._reload,
        }
        handler = simple.get((method, path))
        if handler is not None:
            return handler()
        if any(p == path for _, p in simple):
            raise HTTPError(405, f"{method} is not allowed on {path}")
        raise HTTPError(
            404, f"no endpoint {method} {path}; see /v1/models/<model>[:predict] or /v2/models/<model>/infer"
        )

    # ------------------------------------------------------------------ TF Serving

    async def _v1(self, method: str, m: re.Match[str], scope: Scope, receive: Receive) -> Response:
        name, label, rest = m["name"], m["label"], m["rest"]
        version = _version(m["version"])
        if rest is None or rest == "/metadata":
            _allow(method, "GET", scope["path"])
            self._state(name)
            if rest == "/metadata":
                s = self._pick(name, version, label)
                return reply(tfserving.metadata_body(name, s.version, s.signature))
            if label is not None:
                version = self._pick(name, None, label).version
            try:
                return reply(tfserving.status_body(self.repo.status(name, version)))
            except NotFound as e:
                raise HTTPError(404, str(e)) from None
        if rest != ":predict":
            raise HTTPError(400, f"{rest[1:]!r} is not supported; this server answers :predict")
        _allow(method, "POST", scope["path"])
        raw = await self._body(scope, receive)
        t0 = time.perf_counter()
        servable = self._pick(name, version, label)
        try:
            inputs, fmt = tfserving.decode_predict(raw, servable.signature)
        except InputError as e:
            self.metrics.count(name, servable.version, "rest", 400)
            raise HTTPError(400, str(e)) from None
        servable, outputs = await self._run(servable, inputs, version, label, "rest")
        body = tfserving.encode_predict(outputs, servable.signature, fmt)
        self.metrics.record(name, servable.version, "rest", time.perf_counter() - t0, inputs, outputs)
        return Response(200, body, [_JSON, (b"x-model-version", str(servable.version).encode())])

    # ------------------------------------------------------------------ KServe V2

    async def _v2(self, method: str, m: re.Match[str], scope: Scope, receive: Receive) -> Response:
        name, rest = m["name"], m["rest"]
        version = _version(m["version"])
        if rest != "/infer":
            _allow(method, "GET", scope["path"])
            state = self._state(name)
            if rest == "/ready":
                if version is not None:
                    try:
                        state.status(version)
                    except NotFound as e:
                        raise HTTPError(404, str(e)) from None
                wanted = version if version is not None else state.live()
                ready = any(v == wanted and st == "AVAILABLE" for v, st, _ in self.repo.status(name))
                return reply({"name": name, "ready": ready}, 200 if ready else 503)
            s = self._pick(name, version, None)
            return reply(v2.metadata_body(name, sorted(state.servables), s.framework, s.signature))
        _allow(method, "POST", scope["path"])
        raw = await self._body(scope, receive)
        t0 = time.perf_counter()
        servable = self._pick(name, version, None)
        try:
            request = v2.decode_infer(raw, servable.signature, _header(scope, v2.HEADER_LENGTH.encode()))
        except InputError as e:
            self.metrics.count(name, servable.version, "v2", 400)
            raise HTTPError(400, str(e)) from None
        servable, outputs = await self._run(servable, request.inputs, version, None, "v2")
        body, json_length = v2.encode_infer(name, servable.version, outputs, servable.signature, request)
        self.metrics.record(name, servable.version, "v2", time.perf_counter() - t0, request.inputs, outputs)
        headers = [(b"x-model-version", str(servable.version).encode())]
        if json_length is None:
            return Response(200, body, [_JSON, *headers])
        headers += [
            (b"content-type", b"application/octet-stream"),
            (v2.HEADER_LENGTH.encode(), str(json_length).encode()),
        ]
        return Response(200, body, headers)

    # ------------------------------------------------------------------ shared

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, within the size and time limits."""
        limit = self.limits.max_body
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"the body is {declared} bytes, over the limit of {limit} bytes", _CLOSE)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise HTTPError(400, "the client went away")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise HTTPError(413, f"the body is over the limit of {limit} bytes", _CLOSE)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise HTTPError(408, f"the body did not arrive within {self.limits.body_timeout:g} s", _CLOSE) from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _state(self, name: str) -> ModelState:
        try:
            return self.repo.state(name)
        except NotFound as e:
            raise HTTPError(404, str(e)) from None

    def _pick(self, name: str, version: int | None, label: str | None) -> Servable:
        try:
            return self.repo.resolve(name, version, label)
        except NotFound as e:
            raise HTTPError(404, str(e)) from None
        except Unavailable as e:
            raise HTTPError(503, str(e)) from None

    async def _run(
        self, servable: Servable, inputs: Any, version: int | None, label: str | None, protocol: str
    ) -> tuple[Servable, Any]:
        try:
            return await self.repo.run(servable, inputs, version, label)
        except (NotFound, Unavailable) as e:
            raise HTTPError(503, str(e)) from None
        except WorkbenchError as e:
            raise HTTPError(400, str(e)) from None
        except Exception as e:
            self.metrics.count(servable.model, servable.version, protocol, 500)
            log.error(
                "model %s version %s failed on a request: %s: %s", servable.model, servable.version, type(e).__name__, e
            )
            raise HTTPError(
                500, f"model {servable.model!r} version {servable.version} failed on this input ({type(e).__name__})"
            ) from None

    def _ready(self) -> Response:
        ready = self.repo.ready.is_set()
        return reply({"ready": ready}, 200 if ready else 503)

    def _reload(self) -> Response:
        self.repo.wake()
        return reply({"reloading": True})


_CLOSE = [(b"connection", b"close")]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1 or len(text) > 18:
        raise HTTPError(400, f"version must be a positive integer, got {text!r}")
    return int(text)


def _allow(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise HTTPError(405, f"{method} is not allowed on {path}; use {allowed}", [(b"allow", allowed.encode())])
