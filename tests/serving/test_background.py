"""Background work stays out of serving's way: load slices in the server, lower priority for promote workers."""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

from workbench import background
from workbench.background import stepping_aside
from workbench.registry import worker
from workbench.serving.metrics import ServerMetrics
from workbench.serving.model.repository import ModelRepository
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
    # paused at most a few times, then ran flat out (pausing all along would take ~21x the CPU time)
    assert wall < 5 * cpu + 0.2, (wall, cpu)


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


def _cmdline(pid: int) -> list[str]:
    """The process's arguments. Right after a spawn they can read empty for a moment: the parent resumes once the
    child has its new address space, and the kernel writes the new program's arguments into it just after."""
    deadline = time.monotonic() + 5
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    while not raw and time.monotonic() < deadline:
        time.sleep(0.01)
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return raw.decode().split("\0")


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads niceness from /proc (Linux)")
@pytest.mark.parametrize("spare", [False, True])
def test_promote_workers_run_below_the_server(monkeypatch: pytest.MonkeyPatch, spare: bool) -> None:
    monkeypatch.setenv("WORKBENCH_PROMOTE_PRIORITY", "7")
    base = _nice(os.getpid())
    w = worker._Worker("tensorflow", None, spare=spare)
    try:
        assert _nice(w.proc.pid) == min(19, base + 7)  # from the start: its interpreter's start-up runs niced too
        assert not background.runs_idle(w.proc.pid)
        assert w.priority == "nice 7"  # what promote records in the version's validation info
        assert ("--spare" in _cmdline(w.proc.pid)) == spare
    finally:
        w.discard()


def _policy_of(w: worker._Worker) -> bool:
    deadline = time.monotonic() + 30
    while not background.runs_idle(w.proc.pid) and time.monotonic() < deadline and w.usable():
        time.sleep(0.01)
    return background.runs_idle(w.proc.pid)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's idle scheduling policy")
def test_auto_priority_runs_idle_while_cpus_are_free_and_niced_when_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "free_cpus", lambda: 1.5)
    assert background.resolve_priority("auto") == "idle"
    monkeypatch.setattr(background, "free_cpus", lambda: 0.2)
    assert background.resolve_priority("auto") == "10"
    monkeypatch.setattr(background, "free_cpus", lambda: None)  # cannot tell: niceness, which never starves
    assert background.resolve_priority("auto") == "10"
    assert background.resolve_priority(" IDLE ") == "idle"
    assert background.resolve_priority("3") == "3"
    with pytest.raises(ValueError, match="'auto', 'idle' or a niceness"):
        background.resolve_priority("fast")


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's idle scheduling policy")
def test_an_idle_spare_is_replaced_when_the_cpus_got_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_PROMOTE_PRIORITY", "auto")
    monkeypatch.setattr(worker, "resolve_priority", lambda policy: "idle")  # the CPUs were free when it started
    pool = worker.WorkerPool()
    pool.replenish("validate", "tensorflow", None)
    spare = pool._spares[("validate", "tensorflow", None)]
    try:
        assert _policy_of(spare), "the spare did not take the idle policy"
        monkeypatch.setattr(worker, "free_cpus", lambda: 0.1)  # and now they are busy
        monkeypatch.setattr(worker, "resolve_priority", background.resolve_priority)
        monkeypatch.setattr(background, "free_cpus", lambda: 0.1)
        fresh = pool.take("validate", "tensorflow", None)
        try:
            assert fresh is not spare and not spare.usable()
            assert not _policy_of(fresh)
        finally:
            fresh.discard()
        pool.replenish("validate", "tensorflow", None)
        monkeypatch.setattr(worker, "free_cpus", lambda: 1.9)  # a niced spare is kept whatever the load
        kept = pool._spares[("validate", "tensorflow", None)]
        assert pool.take("validate", "tensorflow", None) is kept
        kept.discard()
    finally:
        spare.discard()
        pool.shutdown()


def test_a_bad_priority_setting_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.errors import RegistryError

    monkeypatch.setenv("WORKBENCH_PROMOTE_PRIORITY", "high")
    with pytest.raises(RegistryError, match="WORKBENCH_PROMOTE_PRIORITY: .*'high'"):
        worker._Worker("tensorflow", None)


