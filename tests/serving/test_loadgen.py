"""The benchmarks' load generator against a real HTTP server on 127.0.0.1 (the server's own HTTP layer)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serving.test_http import Running
from workbench.serving import loadgen


@pytest.fixture
def srv() -> Iterator[Running]:
    r = Running(max_body=1 << 20, keep_alive=30)
    yield r
    r.stop()


def test_closed_loop_counts_answers_latencies_and_errors(srv: Running) -> None:
    ok = loadgen.run(f"http://127.0.0.1:{srv.port}/sleep/0.002", b'{"x": 1}', 4, 0.5)
    assert ok.errors == 0 and ok.statuses == {200: len(ok.latencies)}
    # 4 connections, ~2 ms per request each: well over 100 in 0.5 s, and none answered faster than the sleep
    assert len(ok.latencies) > 100 and min(ok.latencies) >= 0.002
    assert ok.throughput == pytest.approx(len(ok.latencies) / ok.seconds)
    failing = loadgen.run(f"http://127.0.0.1:{srv.port}/boom", b"{}", 2, 0.2)
    assert failing.latencies == [] and failing.errors > 0 and set(failing.statuses) == {500}


def test_open_loop_sends_at_the_rate_whatever_the_answers_take(srv: Running) -> None:
    url = f"http://127.0.0.1:{srv.port}/sleep/0.001"
    r = loadgen.run_many([(url, b"{}", 4)], 1.0, rate=100)[0]
    assert r.errors == 0
    assert 80 <= len(r.latencies) <= 105  # ~100 due in 1 s
    # answers slower than the rate allows with one connection: requests queue, and the wait counts
    slow = loadgen.run_many([(f"http://127.0.0.1:{srv.port}/sleep/0.05", b"{}", 1)], 0.5, rate=100)[0]
    assert slow.errors == 0 and max(slow.latencies) > 0.2
