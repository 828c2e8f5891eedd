"""The prediction log: the same writer and summary over the workspace's SQLite file and a real PostgreSQL server
(tests/serving/pgserver.py), two server processes logging into PostgreSQL at once, and an outage of the database
that no predict notices."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import requests

from workbench.errors import WorkbenchError
from workbench.serving.predlog import PredictionLog, database, summary
from workbench.serving.predlog.sqlite import SQLite

from .conftest import Server, metric_samples, start_server, stop_server
from .pgserver import PostgresServer

DROPPED = "workbench_prediction_log_dropped_total"


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()


def _rows(model: str, count: int) -> list[tuple]:  # type: ignore[type-arg]
    rng = np.random.default_rng(0)
    return [
        (
            model,
            1 + i % 2,
            float(rng.uniform(1, 20)),
            {"x": np.full((2, 3), i, np.float32)},
            {"probabilities": rng.dirichlet(np.ones(4), 2)},
        )
        for i in range(count)
    ]


def _write(db, rows) -> None:  # type: ignore[no-untyped-def]
    log = PredictionLog(db)
    for model, version, ms, inputs, outputs in rows:
        log.record(model, version, "rest", ms / 1000, inputs, outputs)
    log.close()


def test_the_summary_is_the_same_over_sqlite_and_postgresql(pg: PostgresServer, tmp_path: Path) -> None:
    rows = _rows("same", 40)
    _write(database(pg.url), rows)
    _write(SQLite(tmp_path / "p.sqlite"), rows)
    on_pg = summary(model="same", db=pg.url)
    assert on_pg == summary(model="same", db=f"sqlite://{tmp_path / 'p.sqlite'}")
    assert {v: s["requests"] for v, s in on_pg["same"].items()} == {1: 20, 2: 20}
    assert sum(on_pg["same"][1]["outputs"]["probabilities"]["top_class"].values()) == 40  # 2 rows per request
    assert summary(model="same", since=time.time() + 60, db=pg.url) == {}


def test_a_database_the_log_cannot_use_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WorkbenchError, match="mysql://db/x.*postgresql, postgres, sqlite"):
        database("mysql://db/x")
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    with pytest.raises(WorkbenchError, match=r"pip install 'psycopg\[binary\]'"):
        database("postgresql://127.0.0.1/x")


def test_rows_a_database_that_is_down_cannot_take_are_dropped_and_counted(pg: PostgresServer) -> None:
    dropped: list[int] = []
    pg.stop()
    try:
        log = PredictionLog(database(pg.url), on_drop=dropped.append, max_queue=4)
        started = time.monotonic()
        for model, version, ms, inputs, outputs in _rows("down", 20):
            log.record(model, version, "rest", ms / 1000, inputs, outputs)
        assert time.monotonic() - started < 0.5  # recording never waits for the database
        log.close(timeout=10)
        assert not log._thread.is_alive()  # closing does not hang on a database that is down
        assert sum(dropped) == 20  # each row, once: the queue's overflow, then what it held at the end
    finally:
        pg.start()
    assert summary(model="down", db=pg.url) == {}


def test_summary_of_a_database_that_is_down_says_where(pg: PostgresServer) -> None:
    url = pg.url.replace(str(pg.port), str(pg.port + 1 if pg.port < 65535 else pg.port - 1))
    with pytest.raises(WorkbenchError, match="cannot read the prediction log at postgresql://postgres@127.0.0.1"):
        summary(db=url)


# ---------------------------------------------------------------- two server processes, one database


@pytest.fixture
def logging_server(serving_ws: Path, base, pg: PostgresServer) -> Iterator[Callable[..., Server]]:  # type: ignore[no-untyped-def]
    """``logging_server(**env)``: ``workbench serve`` in two processes, logging every prediction into ``pg``."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        env = {"WORKBENCH_SERVE_LOG_DB": pg.url, **env}
        log = serving_ws.parent / "predlog-server.log"
        server = start_server(serving_ws, log, "--workers", "2", "--poll", "0.2", "--log-sample", "1", env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server)


def _predict_all(server: Server, model: str, ids: range, digit: list, threads: int = 4) -> list[int]:  # type: ignore[type-arg]
    """Predict once per id, from ``threads`` clients on new connections (spread over both processes); each
    request's image carries its id in its first pixel. Returns the HTTP statuses."""
    statuses: list[int] = []
    todo = list(ids)
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            image = [row[:] for row in digit]
            image[0][0] = float(i)
            r = requests.post(f"{server.url}/v1/models/{model}:predict", json={"instances": [image]}, timeout=30)
            with lock:
                statuses.append(r.status_code)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return statuses