def test_free_cpus_reads_the_machine() -> None:
    free = background.free_cpus(interval=0.1, max_age=0)
    if not Path("/proc/stat").exists():
        assert free is None
        return
    assert free is not None and 0 <= free <= (os.cpu_count() or 1)
    assert background.free_cpus(max_age=60) == free  # reused while fresh


# ---------------------------------------------------------------- a pod's CPU limit (cgroup quotas)


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_tightest_cgroup_v2_quota_on_the_way_up_is_found(tmp_path: Path) -> None:
    own = tmp_path / "self-cgroup"
    own.write_text("0::/kubepods/pod1/ctr\n")
    root = tmp_path / "fs"
    _tree(
        root,
        {
            "kubepods/cpu.max": "max 100000\n",
            "kubepods/pod1/cpu.max": "50000 100000\n",  # the pod's limits.cpu: 500m
            "kubepods/pod1/cpu.stat": "usage_usec 2500000\nuser_usec 2000000\n",
            "kubepods/pod1/ctr/cpu.max": "max 100000\n",
            "kubepods/pod1/ctr/cpu.stat": "usage_usec 1000\n",
        },
    )
    quota = background.cpu_quota(root, own)
    assert quota is not None and quota.cpus == 0.5 and quota.usage == root / "kubepods/pod1/cpu.stat"
    assert quota.used() == 2.5
    (root / "kubepods/pod1/ctr/cpu.max").write_text("30000 100000\n")  # a tighter one below it wins
    assert background.cpu_quota(root, own).cpus == 0.3  # type: ignore[union-attr]


def test_a_container_sees_its_own_cgroup_as_the_mount_and_v1_quotas_count_too(tmp_path: Path) -> None:
    own = tmp_path / "self-cgroup"
    own.write_text("0::/kubepods/pod1/ctr\n")  # a path that does not exist inside the container
    _tree(tmp_path / "v2", {"cpu.max": "150000 100000\n", "cpu.stat": "usage_usec 7\n"})
    assert background.cpu_quota(tmp_path / "v2", own).cpus == 1.5  # type: ignore[union-attr]

    own.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    _tree(
        tmp_path / "v1",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "25000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/docker/abc/cpuacct.usage": "123000000000\n",
        },
    )
    quota = background.cpu_quota(tmp_path / "v1", own)
    assert quota is not None and quota.cpus == 0.25 and quota.used() == 123.0


def test_no_quota_is_none(tmp_path: Path) -> None:
    own = tmp_path / "self-cgroup"
    own.write_text("0::/a\n1:cpu:/\n")
    _tree(tmp_path, {"a/cpu.max": "max 100000\n", "a/cpu.stat": "usage_usec 1\n", "cpu/cpu.cfs_quota_us": "-1\n"})
    assert background.cpu_quota(tmp_path, own) is None
    assert background.cpu_quota(tmp_path, tmp_path / "missing") is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat")
def test_free_cpus_are_what_the_quota_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    class Busy:  # a 0.3-CPU pod using ~0.2 CPUs over the sample
        cpus = 0.3
        readings = iter([10.0, 10.02])

        def used(self) -> float:
            return next(self.readings)

    free = background.free_cpus(interval=0.1, max_age=0, quota=Busy())  # type: ignore[arg-type]
    assert free is not None and free < 0.15
    # so on a throttled pod `auto` picks niceness, whatever the machine's idle CPUs say
    monkeypatch.setattr(background, "cpu_quota", lambda: background.CPUQuota(0.3, Path("/proc/self/stat")))
    monkeypatch.setattr(background.CPUQuota, "used", lambda self: 1.0)
    monkeypatch.setattr(background, "_measured", [float("-inf"), 0.0])
    assert background.resolve_priority("auto") == "10"


# ---------------------------------------------------------------- a worker starved under the idle policy


@pytest.fixture
def tiny_export(tmp_path: Path) -> Path:
    import keras

    from workbench.serving.model.frameworks.tensorflow import export_keras

    model = keras.Sequential([keras.Input((8,), name="x"), keras.layers.Dense(4, name="y")])
    export_keras(model, tmp_path / "export")
    return tmp_path / "export"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's idle scheduling policy")
