"""The prediction table and the statements on it, written once for every database.

The column types are ones SQLite and PostgreSQL both read the same way (``DOUBLE PRECISION`` has REAL affinity
in SQLite); what differs between them, the parameter placeholder and how rows are sent, is each database
module's (:mod:`.sqlite`, :mod:`.postgres`).
"""

from __future__ import annotations

TABLE = "predictions"
COLUMNS = ("time", "model", "version", "protocol", "rows", "latency_ms", "inputs", "outputs")
SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    time DOUBLE PRECISION NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    rows INTEGER NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    inputs TEXT,
    outputs TEXT
)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_model ON {TABLE} (model, version, time)",
)


def insert(placeholder: str) -> str:
    return f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join([placeholder] * len(COLUMNS))})"


def select(placeholder: str, model: str | None) -> str:
    """The rows :func:`workbench.serving.predlog.summary` aggregates: since a time, of one model or all."""
    query = f"SELECT model, version, rows, latency_ms, outputs FROM {TABLE} WHERE time >= {placeholder}"
    return query + (f" AND model = {placeholder}" if model is not None else "")
