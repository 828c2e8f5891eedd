"""Job state in a SQLite file in the workspace's state dir.

SQLite gives many processes (notebook kernels, the CLI, job supervisors) one
consistent view without a server. ``run.json`` in each run dir mirrors the
state so the run dir alone tells its story, and the database can always be
rebuilt from those files: a database that is corrupt (garbage over its header,
a truncated page) is moved aside and rebuilt at its next use, and one that was
emptied (truncated to nothing) is filled again, with a warning saying so. A
final state that a job's supervisor could only write into run.json (the
database was unusable then) is taken over on the next read.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from workbench.errors import AmbiguousJob, JobNotFound, WorkspaceError
from workbench.workspace import Workspace, private_dir, read_json, write_json_atomic

log = logging.getLogger("workbench")
T = TypeVar("T")

# SQLite's primary result codes for a file that is not (or no longer) a database.
_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB

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


def _has_table(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone() is not None


def _corrupt(e: sqlite3.Error) -> bool:
    return isinstance(e, sqlite3.DatabaseError) and (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _CORRUPT


class JobStore:
    """All job records of one workspace. Cheap to create; opens a connection per call."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace

    @contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        """Hold ``state/jobs.sqlite.lock``: shared while using the database, exclusive while replacing it (so that
        no process opens the file, or its -wal and -shm, while a repair swaps them)."""
        path = self.workspace.db_path
        private_dir(path.parent)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)``; a corrupt database is repaired (see :meth:`_repair`) and ``work`` run again."""
        path = self.workspace.db_path
        for tries_left in (1, 0):
            try:
                with self._locked(fcntl.LOCK_SH):
                    conn = self._open(path)
                    try:
                        return work(conn)
                    finally:
                        conn.close()
            except sqlite3.Error as e:
                if _corrupt(e) and tries_left:
                    self._repair(path, e)
                    continue
                raise WorkspaceError(f"the job database {path} failed ({e}); running jobs go on") from e
            except OSError as e:
                raise WorkspaceError(f"the job database {path} cannot be used ({e}); running jobs go on") from e
        raise AssertionError("unreachable")

    def _open(self, path: Path) -> sqlite3.Connection:
        """A connection to the database, created (0600) and filled from run.json files when it has no table (two
        processes may both fill it: inserts of a record already there are ignored)."""
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # its -wal and -shm get the same mode
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            if not _has_table(conn):
                conn.execute("BEGIN IMMEDIATE")  # one writer fills it; others see it whole, table and rows at once
                found = 0
                if not _has_table(conn):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    found = self._import_runs(conn)
                conn.execute("COMMIT")
                if found:
                    log.warning("the job database %s was empty; rebuilt %d jobs from runs/*/run.json", path, found)
            return conn
        except BaseException:
            conn.close()
            raise

    def _repair(self, path: Path, error: sqlite3.Error) -> None:
        """Move a corrupt database aside and build a fresh one from the run.json files (once, whoever gets the
        lock first; the others find it healthy)."""
        with self._locked(fcntl.LOCK_EX):
            try:
                conn = self._open(path)
                try:
                    conn.execute("SELECT count(*) FROM jobs").fetchone()
                    conn.execute("PRAGMA quick_check").fetchone()
                finally:
                    conn.close()
                return  # another process repaired it meanwhile
            except sqlite3.Error as e:
                if not _corrupt(e):
                    raise WorkspaceError(f"the job database {path} cannot be opened ({e})") from e
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            os.replace(path, aside)
            conn = self._open(path)
            conn.close()
        message = (
            f"the job database {path} was corrupt ({error}); moved it aside to {aside.name} and rebuilt it from "
            f"{self.workspace.runs}/*/run.json"
        )
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def _import_runs(self, conn: sqlite3.Connection) -> int:
        """Insert a record for each run folder with a run.json (what the database mirrors); return how many."""
        found = 0
        runs = sorted(self.workspace.runs.glob("*/run.json")) if self.workspace.runs.is_dir() else []
        for run_json in runs:
            if run_json.parent.name.startswith("."):
                continue
            try:
                run = read_json(run_json)
                spec = run["spec"]
                conn.execute(
                    "INSERT OR IGNORE INTO jobs (id, name, backend, state, created, started, ended, attempt, "
                    "supervisor_pid, message, spec) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        run["id"],
                        run.get("name") or run["id"],
                        run.get("backend", "local"),
                        run.get("state") if run.get("state") in STATES else "failed",
                        run["created"],
                        run.get("started"),
                        run.get("ended"),
                        run.get("attempt") or 0,
                        run.get("supervisor_pid"),
                        run.get("message"),
                        json.dumps(spec),
                    ),
                )
                found += 1
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("skipped %s while rebuilding the job database: %s", run_json, e)
        return found

    def insert(self, record: JobRecord) -> None:
        self._run(
            lambda c: c.execute(  # OR REPLACE: a rebuild may have taken the record from run.json already
                "INSERT OR REPLACE INTO jobs (id, name, backend, state, created, attempt, spec) VALUES (?,?,?,?,?,?,?)",
                (record.id, record.name, record.backend, record.state, record.created, 0, json.dumps(record.spec)),
            )
        )

    def get(self, job_id: str) -> JobRecord:
        """The job ``job_id`` names: its id, else the newest job of that name, else the one job whose id starts
        with it. Raises :class:`JobNotFound`, or :class:`AmbiguousJob` listing the candidates."""

        def find(c: sqlite3.Connection) -> list[sqlite3.Row]:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                row = c.execute("SELECT * FROM jobs WHERE name = ? ORDER BY created DESC LIMIT 1", (job_id,)).fetchone()
            if row is not None:
                return [row]
            # A unique prefix, as git takes for commits.
            prefix = job_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            return c.execute(
                "SELECT * FROM jobs WHERE id LIKE ? ESCAPE '\\' ORDER BY created DESC LIMIT 21", (prefix,)
            ).fetchall()

        rows = self._run(find)
        if not rows:
            raise JobNotFound(f"no job {job_id!r} (an id, a unique id prefix or a job name) in {self.workspace.root}")
        if len(rows) > 1:
            shown = ", ".join(r["id"] for r in rows[:20]) + (", ..." if len(rows) > 20 else "")
            raise AmbiguousJob(f"{job_id!r} starts several job ids: {shown}; give more of the id, or a job name")
        return self._settled(JobRecord.from_row(rows[0]))

    def delete(self, job_id: str) -> None:
        """Forget the job (its run folder is the caller's to remove)."""
        self._run(lambda c: c.execute("DELETE FROM jobs WHERE id = ?", (job_id,)))

    def list(self, limit: int | None = None) -> list[JobRecord]:
        sql = "SELECT * FROM jobs ORDER BY created DESC"
        rows = self._run(lambda c: c.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall())
        return [self._settled(JobRecord.from_row(r)) for r in rows]

    def _settled(self, record: JobRecord) -> JobRecord:
        """``record``, with the final state its run.json holds when the database missed it (its supervisor wrote
        run.json while the database could not be written)."""
        if record.state in FINAL_STATES:
            return record
        try:
            run = read_json(self.workspace.run(record.id).run_json)
        except (OSError, ValueError):
            return record
        if run.get("state") not in FINAL_STATES:
            return record
        self._run(
            lambda c: c.execute(
                "UPDATE jobs SET state = ?, message = ?, ended = ? WHERE id = ?",
                (run["state"], run.get("message"), run.get("ended"), record.id),
            )
        )
        return replace(record, state=run["state"], message=run.get("message"), ended=run.get("ended"))

    def update(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._run(lambda c: c.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id)))

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
        changed = self._run(
            lambda c: (
                c.execute(
                    f"UPDATE jobs SET {cols} WHERE id = ? AND state NOT IN ({final})",
                    (state, message, *fields.values(), job_id, *FINAL_STATES),
                ).rowcount
                == 1
            )
        )
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
            supervisor_pid=record.supervisor_pid,
        )
        write_json_atomic(path, data)


def record_in_run_json(workspace: Workspace, job_id: str, **values: Any) -> None:
    """Write ``values`` (state, message, ended...) into the run's run.json: the record a job's supervisor keeps
    when the database cannot be written, and that a rebuilt database starts from."""
    path = workspace.run(job_id).run_json
    try:
        data = read_json(path)
    except (OSError, ValueError):
        data = {}
    if data.get("state") in FINAL_STATES and values.get("state") not in (None, data.get("state")):
        return  # already ended (e.g. cancelled): a late writer does not change it
    data.update(values)
    write_json_atomic(path, data)