@pytest.mark.parametrize("may_leave_idle", [True, False])
def test_an_idle_worker_that_the_busy_cpus_starve_is_moved_to_niceness_or_run_again(
    monkeypatch: pytest.MonkeyPatch, tiny_export: Path, may_leave_idle: bool
) -> None:
    import subprocess
    import sys

    if may_leave_idle and os.geteuid() != 0:
        pytest.skip("leaving the idle policy needs root (CAP_SYS_NICE); the other case covers everyone else")
    monkeypatch.setenv("WORKBENCH_PROMOTE_PRIORITY", "idle")  # as `auto` picks while the CPUs are free
    w = worker._Worker("tensorflow", None)
    assert w.wait_ready(180) and background.runs_idle(w.proc.pid)
    spin = "print('spinning', flush=True)\nwhile True: pass"
    busy = [
        subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE) for _ in range((os.cpu_count() or 1) + 1)
    ]
    for p in busy:
        assert p.stdout is not None and p.stdout.readline() == b"spinning\n"  # every CPU is busy from here on

    def stop_busy() -> None:
        for p in busy:
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()

    if not may_leave_idle:  # like an unprivileged user: the worker is run again, here once the load has gone

        def refused(*args: object) -> None:
            stop_busy()
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(worker.os, "sched_setscheduler", refused)
    try:
        t0 = time.monotonic()
        result = worker.run("validate", "tensorflow", None, {"op": "validate", "dir": str(tiny_export)}, 120, worker=w)
        elapsed = time.monotonic() - t0
    finally:
        stop_busy()
    assert result["output_shapes"] == {"y": [2, 4]}
    assert result["priority"] == ("nice 10 (idle until the CPUs got busy)" if may_leave_idle else "nice 10"), result
    assert elapsed < 60, elapsed  # starved, the same work would take minutes


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's idle scheduling policy")
def test_work_on_a_low_priority_thread_leaves_the_caller_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setattr(background, "_threads_started_low", False)
    seen = background.on_low_priority_thread(lambda: os.sched_getscheduler(0), "idle")
    assert seen == os.SCHED_IDLE
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller's own policy, untouched
    niced = background.on_low_priority_thread(lambda: _nice(threading.get_native_id()), "5")
    assert niced == min(19, _nice(threading.get_native_id()) + 5)

    def fails() -> None:
        raise KeyError("corrupt")

    with pytest.raises(KeyError, match="corrupt"):
        background.on_low_priority_thread(fails, "idle")

    # work that leaves a thread behind (which keeps the low priority): a warning, and normal priority from then on
    gate = threading.Event()
    background.on_low_priority_thread(lambda: threading.Thread(target=gate.wait, daemon=True).start(), "idle")
    try:
        assert background._threads_started_low
        assert background.on_low_priority_thread(lambda: os.sched_getscheduler(0), "idle") != os.SCHED_IDLE
    finally:
        gate.set()


def test_spares_start_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_PROMOTE_WARM", "1")
    export, validate = ("export", "tensorflow", None), ("validate", "tensorflow", None)
    pool = worker.WorkerPool()
    try:
        pool.replenish(*export)
        pool.replenish(*validate)
        pool.replenish(*validate)  # already on its way: nothing more
        first = pool._spares[export]
        assert validate not in pool._spares and pool._queued == [validate]  # waits for the first one's import
        assert pool.wait_warm(120)
        second = pool._spares[validate]
        assert first.ready and second.ready and pool._starter is None and not pool._queued
        assert second.proc.pid != first.proc.pid

        # a promote that needs a queued role does not wait for it: a fresh worker, at once
        pool.replenish(*export)  # (one is there: nothing)
        taken = pool.take(*export)
        assert taken is first and taken.taken
        pool.replenish(*export)
        pool.take(*validate).discard()
        pool.replenish(*validate)
        assert pool._queued == [validate]
        fresh = pool.take(*validate)
        assert not pool._queued and fresh is not pool._spares.get(validate)
        fresh.discard()
        taken.discard()

        # shutting down while a spare imports stops the queue too
        pool.replenish(*validate)
        pool.shutdown()
        starter = pool._starter
        if starter is not None:
            starter.join(30)
            assert not starter.is_alive()
        assert not pool._spares and not pool._queued
    finally:
        pool.shutdown()
