"""One-shot worker processes that export a checkpoint or validate an exported version.

A worker (started through ``_BOOT``, its priority lowered by the caller at once;
by hand ``python -m workbench.registry.worker FRAMEWORK``) imports the framework (the
slow part, seconds for TensorFlow), then reads one JSON request from stdin,
does it, answers one JSON line and exits. A process is used once, so the
validation gate always loads the new version in a fresh process, and export
runs in the framework's own interpreter (another venv for MXNet).

The pool keeps one idle, already-imported worker per role and framework
(``WORKBENCH_PROMOTE_WARM``), so a later promote does not wait for the import;
such a spare imports in slices (see :mod:`workbench.background`), and exits
when its parent does or after ``IDLE_EXIT_S``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from workbench import settings
from workbench.background import (
    IDLE_CPUS_NEEDED,
    check_priority,
    free_cpus,
    lower_priority,
    resolve_priority,
    runs_idle,
    stepping_aside,
)
from workbench.errors import CheckpointError, RegistryError, ValidationError

log = logging.getLogger("workbench.registry")

IDLE_EXIT_S = 900
SPARE_IMPORT_WAIT_S = 60  # the next spare starts once the one before is ready, or after this long
# An idle-policy worker still waiting after STARVED_AFTER_S is checked every STARVED_TICK_S for starvation.
STARVED_AFTER_S = 1.0
STARVED_TICK_S = 0.5
_RESULT = "@@workbench-worker-result "
# The caller lowers a worker's priority (``WORKBENCH_PROMOTE_PRIORITY``) as soon as the process exists, before its
# interpreter starts: an export, a validation or a spare worker's framework import competes with serving traffic
# for the CPUs, and on a small machine a promote at full priority raised the p99 latency of the models being served
# ~3x while it ran, ~2x at niceness 10, ~1.5-1.8x under the idle policy (bench/serve_hotswap). Lowered by the
# worker itself, after its interpreter had started and imported workbench, two spares starting at once still
# doubled that p99 for 0.5 s. On an idle machine the idle policy costs a promote ~0.1 s.
_BOOT = """import sys
from workbench.registry.worker import main
sys.exit(main(sys.argv[1:]))
"""
_READY = "@@workbench-worker-ready"
_PARENT_VAR = "WORKBENCH_PROMOTE_PARENT"  # pid of the process that started a worker (which it must not outlive)
PARENT_CHECK_S = 0.2


# ---------------------------------------------------------------- inside the worker


def _export(framework: Any, req: dict[str, Any]) -> dict[str, Any]:
    code_dir = Path(req["code_dir"]) if req.get("code_dir") else None
    sig = framework.export(Path(req["checkpoint"]), Path(req["dest"]), builder=req.get("builder"), code_dir=code_dir)
    return {"signature": sig.to_dict()}


def _validate(framework: Any, req: dict[str, Any]) -> dict[str, Any]:
    from workbench.serving.model.validation import check_outputs, sample_inputs

    t0 = time.perf_counter()
    runtime = framework.load(Path(req["dir"]))
    loaded = time.perf_counter() - t0
    inputs = sample_inputs(runtime.signature, req.get("sample"))
    outputs = runtime.predict(inputs)
    check_outputs(runtime.signature, inputs, outputs)
    runtime.close()
    return {
        "signature": runtime.signature.to_dict(),
        "load_s": round(loaded, 3),
        "total_s": round(time.perf_counter() - t0, 3),
        "sample_shapes": {k: list(v.shape) for k, v in inputs.items()},
        "output_shapes": {k: list(v.shape) for k, v in outputs.items()},
    }


OPS = {"export": _export, "validate": _validate}


def _exit_with_parent() -> None:
    """End this worker as soon as the process that started it is gone (e.g. a promote killed with kill -9): its
    answer has no reader, and an import or export would run on for minutes. A watch on the parent pid rather than
    Linux's parent-death signal, which fires when the *thread* that started the worker ends (the pool starts
    spares from a short-lived thread)."""
    parent = int(os.environ.get(_PARENT_VAR) or 0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    if parent:
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def stop_orphans() -> list[int]:
    """Kill export/validation workers whose parent process is gone (left by a promote killed with kill -9, before
    their own watch noticed); return their pids."""
    import psutil

    killed = []
    for p in psutil.process_iter(["cmdline", "ppid"]):
        try:
            if _BOOT not in (p.info["cmdline"] or []):
                continue
            parent = int(p.environ().get(_PARENT_VAR) or 0)
            if parent and p.info["ppid"] != parent:
                p.kill()
                killed.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            continue
    return killed


def main(argv: list[str]) -> int:
    from workbench.serving.model.frameworks import get_framework

    _exit_with_parent()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the framework or user code prints goes to the log, not into our answer
    sys.stdout = sys.stderr
    spare = argv[1:] == ["--spare"]
    try:
        # A spare's import and warm-up are ~5-10 s of CPU nobody waits for; in slices, they leave the CPUs to
        # serving traffic (a spare starts after each promote, while the new version is being served). Once a
        # request is waiting, someone is: full speed.
        asked = lambda: bool(select.select([sys.stdin], [], [], 0)[0])  # noqa: E731
        with stepping_aside(0.001, 0.002, until=asked) if spare else nullcontext():
            framework = get_framework(argv[0])
            framework.prepare()
            problem = framework.warm()
        if problem:
            print(problem, file=sys.stderr)
        out.write(_READY + "\n")
        out.flush()
        ready, _, _ = select.select([sys.stdin], [], [], IDLE_EXIT_S)
        line = sys.stdin.readline() if ready else ""
        if not line:
            return 0  # parent gone or idle too long
        req = json.loads(line)
        answer: dict[str, Any] = {"ok": True, "result": OPS[req["op"]](framework, req)}
    except Exception as e:  # reported to the parent, which raises the right error
        answer = {"ok": False, "error": f"{e}" if _own(e) else f"{type(e).__name__}: {e}", "type": type(e).__name__}
    out.write(_RESULT + json.dumps(answer) + "\n")
    out.flush()
    sys.stderr.flush()
    os._exit(0)  # the answer is out and every file written: skip the framework's teardown (~1 s for TensorFlow)


def _cpu_seconds(pid: int) -> float | None:
    """CPU time process ``pid`` has used (all its threads), from /proc; None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own(e: Exception) -> bool:
    from workbench.errors import WorkbenchError

    return isinstance(e, WorkbenchError)


