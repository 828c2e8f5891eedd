"""A small HTTP/1.1 load generator for the benchmarks (keep-alive connections, asyncio; closed loop also in C).

Closed loop (the default): ``concurrency`` connections each send one request,
wait for its answer, and send the next, until ``duration`` seconds have
passed. Open loop (``rate``): requests are sent at a steady ``rate`` per
second over up to ``concurrency`` connections, whatever the answers take; a
request's latency counts from when it was due, so time spent waiting for a
free connection counts too. Request bytes are
built once and connections are bare asyncio protocols, so the generator
spends little CPU (it shares the machine with the server it measures). Only 127.0.0.1-style URLs
of plain HTTP are supported.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Result:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    done_at: list[float] = field(default_factory=list)  # time.perf_counter() when each of them was answered
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    def within(self, windows: list[tuple[float, float]]) -> list[float]:
        """Latencies (s) of the requests answered inside any of ``windows`` (perf_counter start, end)."""
        return [lat for lat, t in zip(self.latencies, self.done_at, strict=True) if any(a <= t < b for a, b in windows)]


def post_bytes(url: str, body: bytes) -> tuple[str, int, bytes]:
    """(host, port, request bytes) of a keep-alive POST of ``body`` (JSON) to ``url``."""
    u = urllib.parse.urlsplit(url)
    head = (
        f"POST {u.path or '/'} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return u.hostname or "127.0.0.1", u.port or 80, head.encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request when told, calls ``answered(status)`` for each whole response.

    A bare protocol, not streams: ~15 µs of the generator's CPU per request instead of ~40-80, which on a
    machine it shares with the server is CPU the server gets back. Responses must carry a Content-Length
    (both servers measured here do)."""

    def __init__(
        self, request: bytes, answered: Callable[[_Connection, int], None], lost: Callable[[_Connection], None]
    ):
        self.request = request
        self.answered = answered
        self.lost = lost
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.due = 0.0  # when the request in flight was due (closed loop: sent)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, due: float | None = None) -> None:
        self.due = time.perf_counter() if due is None else due
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            at = head.lower().find(b"content-length:")
            if at < 0:
                self._fail()
                return
            eol = head.find(b"\r\n", at)
            length = int(head[at + 15 : eol if eol >= 0 else len(head)])
            if len(buf) < end + 4 + length:
                break
            status = int(head[9:12])
            buf = buf[end + 4 + length :]
            if status == 100:
                continue
            self.answered(self, status)
        self.buffer = buf

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        self.lost(self)


async def _close_all(conns: list[_Connection]) -> None:
    """Close and wait until closed (an event loop closed with sockets still open fails)."""
    for conn in conns:
        conn.close()
    if conns:
        await asyncio.wait([c.closed for c in conns], timeout=5)


async def _connect(host: str, port: int, request: bytes, answered: Any, lost: Any) -> _Connection:
    _, conn = await asyncio.get_running_loop().create_connection(
        lambda: _Connection(request, answered, lost), host, port
    )
    return conn


def _record(result: Result, status: int, due: float) -> None:
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if status == 200:
        now = time.perf_counter()
        result.latencies.append(now - due)
        result.done_at.append(now)
    else:
        result.errors += 1


