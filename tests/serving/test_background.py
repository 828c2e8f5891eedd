"""Background work stays out of serving's way: load slices in the server, lower priority for promote workers."""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

from workbench.background import stepping_aside
from workbench.registry import worker
from workbench.serving.metrics import ServerMetrics
from workbench.serving.repository import ModelRepository
from workbench.workspace import Workspace


def _spin(seconds: float) -> int:
    """Run Python (function calls, so a profile hook sees events) for ``seconds`` of this thread's CPU time."""
    calls, stop = 0, time.thread_time() + seconds
    while time.thread_time() < stop:
        calls += len(str(calls))
    return calls


def test_stepping_aside_pauses_between_slices() -> None:
    t0, c0 = time.perf_counter(), time.thread_time()
    with stepping_aside(0.001, 0.003):
        _spin(0.05)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    assert wall > 2.5 * cpu, (wall, cpu)  # ~1 ms running for each 3 ms paused
    t0 = time.perf_counter()
    _spin(0.05)
    assert time.perf_counter() - t0 < 0.04 + 0.05 * 2  # the hook is gone after the block


def test_stepping_aside_stops_pausing_once_asked() -> None:
    asked_at = time.perf_counter() + 0.01
    t0, c0 = time.perf_counter(), time.thread_time()
    with stepping_aside(0.001, 0.02, until=lambda: time.perf_counter() > asked_at):
        _spin(0.1)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    assert wall < 1.8 * cpu + 0.05, (wall, cpu)  # paused at most once or twice, then ran flat out


def test_server_loads_in_slices_only_while_serving_traffic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = ModelRepository(Workspace(tmp_path).ensure(), ServerMetrics())
    assert isinstance(repo._yielding(), nullcontext)  # no request yet: load at full speed
    repo.last_request = time.monotonic()
    assert not isinstance(repo._yielding(), nullcontext)
    monkeypatch.setenv("WORKBENCH_SERVE_LOAD_YIELD", "0")
    assert isinstance(repo._yielding(), nullcontext)
    monkeypatch.setenv("WORKBENCH_SERVE_LOAD_YIELD", "1,2")
    repo.last_request = time.monotonic() - 5
    assert isinstance(repo._yielding(), nullcontext)


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads niceness from /proc (Linux)")
@pytest.mark.parametrize("spare", [False, True])
def test_promote_workers_run_below_the_server(monkeypatch: pytest.MonkeyPatch, spare: bool) -> None:
    monkeypatch.setenv("WORKBENCH_PROMOTE_NICE", "7")
    base = _nice(os.getpid())
    w = worker._Worker("tensorflow", None, spare=spare)
    try:
        deadline = time.monotonic() + 30
        while _nice(w.proc.pid) == base and time.monotonic() < deadline and w.usable():
            time.sleep(0.01)
        assert _nice(w.proc.pid) == min(19, base + 7)
        assert ("--spare" in Path(f"/proc/{w.proc.pid}/cmdline").read_bytes().decode().split("\0")) == spare
    finally:
        w.discard()
