"""Several model server processes on one port (``workbench serve --workers N``).

One Python process runs Python on one CPU at a time, and a model server's
per-request work (HTTP, JSON, batching, the framework's own Python) is mostly
Python: with one process, LeNet kept ~1.5 of this machine's 2 CPUs busy at
most. N worker processes accept connections from one listening socket, each a
whole server (its own copy of every loaded version, its own batches).

:func:`supervise` binds the port, starts the workers, starts another when one
dies, and stops them all on SIGINT/SIGTERM. The workers share a run directory:

- ``loaded/<model>/<version>-<stamp>/<index>``: worker ``index`` loaded and
  warmed up that version folder (empty file), or why it could not (the
  error). A worker swaps new versions in only once every worker has reported
  (:meth:`Peers.wait`), so they switch within a few ms of each other and agree
  on what each model serves: a version one of them cannot load is served by
  none.
- ``w<index>.sock``: each worker's private HTTP endpoint. ``/metrics`` adds
  up every worker's values; ``POST /workbench/reload`` wakes every worker.
- ``connections`` and ``fd<index>.sock``: each worker's open connections,
  and where it takes connections another worker passes it (:class:`Balancer`:
  connections are evened out, and moved off a worker while it loads).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from workbench.errors import WorkbenchError
from workbench.serving import http

log = logging.getLogger("workbench.serving")

SWAP_TIMEOUT_S = 120.0  # a worker waits this long for the others to load a version, then serves it anyway
ASK_TIMEOUT_S = 5.0
RESTARTS_PER_MINUTE = 3  # per worker; more and the supervisor gives up


def usable_cpus() -> float:
    """The CPUs this process may use: its affinity, capped by its cgroup's quota (a pod's CPU limit)."""
    from workbench.background import cpu_quota

    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    quota = cpu_quota()
    return min(cpus, quota.cpus) if quota is not None else cpus


def auto_workers() -> int:
    """``--workers auto``: 2 where this process may use 2 CPUs or more, else 1.

    With the Python path, one process runs Python on one CPU at a time. With the native front end one process
    keeps ~1 CPU busy at 8 clients: its model waits while the front end's single thread sends a batch's answers
    and reads the next requests, and two processes overlap those phases (LeNet: ~1.15x the requests/s at 8 and
    64 clients). Two also let one process load a new version while the other serves every client."""
    return 2 if usable_cpus() >= 2 else 1


def intra_op_threads(workers: int, native: bool) -> int:
    """The framework's intra-op threads in each of ``workers`` server processes: its share of the CPUs (their
    thread pools would otherwise fight), less one for each front end's thread where the native front end serves,
    at least 1."""
    cpus = int(usable_cpus())
    return max(1, (cpus - workers if native else cpus) // workers)


def parse_workers(text: str | int) -> int:
    if str(text).strip().lower() == "auto":
        return auto_workers()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise WorkbenchError(f"workers must be a positive integer or 'auto', got {text!r}")
    return n


@dataclass(frozen=True)
class Peers:
    """What one worker process knows of the others: the shared run directory, its index, how many there are."""

    run_dir: Path
    index: int
    count: int

    def socket_path(self, index: int) -> str:
        return str(self.run_dir / f"w{index}.sock")

    def _folder(self, phase: str, model: str, version: int, stamp: int) -> Path:
        return self.run_dir / phase / model / f"{version}-{stamp}"

    def announce(self, model: str, version: int, stamp: int, error: str | None, phase: str = "loaded") -> None:
        """Report that this worker loaded ``version`` (``error`` None) or could not, or (``phase="swapped"``) that
        it serves it now. ``stamp``: the version folder's mtime (a folder written again is another version)."""
        folder = self._folder(phase, model, version, stamp)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{self.index}.tmp"
        tmp.write_text(error or "")
        os.replace(tmp, folder / str(self.index))

    def wait(
        self,
        model: str,
        versions: dict[int, int],
        stop: threading.Event,
        timeout: float = SWAP_TIMEOUT_S,
        phase: str = "loaded",
        workers: range | None = None,
    ) -> dict[int, str]:
        """Wait until every worker (or each of ``workers``) reported ``phase`` on each of ``versions`` (version ->
        stamp); return, for the versions some worker could not load, why. After ``timeout`` s (a worker stuck or
        restarting) go on without it."""
        workers = range(self.count) if workers is None else workers
        deadline = time.monotonic() + timeout
        pending, problems = dict(versions), {}
        while pending:
            for v, stamp in list(pending.items()):
                reports = self._reports(self._folder(phase, model, v, stamp), workers)
                if reports is not None:
                    del pending[v]
                    bad = [(i, text) for i, text in zip(workers, reports, strict=True) if text]
                    if bad:
                        problems[v] = f"worker process {bad[0][0]} could not load it: {bad[0][1]}"
            if not pending or stop.wait(0.005):
                break
            if time.monotonic() > deadline:
                log.warning(
                    "model %s: worker processes did not all report %s on versions %s within %.0f s; going on",
                    model,
                    phase,
                    sorted(pending),
                    timeout,
                )
                break
        return problems

    def _reports(self, folder: Path, workers: range) -> list[str] | None:
        reports = []
        for i in workers:
            try:
                reports.append((folder / str(i)).read_text())
            except FileNotFoundError:
                return None
        return reports

    async def ask_others(self, method: str, path: str) -> list[bytes | None]:
        """``method path`` on every other worker's private endpoint; each answer's body, None where none came."""
        others = [self.socket_path(i) for i in range(self.count) if i != self.index]
        return list(await asyncio.gather(*(_ask(p, method, path) for p in others)))


