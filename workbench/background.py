"""Background work that must not hold up latency-sensitive work on the same CPUs (serving requests).

On a small machine, a thread or process that runs flat out (loading a model version, importing a framework)
keeps a CPU, and in-process the GIL, for milliseconds at a time; requests of the models being served wait
behind it. :func:`stepping_aside` makes the current thread pause briefly after each short slice of running
Python, which bounds those waits at the cost of the background work's wall time. :func:`lower_priority` does
the same for a whole process (promote's export and validation workers), through the OS scheduler.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def stepping_aside(run_s: float, pause_s: float, until: Callable[[], bool] | None = None) -> Iterator[None]:
    """Make the calling thread pause for ``pause_s`` after each ``run_s`` of running Python, until the block ends
    or ``until()`` (asked before each pause) is true.

    A profile hook (this thread only) looks at the clock every 64 events; it adds ~75% to the CPU time of what
    runs under it, and the pauses stretch its wall time."""
    state = [0, time.perf_counter(), True]

    def hook(frame: Any, event: str, arg: Any) -> None:
        state[0] += 1
        if state[0] & 63 or not state[2]:
            return
        if time.perf_counter() - state[1] >= run_s:
            if until is not None and until():
                state[2] = False
                return
            time.sleep(pause_s)
            state[1] = time.perf_counter()

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


def free_cpus(interval: float = 0.05, max_age: float = 5.0) -> float | None:
    """How many CPUs were idle on average over ``interval`` s (the whole machine, from /proc/stat); a figure
    measured less than ``max_age`` s ago is reused (one promote measures once, before its own workers run, and
    its spares start with that figure). None where it cannot be read (not Linux)."""
    now = time.monotonic()
    if now - _measured[0] < max_age:
        return _measured[1]

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return ticks[3] + ticks[4], sum(ticks)

    try:
        idle0, total0 = sample()
        time.sleep(interval)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    _measured[:] = [time.monotonic(), (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)]
    return _measured[1]


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


def lower_priority(resolved: str) -> None:
    """Apply :func:`resolve_priority`'s answer to this process (idle falls back to niceness 10 where the policy is
    not available or not allowed)."""
    if resolved == "idle" and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError:
            pass
    increment = int(resolved) if resolved.isdigit() else _AUTO_NICE
    if increment > 0:
        try:
            os.nice(increment)
        except OSError:
            pass


def runs_idle(pid: int) -> bool:
    """Whether process ``pid`` runs under the idle scheduling policy (see :func:`lower_priority`)."""
    try:
        return hasattr(os, "SCHED_IDLE") and os.sched_getscheduler(pid) == os.SCHED_IDLE
    except OSError:
        return False
