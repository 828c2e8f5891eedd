"""The prediction log in PostgreSQL (``WORKBENCH_SERVE_LOG_DB=postgresql://user:password@host:5432/db``).

Several serving processes and pods write one table over the network, where SQLite cannot be shared. Rows go
in with ``COPY`` (one round trip per batch); psycopg 3 is imported here only, so serving without it works.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from workbench.errors import WorkbenchError
from workbench.serving.predlog import sql

CONNECT_TIMEOUT_S = 5
LOCK_KEY = 0x776B6263  # advisory lock around CREATE TABLE: two processes creating it at once would collide


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise WorkbenchError(
            "a postgresql:// prediction log needs psycopg 3: pip install 'psycopg[binary]' "
            "(or the workbench's extra: pip install 'workbench[postgres]')"
        ) from None
    return psycopg


class PostgreSQL:
    placeholder = "%s"

    def __init__(self, url: str):
        self.url = url
        self.errors: tuple[type[BaseException], ...] = (_psycopg().Error,)

    def __str__(self) -> str:
        """The URL without its password, for messages."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))

    def connect(self) -> Any:
        """A connection, with the table created if missing."""
        psycopg = _psycopg()
        conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S, application_name="workbench-serve")
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                for statement in sql.SCHEMA:
                    conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    def insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` in one transaction: all of them or none."""
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(f"COPY {sql.TABLE} ({', '.join(sql.COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

    def query(self, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
        psycopg = _psycopg()
        with psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            try:
                return list(conn.execute(statement, params).fetchall())
            except psycopg.errors.UndefinedTable:
                return []