def _logged_ids(pg: PostgresServer, model: str) -> list[int]:
    with psycopg.connect(pg.url) as conn:
        try:
            rows = conn.execute("SELECT inputs FROM predictions WHERE model = %s", (model,)).fetchall()
        except psycopg.errors.UndefinedTable:  # no server has written yet: its writer creates the table
            return []
    return sorted(int(next(iter(json.loads(text).values()))[0][0][0]) for (text,) in rows)


def _dropped(server: Server) -> float:
    return metric_samples(requests.get(f"{server.url}/metrics", timeout=5).text).get(DROPPED, 0.0)


def _until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what()
        time.sleep(0.2)


@pytest.mark.slow
def test_two_server_processes_log_every_sampled_request_once(logging_server, publish, digits, pg) -> None:  # type: ignore[no-untyped-def]
    server = logging_server()
    publish("pglog")
    server.wait_version("pglog", 1)
    statuses = _predict_all(server, "pglog", range(200), digits[0])
    assert statuses == [200] * 200
    _until(lambda: len(_logged_ids(pg, "pglog")) >= 200, 30, lambda: f"{len(_logged_ids(pg, 'pglog'))} of 200 logged")
    time.sleep(0.5)  # waits for something NOT to happen: a row logged twice would land within a batch period (0.2 s)
    assert _logged_ids(pg, "pglog") == list(range(200))  # every request, once
    with psycopg.connect(pg.url) as conn:
        pids = conn.execute(
            "SELECT count(DISTINCT pid) FROM pg_stat_activity WHERE application_name = 'workbench-serve'"
        ).fetchone()
    assert pids == (2,)  # both server processes wrote
    stats = summary(model="pglog", db=pg.url)["pglog"][1]
    assert stats["requests"] == stats["rows"] == 200
    assert sum(stats["outputs"]["probabilities"]["top_class"].values()) == 200
    assert 0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p99"]
    assert _dropped(server) == 0


def _writers(pg: PostgresServer) -> int:
    """Server processes connected to the database now."""
    with psycopg.connect(pg.url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'workbench-serve'"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.slow
def test_a_database_outage_fails_no_predict_and_counts_the_rows_it_drops(logging_server, publish, digits, pg) -> None:  # type: ignore[no-untyped-def]
    server = logging_server(WORKBENCH_SERVE_LOG_QUEUE="16")  # rows held per process while the database is down
    publish("outage")
    server.wait_version("outage", 1)
    sent = 0

    def accounted() -> float:  # every sampled request is either logged once or counted as dropped
        return len(_logged_ids(pg, "outage")) + _dropped(server)

    assert _predict_all(server, "outage", range(40), digits[0]) == [200] * 40
    sent += 40
    _until(lambda: accounted() == sent, 30, lambda: f"{accounted()} of {sent} accounted for")
    _until(lambda: _writers(pg) == 2, 30, lambda: f"{_writers(pg)} of 2 server processes connected")
    before = _dropped(server)
    pg.stop()
    try:
        during = _predict_all(server, "outage", range(1000, 1300), digits[0])
        assert during == [200] * 300  # the database being down fails no predict
        sent += 300
        # Each process holds at most a batch and 16 queued rows: most of the 300 are dropped, and counted.
        _until(lambda: _dropped(server) - before >= 100, 30, lambda: f"{_dropped(server) - before} dropped")
    finally:
        pg.start()
    # The writers reconnect on their own (each holds rows of the outage to write), then new rows land again.
    _until(lambda: _writers(pg) == 2, 30, lambda: f"{_writers(pg)} of 2 server processes reconnected")
    assert _predict_all(server, "outage", range(2000, 2020), digits[0], threads=1) == [200] * 20
    sent += 20
    _until(
        lambda: set(range(2000, 2020)) <= set(_logged_ids(pg, "outage")),
        30,
        lambda: f"after the restart only {[i for i in _logged_ids(pg, 'outage') if i >= 2000]} landed",
    )
    _until(lambda: accounted() == sent, 30, lambda: f"{accounted()} of {sent} accounted for")
    ids = _logged_ids(pg, "outage")
    assert len(ids) == len(set(ids))
    # The drops are logged (rate-limited); "cannot reach" follows only where a reconnect fell inside the outage.
    _until(lambda: "prediction(s) not logged to" in server.log_text(), 30, lambda: server.log_text()[-2000:])
