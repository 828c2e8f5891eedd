""":class:`GRPCServer`: grpcio's asyncio server on a thread and event loop of its own (the process's other
loop is uvicorn's), serving KServe V2's and TensorFlow Serving's services on one port.

Calls run on that loop: a predict resolves its model version, queues its inputs with the version's batcher
(which hands the outputs back to this loop) and awaits them, so gRPC and REST requests share batches, versions,
labels and hot swaps. With several server processes each binds the same port with ``SO_REUSEPORT`` (grpcio's
default on Linux, set here explicitly) and the kernel spreads connections over them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import threading
from collections.abc import Callable

import grpc

from workbench import settings
from workbench.errors import WorkbenchError
from workbench.serving.metrics import ServerMetrics
from workbench.serving.model.repository import ModelRepository
from workbench.serving.transport.grpc.calls import Calls

log = logging.getLogger("workbench.serving")

Register = Callable[[grpc.aio.Server, Calls], str]


class GRPCServer:
    """gRPC for the models of ``repo`` on ``host:port``. ``start`` returns once the port is bound (or raises
    WorkbenchError); ``stop`` lets calls in flight finish for ``grace`` seconds. With ``token`` set and
    ``token_scope`` "all", every call but the health probes needs the metadata ``authorization: Bearer <token>``."""

    def __init__(
        self,
        repo: ModelRepository,
        metrics: ServerMetrics,
        host: str = "127.0.0.1",
        port: int = 8500,
        token: str = "",
        token_scope: str = "admin",
    ):
        self.calls = Calls(repo, metrics, token, token_scope)
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._grace = 5.0

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> None:
        """Bind the port and serve from a thread of its own. Raises WorkbenchError when the port cannot be bound."""
        services = _services()  # imported here, on the caller's thread, before serving starts
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(services, started), name="grpc-server", daemon=True)
        self._thread.start()
        try:
            self.port = started.result(timeout=60)
        except Exception as e:
            self._thread.join(5)
            raise WorkbenchError(
                f"cannot serve gRPC on {self.address} ({e}); pick another port with --grpc-port (0: no gRPC)"
            ) from None

    def stop(self, grace: float = 5) -> None:
        """Stop taking calls; those in flight get ``grace`` seconds to finish."""
        if self._loop is None or self._stopping is None or self._thread is None:
            return
        self._grace = grace
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(grace + 5)

    def _main(self, services: list[Register], started: concurrent.futures.Future[int]) -> None:
        loop = _new_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(services, started))
        finally:
            loop.close()

    async def _serve(self, services: list[Register], started: concurrent.futures.Future[int]) -> None:
        limit = int(float(settings.SERVE_MAX_BODY_MB.get()) * 1024 * 1024)
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit), ("grpc.so_reuseport", 1)])
        try:
            names = [register(server, self.calls) for register in services]
            port = server.add_insecure_port(self.address)
            await server.start()
        except Exception as e:  # noqa: BLE001 - start() raises it in the caller's thread
            started.set_exception(e)
            return
        self._stopping = asyncio.Event()
        started.set_result(port)
        log.info("gRPC on %s:%d: %s", self.host, port, "; ".join(names))
        await self._stopping.wait()
        await server.stop(self._grace)


# (module, what it needs): each service whose messages import; without them it is left out, and the log says why.
SERVICES = (
    ("v2", "tritonclient (pip install --no-deps tritonclient==2.73.0)"),
    ("tfserving", "tensorflow-cpu and tensorflow-serving-api (pip install --no-deps tensorflow-serving-api==2.21.0)"),
)


def _services() -> list[Register]:
    """The services whose message classes import; WorkbenchError when none does."""
    services: list[Register] = []
    for name, needs in SERVICES:
        try:
            module = importlib.import_module(f"workbench.serving.transport.grpc.{name}")
        except ImportError as e:
            log.warning("gRPC: the %s service is off: its messages do not import (%s); it needs %s", name, e, needs)
            continue
        services.append(module.register)
    if not services:
        raise WorkbenchError(
            f"gRPC has no service to serve: install {' and '.join(n for _, n in SERVICES)}, or turn gRPC off "
            "with --grpc-port 0"
        )
    return services


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (as uvicorn uses it): ~10-20% more gRPC calls per second here than asyncio's
    own loop (bench/RESULTS.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
