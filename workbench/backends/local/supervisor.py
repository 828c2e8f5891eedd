"""The detached process that runs one local job: starts replicas, watches them, restarts or ends the job.

Started by :class:`~workbench.backends.local.backend.LocalBackend` in a
session of its own, so the job survives the notebook kernel or CLI that
submitted it. ``python -m workbench.backends.local.supervisor WORKSPACE RUN_ID``.
SIGTERM cancels the job.

The job database is never a reason to stop a job: when it cannot be read or
written (corrupt, disk full, locked), the supervisor keeps its replicas running,
retries with backoff, and records the outcome in run.json, which the store takes
over on its next read (see :mod:`workbench.store`). Replicas get SIGKILL when
the supervisor dies (a parent-death signal), and whoever reads the store next
marks the job failed and stops what is left of them.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from workbench import conventions, gpus, settings, sync
from workbench.backends.local import processes, queue
from workbench.errors import WorkbenchError, WorkspaceError
from workbench.spec import JobSpec
from workbench.store import FINAL_STATES, JobStore, record_in_run_json
from workbench.workspace import RunPaths, Workspace, open_private, read_json, write_json_atomic

POLL_S = 0.2
WAIT_POLL_S = 0.05  # how often a queued job's launcher looks whether it was let in (reads run.json)
LOOK_S = 5.0  # how often it looks at the whole queue itself
STORE_BACKOFF_S = (0.5, 10.0)  # first and longest wait before trying the job database again
FINAL_WRITE_S = 60  # how long the final state is retried into the database (run.json has it at once)
T = TypeVar("T")


@dataclass
class Running:
    replica: conventions.Replica
    proc: subprocess.Popen[bytes]
    address: str


class Supervisor:
    def __init__(self, workspace: Workspace, run_id: str):
        self.workspace = workspace
        self.run_id = run_id
        self.store = JobStore(workspace)
        self.paths: RunPaths = workspace.run(run_id)
        self.spec = JobSpec.from_dict(read_json(self.paths.run_json)["spec"])  # run.json: the database may be down
        self.grace = float(settings.KILL_GRACE_S.get())
        self.cancelled = False
        self._store_down_since: float | None = None
        self._retry_at = 0.0
        self._backoff = STORE_BACKOFF_S[0]

    def log(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    def _db(self, what: str, call: Callable[[], T]) -> T | None:
        """``call()`` on the job database; None while it cannot be used (tried again after a growing wait)."""
        if time.monotonic() < self._retry_at:
            return None
        try:
            result = call()
        except WorkbenchError as e:  # unusable, or rebuilt without this job: either way the job goes on
            if self._store_down_since is None:
                self._store_down_since = time.monotonic()
                self.log(f"cannot {what} in the job database ({e}); the job goes on, retrying")
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, STORE_BACKOFF_S[1])
            return None
        if self._store_down_since is not None:
            self.log(f"the job database works again (after {time.monotonic() - self._store_down_since:.1f} s)")
            self._store_down_since = None
        self._retry_at, self._backoff = 0.0, STORE_BACKOFF_S[0]
        return result

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with queue.lock(self.workspace):  # an admitter reads it to know whether this job has a launcher
            other = read_json(self.paths.run_json).get("supervisor_pid")
            if other and other != os.getpid() and processes.alive(other, self.run_id):
                self.log(f"the job already has its launcher (pid {other}); this one leaves")
                return 0
            record_in_run_json(self.workspace, self.run_id, supervisor_pid=os.getpid())
        self._db("record the launcher", lambda: self.store.update(self.run_id, supervisor_pid=os.getpid()))
        if not self._wait_admitted():
            return 0  # cancelled while queued: it never starts
        queue.env_file(self.workspace, self.run_id).unlink(missing_ok=True)
        record = self._db("read the job", lambda: self.store.get(self.run_id))
        if record is not None and record.cancel_requested:
            self._finish("cancelled", "cancelled before it started")
            return 0
        attempts = self.spec.max_restarts + 1
        for attempt in range(attempts):
            outcome, message = self._attempt(attempt)
            if outcome in ("succeeded", "cancelled") or attempt + 1 == attempts:
                self._finish(outcome, message)
                return 0
            self.log(f"{message}; restarting (restart {attempt + 1} of {self.spec.max_restarts})")
        return 0

    def _wait_admitted(self) -> bool:
        """Wait, imports done, until the queue lets this job in (its allocation appears in run.json), so that it
        starts at once when the job before it ends. Meanwhile look at the queue now and then (dead launchers'
        jobs are settled, what fits is let in): a waiting head keeps the queue moving with nothing else running.
        False when the job ended while queued (cancelled) or this process was told to stop."""
        next_look = time.monotonic() + LOOK_S
        while not self.cancelled:
            try:
                run = read_json(self.paths.run_json)
            except (OSError, ValueError):
                return False  # deleted
            if run.get("state") in FINAL_STATES:
                return False
            if (run.get("queue") or {}).get("admitted"):
                return True
            if time.monotonic() > next_look:
                next_look = time.monotonic() + LOOK_S
                self._look_at_queue()
            time.sleep(WAIT_POLL_S)
        return False

    def _look_at_queue(self) -> None:
        from workbench.backends import reconcile

        try:
            reconcile(self.workspace)
        except (WorkbenchError, OSError) as e:
            self.log(f"could not look at the queue: {e}")

    def _finish(self, outcome: str, message: str) -> None:
        """Record the job's end: in run.json at once, in the database as soon as it can be written."""
        record_in_run_json(self.workspace, self.run_id, state=outcome, message=message, ended=time.time())
        self.log(f"job {outcome}: {message}")
        self._admit_next()  # the store takes the outcome over from run.json, so the next job need not wait
        sync.finish(self.workspace, self.run_id, self.log)
        deadline = time.monotonic() + FINAL_WRITE_S
        while time.monotonic() < deadline:
            self._retry_at = 0.0
            if self._db("record the outcome", lambda: self.store.transition(self.run_id, outcome, message)) is not None:
                return
            time.sleep(self._backoff)
        self.log("the job database could not be written; run.json holds the outcome, taken over on its next read")

    def _admit_next(self) -> None:
        """Start the queued jobs that fit now that this one's resources are free."""
        from workbench.backends.local.backend import admit

        try:
            for job_id in admit(self.workspace):
                self.log(f"started queued job {job_id}")
        except (WorkbenchError, OSError) as e:  # the next listing or status admits them
            self.log(f"could not start queued jobs: {e}")

    def _on_term(self, signum: int, frame: object) -> None:
        self.cancelled = True

    def _attempt(self, attempt: int) -> tuple[str, str]:
        uploads = self._uploads(attempt)
        running = self._start(attempt)
        record_in_run_json(self.workspace, self.run_id, state="running", attempt=attempt, started=time.time())
        self._db("record the attempt", lambda: self.store.update(self.run_id, attempt=attempt))
        self._db("record the start", lambda: self.store.transition(self.run_id, "running", f"attempt {attempt + 1}"))
        try:
            return self._watch(running)
        finally:
            processes.kill_trees([r.proc.pid for r in running], self.grace)
            for r in running:
                r.proc.wait()
            if uploads is not None:
                uploads.stop()

    def _uploads(self, attempt: int) -> sync.RunSync | None:
        """On a remote workspace: the checkpoints pulled back from the bucket, then uploads while the attempt runs."""
        if self.workspace.url is None:
            return None
        uploads = sync.RunSync(
            self.workspace, self.run_id, attempt, extra=(self.paths.run_json, self.paths.logs), log=self.log
        )
        uploads.restore()
        return uploads.start()

    def _start(self, attempt: int) -> list[Running]:
        roles = self.spec.roles()
        replicas = conventions.replicas(roles)
        ports = processes.free_ports(len(replicas))
        addresses = {r: f"127.0.0.1:{p}" for r, p in zip(replicas, ports, strict=True)}
        cluster = {role: [addresses[r] for r in replicas if r.role == role] for role in roles}
        compute = [r for r in replicas if r.role in ("worker", "chief")]
        held = queue.allocation(self.workspace, self.run_id)  # the GPUs the queue gave this job
        assigned = held["devices"] if held else gpus.assign(self.spec.gpus, len(compute))
        devices = dict(zip(compute, assigned, strict=True))
        script = self.paths.code / Path(self.spec.script).name
        tb, checkpoints = sync.replica_dirs(self.workspace, self.run_id, attempt)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        running = []
        for r in replicas:
            env = {
                **os.environ,
                "TF_CPP_MIN_LOG_LEVEL": settings.TF_CPP_MIN_LOG_LEVEL.get(),  # quiet unless the user said otherwise
                **self.spec.command_env(),
                **conventions.replica_env(self.spec.framework, cluster, r, loopback=True),
                settings.RUN_ID_VAR: self.run_id,
                settings.WORKSPACE_VAR: str(self.workspace.root),
                settings.LOG_DIR_VAR: str(tb),
                settings.CHECKPOINT_DIR_VAR: str(checkpoints),
                settings.ATTEMPT_VAR: str(attempt),
                "CUDA_VISIBLE_DEVICES": devices.get(r, ""),
                "PYTHONUNBUFFERED": "1",
            }
            log = open_private(self.paths.replica_log(r.role, r.index))
            if attempt:
                log.write(f"\n===== restart {attempt}: attempt {attempt + 1} =====\n".encode())
                log.flush()
            proc = subprocess.Popen(
                [self.spec.python or sys.executable, str(script), *self.spec.command_args()],
                cwd=self.paths.code,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: cancel ends the whole tree
                preexec_fn=processes.dying_with_parent(),  # never outlives this supervisor
            )
            log.close()
            running.append(Running(r, proc, addresses[r]))
            self.log(f"started {r.role}-{r.index} pid {proc.pid} at {addresses[r]}")
        write_json_atomic(
            self.paths.root / "replicas.json",
            [
                {"role": x.replica.role, "index": x.replica.index, "pid": x.proc.pid, "address": x.address}
                for x in running
            ],
        )
        return running

    def _completion(self, running: list[Running]) -> list[Running]:
        """Replicas whose success ends the job (TF ps servers never exit by themselves)."""
        if self.spec.framework == "tensorflow" and self.spec.ps:
            return [r for r in running if r.replica.role == "chief"]
        return running

    def _watch(self, running: list[Running]) -> tuple[str, str]:
        must_finish = self._completion(running)
        while True:
            record = self._db("read the job", lambda: self.store.get(self.run_id))
            if self.cancelled or (record is not None and record.cancel_requested):
                return "cancelled", "cancelled by request"
            for r in running:
                code = r.proc.poll()
                if code not in (None, 0):
                    name = f"{r.replica.role}-{r.replica.index}"
                    return "failed", f"{name} exited with code {code} (see logs/{name}.log)"
            if all(r.proc.poll() == 0 for r in must_finish):
                # Helpers (ps servers, schedulers) get a moment to wind down before they are stopped.
                processes.wait_for(lambda: all(r.proc.poll() is not None for r in running), self.grace)
                return "succeeded", "all replicas finished"
            _until_one_exits(running, POLL_S)


def _until_one_exits(running: list[Running], timeout: float) -> None:
    """Sleep up to ``timeout`` s, waking as soon as a replica exits (a pidfd turns readable), so that the job's
    end is recorded, and the next queued job started, at once rather than at the next poll."""
    fds = []
    try:
        for r in running:
            if r.proc.returncode is None:
                try:
                    fds.append(os.pidfd_open(r.proc.pid))
                except (AttributeError, OSError):  # not Linux >= 5.3, or already reaped
                    pass
        if fds:
            select.select(fds, [], [], timeout)
        else:
            time.sleep(timeout)
    finally:
        for fd in fds:
            os.close(fd)


def main(argv: list[str]) -> int:
    workspace_root, run_id = argv
    workspace = Workspace.at(workspace_root)
    try:
        return Supervisor(workspace, run_id).run()
    except Exception as e:
        message = f"the launcher failed: {type(e).__name__}: {e}"
        record_in_run_json(workspace, run_id, state="failed", message=message, ended=time.time())
        try:
            JobStore(workspace).transition(run_id, "failed", message)
        except WorkspaceError:
            pass  # run.json has it
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
