"""Background work that must not hold up latency-sensitive work on the same CPUs (serving requests).

On a small machine, a thread or process that runs flat out (loading a model version, importing a framework)
keeps a CPU, and in-process the GIL, for milliseconds at a time; requests of the models being served wait
behind it. :func:`stepping_aside` makes the current thread pause briefly after each short slice of running
Python, which bounds those waits at the cost of the background work's wall time. :func:`lower_priority` does
the same for a whole process (promote's export and validation workers), through the OS scheduler.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("workbench")

T = TypeVar("T")


@contextmanager
def stepping_aside(run_s: float, pause_s: float, until: Callable[[], bool] | None = None) -> Iterator[None]:
    """Make the calling thread pause for ``pause_s`` after each ``run_s`` of running Python, until the block ends
    or ``until()`` (asked before each pause) is true.

    A profile hook (this thread only) looks at the clock every 64 events; it adds ~75% to the CPU time of what
    runs under it, and the pauses stretch its wall time."""
    events, since, active = 0, time.perf_counter(), True

    def hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal events, since, active
        events += 1
        if events & 63 or not active:
            return
        if time.perf_counter() - since >= run_s:
            if until is not None and until():
                active = False
                return
            time.sleep(pause_s)
            since = time.perf_counter()

    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        yield
    finally:
        sys.setprofile(previous)


# ---------------------------------------------------------------- process priority

#: ``auto`` chooses Linux's idle scheduling policy only while at least this many CPUs are free.
IDLE_CPUS_NEEDED = 0.5
_AUTO_NICE = 10
_measured: list[float] = [float("-inf"), 0.0]  # when, spare CPUs (see free_cpus)


def free_cpus(interval: float = 0.05, max_age: float = 5.0, quota: CPUQuota | None | bool = True) -> float | None:
    """How many CPUs were idle on average over ``interval`` s: the whole machine's, from /proc/stat, but no more
    than this process's cgroup CPU quota leaves unused (a pod's CPU limit), from ``quota`` (True: look it up,
    :func:`cpu_quota`). A figure measured less than ``max_age`` s ago is reused (one promote measures once,
    before its own workers run, and its spares start with that figure). None where it cannot be read."""
    now = time.monotonic()
    if now - _measured[0] < max_age:
        return _measured[1]
    if quota is True:
        quota = cpu_quota()

    def sample() -> tuple[int, int, float]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return ticks[3] + ticks[4], sum(ticks), quota.used() if quota else 0.0

    try:
        idle0, total0, used0 = sample()
        t0 = time.monotonic()
        time.sleep(interval)
        idle1, total1, used1 = sample()
        elapsed = time.monotonic() - t0
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    free = (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)
    if quota:
        free = max(0.0, min(free, quota.cpus - (used1 - used0) / elapsed))
    _measured[:] = [time.monotonic(), free]
    return free


@dataclass(frozen=True)
class CPUQuota:
    """A cgroup's CPU limit (``cpus``, e.g. a pod's ``limits.cpu``) and the file counting its CPU time."""

    cpus: float
    usage: Path  # cgroup v2 cpu.stat (usage_usec), or v1 cpuacct.usage (ns)

    def used(self) -> float:
        """CPU seconds the cgroup has used."""
        text = self.usage.read_text()
        if self.usage.name == "cpu.stat":
            return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("usage_usec")) / 1e6
        return int(text) / 1e9


def cpu_quota(root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> CPUQuota | None:
    """The tightest CPU quota set on this process's cgroup or an ancestor (cgroup v2, or v1's cpu and cpuacct
    controllers), or None where none is set or cgroups cannot be read. Inside a container the cgroup's own path
    may not exist below ``root`` (it is the root there): then the mount itself is the cgroup."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        return None
    tightest: CPUQuota | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            limit_dir, usage_dir, v2 = root, root, True
        elif "cpu" in controllers.split(","):
            limit_dir, v2 = root / controllers, False
            usage_dir = limit_dir if "cpuacct" in controllers.split(",") else root / "cpuacct"
        else:
            continue
        own_dir = limit_dir / path.lstrip("/")
        rel = own_dir.relative_to(limit_dir) if own_dir.is_dir() else Path(".")
        for folder in [rel, *rel.parents]:  # its own cgroup, then each ancestor up to the mount
            cpus = _quota(limit_dir / folder, v2)
            usage = usage_dir / folder / ("cpu.stat" if v2 else "cpuacct.usage")
            if cpus is not None and (tightest is None or cpus < tightest.cpus) and usage.exists():
                tightest = CPUQuota(cpus, usage)
    return tightest


