"""What every gRPC call shares: the bearer token, one table from the server's errors to gRPC status codes, and a
predict through the model repository (resolve, decode, batched run, encode, metrics), as REST does it."""

from __future__ import annotations

import functools
import hmac
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from workbench.errors import WorkbenchError
from workbench.serving.metrics import ServerMetrics
from workbench.serving.model.repository import ModelRepository, NotFound, Servable, Unavailable
from workbench.serving.model.signature import Signature
from workbench.serving.protocol import InputError

log = logging.getLogger("workbench.serving")
T = TypeVar("T")


class Unauthenticated(WorkbenchError):
    """A call without the server's bearer token."""


class ModelFailed(WorkbenchError):
    """The model raised on a request (a gRPC INTERNAL); the message names model and version, nothing more."""


# The first entry the error is an instance of gives its status code (REST answers the same errors 400/404/503/401/500).
CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (ModelFailed, grpc.StatusCode.INTERNAL),
    (WorkbenchError, grpc.StatusCode.INVALID_ARGUMENT),
)


class Calls:
    """The repository, metrics and token the servicers answer with."""

    def __init__(self, repo: ModelRepository, metrics: ServerMetrics, token: str = "", token_scope: str = "admin"):
        self.repo, self.metrics = repo, metrics
        self.token = token if token_scope == "all" else ""  # gRPC has no admin calls: only "all" guards it

    def authorize(self, context: grpc.aio.ServicerContext) -> None:
        """Raise Unauthenticated unless the call carries ``authorization: Bearer <token>`` (when a token is set)."""
        if not self.token:
            return
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(str(given).encode(), f"Bearer {self.token}".encode()):
            raise Unauthenticated("this server needs the metadata 'authorization: Bearer <token>'")

    async def predict(
        self,
        name: str,
        version: int | None,
        label: str | None,
        protocol: str,
        decode: Callable[[Signature], tuple[dict[str, Any], T]],
        encode: Callable[[Servable, dict[str, Any], T], Any],
    ) -> Any:
        """One predict: ``decode(signature)`` gives the inputs and what the encoder needs besides the outputs
        (e.g. the outputs asked for); ``encode(servable, outputs, that)`` gives the answer. Accounted in metrics."""
        t0 = time.perf_counter()
        servable = self.repo.resolve(name, version, label)
        try:
            inputs, extra = decode(servable.signature)
        except InputError:
            self.metrics.count(name, servable.version, protocol, 400)
            raise
        servable, outputs = await self._run(servable, inputs, version, label, protocol)
        answer = encode(servable, outputs, extra)
        self.metrics.record(name, servable.version, protocol, time.perf_counter() - t0, inputs, outputs)
        return answer

    async def _run(
        self, servable: Servable, inputs: dict[str, Any], version: int | None, label: str | None, protocol: str
    ) -> tuple[Servable, dict[str, Any]]:
        try:
            return await self.repo.run(servable, inputs, version, label)
        except (NotFound, Unavailable) as e:  # swapped out while it waited: try again
            raise Unavailable(str(e)) from None
        except WorkbenchError:
            raise
        except Exception as e:
            self.metrics.count(servable.model, servable.version, protocol, 500)
            log.error(
                "model %s version %s failed on a request: %s: %s", servable.model, servable.version, type(e).__name__, e
            )
            raise ModelFailed(
                f"model {servable.model!r} version {servable.version} failed on this input ({type(e).__name__})"
            ) from None


def rpc(open_: bool = False) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Decorate a servicer's unary method: check the token (unless ``open_``: health probes) and answer the
    server's errors with their status code and message (a bug of ours: INTERNAL, details in the log)."""

    def wrap(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if not open_:
                    self.calls.authorize(context)
                return await method(self, request, context)
            except WorkbenchError as e:
                code, message = status_of(e), str(e)
            except Exception as e:  # noqa: BLE001 - answer, log, keep serving
                log.exception("unexpected error in gRPC %s", method.__name__)
                code, message = grpc.StatusCode.INTERNAL, f"internal error ({type(e).__name__}); see the server's log"
            await context.abort(code, message)

        return call

    return wrap


def status_of(error: Exception) -> grpc.StatusCode:
    return next(code for kind, code in CODES if isinstance(error, kind))


def unimplemented(service: ServiceDescriptor, answered: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: every method of ``service`` the class does not define as ``async def`` answers
    UNIMPLEMENTED, naming what this server does answer (``answered``)."""

    def fill(cls: type[T]) -> type[T]:
        for method in service.methods:
            if not inspect.iscoroutinefunction(getattr(cls, method.name, None)):
                setattr(cls, method.name, _refuse(f"{service.full_name}/{method.name}", answered))
        return cls

    return fill


def _refuse(name: str, answered: str) -> Callable[..., Awaitable[None]]:
    async def refuse(self: Any, request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented; this server answers {answered}")

    return refuse
