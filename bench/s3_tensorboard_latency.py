"""How long a scalar a job writes takes to show in TensorBoard on an s3:// workspace (goal: <= 10 s).

``python -m bench.s3_tensorboard_latency [--steps 8] [--every 1.5] [--sync 2]``

Starts moto's S3 server (``.venv-moto``: the stand-in for MinIO, made by
scripts/setup-k8s.sh) on 127.0.0.1, a bucket workspace, and TensorBoard the way
``workbench up`` runs it for that workspace (``.venv-tensorboard``, no
TensorFlow, made by scripts/setup-tensorboard.sh). Then submits a job whose
replica writes one scalar every ``--every`` seconds to its local
``WORKBENCH_LOG_DIR`` (flushed at once) and prints when; the launcher uploads
every ``--sync`` s (``WORKBENCH_SYNC_INTERVAL``). TensorBoard's HTTP API is
polled every 0.1 s. Printed: for each step, seconds from the write to the first
API answer that holds it; their median and max against the goal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 10.0
WRITER = """
import os, sys, time
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

steps, every = int(sys.argv[1]), float(sys.argv[2])
writer = EventFileWriter(os.path.join(os.environ["WORKBENCH_LOG_DIR"], "train"))
for step in range(1, steps + 1):
    value = Summary.Value(tag="bench_loss", simple_value=1.0 / step)
    writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=[value])))
    writer.flush()
    print(f"wrote step {step} at {time.time():.3f}", flush=True)
    time.sleep(every)
writer.close()
"""


def get(url: str) -> object | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def wait(condition, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--every", type=float, default=1.5)
    p.add_argument("--sync", type=float, default=2.0)
    args = p.parse_args(argv)
    from workbench.backends.local.processes import free_ports

    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    s3_port, tb_port = free_ports(2)
    endpoint = f"http://127.0.0.1:{s3_port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "minio-stand-in",
        "AWS_SECRET_ACCESS_KEY": "minio-stand-in-secret",
        "WORKBENCH_WORKSPACE": "s3://bench/ws",
        "WORKBENCH_CACHE_DIR": str(tmp / "cache"),
        "WORKBENCH_SYNC_INTERVAL": str(args.sync),
    }
    os.environ.update(env)
    procs = []
    try:
        moto = ROOT / ".venv-moto" / "bin" / "moto_server"
        procs.append(subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(s3_port)], stderr=subprocess.DEVNULL))
        assert wait(lambda: get(endpoint) is not None or _answers(endpoint), 30), "moto did not start"
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT"), timeout=10).close()

        import workbench as wb
        from workbench.services import SERVICES, TB_PREFIX, Options, _s3_env
        from workbench.workspace import Workspace

        ws = Workspace.current().ensure()
        command = SERVICES["tensorboard"].command(ws, Options(), tb_port)
        print(f"TensorBoard: {' '.join(command)}", flush=True)
        log = open(tmp / "tensorboard.log", "wb")
        procs.append(subprocess.Popen(command, env={**os.environ, **_s3_env()}, stdout=log, stderr=log))
        base = f"http://127.0.0.1:{tb_port}/{TB_PREFIX}"  # workbench up serves it under the prefix JupyterLab proxies
        assert wait(lambda: get(f"{base}/data/runs") is not None, 60), "TensorBoard did not answer"

        (tmp / "code").mkdir()
        script = tmp / "code" / "writer.py"
        script.write_text(textwrap.dedent(WRITER))
        job = wb.submit(str(script), args=[str(args.steps), str(args.every)], framework="none", name="tb-latency")
        url = f"{base}/data/plugin/scalars/scalars?run={job.id}/tb/train&tag=bench_loss"
        seen: dict[int, float] = {}
        deadline = time.monotonic() + args.steps * args.every + 60
        while len(seen) < args.steps and time.monotonic() < deadline:
            points = get(url)
            now = time.time()
            if isinstance(points, list):
                for _, step, _ in points:
                    seen.setdefault(int(step), now)
            time.sleep(0.1)
        job.wait(timeout=60)
        written = {int(s): float(t) for s, t in re.findall(r"wrote step (\d+) at ([0-9.]+)", job.logs() or "")}
        delays = [seen[s] - written[s] for s in sorted(written) if s in seen]
        for s in sorted(written):
            shown = f"{seen[s] - written[s]:.2f} s" if s in seen else "never"
            print(f"step {s}: visible in TensorBoard after {shown}")
        if len(delays) < len(written):
            print(f"FAIL: {len(written) - len(delays)} step(s) never showed up")
            return 1
        worst = max(delays)
        verdict = "OK" if worst <= GOAL_S else "OVER GOAL"
        print(
            f"scalar write -> TensorBoard on s3:// (sync every {args.sync} s): median {statistics.median(delays):.2f} s, "
            f"max {worst:.2f} s (goal <= {GOAL_S:.0f} s): {verdict}",
            flush=True,
        )
        return 0 if worst <= GOAL_S else 1
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(20)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
