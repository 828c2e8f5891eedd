"""What every training pod runs: ``python -m workbench.backends.kubernetes.entrypoint SCRIPT [ARGS...]``.

An Indexed Job's pods share one template, so a replica's own variables
(TF_CONFIG's task, RANK, DMLC_ROLE...) cannot be written into the manifest.
Each pod knows its role (``WORKBENCH_ROLE``), its index (``JOB_COMPLETION_INDEX``)
and every replica's address (``WORKBENCH_CLUSTER``); this entrypoint hands them
to :func:`workbench.conventions.replica_env`, the function the local backend
uses too, then runs the script from the run's code snapshot. The script's
output goes to stdout (the pod log) and is appended to
``runs/<id>/logs/<role>-<index>.log`` in the workspace, which outlives the pod.
Replicas that never exit by themselves (TensorFlow ps) stop once the replicas
that end the job have succeeded, which those record under ``runs/<id>/kubernetes/``.

Imports nothing beyond the standard library and workbench's core, so any
trainer image with workbench installed can run it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from workbench import conventions, settings, sync
from workbench.errors import WorkbenchError
from workbench.workspace import Workspace

CONTAINER = "replica"  # the container's name in every training pod
CONFIG_ERROR_EXIT = 78  # EX_CONFIG from sysexits.h; the Job's podFailurePolicy fails the job on it, no retries
MARKER_POLL_S = 2.0  # how often a helper replica looks for the chief's exit marker


def completion_roles(framework: str, roles: Iterable[str]) -> set[str]:
    """Roles whose success ends the job. Under TensorFlow's ParameterServerStrategy only the chief
    ever exits; its workers and ps serve until stopped (the local backend treats them the same way)."""
    roles = set(roles)
    return {"chief"} if framework == "tensorflow" and "ps" in roles else roles


def exit_marker(env: Mapping[str, str], role: str, index: int) -> Path:
    """Where a replica that ends the job records its exit status, for helper replicas to see (on an s3://
    workspace, a local copy of the bucket's)."""
    run = Workspace.at(env[settings.WORKSPACE_VAR]).run(env[settings.RUN_ID_VAR])
    return run.root / "kubernetes" / f"{role}-{index}.exit"


class ConfigError(Exception):
    """The pod's environment or workspace cannot run this replica; retrying would fail the same way."""


def replica_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The script's environment: the pod's, completed with this replica's distributed variables."""
    required = (
        settings.FRAMEWORK_VAR,
        settings.ROLE_VAR,
        "JOB_COMPLETION_INDEX",
        settings.CLUSTER_VAR,
        settings.RUN_ID_VAR,
        settings.WORKSPACE_VAR,
    )
    missing = [name for name in required if not environ.get(name)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set; this pod was not made by the workbench")
    framework, role = environ[settings.FRAMEWORK_VAR], environ[settings.ROLE_VAR]
    try:
        index = int(environ["JOB_COMPLETION_INDEX"])
        cluster = json.loads(environ[settings.CLUSTER_VAR])
    except ValueError as e:
        raise ConfigError(f"malformed JOB_COMPLETION_INDEX or {settings.CLUSTER_VAR}: {e}") from e
    if index >= len(cluster.get(role, [])):
        raise ConfigError(f"{role}-{index} is not in the cluster {cluster}")
    env = dict(environ)
    env.update(conventions.replica_env(framework, cluster, conventions.Replica(role, index)))
    env[settings.ATTEMPT_VAR] = environ.get(settings.ATTEMPT_VAR) or "0"
    return env


def main(argv: list[str]) -> int:
    try:
        if not argv:
            raise ConfigError("usage: python -m workbench.backends.kubernetes.entrypoint SCRIPT [ARGS...]")
        env = replica_environment(os.environ)
        script = _local_script(Path(argv[0]), env)
        uploads = _bucket_outputs(env)
        if not script.is_file():
            raise ConfigError(
                f"training script {script} is not in the workspace; is WORKBENCH_K8S_WORKSPACE_CLAIM the "
                "claim that holds the submitter's workspace, mounted at the same path?"
            )
    except ConfigError as e:
        print(f"workbench entrypoint: {e}", file=sys.stderr, flush=True)
        return CONFIG_ERROR_EXIT
    command = [sys.executable, str(script), *argv[1:]]
    with _workspace_log(env) as log:
        if uploads is None:
            return _run_replica(command, env, script.parent, log)
        uploads.extra_file(_log_path(env))
        uploads.restore()
        uploads.start()
        try:
            return _run_replica(command, env, script.parent, log)
        finally:
            uploads.stop()


def _bucket_outputs(env: dict[str, str]) -> sync.RunSync | None:
    """On an s3:// workspace: point the script at local TensorBoard and checkpoint folders (``env`` is changed)
    and return the uploader of this replica's files (None on a shared-volume workspace). As the local
    supervisor does (workbench.sync): the pod's folders start empty, the run's checkpoints come back from the
    bucket first."""
    try:
        ws = Workspace.at(env[settings.WORKSPACE_VAR])
    except WorkbenchError as e:
        raise ConfigError(str(e)) from e
    if ws.url is None:
        return None
    run_id, attempt = env[settings.RUN_ID_VAR], int(env[settings.ATTEMPT_VAR])
    tb, checkpoints = sync.replica_dirs(ws, run_id, attempt)
    env[settings.LOG_DIR_VAR], env[settings.CHECKPOINT_DIR_VAR] = str(tb), str(checkpoints)
    env[settings.WORKSPACE_VAR] = str(ws.root)  # the script sees the local copy, as under the local supervisor
    return sync.RunSync(ws, run_id, attempt, log=lambda m: print(f"workbench entrypoint: {m}", flush=True))


def _local_script(script: Path, env: Mapping[str, str]) -> Path:
    """The script to run: as given on a shared volume; on an s3:// workspace, from the run's code snapshot,
    copied from the bucket into the pod's cache."""
    try:
        ws = Workspace.at(env[settings.WORKSPACE_VAR])
        if ws.url is None:
            return script
        code = ws.run(env[settings.RUN_ID_VAR]).code
        ws.pull(code)
    except WorkbenchError as e:
        raise ConfigError(f"cannot copy the job's code from {env[settings.WORKSPACE_VAR]}: {e}") from e
    return code / script.name


def _run_replica(command: list[str], env: dict[str, str], cwd: Path, log: BinaryIO | None) -> int:
    """Run the script; where some roles never exit by themselves (TF ps), tie their end to the others'."""
    role, index = env[settings.ROLE_VAR], int(env[settings.REPLICA_INDEX_VAR])
    cluster = json.loads(env[settings.CLUSTER_VAR])
    enders = completion_roles(env[settings.FRAMEWORK_VAR], cluster)
    if enders == set(cluster):
        return run(command, env, cwd, log)
    if role not in enders:
        markers = [exit_marker(env, r, i) for r in sorted(enders) for i in range(len(cluster[r]))]
        return run(command, env, cwd, log, stop_when=lambda: _all_succeeded(markers))
    code = run(command, env, cwd, log)
    _write_marker(exit_marker(env, role, index), code)
    return code


def run(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    log: BinaryIO | None,
    stop_when: Callable[[], bool] | None = None,
) -> int:
    """Run ``command``, copying its output to stdout and ``log``; return its exit status.

    SIGTERM (the kubelet stopping the pod) goes on to the script's whole process
    group: as PID 1 we would otherwise ignore it, and the script would only ever see SIGKILL.
    A helper replica (a ps) is stopped once ``stop_when()`` holds, and then counts as done (0):
    so its Job completes with the job even when nobody asks the backend for the job's status.
    """
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def forward(signum: int, frame: object) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    stopped = threading.Event()
    if stop_when is not None:
        threading.Thread(target=_stop_when, args=(proc, stop_when, stopped), daemon=True).start()
    assert proc.stdout is not None
    out = sys.stdout.buffer
    # Raw chunks, not lines: progress bars written with "\r" appear as they are written.
    while chunk := os.read(proc.stdout.fileno(), 65536):
        out.write(chunk)
        out.flush()
        if log is not None:
            log.write(chunk)
            log.flush()
    code = proc.wait()
    if stopped.is_set():
        return 0
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it


def _stop_when(proc: subprocess.Popen[bytes], condition: Callable[[], bool], stopped: threading.Event) -> None:
    while proc.poll() is None:
        if condition():
            stopped.set()
            print("workbench entrypoint: the replicas that end this job finished; stopping this one", flush=True)
            _stop(proc)
            return
        time.sleep(MARKER_POLL_S)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the script's process group, SIGKILL after the grace period: a TF server may ignore SIGTERM."""
    for sig, wait in ((signal.SIGTERM, float(settings.KILL_GRACE_S.get())), (signal.SIGKILL, None)):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            return


def _all_succeeded(markers: list[Path]) -> bool:
    ws = Workspace.at(os.environ[settings.WORKSPACE_VAR])
    try:
        for folder in {m.parent for m in markers}:
            ws.pull(folder)  # an s3:// workspace: the markers other pods uploaded
    except WorkbenchError:
        return False
    try:
        return all(m.read_text().strip() == "0" for m in markers)
    except OSError:
        return False


def _write_marker(path: Path, code: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(f"{code}\n")
        partial.replace(path)  # helpers read a whole marker or none
        Workspace.at(os.environ[settings.WORKSPACE_VAR]).push(path)  # an s3:// workspace: where helpers look
    except (OSError, WorkbenchError) as e:
        print(f"workbench entrypoint: cannot write {path} ({e})", file=sys.stderr, flush=True)


@contextmanager
def _workspace_log(env: Mapping[str, str]) -> Iterator[BinaryIO | None]:
    """The replica's log file in the workspace, opened to append; None when it cannot be written."""
    path = _log_path(env)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "ab")
    except OSError as e:
        print(f"workbench entrypoint: cannot write {path} ({e}); the log is in the pod only", flush=True)
        yield None
        return
    with log:
        attempt = int(env[settings.ATTEMPT_VAR])
        if attempt:  # the same marker the local backend writes between attempts
            log.write(f"\n===== restart {attempt}: attempt {attempt + 1} =====\n".encode())
        yield log


def _log_path(env: Mapping[str, str]) -> Path:
    paths = Workspace.at(env[settings.WORKSPACE_VAR]).run(env[settings.RUN_ID_VAR])
    return paths.replica_log(env[settings.ROLE_VAR], int(env[settings.REPLICA_INDEX_VAR]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