# ---------------------------------------------------------------- in the caller


class _Starved(Exception):
    """An idle-policy worker got no CPU (the CPUs became busy after it started) and could not be moved off it."""


class _Worker:
    def __init__(self, framework: str, python: str | None, spare: bool = False, priority: str | None = None):
        """``priority``: as :func:`~workbench.background.resolve_priority` answers; None: resolve the setting now."""
        self.ready = False  # it said it has imported its framework (whoever read that line set this)
        self.taken = False  # handed out by the pool: only its caller reads from it now
        self._reading = threading.RLock()  # one reader of its stdout at a time (the pool's starter thread, a caller)
        if priority is None:
            try:
                priority = resolve_priority(settings.PROMOTE_PRIORITY.get())
            except ValueError as e:
                raise RegistryError(f"{settings.PROMOTE_PRIORITY.name}: {e}") from None
        self.priority = priority if priority == "idle" else f"nice {priority}"  # as promote records it
        self.log = tempfile.TemporaryFile(prefix="workbench-worker-")
        root = str(Path(__file__).resolve().parents[2])  # so another venv's python imports this workbench
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        env[_PARENT_VAR] = str(os.getpid())
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.proc = subprocess.Popen(
            [python or sys.executable, "-c", _BOOT, framework, *(["--spare"] if spare else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            bufsize=0,
        )
        lower_priority(priority, self.proc.pid)  # Popen returns once the child has exec'd, before Python starts
        self._pending = b""  # read from stdout, not yet a whole line

    def usable(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the worker has imported its framework (it says so on stdout before it reads a request), or
        until it is taken (its caller reads from then on)."""
        deadline = time.monotonic() + timeout
        while not self.ready and not self.taken and self.proc.poll() is None and time.monotonic() < deadline:
            with self._reading:  # in short turns, so that a caller that took it does not wait for this one
                if not self.ready and not self.taken:
                    self._readline(min(deadline, time.monotonic() + 0.1))
        return self.ready

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``request`` and return the answer as soon as it is written (not when the process has exited)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        except BrokenPipeError:
            pass  # it died before reading: reported below
        start = time.monotonic()
        deadline = start + timeout
        cpu = _cpu_seconds(self.proc.pid)
        while True:
            tick = min(deadline, time.monotonic() + STARVED_TICK_S)
            line = self._readline(tick)
            if line is None and time.monotonic() < deadline:
                if self.priority == "idle" and time.monotonic() - start >= STARVED_AFTER_S:
                    cpu = self._rescue_if_starved(request["op"], cpu)
                continue
            if line is None:
                self.proc.kill()
                raise RegistryError(f"{request['op']} took longer than {timeout:.0f} s and was stopped")
            if line == "":
                self.proc.wait()
                raise RegistryError(
                    f"the {request['op']} worker died (exit code {self.proc.returncode}) without answering; "
                    f"its log ends with:\n{self.log_tail()}"
                )
            if line.startswith(_RESULT):
                return json.loads(line[len(_RESULT) :])  # type: ignore[no-any-return]

    def _rescue_if_starved(self, op: str, cpu_before: float | None) -> float | None:
        """Under the idle policy a worker gets almost no CPU once the CPUs are busy (the policy was chosen while
        they were free). If it ran less than a tenth of the last tick and the CPUs are busy, move each of its
        threads to niceness 10; where that is not allowed (leaving the idle policy needs privileges), raise
        _Starved so that the request runs again in a fresh worker. Returns the CPU time it has used."""
        cpu = _cpu_seconds(self.proc.pid)
        if cpu is None or cpu_before is None or cpu - cpu_before >= 0.1 * STARVED_TICK_S:
            return cpu
        free = free_cpus(max_age=1.0)
        if free is None or free >= IDLE_CPUS_NEEDED:
            return cpu
        try:
            for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
                os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, int(tid), 10)
        except FileNotFoundError:
            return cpu  # it is exiting
        except OSError as e:
            log.warning(
                "the %s worker got no CPU under the idle policy (the CPUs are busy) and cannot leave it "
                "(%s); running the %s again at niceness 10",
                op,
                e,
                op,
            )
            raise _Starved() from None
        log.warning("the %s worker got no CPU under the idle policy (the CPUs are busy); moved it to niceness 10", op)
        self.priority = "nice 10 (idle until the CPUs got busy)"
        return cpu

    def _readline(self, deadline: float) -> str | None:
        """The next line of the worker's stdout; "" at its end (or once discarded); None at ``deadline``.
        Unbuffered, so that select never waits on a line already read."""
        with self._reading:
            if self.proc.stdout is None or self.proc.stdout.closed:
                return ""
            fd = self.proc.stdout.fileno()
            while b"\n" not in self._pending:
                readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                if not readable:
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return ""
                self._pending += chunk
            line, self._pending = self._pending.split(b"\n", 1)
        text = line.decode(errors="replace").strip()
        if text == _READY:
            self.ready = True
        return text

    def log_tail(self, n: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:]

    def discard(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        with self._reading:  # a reader waiting on its stdout got the end of it, once killed
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None and not pipe.closed:
                    pipe.close()
        self.log.close()


Key = tuple[str, str, str | None]  # (role, framework, interpreter)


class WorkerPool:
    """Hands out one-shot workers; keeps one spare per (role, framework, interpreter) when warm workers are on.

    Spares start one at a time, each once the one before has imported its framework: two importing TensorFlow at
    once, even under the idle policy, doubled the p99 latency of a model served beside them for about a second,
    where one alone left it as it was (bench/serve_hotswap's promote windows end with the spares' start)."""

    def __init__(self) -> None:
        self._spares: dict[Key, _Worker] = {}
        self._queued: list[Key] = []  # spares to start once the one importing now is ready
        self._starter: threading.Thread | None = None  # waits for that one, then starts the next
        self._lock = threading.Lock()
        self._exit_hook = False

    def take(self, role: str, framework: str, python: str | None) -> _Worker:
        key = (role, framework, python)
        with self._lock:
            spare = self._spares.pop(key, None)
            if key in self._queued:
                self._queued.remove(key)  # needed now: started below, at once
        if spare is not None and spare.usable():
            spare.taken = True
            if not self._starved(spare):
                return spare
            spare.discard()  # idle-policy on CPUs that are busy now: it would hardly run; a fresh one runs niced
        return _Worker(framework, python)

    @staticmethod
    def _starved(spare: _Worker) -> bool:
        try:
            auto = check_priority(settings.PROMOTE_PRIORITY.get()) == "auto"
        except ValueError:
            return False  # reported when a worker is started
        if not auto or not runs_idle(spare.proc.pid):
            return False
        free = free_cpus()
        return free is not None and free < IDLE_CPUS_NEEDED

    def replenish(self, role: str, framework: str, python: str | None) -> None:
        """Start a spare for ``role`` if there is none: now, or once the spare importing now is ready."""
        if settings.PROMOTE_WARM.get() in ("0", "false", "no"):
            return
        key = (role, framework, python)
        with self._lock:
            if not self._exit_hook:
                atexit.register(self.shutdown)  # idle workers would exit anyway; this reaps them cleanly
                self._exit_hook = True
            spare = self._spares.get(key)
            if (spare is not None and spare.usable()) or key in self._queued:
                return
            if self._starter is not None:
                self._queued.append(key)
                return
            first = self._spawn(key)
            self._starter = threading.Thread(target=self._start_queued, args=(first,), name="spares", daemon=True)
            self._starter.start()

    def _start_queued(self, importing: _Worker) -> None:
        while True:
            importing.wait_ready(SPARE_IMPORT_WAIT_S)
            with self._lock:
                if not self._queued:
                    self._starter = None
                    return
                importing = self._spawn(self._queued.pop(0))

    def _spawn(self, key: Key) -> _Worker:
        """Start the spare for ``key`` (with the lock held)."""
        self._spares[key] = spare = _Worker(key[1], key[2], spare=True)
        return spare

    def wait_warm(self, timeout: float = 120) -> bool:
        """Wait until every idle worker has imported its framework (benchmarks use it to time warm promotes)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                starter, spares = self._starter, list(self._spares.values())
            if starter is None:
                return all(w.wait_ready(max(0.0, deadline - time.monotonic())) for w in spares)
            starter.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return False

    def shutdown(self) -> None:
        """Stop the idle workers (they also exit on their own when this process ends)."""
        with self._lock:
            spares, self._spares, self._queued = list(self._spares.values()), {}, []
        for w in spares:
            w.discard()


POOL = WorkerPool()


_OS_ERROR_TYPES: list[type[OSError]] = [OSError, *OSError.__subclasses__()]
_OS_ERRORS = {c.__name__ for c in _OS_ERROR_TYPES}


def run(
    role: str,
    framework: str,
    python: str | None,
    request: dict[str, Any],
    timeout: float = 600,
    worker: _Worker | None = None,
) -> dict[str, Any]:
    """Run ``request`` in a fresh worker (``worker``, taken from :data:`POOL` earlier, or one taken now); return its
    result, with the scheduling priority the worker ran under (``priority``: "idle" or "nice N"), or raise the
    error it reported."""
    worker = worker or POOL.take(role, framework, python)
    try:
        answer = worker.call(request, timeout)
    except _Starved:
        worker.discard()
        worker = _Worker(framework, python, priority="10")
        answer = worker.call(request, timeout)
    finally:
        worker.discard()
    if not answer["ok"]:
        error = CheckpointError if answer.get("type") == "CheckpointError" else RegistryError
        message = answer["error"]
        if answer.get("type") in _OS_ERRORS:  # e.g. a full disk: say where it wrote
            message = f"{role} into {request.get('dest') or request.get('dir')} failed: {message}"
        raise (ValidationError if role == "validate" else error)(message)
    return {**answer["result"], "priority": worker.priority}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
