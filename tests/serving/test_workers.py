"""Several server processes on one port (``workbench serve --workers N``): real processes over real HTTP."""

from __future__ import annotations

import http.client
import json
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
import requests

from workbench.serving.metrics import ServerMetrics, labels
from workbench.serving.workers import NATIVE, OPEN, Peers, parse_workers, read_table

from .conftest import start_server, stop_server


def test_metrics_of_worker_processes_add_up_and_version_gauges_do_not() -> None:
    a, b = ServerMetrics(), ServerMetrics()
    for m, n in ((a, 3), (b, 4)):
        for _ in range(n):
            m.requests.inc(labels("m", 1, protocol="rest", code="200"))
            m.latency.observe(labels("m", 1), 0.003)
        m.loaded.set(labels("m", 1), 1)  # each worker loads the same version
        m.load_failures.inc(labels("m", 2))
    b.requests.inc(labels("m", 1, protocol="v2", code="400"))
    text = a.render([b.snapshot()])
    assert 'workbench_requests_total{model="m",version="1",code="200",protocol="rest"} 7' in text
    assert 'workbench_requests_total{model="m",version="1",code="400",protocol="v2"} 1' in text
    assert 'workbench_request_latency_seconds_bucket{model="m",version="1",le="0.005"} 7' in text
    assert 'workbench_request_latency_seconds_count{model="m",version="1"} 7' in text
    assert 'workbench_model_version_loaded{model="m",version="1"} 1' in text
    assert 'workbench_model_load_failures_total{model="m",version="2"} 1' in text
    assert a.render() != text


def test_peers_wait_for_every_worker_and_report_one_that_failed(tmp_path: Path) -> None:
    peers = [Peers(tmp_path, i, 3) for i in range(3)]
    stop = threading.Event()
    peers[0].announce("m", 2, 111, None)
    peers[1].announce("m", 2, 111, None)
    t0 = time.monotonic()
    assert peers[0].wait("m", {2: 111}, stop, timeout=0.3) == {}  # worker 2 never reported: go on without it
    assert time.monotonic() - t0 >= 0.3
    threading.Timer(0.2, peers[2].announce, ("m", 2, 111, "OSError: no space left")).start()
    assert peers[0].wait("m", {2: 111}, stop, timeout=10) == {
        2: "worker process 2 could not load it: OSError: no space left"
    }
    # a re-exported folder (another mtime) is another version as far as the reports go
    assert peers[0].wait("m", {2: 222}, stop, timeout=0.1) == {}
    stop.set()
    t0 = time.monotonic()
    peers[0].wait("m", {3: 1}, stop, timeout=30)  # the server stopping does not wait
    assert time.monotonic() - t0 < 1


def test_workers_option_is_checked() -> None:
    from workbench.errors import WorkbenchError

    assert parse_workers("3") == 3
    assert parse_workers("auto") in (1, 2)
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(WorkbenchError, match="positive integer or 'auto'"):
            parse_workers(bad)


def _workers(server) -> list[psutil.Process]:
    return [
        p for p in psutil.Process(server.proc.pid).children() if "workbench.serving.workers" in " ".join(p.cmdline())
    ]


def _predict_on_new_connections(url: str, model: str, digits, n: int) -> list[int]:
    """``n`` predicts, each on a connection of its own (so the kernel hands them to either worker); their versions."""
    u = urlparse(url)
    versions = []
    for _ in range(n):
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("POST", f"/v1/models/{model}:predict", body=json.dumps({"instances": digits[:1]}))
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, body
        versions.append(int(r.getheader("x-model-version")))
        conn.close()
    return versions


def _connection_counts(server) -> Callable[[], tuple[int, ...]]:
    """A function reading each worker's open connections (its Python server's and its native front end's) from the
    workers' shared table."""
    run_dir = Path(json.loads(_workers(server)[0].cmdline()[-1])["run_dir"])
    return lambda: tuple(row[OPEN] + row[NATIVE] for row in read_table(run_dir, 2))


@pytest.fixture(scope="module")
def two(serving_ws: Path, base):
    """A second server over the session workspace with two worker processes."""
    srv = start_server(serving_ws, serving_ws.parent / "server-2-workers.log", "--workers", "2", "--poll", "0.2")
    yield srv
    stop_server(srv)


def test_two_worker_processes_serve_one_port_and_count_requests_together(two, publish, digits) -> None:
    procs = _workers(two)
    assert len(procs) == 2, two.log_text()[-2000:]
    assert "(2 worker processes)" in two.log_text()
    publish("pair")
    two.wait_version("pair", 1)
    sessions = [requests.Session() for _ in range(12)]
    for s in sessions:
        for _ in range(5):
            r = s.post(f"{two.url}/v1/models/pair:predict", json={"instances": digits[:1]}, timeout=30)
            assert r.status_code == 200, r.text
    cpu = [p.cpu_times() for p in procs]
    assert all(c.user + c.system > 1 for c in cpu)  # both imported TensorFlow and loaded the models
    want = 'workbench_requests_total{model="pair",version="1",code="200",protocol="rest"} 60'
    for _ in range(6):  # each scrape lands on either worker; each adds up both
        metrics = requests.get(f"{two.url}/metrics", timeout=10).text
        assert want in metrics, [line for line in metrics.splitlines() if "pair" in line]
        assert 'workbench_model_version_loaded{model="pair",version="1"} 1' in metrics


