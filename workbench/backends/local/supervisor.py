"""The detached process that runs one local job: starts replicas, watches them, restarts or ends the job.

Started by :class:`~workbench.backends.local.backend.LocalBackend` in a
session of its own, so the job survives the notebook kernel or CLI that
submitted it. ``python -m workbench.backends.local.supervisor WORKSPACE RUN_ID``.
SIGTERM cancels the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workbench import conventions, gpus, settings
from workbench.backends.local import processes
from workbench.spec import JobSpec
from workbench.store import JobStore
from workbench.workspace import RunPaths, Workspace, write_json_atomic

POLL_S = 0.2


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
        self.spec = JobSpec.from_dict(self.store.get(run_id).spec)
        self.grace = float(settings.KILL_GRACE_S.get())
        self.cancelled = False

    def log(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.store.update(self.run_id, supervisor_pid=os.getpid())
        if self.store.get(self.run_id).cancel_requested:
            self.store.transition(self.run_id, "cancelled", "cancelled before it started")
            return 0
        attempts = self.spec.max_restarts + 1
        for attempt in range(attempts):
            outcome, message = self._attempt(attempt)
            if outcome in ("succeeded", "cancelled") or attempt + 1 == attempts:
                self.store.transition(self.run_id, outcome, message)
                self.log(f"job {outcome}: {message}")
                return 0
            self.log(f"{message}; restarting (restart {attempt + 1} of {self.spec.max_restarts})")
        return 0

    def _on_term(self, signum: int, frame: object) -> None:
        self.cancelled = True

    def _attempt(self, attempt: int) -> tuple[str, str]:
        running = self._start(attempt)
        self.store.update(self.run_id, attempt=attempt)
        self.store.transition(self.run_id, "running", f"attempt {attempt + 1}")
        try:
            return self._watch(running)
        finally:
            processes.kill_trees([r.proc.pid for r in running], self.grace)
            for r in running:
                r.proc.wait()

    def _start(self, attempt: int) -> list[Running]:
        roles = self.spec.roles()
        replicas = conventions.replicas(roles)
        ports = processes.free_ports(len(replicas))
        addresses = {r: f"127.0.0.1:{p}" for r, p in zip(replicas, ports, strict=True)}
        cluster = {role: [addresses[r] for r in replicas if r.role == role] for role in roles}
        compute = [r for r in replicas if r.role in ("worker", "chief")]
        devices = dict(zip(compute, gpus.assign(self.spec.gpus, len(compute)), strict=True))
        script = self.paths.code / Path(self.spec.script).name
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        running = []
        for r in replicas:
            env = {
                **os.environ,
                **self.spec.env,
                **conventions.replica_env(self.spec.framework, cluster, r, loopback=True),
                settings.RUN_ID_VAR: self.run_id,
                settings.WORKSPACE_VAR: str(self.workspace.root),
                settings.LOG_DIR_VAR: str(self.paths.tb),
                settings.CHECKPOINT_DIR_VAR: str(self.paths.checkpoints),
                settings.ATTEMPT_VAR: str(attempt),
                "CUDA_VISIBLE_DEVICES": devices.get(r, ""),
                "PYTHONUNBUFFERED": "1",
            }
            log = open(self.paths.replica_log(r.role, r.index), "ab")
            if attempt:
                log.write(f"\n===== restart {attempt}: attempt {attempt + 1} =====\n".encode())
                log.flush()
            proc = subprocess.Popen(
                [self.spec.python or sys.executable, str(script), *self.spec.args],
                cwd=self.paths.code,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: cancel ends the whole tree
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
            if self.cancelled or self.store.get(self.run_id).cancel_requested:
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
            time.sleep(POLL_S)


def main(argv: list[str]) -> int:
    workspace_root, run_id = argv
    workspace = Workspace(Path(workspace_root))
    try:
        return Supervisor(workspace, run_id).run()
    except Exception as e:
        JobStore(workspace).transition(run_id, "failed", f"the launcher failed: {type(e).__name__}: {e}")
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
