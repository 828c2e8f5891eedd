"""Hot swap under load: failures, and the latency of a second model served beside the one being swapped.

``python -m bench.serve_hotswap [--swaps 5] [--gap 6] [--concurrency 4]``

One ``workbench serve`` process serves two LeNet-5 models: "lenet", which
gets new versions, and "steady", which does not. Both get steady closed-loop
load (``--concurrency`` connections each) in three phases of equal length:

1. baseline: no swaps;
2. promotes: ``--swaps`` successive ``workbench.promote`` calls of "lenet",
   each waiting until the server serves the new version
   (export and validation run in worker processes on the same machine, then
   the server loads, warms up and swaps in each version);
3. swaps only: the same number of already exported versions published into
   ``models/lenet/`` (the server's share of a promote alone).

A phase lasts ``--swaps`` x ``--gap`` seconds, or until its last swap is
live. Printed per phase: failed requests (goal 0), and p50/p99 of each model; the
ratio of "steady"'s p99 in phases 2 and 3 to phase 1 (goal <= 1.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.backends.local.processes import free_ports  # noqa: E402
from workbench.serving import loadgen  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--swaps", type=int, default=5)
    p.add_argument("--gap", type=float, default=6.0, help="seconds between swaps (a phase lasts swaps x gap)")
    p.add_argument("--concurrency", type=int, default=4, help="connections per model")
    a, _ = p.parse_known_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="serve-hotswap-"))
    ws = tmp / "workspace"
    os.environ["WORKBENCH_WORKSPACE"] = str(ws)
    import workbench as wb
    from workbench.registry.store import ModelStore
    from workbench.workspace import Workspace

    sys.path.insert(0, str(ROOT / "examples" / "lenet"))
    from model import build_lenet

    ckpt = tmp / "ckpt-0001.keras"
    build_lenet().save(ckpt)
    for name in ("lenet", "steady"):
        wb.promote(None, model=name, checkpoint=ckpt, framework="tensorflow", wait=0)
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    os.environ["WORKBENCH_SERVER_URL"] = url
    log = open(tmp / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "workbench", "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    body = json.dumps({"instances": x.tolist()}).encode()
    targets = [(f"{url}/v1/models/{m}:predict", body, a.concurrency) for m in ("lenet", "steady")]
    duration = a.swaps * a.gap
    store = ModelStore(Workspace.current(), "lenet")
    entry = store.read()["versions"]["1"]

    def promote() -> None:
        wb.promote(None, model="lenet", checkpoint=ckpt, framework="tensorflow")

    def publish() -> None:
        staging = store.staging_dir()
        shutil.copytree(store.dir / "1", staging, dirs_exist_ok=True)
        v = store.publish(staging, entry)
        client.notify(url)
        client.wait_available(url, "lenet", v)

    try:
        from workbench.serving import client

        for name in ("lenet", "steady"):
            assert client.wait_available(url, name, 1, timeout=300), f"{name} was not served; see {tmp / 'server.log'}"
        loadgen.run_many(targets, 2.0)  # warm-up
        phases = {}
        for phase, action in (("baseline", None), ("promotes", promote), ("swaps only", publish)):
            results: list[loadgen.Result] = []
            done = threading.Event()
            loader = threading.Thread(target=lambda out=results, d=done: out.extend(loadgen.run_many(targets, duration, d.is_set)))
            loader.start()
            t0 = time.monotonic()
            swap_times = []
            for i in range(a.swaps if action else 0):
                time.sleep(max(0.0, t0 + i * a.gap + 0.5 - time.monotonic()))
                s0 = time.monotonic()
                action()
                swap_times.append(time.monotonic() - s0)
            done.set()
            loader.join()
            phases[phase] = (results, swap_times)
        versions = len(store.read()["versions"])
    finally:
        server.terminate()
        server.wait(30)
        log.close()

    print(
        f"\ntwo LeNet-5 models in one server, {a.concurrency} connections each, {duration:.0f} s per phase, {os.cpu_count()} CPUs (shared)"
    )
    print(
        f"{'phase':<12} {'lenet req/s':>11} {'p50':>7} {'p99':>7} {'fail':>5}   {'steady req/s':>12} {'p50':>7} {'p99':>7} {'fail':>5}   swap s"
    )
    for phase, (results, swap_times) in phases.items():
        swapped, steady = results
        print(
            f"{phase:<12} {swapped.throughput:>11.0f} {swapped.percentile(50):>7.2f} {swapped.percentile(99):>7.2f} {swapped.errors:>5}"
            f"   {steady.throughput:>12.0f} {steady.percentile(50):>7.2f} {steady.percentile(99):>7.2f} {steady.errors:>5}"
            f"   {' '.join(f'{s:.1f}' for s in swap_times)}"
        )
    base = phases["baseline"][0][1].percentile(99)
    for phase in ("promotes", "swaps only"):
        print(f"steady p99 during {phase} / baseline: {phases[phase][0][1].percentile(99) / base:.2f}x (goal <= 1.5x)")
    failures = sum(r.errors for results, _ in phases.values() for r in results)
    print(f"failed requests in all phases: {failures} (goal 0); lenet versions published: {versions}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
