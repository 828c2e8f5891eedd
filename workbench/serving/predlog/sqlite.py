"""The prediction log in the workspace's SQLite file (``state/predictions.sqlite``): the local default.

SQLite needs no server, but its WAL mode does not work over a network filesystem
(https://sqlite.org/wal.html): on a shared volume written by several serving pods use :mod:`.postgres`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from workbench.serving.predlog import sql


class SQLite:
    placeholder = "?"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: Path):
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def connect(self) -> sqlite3.Connection:
        """A connection, with the table created if missing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        for statement in sql.SCHEMA:
            conn.execute(statement)
        return conn

    def insert(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` in one transaction: all of them or none."""
        with conn:
            conn.execute("BEGIN")
            conn.executemany(sql.insert(self.placeholder), rows)

    def query(self, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            return conn.execute(statement, params).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise
        finally:
            conn.close()
