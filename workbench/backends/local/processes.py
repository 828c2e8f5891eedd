"""Starting and stopping process trees on this machine."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def alive(pid: int | None, marker: str | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie), and, given ``marker``, its command line contains it.

    The marker guards against a recycled pid being taken for ours.
    """
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return marker is None or any(marker in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


_PR_SET_PDEATHSIG = 1


def dying_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that makes the child get SIGKILL when the process starting it
    dies (Linux's parent-death signal), so that a job's replicas never outlive their supervisor unnoticed. None
    elsewhere. Only for processes started from the main thread: the signal fires when the starting *thread* ends.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:  # by its usual name: find_library runs ldconfig/gcc (half a second), on the way to every job's start
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


def with_env(name: str, value: str) -> list[int]:
    """Pids of this user's processes whose environment has ``name=value`` (e.g. a job's replicas and their
    children, by ``WORKBENCH_RUN_ID``)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(name) == value:
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_trees(pids: list[int], grace: float) -> None:
    """SIGTERM each process tree (process group and descendants), SIGKILL what is left after ``grace``.

    A SIGKILL fallback is needed: e.g. a TensorFlow worker waiting for a dead
    peer catches SIGTERM and never exits.
    """
    procs = [p for pid in pids for p in tree(pid)]
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    for p in procs:
        _signal(p, signal.SIGTERM)
    _gone, left = psutil.wait_procs(procs, timeout=grace)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)
    for p in left:
        _signal(p, signal.SIGKILL)
    psutil.wait_procs(left, timeout=5)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def tail_lines(path: Path):  # type: ignore[no-untyped-def]
    """Yield complete lines of ``path`` as they are written; stops at end of file (call again to go on)."""
    pos = 0
    buf = ""
    while True:
        try:
            with open(path, errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
        except FileNotFoundError:
            chunk = ""
        buf += chunk
        *lines, buf = buf.split("\n")
        yield from lines
        if not chunk:
            yield None  # nothing new now
