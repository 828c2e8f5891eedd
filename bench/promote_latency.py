"""Promote-to-live latency: from the ``promote`` call until a predict on the new version answers.

``python -m bench.promote_latency [--rounds 5] [--gap 5] [--epochs 2] [--limit 2000]``

Trains LeNet-5 as a small job, starts ``workbench serve`` on the workspace,
then promotes its checkpoints ``--rounds`` times (plus a first, cold one),
each time sending predicts until one is answered by the new version.
Printed per promote: the total, and its parts: export (in a worker
process), validation gate (load + sample predict in a fresh process), and
publish-to-live (rename, the server's load and warm-up, first predict).

The first promote of a session is cold: its worker processes import
TensorFlow. Later ones use the idle workers promote keeps warm: each waits
until they have imported it (a user's think time between promotes is longer),
plus ``--gap`` seconds.
Goal: <= 1 s warm for LeNet (issue 16).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _servers  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--gap", type=float, default=5.0, help="seconds between promotes, once the idle workers are ready")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit", type=int, default=2000)
    a, _ = p.parse_known_args(argv)
    ws = Path(tempfile.mkdtemp(prefix="promote-latency-")) / "workspace"
    os.environ["WORKBENCH_WORKSPACE"] = str(ws)
    import numpy as np

    import workbench as wb
    from workbench.registry import worker

    job = wb.submit(
        str(ROOT / "examples" / "lenet" / "train.py"),
        args=["--epochs", str(a.epochs), "--limit", str(a.limit)],
        name="lenet",
    )
    ws.mkdir(parents=True, exist_ok=True)
    server = _servers.start_workbench("new", ws, ws.parent / "server.log", [], grpc=False)
    os.environ["WORKBENCH_SERVER_URL"] = server.rest
    try:
        assert job.wait(timeout=900) == "succeeded", job.logs()
        steps = [c.step for c in job.checkpoints()]
        x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
        rows = []
        for i in range(a.rounds + 1):
            if i:
                time.sleep(a.gap)
                worker.POOL.wait_warm()  # a warm promote: its workers have imported TensorFlow
            t0 = time.perf_counter()
            v = wb.promote(job, model="lenet", checkpoint=steps[i % len(steps)])
            deadline = t0 + 120
            while True:
                try:
                    if wb.predict("lenet", x).version == v.version:
                        break
                except wb.ServingError:
                    if time.perf_counter() > deadline or server.proc.poll() is not None:
                        raise
                time.sleep(0.005)
            total = time.perf_counter() - t0
            rest = total - v.timings["export_s"] - v.timings["validate_s"]
            rows.append((total, v.timings["export_s"], v.timings["validate_s"], rest))
            kind = "cold" if i == 0 else "warm"
            print(
                f"promote {i + 1} ({kind}): {total:.2f} s to live  (export {v.timings['export_s']:.2f} s, "
                f"validation {v.timings['validate_s']:.2f} s, publish-to-live {rest:.2f} s)",
                flush=True,
            )
        warm = rows[1:]
        if warm:
            med = [statistics.median(r[k] for r in warm) for k in range(4)]
            print(
                f"\nwarm promote-to-live, median of {len(warm)}: {med[0]:.2f} s (max {max(r[0] for r in warm):.2f} s); "
                f"export {med[1]:.2f} s, validation {med[2]:.2f} s, publish-to-live {med[3]:.2f} s; goal <= 1 s"
            )
        print(f"cold (first) promote-to-live: {rows[0][0]:.2f} s; {os.cpu_count()} CPUs (shared)")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