def _quota(folder: Path, v2: bool) -> float | None:
    try:
        if v2:
            limit, period = (folder / "cpu.max").read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        limit = (folder / "cpu.cfs_quota_us").read_text().strip()
        return None if int(limit) <= 0 else int(limit) / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def check_priority(policy: str) -> str:
    """``policy`` normalized, or ValueError saying what is accepted (see :func:`resolve_priority`)."""
    policy = policy.strip().lower()
    if policy in ("auto", "idle") or policy.isdigit():
        return policy
    raise ValueError(f"a promote worker's priority must be 'auto', 'idle' or a niceness 0-19, not {policy!r}")


def resolve_priority(policy: str) -> str:
    """What ``policy`` (``WORKBENCH_PROMOTE_PRIORITY``) means now: ``"idle"`` or a niceness to add. ``"auto"`` is
    idle while at least :data:`IDLE_CPUS_NEEDED` CPUs are free, niceness 10 otherwise.

    Niceness alone still lets a busy process delay a waking request handler by up to a scheduler slice (~1-3 ms;
    bursts of 10-100 ms measured under serving load), the idle policy (Linux's SCHED_IDLE: run only on a CPU that
    nothing else wants) does not; but on saturated CPUs an idle-policy process gets almost no time, and cannot
    raise itself back without privileges: hence ``auto``, decided when the process starts."""
    policy = check_priority(policy)
    if policy == "auto":
        free = free_cpus()
        return "idle" if free is not None and free >= IDLE_CPUS_NEEDED else str(_AUTO_NICE)
    return policy


def lower_priority(resolved: str, pid: int = 0) -> None:
    """Apply :func:`resolve_priority`'s answer to process ``pid`` (0: the calling thread; on Linux policy and
    niceness belong to a thread, and threads started later inherit them). Idle falls back to niceness 10 where the
    policy is not available or not allowed."""
    if resolved == "idle" and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError:
            pass
    increment = int(resolved) if resolved.isdigit() else _AUTO_NICE
    if increment > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, pid) + increment))
        except OSError:
            pass


_TASKS = "/proc/self/task"  # this process's threads (Linux)
_threads_started_low = False  # see on_low_priority_thread


def on_low_priority_thread(fn: Callable[[], T], policy: str = "auto") -> T:
    """Run ``fn`` on a thread of its own that runs below normal priority (:func:`resolve_priority` of ``policy``),
    wait for it, and return what it returned (or raise what it raised).

    On Linux scheduling policy and niceness belong to a thread, so this leaves the calling thread as it was,
    where a process cannot raise its own priority back once lowered. Threads and processes that ``fn`` starts
    inherit the lowered priority, though: ``fn`` must not start any that outlive it."""
    global _threads_started_low
    if _threads_started_low or not os.path.isdir(_TASKS):
        return fn()
    resolved = resolve_priority(policy)
    out: list[Any] = []

    def run() -> None:
        try:
            lower_priority(resolved)
            out.append((True, fn()))
        except BaseException as e:  # noqa: BLE001 - raised again on the calling thread
            out.append((False, e))

    before = set(os.listdir(_TASKS))
    thread = threading.Thread(target=run, name="low-priority", daemon=True)
    thread.start()
    thread.join()
    started = set(os.listdir(_TASKS)) - before - {str(thread.native_id)}
    if started:
        _threads_started_low = True
        log.warning(
            "%d threads started below normal priority (by %s) and keep it; running such work at normal priority "
            "from now on",
            len(started),
            getattr(fn, "__qualname__", fn),
        )
    ok, value = out[0]
    if not ok:
        raise value
    return value


def runs_idle(pid: int) -> bool:
    """Whether process ``pid`` runs under the idle scheduling policy (see :func:`lower_priority`)."""
    try:
        return hasattr(os, "SCHED_IDLE") and os.sched_getscheduler(pid) == os.SCHED_IDLE
    except OSError:
        return False