def test_a_new_version_goes_live_in_every_worker_process_at_once(two, publish, digits) -> None:
    publish("both")
    two.wait_version("both", 1)
    failures, stop = [], threading.Event()

    def hammer() -> None:
        s = requests.Session()
        while not stop.is_set():
            r = s.post(f"{two.url}/v1/models/both:predict", json={"instances": digits[:1]}, timeout=30)
            if r.status_code != 200:
                failures.append(r.text)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        publish("both")
        requests.post(f"{two.url}/workbench/reload", timeout=10)  # reaches every worker
        two.wait_version("both", 2)
        assert set(_predict_on_new_connections(two.url, "both", digits, 24)) == {2}
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []


def test_a_worker_process_that_dies_is_replaced(two, publish, digits) -> None:
    publish("phoenix")
    two.wait_version("phoenix", 1)
    victim = _workers(two)[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    deadline = time.monotonic() + 90
    while not (len(_workers(two)) == 2 and "starting another" in two.log_text()):
        assert time.monotonic() < deadline, two.log_text()[-3000:]
        time.sleep(0.2)
    assert two.proc.poll() is None
    # the other worker answered all along; once the new one loaded the models, every connection gets an answer
    deadline = time.monotonic() + 90
    while two.log_text().count("takes connections") < 3:  # the new one, once it serves what the other does
        assert time.monotonic() < deadline, two.log_text()[-3000:]
        time.sleep(0.2)
    assert two.log_text().count("model phoenix: serving versions [1]") >= 3  # (a publish can make two scans)
    assert set(_predict_on_new_connections(two.url, "phoenix", digits, 16)) == {1}


def test_workers_stop_when_the_supervisor_is_killed(serving_ws: Path) -> None:
    srv = start_server(serving_ws, serving_ws.parent / "server-orphans.log", "--workers", "2")
    procs = _workers(srv)
    assert len(procs) == 2
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, srv.log_text()[-2000:]
    assert "supervisor exited; stopping this worker" in srv.log_text()


def test_connections_are_spread_evenly_over_the_workers(two, publish, digits) -> None:
    publish("even")
    two.wait_version("even", 1)
    deadline = time.monotonic() + 90
    while two.log_text().count("takes connections") < 2 + two.log_text().count("starting another"):
        assert time.monotonic() < deadline, two.log_text()[-3000:]  # a worker replaced by another test is ready
        time.sleep(0.2)
    u = urlparse(two.url)
    counts = _connection_counts(two)

    before = counts()  # connections other tests left open, if any
    for _ in range(3):
        conns = [http.client.HTTPConnection(u.hostname, u.port, timeout=30) for _ in range(8)]
        for conn in conns * 2:  # one after the other; every connection answers, whichever worker took it over
            conn.request("POST", "/v1/models/even:predict", body=json.dumps({"instances": digits[:1]}))
            r = conn.getresponse()
            assert r.status == 200, r.read()
            r.read()
        now = counts()
        assert sum(now) == sum(before) + 8, (before, now)
        assert max(now) - min(now) <= 1, (before, now)  # the kernel alone often gives 6/2 or 7/1
        for conn in conns:
            conn.close()
        deadline = time.monotonic() + 10
        while sum(counts()) != sum(before):
            assert time.monotonic() < deadline, counts()
            time.sleep(0.05)


def test_a_worker_passes_its_connections_on_while_it_loads_and_gets_them_back(two, publish, digits) -> None:
    publish("aside")
    two.wait_version("aside", 1)
    counts = _connection_counts(two)
    failures, answered, stop = [], [0], threading.Event()

    def hammer() -> None:
        s = requests.Session()  # one keep-alive connection, moved between the workers as they load
        while not stop.is_set():
            r = s.post(f"{two.url}/v1/models/aside:predict", json={"instances": digits[:1]}, timeout=30)
            answered[0] += 1
            if r.status_code != 200:
                failures.append(r.text)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        before = two.log_text().count("steps aside to load")
        publish("aside")
        requests.post(f"{two.url}/workbench/reload", timeout=10)
        two.wait_version("aside", 2)
        log = two.log_text()
        stepped = re.findall(r"worker process (\d) steps aside to load: passed (\d+) of its (\d+) connections", log)
        # each worker in turn, while the other serves every client
        assert sorted(w for w, _, _ in stepped[before:]) == ["0", "1"], log[-3000:]
        assert all(passed == had for _, passed, had in stepped[before:]), stepped
        # the worker that loaded last has none left; answering requests evens them out again
        deadline = time.monotonic() + 20
        while max(counts()) - min(counts()) > 1 or sum(counts()) < 6:
            assert time.monotonic() < deadline, counts()
            time.sleep(0.05)
        n = answered[0]
        time.sleep(0.5)
        assert answered[0] > n  # still answering
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
