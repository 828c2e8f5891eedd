"""A real PostgreSQL server for tests: Debian's ``postgresql`` package (installed by scripts/setup-postgres.sh),
one throw-away cluster per use on 127.0.0.1 and a port chosen at run time.

PostgreSQL refuses to run as root, and CI runs as root: there the cluster belongs to the ``postgres`` user the
package creates, in a folder of its own under the system's temp dir (pytest's tmp_path is root's alone).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from workbench.backends.local.processes import free_ports


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class PostgresServer:
    """``start()`` (first: initdb), ``stop()`` (fast shutdown: sessions are cut, as in an outage), ``destroy()``."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            pytest.fail("PostgreSQL is not installed: run scripts/setup-postgres.sh (Debian's postgresql package)")
        self.bindir = bindir
        self.port = free_ports(1)[0]
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="workbench-pg-"))
        if self.user:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid} if self.user else {}
        for attempt in range(2):  # a fork from a process that has loaded grpcio can fail in the child: once more
            done = subprocess.run(
                [str(self.bindir / tool), *args], capture_output=True, text=True, cwd=self.root, **kwargs, timeout=120
            )
            if done.returncode == 0 or (args[:1] == ("stop",) and not (self.data / "postmaster.pid").exists()):
                return  # (a stop whose first try did stop the server fails the second: it is stopped)
            if attempt == 0:
                time.sleep(0.5)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise AssertionError(f"{tool} {' '.join(args)} failed:\n{done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options)

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
