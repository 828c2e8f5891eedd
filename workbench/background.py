"""Background work that must not hold up latency-sensitive work on the same CPUs (serving requests).

On a small machine, a thread or process that runs flat out (loading a model version, importing a framework)
keeps a CPU, and in-process the GIL, for milliseconds at a time; requests of the models being served wait
behind it. :func:`stepping_aside` makes the current thread pause briefly after each short slice of running
Python, which bounds those waits at the cost of the background work's wall time.
"""

from __future__ import annotations

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
