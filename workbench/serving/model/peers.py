"""What the other processes of one server serve, so that a version is reported AVAILABLE only once every
process serves it (promote waits for that, then the next request may reach any of them).

Each process writes the versions it serves to ``<folder>/<pid>.json`` after every swap (atomically: readers see
the old file or the new one); a status request reads the files of the processes that are alive. Files, not
shared memory: a process that dies leaves a file that is skipped and then removed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil

from workbench.workspace import read_json, write_json_atomic

log = logging.getLogger("workbench.serving")


class Peers:
    """The server processes sharing ``folder`` (one per server: the supervisor's pid names it)."""

    def __init__(self, folder: Path, pid: int | None = None):
        self.folder = folder
        self.pid = pid or os.getpid()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def publish(self, serving: dict[str, list[int]]) -> None:
        """Record what this process serves now (model -> versions)."""
        try:
            write_json_atomic(self.folder / f"{self.pid}.json", serving)
        except OSError as e:  # only the AVAILABLE report of other processes waits on it
            log.warning("cannot record the versions this process serves in %s: %s", self.folder, e)

    def agreed(self, model: str, mine: set[int]) -> set[int]:
        """The versions of ``mine`` that every other live process serves too."""
        agreed = set(mine)
        for path in self.folder.glob("*.json"):
            pid = int(path.stem) if path.stem.isdigit() else 0
            if pid == self.pid:
                continue
            if not psutil.pid_exists(pid):
                path.unlink(missing_ok=True)
                continue
            try:
                agreed &= set(read_json(path).get(model, []))
            except (OSError, ValueError):
                continue  # being replaced right now, or a process still starting: it serves nothing of it yet
        return agreed

    def leave(self) -> None:
        (self.folder / f"{self.pid}.json").unlink(missing_ok=True)
