"""Job state in a SQLite file in the workspace's state dir.

SQLite gives many processes (notebook kernels, the CLI, job supervisors) one
consistent view without a server. ``run.json`` in each run dir mirrors the
state so the run dir alone tells its story.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from workbench.errors import JobNotFound, WorkspaceError
from workbench.workspace import Workspace, read_json, write_json_atomic

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    backend TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    attempt INTEGER NOT NULL DEFAULT 0,
    supervisor_pid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    message TEXT,
    spec TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
"""


@dataclass(frozen=True)
class JobRecord:
    id: str
    name: str
    backend: str
    state: str
    created: float
    started: float | None
    ended: float | None
    attempt: int
    supervisor_pid: int | None
    cancel_requested: bool
    message: str | None
    spec: dict[str, Any]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        d = dict(row)
        d["spec"] = json.loads(d["spec"])
        d["cancel_requested"] = bool(d["cancel_requested"])
        return cls(**d)


class JobStore:
    """All job records of one workspace. Cheap to create; opens a connection per call."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        path = self.workspace.db_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise WorkspaceError(
                f"the job database {path} is unreadable ({e}). Running jobs are not affected; "
                f"move the file aside (e.g. mv {path} {path}.corrupt) to start a fresh one"
            ) from e
        try:
            yield conn
        except sqlite3.DatabaseError as e:
            raise WorkspaceError(f"the job database {path} failed: {e}") from e
        finally:
            conn.close()

    def insert(self, record: JobRecord) -> None:
        with self._connect() as c:
            c.execute(
                "INSERT INTO jobs (id, name, backend, state, created, attempt, spec) VALUES (?,?,?,?,?,?,?)",
                (record.id, record.name, record.backend, record.state, record.created, 0, json.dumps(record.spec)),
            )

    def get(self, job_id: str) -> JobRecord:
        with self._connect() as c:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                # Accept a unique prefix, as git does for commits.
                rows = c.execute("SELECT * FROM jobs WHERE id LIKE ?", (job_id + "%",)).fetchall()
                if len(rows) == 1:
                    row = rows[0]
        if row is None:
            raise JobNotFound(f"no job {job_id!r} in workspace {self.workspace.root}")
        return JobRecord.from_row(row)

    def list(self, limit: int | None = None) -> list[JobRecord]:
        sql = "SELECT * FROM jobs ORDER BY created DESC"
        with self._connect() as c:
            rows = c.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as c:
            c.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def transition(self, job_id: str, state: str, message: str | None = None, **fields: Any) -> bool:
        """Move a job to ``state`` unless it already ended; mirror it into run.json.

        Returns False (and changes nothing) when the job is already final, so a
        late writer never overwrites ``cancelled`` with ``failed``.
        """
        assert state in STATES, state
        now = time.time()
        if state == "running":
            fields.setdefault("started", now)
        if state in FINAL_STATES:
            fields.setdefault("ended", now)
        cols = ", ".join(f"{k} = ?" for k in ("state", "message", *fields))
        final = ",".join("?" * len(FINAL_STATES))
        with self._connect() as c:
            cur = c.execute(
                f"UPDATE jobs SET {cols} WHERE id = ? AND state NOT IN ({final})",
                (state, message, *fields.values(), job_id, *FINAL_STATES),
            )
            changed = cur.rowcount == 1
        if changed:
            self._mirror(job_id)
        return changed

    def _mirror(self, job_id: str) -> None:
        record = self.get(job_id)
        path = self.workspace.run(job_id).run_json
        try:
            data = read_json(path)
        except (OSError, ValueError):
            data = {}
        data.update(
            state=record.state,
            message=record.message,
            started=record.started,
            ended=record.ended,
            attempt=record.attempt,
        )
        write_json_atomic(path, data)