async def _ask(sock_path: str, method: str, path: str) -> bytes | None:
    try:
        async with asyncio.timeout(ASK_TIMEOUT_S):
            reader, writer = await asyncio.open_unix_connection(sock_path)
            try:
                writer.write(
                    f"{method} {path} HTTP/1.1\r\nHost: worker\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
                )
                raw = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError) as e:
        log.warning("worker at %s did not answer %s %s: %s", sock_path, method, path, e)
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        log.warning("worker at %s answered %s %s with %r", sock_path, method, path, head[:60])
        return None
    return body


# columns of a worker's row in the shared ``connections`` table (then: taken over from each worker)
PID, OPEN, DRAINING, LAST_REQUEST, NATIVE = range(5)
COLUMNS = 5
DRAIN_WAIT_S = 1.0  # a worker stepping aside waits this long for its connections to go, then loads anyway


def table_size(count: int) -> int:
    """Bytes of the shared ``connections`` table for ``count`` workers."""
    return 8 * count * (COLUMNS + count)


def read_table(run_dir: Path, count: int) -> list[list[int]]:
    """The shared ``connections`` table, a row per worker (see :class:`Balancer`)."""
    raw = array.array("q", (run_dir / "connections").read_bytes())
    n = COLUMNS + count
    return [list(raw[i * n : (i + 1) * n]) for i in range(count)]


