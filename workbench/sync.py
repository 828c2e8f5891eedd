"""A running job's files on a remote (``s3://``) workspace: replicas write locally, the launcher uploads.

TensorFlow cannot write to ``s3://`` here and a training script should not
have to care, so on a remote workspace each replica gets local folders
(``WORKBENCH_LOG_DIR``, ``WORKBENCH_CHECKPOINT_DIR`` under the cache's
``work/<run-id>/<attempt>/``), and whoever launched it (the local supervisor,
a Kubernetes pod's entrypoint) runs a :class:`RunSync`: before the script
starts it pulls the run's checkpoints back from the bucket (so a restarted job
resumes), then uploads new and changed files every ``WORKBENCH_SYNC_INTERVAL``
seconds and once more at the end. An upload that fails is logged and retried;
it never stops the job. On a local workspace none of this happens: the
replicas write into the run's own folders, as they always did.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from workbench import settings
from workbench.params import LOGGED
from workbench.storage import Pusher
from workbench.workspace import Workspace

FINAL_TRIES = 5


def replica_dirs(workspace: Workspace, run_id: str, attempt: int) -> tuple[Path, Path]:
    """(TensorBoard dir, checkpoint dir) the replicas of ``attempt`` write to."""
    if workspace.url is None:
        paths = workspace.run(run_id)
        return paths.tb, paths.checkpoints
    work = workspace.work_dir(run_id) / str(attempt)
    return work / "tb", work / "checkpoints"


class RunSync:
    """Uploads one attempt's files (its TensorBoard and checkpoint folders, plus ``extra`` files or folders of the
    run dir such as logs and run.json) while it runs."""

    def __init__(
        self,
        workspace: Workspace,
        run_id: str,
        attempt: int,
        extra: tuple[Path, ...] = (),
        log: Callable[[str], None] = print,
    ):
        remote = workspace.remote
        assert remote is not None, "RunSync is for remote workspaces"
        self.workspace, self.log = workspace, log
        self.paths = workspace.run(run_id)
        self.tb, self.checkpoints = replica_dirs(workspace, run_id, attempt)
        rel = workspace.relative
        logged = self.paths.root / LOGGED  # params the script logs itself (workbench.runtime.log_params)
        self.pushers = [
            Pusher(remote, self.tb, rel(self.paths.tb)),
            Pusher(remote, self.checkpoints, rel(self.paths.checkpoints)),
            Pusher(remote, logged, rel(logged)),
            *(Pusher(remote, p, rel(p)) for p in extra),
        ]
        self.interval = float(settings.SYNC_INTERVAL_S.get())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def extra_file(self, path: Path) -> None:
        """Also upload ``path`` (a file or folder under the workspace cache), e.g. a pod's own log file."""
        self.pushers.append(Pusher(self.workspace.remote, path, self.workspace.relative(path)))  # type: ignore[arg-type]

    def restore(self) -> int:
        """Pull the run's checkpoints from the bucket into the local checkpoint folder; return how many files."""
        for d in (self.tb, self.checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        pulled = self.workspace.remote.pull(  # type: ignore[union-attr]
            self.workspace.relative(self.paths.checkpoints), self.checkpoints
        )
        self.pushers[1].known()
        if pulled:
            self.log(f"restored {len(pulled)} checkpoint file(s) from {self.workspace.url}")
        return len(pulled)

    def start(self) -> RunSync:
        self._thread = threading.Thread(target=self._loop, name="workspace-sync", daemon=True)
        self._thread.start()
        return self

    def push(self) -> bool:
        """Upload what is new or changed now; False (logged once per outage) when the bucket cannot be written."""
        try:
            for pusher in self.pushers:
                pusher.push()
        except Exception as e:  # noqa: BLE001 - any storage failure: the job goes on, we retry
            if not self._failing:
                self.log(f"cannot upload to {self.workspace.url} ({type(e).__name__}: {e}); retrying")
            self._failing = True
            return False
        if self._failing:
            self.log(f"uploads to {self.workspace.url} work again")
        self._failing = False
        return True

    def stop(self) -> bool:
        """Stop the periodic uploads and upload what is left (retried a few times); return whether it all went."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for i in range(FINAL_TRIES):
            if self.push():
                return True
            time.sleep(min(2**i, 10))
        return False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.push()


def finish(workspace: Workspace, run_id: str, log: Callable[[str], None] = print) -> None:
    """At a job's end: upload its run.json and logs (final state) and drop its local work folders."""
    if workspace.url is None:
        return
    paths = workspace.run(run_id)
    for _ in range(FINAL_TRIES):
        try:
            workspace.push(paths.run_json)
            workspace.push(paths.logs)
        except Exception as e:  # noqa: BLE001
            log(f"cannot upload the job's final state to {workspace.url} ({e}); retrying")
            time.sleep(2)
            continue
        shutil.rmtree(workspace.work_dir(run_id), ignore_errors=True)  # kept when the bucket never took them
        return
