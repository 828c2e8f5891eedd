"""Opt-in prediction log for monitoring: a sample of predict requests per model version, in a database.

The server samples a fraction of predict requests (``WORKBENCH_SERVE_LOG_SAMPLE`` or ``workbench serve
--log-sample``) and hands them to a writer thread (:mod:`.writer`) that inserts them in batches. Where they go
is ``WORKBENCH_SERVE_LOG_DB``: empty for the workspace's ``state/predictions.sqlite`` (:mod:`.sqlite`), or a
``postgresql://`` URL (:mod:`.postgres`) when several pods serve. :func:`summary` reads either the same way:
counts, latency percentiles and the output distribution per model version.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from workbench import settings
from workbench.errors import WorkbenchError
from workbench.serving.predlog import sql
from workbench.serving.predlog.summary import aggregate
from workbench.serving.predlog.writer import Database, PredictionLog
from workbench.workspace import Workspace

SCHEMES = ("postgresql", "postgres", "sqlite")


def db_path(workspace: Workspace) -> Path:
    """The local default: the workspace's SQLite file."""
    return workspace.state / "predictions.sqlite"


def database(target: str | None = None, workspace: Workspace | None = None) -> Database:
    """The database ``target`` names (default ``WORKBENCH_SERVE_LOG_DB``): empty for the workspace's SQLite file,
    ``postgresql://...``, or ``sqlite:///path``."""
    target = settings.SERVE_LOG_DB.get() if target is None else target
    scheme = urlsplit(target).scheme
    if not target:
        from workbench.serving.predlog.sqlite import SQLite

        return SQLite(db_path(workspace or Workspace.current()))
    if scheme in ("postgresql", "postgres"):
        from workbench.serving.predlog.postgres import PostgreSQL

        return PostgreSQL(target)
    if scheme == "sqlite":
        from workbench.serving.predlog.sqlite import SQLite

        return SQLite(Path(urlsplit(target).path))
    raise WorkbenchError(
        f"{settings.SERVE_LOG_DB.name}={target!r} is not a database the prediction log can use; "
        f"give a URL with one of the schemes {', '.join(SCHEMES)}, or leave it empty for the workspace's SQLite file"
    )


def open_log(workspace: Workspace, on_drop: Callable[[int], None] | None = None) -> PredictionLog:
    """The server's writer, to the configured database. A local file that cannot be written fails here, at start;
    a database server that is down does not stop the server from starting (its rows are dropped until it is up)."""
    from workbench.serving.predlog.sqlite import SQLite

    db = database(workspace=workspace)
    if isinstance(db, SQLite):
        db.connect().close()
    return PredictionLog(db, on_drop=on_drop, max_queue=int(settings.SERVE_LOG_QUEUE.get()))


def summary(
    workspace: Workspace | None = None, model: str | None = None, since: float | None = None, db: str | None = None
) -> dict[str, dict[int, dict[str, Any]]]:
    """Per model and version: requests, rows, latency percentiles (ms) and output distribution, from the
    database ``db`` names (default ``WORKBENCH_SERVE_LOG_DB``; see :func:`database`).

    For an output with a class axis (e.g. probabilities, shape [batch, k]) the
    distribution is how often each class was the top one, and the mean top
    score; for a scalar output, its mean, std, min and max.
    """
    target = database(db, workspace)
    params: list[Any] = [since or 0.0] + ([model] if model is not None else [])
    try:
        records = target.query(sql.select(target.placeholder, model), params)
    except target.errors as e:
        raise WorkbenchError(f"cannot read the prediction log at {target}: {e}") from e
    return aggregate(records)


__all__ = ["PredictionLog", "database", "db_path", "open_log", "summary"]
