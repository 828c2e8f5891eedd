"""Several server processes (uvicorn's workers) on one port: requests counted together, a new version reported
AVAILABLE only once every process serves it, hot swap under load with no failed request, and no worker left
behind when the server is killed."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from .conftest import Server, metric_samples, start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two(serving_ws: Path, base) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    server = start_server(serving_ws, serving_ws.parent / "two-workers.log", "--workers", "2", "--poll", "0.2")
    yield server
    stop_server(server)


def _workers(server: Server) -> list[psutil.Process]:
    """uvicorn's worker processes (multiprocessing spawns them; its resource tracker is not one)."""
    children = psutil.Process(server.proc.pid).children()
    return [p for p in children if "spawn_main" in " ".join(p.cmdline())]


def test_two_worker_processes_serve_one_port_and_count_requests_together(two, publish, digits):
    publish("pair")
    two.wait_version("pair", 1)
    assert len(_workers(two)) == 2
    for _ in range(30):  # new connections: the kernel spreads them over both processes
        r = requests.post(f"{two.url}/v1/models/pair:predict", json={"instances": digits[:1]}, timeout=30)
        assert r.status_code == 200
    totals = []
    for _ in range(4):  # whichever process answers /metrics adds up every process's counts
        samples = metric_samples(requests.get(f"{two.url}/metrics", timeout=5).text)
        totals.append(samples['workbench_requests_total{model="pair",version="1",code="200",protocol="rest"}'])
    assert min(totals) >= 30


def test_a_version_is_available_once_every_process_serves_it(two, publish, digits):
    publish("both")
    two.wait_version("both", 1)
    publish("both")
    two.wait_version("both", 2)  # AVAILABLE: every process serves it
    versions = {
        requests.post(f"{two.url}/v1/models/both:predict", json={"instances": digits[:1]}, timeout=30).headers[
            "x-model-version"
        ]
        for _ in range(20)
    }
    assert versions == {"2"}


def test_hot_swap_under_load_fails_no_request(two, publish, digits):
    publish("swap")
    two.wait_version("swap", 1)
    stop, failures, answered, seen = threading.Event(), [], [0], set()

    def client() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                r = s.post(f"{two.url}/v1/models/swap:predict", json={"instances": digits[:1]}, timeout=30)
                if r.status_code != 200:
                    failures.append((r.status_code, r.text))
                else:
                    answered[0] += 1
                    seen.add(r.headers["x-model-version"])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for v in (2, 3, 4):
            publish("swap")
            two.wait_version("swap", v)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:3]
    assert answered[0] > 20 and "4" in seen


def test_workers_stop_when_the_server_is_killed(serving_ws: Path):
    server = start_server(serving_ws, serving_ws.parent / "killed.log", "--workers", "2")
    workers = _workers(server)
    assert len(workers) == 2
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, [p.cmdline() for p in alive]
