"""``workbench up`` is one per workspace, ``down`` at any moment of its start-up leaves no process, state files
are private. Fast: the services here are tiny HTTP servers registered through :func:`workbench.services.register`
(JupyterLab and TensorBoard are in test_services.py)."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil

from workbench.backends.local.processes import free_ports, wait_for, with_env

# A service that takes `delay` s before it answers, so that start-up lasts long enough to be interrupted.
SLOW_HTTP = "import sys, time, http.server; time.sleep(float(sys.argv[2])); " + (  # the service's slow start
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()"
)

UP = textwrap.dedent(
    """
    import os, sys, time, pathlib
    from workbench import cli, services
    gate, mark, ports = pathlib.Path(sys.argv[1]), sys.argv[2], [int(p) for p in sys.argv[3:]]
    os.environ["UP_TEST_MARK"] = mark  # inherited by the services: the test finds every process of this `up`
    services.SERVICES.clear()
    for i, port in enumerate(ports):
        services.register(services.ServiceDef(
            f"web{i}", port, lambda ws, o, p, i=i: [sys.executable, "-c", __SLOW__, str(p), str(0.4 * i)],
            lambda o: "/", lambda o, p: f"http://{o.host}:{p}/"))
    while not gate.exists():
        time.sleep(0.001)
    sys.exit(cli.main(["up"]))
    """
).replace("__SLOW__", repr(SLOW_HTTP))


def start_up(workspace: Path, tmp_path: Path, gate: Path, mark: str, log: str) -> subprocess.Popen[str]:
    with open(tmp_path / log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", UP, str(gate), mark, *map(str, free_ports(3))],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "WORKBENCH_WORKSPACE": str(workspace)},
        )


def marked(mark: str) -> list[int]:
    return [p for p in with_env("UP_TEST_MARK", mark) if psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def down() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workbench", "down"], capture_output=True, text=True, timeout=60)


def test_two_concurrent_ups_exactly_one_runs(workspace, tmp_path):
    for round in range(3):
        gate, mark = tmp_path / f"gate{round}", uuid.uuid4().hex
        ups = [start_up(workspace, tmp_path, gate, mark, f"up{round}-{i}.log") for i in range(2)]
        gate.write_text("go")  # both released at the same moment
        logs = lambda r=round: [(tmp_path / f"up{r}-{i}.log").read_text() for i in range(2)]  # noqa: E731
        assert wait_for(lambda u=ups: sum(p.poll() is not None for p in u) == 1, 30), logs()
        assert wait_for(lambda lg=logs: any("Ctrl-C" in text for text in lg()), 30), logs()
        loser = next(i for i, p in enumerate(ups) if p.poll() is not None)
        assert ups[loser].returncode == 2 and "already runs" in logs()[loser]
        winner = ups[1 - loser]
        assert winner.poll() is None
        state = workspace / "state"
        for name in ("services.json", "up.lock"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (state / "logs").iterdir())
        assert "stopped" in down().stdout
        assert winner.wait(30) == 0
        assert wait_for(lambda m=mark: not marked(m), 10), marked(mark)


def test_down_at_random_moments_of_start_up_leaves_no_process(workspace, tmp_path):
    rng = random.Random(18)
    gate = tmp_path / "gate"
    gate.write_text("go")
    services_json = workspace / "state" / "services.json"
    for attempt in range(5):
        mark = uuid.uuid4().hex
        up = start_up(workspace, tmp_path, gate, mark, f"up{attempt}.log")
        # from the moment `up` holds the workspace (it records itself before it starts anything)...
        assert wait_for(services_json.exists, 30), (tmp_path / f"up{attempt}.log").read_text()
        # ...down at a random moment of its start-up (the last service answers ~0.8 s after it starts)
        time.sleep(rng.uniform(0, 1.5))  # the moment of the fault, not a wait for something
        out = down()
        assert out.returncode == 0 and "stopped" in out.stdout, out
        up.wait(30)
        assert wait_for(lambda m=mark: not marked(m), 10), f"left running: {marked(mark)}"
        assert not services_json.exists()