class Balancer:
    """Evens out client connections between the worker processes, and moves them off a worker while it loads.

    The kernel hands a new connection to whichever worker accepts first, so 8 keep-alive clients can end up 6 on
    one worker and 2 on the other (throughput at 8 connections swung 0.47x-0.69x of the limit between runs). A
    worker passes a connection to the least busy worker when it has more than one above it: a new one before
    reading from it, and one it already serves whenever that connection is idle between requests (nothing read
    of the next request, nothing left to write), so the socket, and what the client sends next, simply change
    hands (over a Unix datagram socket).

    A worker about to load new versions while clients are being served steps aside (:meth:`aside`): it marks
    itself draining, passes every connection on as it goes idle, loads at full speed with no requests of its own
    to hold up, then takes connections again. The workers take turns, so the others serve meanwhile.

    Where the native front end serves (:mod:`workbench.serving.native`), it owns most connections and does the
    same in C from the same table (``Frontend.balance``): it keeps its own count there, passes idle connections
    through :meth:`pass_fd`, and takes those passed to it off the worker's datagram socket itself.

    The shared file ``connections`` has a row per worker, written only by it: its pid, its open connections
    (the Python server's), whether it is draining, when it last ran a request (ms of the monotonic clock), the
    native front end's open connections, then how many connections it took over from each worker, so that a
    worker counts the ones it passed that are still on their way (to the same process: a replaced worker starts
    from zero)."""

    def __init__(self, peers: Peers):
        self.peers = peers
        n = self._width = COLUMNS + peers.count
        with open(peers.run_dir / "connections", "r+b") as f:
            self._map = mmap.mmap(f.fileno(), table_size(peers.count))
        self._table = memoryview(self._map).cast("q")
        row = self._row = peers.index * n
        self._table[row : row + n] = array.array("q", [os.getpid()] + [0] * (n - 1))  # a replacement starts afresh
        # per worker: (its pid, how many it had taken over from this one then, connections passed to it since)
        self._passed = [(0, 0, 0)] * peers.count
        self._others = [j for j in range(peers.count) if j != peers.index]
        self.server: http.HTTPServer | None = None
        self.frontend: Any = None  # the native front end (native.NativeFrontend), if it serves here
        inbox = self._address(peers.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(inbox)  # left by a worker this one replaces
        self._inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._inbox.bind(inbox)
        self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._outbox.setblocking(False)

    def _address(self, index: int) -> str:
        return str(self.peers.run_dir / f"fd{index}.sock")

    def count(self, connections: int) -> None:
        """This worker's open connections now."""
        self._table[self._row + OPEN] = connections

    def stamp(self, now: float) -> None:
        """This worker ran a request at ``now`` (time.monotonic())."""
        self._table[self._row + LAST_REQUEST] = int(now * 1000)

    def busy(self, within: float = 1.0) -> bool:
        """Whether any worker ran a request in the last ``within`` s."""
        t, n, since = self._table, self._width, int((time.monotonic() - within) * 1000)
        return any(t[j * n + PID] and t[j * n + LAST_REQUEST] > since for j in range(self.peers.count))

    def connections(self) -> list[int]:
        """Each worker's open connections, plus those this worker passed it that it has not taken yet."""
        n, me, table = self._width, self.peers.index, self._table.tolist()
        counts = []
        for j in range(self.peers.count):
            pid, took = table[j * n + PID], table[j * n + COLUMNS + me]
            open_ = table[j * n + OPEN] + table[j * n + NATIVE]
            if self._passed[j][0] != pid:  # first look at that process (or at this one, for what it took earlier)
                self._passed[j] = (pid, took, 0)
            _, base, passed = self._passed[j]
            counts.append(open_ + (passed - (took - base) if j != me else 0))
        return counts

    def wants_out(self, connections: int) -> bool:
        """A cheap first look (once per answered request): might a connection of this worker's ``connections`` go
        to another worker? :meth:`pass_on` decides."""
        t, n = self._table, self._width
        if t[self._row + DRAINING]:
            return True
        connections += t[self._row + NATIVE]
        return any(connections > t[j * n + OPEN] + t[j * n + NATIVE] + 1 for j in self._others)

    def _target(self, connections: int) -> int | None:
        """The worker a connection of this one's (with ``connections`` in the Python server) should go to, if
        any."""
        counts, t, n = self.connections(), self._table, self._width
        connections += t[self._row + NATIVE]
        open_to = [j for j in self._others if t[j * n + PID] and not t[j * n + DRAINING]]
        if not open_to:
            return None
        least = min(open_to, key=counts.__getitem__)
        return least if t[self._row + DRAINING] or connections > counts[least] + 1 else None

    def pass_on(self, transport: asyncio.BaseTransport, connections: int) -> bool:
        """Pass a connection (one just accepted, or an idle one) to another worker if this one, with
        ``connections``, is draining or has more than one above the least busy worker; True if passed (the caller
        then drops its copy of the socket)."""
        sock = transport.get_extra_info("socket")
        return sock is not None and self.pass_fd(sock.fileno(), connections)

    def pass_fd(self, fd: int, connections: int | None = None) -> bool:
        """:meth:`pass_on` for the socket ``fd``; ``connections`` in the Python server (default: as counted). The
        native front end calls this for its idle connections."""
        target = self._target(self._table[self._row + OPEN] if connections is None else connections)
        if target is None:
            return False
        try:
            # (socket.send_fds ignores its address argument before Python 3.13)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self._outbox.sendmsg([str(self.peers.index).encode()], rights, 0, self._address(target))
        except OSError:  # that worker is gone or not taking connections yet
            return False
        pid, base, passed = self._passed[target]
        self._passed[target] = (pid, base, passed + 1)
        return True

    @contextlib.contextmanager
    def aside(self, wait: float = DRAIN_WAIT_S) -> Iterator[bool]:
        """Watcher thread: pass this worker's connections to the others while the block runs (new ones too);
        yields whether they all went within ``wait`` s (a long request, or no other worker to take them, keeps
        one)."""
        server, loop = self.server, self.server.loop if self.server is not None else None
        if server is None or loop is None:
            yield False
            return
        frontend, row = self.frontend, self._table[self._row : self._row + COLUMNS]
        self._table[self._row + DRAINING] = 1
        try:
            had, t0 = row[OPEN] + row[NATIVE], time.monotonic()
            while row[OPEN] + row[NATIVE] and time.monotonic() < t0 + wait:
                loop.call_soon_threadsafe(server.pass_idle)
                if frontend is not None:
                    frontend.pass_idle()
                time.sleep(0.005)
            left = row[OPEN] + row[NATIVE]
            log.info(
                "worker process %d steps aside to load: passed %d of its %d connections on in %.3f s",
                self.peers.index,
                had - left,
                had,
                time.monotonic() - t0,
            )
            yield not left
        finally:
            self._table[self._row + DRAINING] = 0

    def start(self, server: http.HTTPServer, frontend: Any = None) -> None:
        """Take the connections other workers pass to this one, on a thread, into ``server`` (on this loop), or
        into the native ``frontend`` where it serves."""
        loop = asyncio.get_running_loop()

        def took(source: int, fd: int) -> None:
            self._table[self._row + COLUMNS + source] += 1
            server.adopt(fd)

        def receive() -> None:
            while True:
                try:
                    msg, fds, _, _ = socket.recv_fds(self._inbox, 16, 16)
                except OSError:
                    return
                for fd in fds:
                    loop.call_soon_threadsafe(took, int(msg or b"0"), fd)

        self.server = server
        server.balancer = self
        if frontend is not None:  # it takes them itself, without the GIL (a few ms sooner each while one loads)
            self.frontend = frontend
            index, width, count = self.peers.index, self._width, self.peers.count
            frontend.balance(self._map, index, width, count, self.pass_fd, self._inbox.fileno())
        else:
            threading.Thread(target=receive, name="connections-in", daemon=True).start()


class PeerApp:
    """A worker's private endpoint: ``GET /metrics-snapshot`` (its metric values as JSON), ``POST /reload``."""

    def __init__(self, repository: Any, metrics: Any):
        self.repo, self.metrics = repository, metrics

    async def __call__(self, request: http.Request) -> http.Response:
        if (request.method, request.path) == ("GET", "/metrics-snapshot"):
            if self.repo.native is not None:
                self.repo.native.report(self.metrics)
            return http.Response(200, orjson.dumps(self.metrics.snapshot()), [(b"content-type", b"application/json")])
        if (request.method, request.path) == ("POST", "/reload"):
            self.repo.wake()
            return http.Response(200, b"{}", [(b"content-type", b"application/json")])
        return http.error(404, f"no endpoint {request.method} {request.path}")


# ------------------------------------------------------------------ the supervisor


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The server's listening socket on ``host:port`` (SO_REUSEADDR, non-blocking), or a clear error."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise WorkbenchError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def supervise(count: int, host: str, port: int, workspace: Path, options: dict[str, Any]) -> int:
    """Run ``count`` worker processes serving ``workspace`` on ``host:port`` until SIGINT/SIGTERM; returns an exit
    code (1 when workers kept dying)."""
    sock = listen(host, port)
    port = sock.getsockname()[1]
    run_dir = Path(tempfile.mkdtemp(prefix="workbench-serve-"))
    (run_dir / "connections").write_bytes(bytes(table_size(count)))  # see Balancer
    env = dict(os.environ, WORKBENCH_WORKSPACE=str(workspace))
    threads = str(intra_op_threads(count, bool(options.get("native"))))
    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        env.setdefault(var, threads)

    def start(index: int, restart: bool = False) -> subprocess.Popen[bytes]:
        config = {**options, "fd": sock.fileno(), "run_dir": str(run_dir), "index": index, "count": count}
        config["restart"] = restart
        return subprocess.Popen(
            [sys.executable, "-m", "workbench.serving.workers", json.dumps(config)], pass_fds=(sock.fileno(),), env=env
        )

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start(i) for i in range(count)]
    print(f"serving models from {workspace / 'models'} on http://{host}:{port} ({count} worker processes)", flush=True)
    exits: list[deque[float]] = [deque() for _ in range(count)]
    code = 0
    try:
        while not stop.wait(0.2):
            for i, p in enumerate(procs):
                status = p.poll()
                if status is None:
                    continue
                now = time.monotonic()
                exits[i].append(now)
                while exits[i][0] < now - 60:
                    exits[i].popleft()
                if len(exits[i]) > RESTARTS_PER_MINUTE:
                    log.error(
                        "worker process %d exited %d times within a minute (last status %s); stopping the server",
                        i,
                        len(exits[i]),
                        status,
                    )
                    code = 1
                    stop.set()
                    break
                log.error("worker process %d (pid %d) exited with status %s; starting another", i, p.pid, status)
                procs[i] = start(i, restart=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def main(argv: list[str]) -> None:
    """A worker process: ``python -m workbench.serving.workers CONFIG_JSON`` (started by :func:`supervise`)."""
    from workbench.serving.server import run_worker
    from workbench.workspace import Workspace

    config = json.loads(argv[0])
    peers = Peers(Path(config.pop("run_dir")), config.pop("index"), config.pop("count"))
    sock = socket.socket(fileno=config.pop("fd"))
    run_worker(Workspace.current(), config, sock=sock, peers=peers)


if __name__ == "__main__":
    main(sys.argv[1:])