async def _closed_loop(
    host: str, port: int, request: bytes, connections: int, stop_at: float, result: Result, until: Callable[[], bool]
) -> None:
    """Each connection sends its next request as soon as the answer to the last one is in."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    open_: set[_Connection] = set()
    everyone: list[_Connection] = []

    def running() -> bool:
        return time.perf_counter() < stop_at or not until()

    def answered(conn: _Connection, status: int) -> None:
        _record(result, status, conn.due)
        if running():
            conn.send()
        else:
            open_.discard(conn)
            conn.close()
            if not open_ and not finished.done():
                finished.set_result(None)

    def lost(conn: _Connection) -> None:
        if conn not in open_:
            return
        open_.discard(conn)  # a request in flight on a lost connection failed
        result.errors += 1
        if running():
            loop.create_task(start_one())
        elif not open_ and not finished.done():
            finished.set_result(None)

    async def start_one() -> None:
        try:
            conn = await _connect(host, port, request, answered, lost)
        except OSError:
            result.errors += 1
            await asyncio.sleep(0.01)
            if running():
                loop.create_task(start_one())
            elif not open_ and not finished.done():
                finished.set_result(None)
            return
        open_.add(conn)
        everyone.append(conn)
        conn.send()

    await asyncio.gather(*(start_one() for _ in range(connections)))
    if open_:
        await finished
    await _close_all(everyone)


async def _open_loop(
    host: str,
    port: int,
    request: bytes,
    connections: int,
    rate: float,
    stop_at: float,
    result: Result,
    until: Callable[[], bool],
) -> None:
    """A request is due every 1/rate s; it goes out on an idle connection, or waits for one (that wait counts)."""
    loop = asyncio.get_running_loop()
    idle: list[_Connection] = []
    backlog: deque[float] = deque()  # due times of requests waiting for a connection
    busy: set[_Connection] = set()
    everyone: list[_Connection] = []
    closing = False

    def answered(conn: _Connection, status: int) -> None:
        busy.discard(conn)
        _record(result, status, conn.due)
        dispatch(conn)

    def lost(conn: _Connection) -> None:
        if conn in busy:
            busy.discard(conn)
            result.errors += 1
        if conn in idle:
            idle.remove(conn)
        if not closing:
            loop.create_task(replace())

    async def replace() -> None:
        try:
            conn = await _connect(host, port, request, answered, lost)
        except OSError:
            result.errors += 1
            return
        everyone.append(conn)
        dispatch(conn)

    def dispatch(conn: _Connection) -> None:
        if backlog:
            busy.add(conn)
            conn.send(backlog.popleft())
        else:
            idle.append(conn)

    for _ in range(connections):
        idle.append(await _connect(host, port, request, answered, lost))
    everyone.extend(idle)
    due = time.perf_counter()
    while time.perf_counter() < stop_at or not until():
        due += 1.0 / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        backlog.append(due)
        if idle:
            dispatch(idle.pop())
    give_up = time.perf_counter() + 30
    while (busy or backlog) and time.perf_counter() < give_up:
        await asyncio.sleep(0.005)
    result.errors += len(backlog) + len(busy)
    busy.clear()
    closing = True
    await _close_all(everyone)


async def _run(
    url: str, body: bytes, concurrency: int, duration: float, until: Callable[[], bool], rate: float | None
) -> Result:
    host, port, request = post_bytes(url, body)
    result = Result(concurrency, duration)
    stop_at = time.perf_counter() + duration
    t0 = time.perf_counter()
    if rate:
        await _open_loop(host, port, request, concurrency, rate, stop_at, result, until)
    else:
        await _closed_loop(host, port, request, concurrency, stop_at, result, until)
    result.seconds = time.perf_counter() - t0
    return result


def run(url: str, body: bytes, concurrency: int, duration: float, client: str = "python") -> Result:
    """Closed-loop load on ``url`` (POST ``body``) from ``concurrency`` connections for ``duration`` s. ``client``
    "native": the C generator (:func:`native_available`), a few us of CPU per request instead of 10-40."""
    if client == "native":
        return _run_native(url, body, concurrency, duration)
    return run_many([(url, body, concurrency)], duration)[0]


def native_available() -> bool:
    try:
        from workbench.serving import _native
    except ImportError:
        return False
    return hasattr(_native, "closed_loop")


def _run_native(url: str, body: bytes, concurrency: int, duration: float) -> Result:
    from workbench.serving import _native

    host, port, request = post_bytes(url, body)
    latencies, statuses, lost, seconds = _native.closed_loop(host, port, request, concurrency, duration)
    lat = np.frombuffer(latencies, np.float64)
    codes = np.frombuffer(statuses, np.int32)
    result = Result(concurrency, seconds, lat[codes == 200].tolist(), errors=int(lost + (codes != 200).sum()))
    values, counts = np.unique(codes, return_counts=True)
    result.statuses = {int(v): int(n) for v, n in zip(values, counts, strict=True)}
    return result


def run_many(
    targets: list[tuple[str, bytes, int]],
    duration: float,
    until: Callable[[], bool] = lambda: True,
    rate: float | None = None,
) -> list[Result]:
    """Several loads at once, ``(url, body, concurrency)`` each, for ``duration`` s and until ``until()``; one Result
    each. ``rate``: open loop, that many requests per second to each target."""

    async def together() -> list[Result]:
        return list(await asyncio.gather(*(_run(u, b, c, duration, until, rate) for u, b, c in targets)))

    try:
        import uvloop

        return uvloop.run(together())
    except ImportError:
        return asyncio.run(together())
