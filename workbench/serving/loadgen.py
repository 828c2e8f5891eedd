"""A small HTTP/1.1 load generator for the benchmarks (keep-alive connections, asyncio).

Closed loop (the default): ``concurrency`` connections each send one request,
wait for its answer, and send the next, until ``duration`` seconds have
passed. Open loop (``rate``): requests are sent at a steady ``rate`` per
second over up to ``concurrency`` connections, whatever the answers take; a
request's latency counts from when it was due, so time spent waiting for a
free connection counts too. Request bytes are
built once, so the generator spends its CPU on the socket, not on JSON (it
shares the machine with the server it measures). Only 127.0.0.1-style URLs
of plain HTTP are supported.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

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


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _worker(
    host: str, port: int, request: bytes, stop_at: float, result: Result, until: Callable[[], bool]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at or not until():
            t0 = time.perf_counter()
            writer.write(request)
            try:
                status = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            _record(result, status, t0)
    finally:
        writer.close()


def _record(result: Result, status: int, due: float) -> None:
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if status == 200:
        now = time.perf_counter()
        result.latencies.append(now - due)
        result.done_at.append(now)
    else:
        result.errors += 1


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
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection(host, port))

    async def one(due: float) -> None:
        reader, writer = await idle.get()
        try:
            writer.write(request)
            status = await _read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            result.errors += 1
            writer.close()
            idle.put_nowait(await asyncio.open_connection(host, port))
            return
        idle.put_nowait((reader, writer))
        _record(result, status, due)

    pending: set[asyncio.Task[None]] = set()
    due = time.perf_counter()
    while time.perf_counter() < stop_at or not until():
        due += 1.0 / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        task = asyncio.get_running_loop().create_task(one(due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    while not idle.empty():
        idle.get_nowait()[1].close()


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
        await asyncio.gather(*(_worker(host, port, request, stop_at, result, until) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - t0
    return result


def run(url: str, body: bytes, concurrency: int, duration: float) -> Result:
    """Closed-loop load on ``url`` (POST ``body``) from ``concurrency`` connections for ``duration`` s."""
    return run_many([(url, body, concurrency)], duration)[0]


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
