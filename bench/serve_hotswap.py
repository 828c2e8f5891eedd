"""Hot swap under load: failures, and the latency of a second model served beside the one being swapped.

``python -m bench.serve_hotswap [--swaps 5] [--quiet 8] [--concurrency 4] [--rate R] [--mode promote|publish|both]
[--workers N] [--own-session]``

One ``workbench serve`` process serves two LeNet-5 models: "lenet", which
gets new versions, and "steady", which does not. Both get load for the whole
run: closed loop (``--concurrency`` connections each, which keeps the
machine's CPUs saturated) or, with ``--rate``, requests sent steadily at that
rate to each model (open loop; latency counted from when each was due), from aiohttp in a process of its own
(``bench/_load.py``), while the run
alternates quiet windows (``--quiet`` seconds, no swap) with swap windows
(from the start of a swap until the server serves the new version, plus
0.5 s), ``--swaps`` times per mode. Interleaving the windows keeps drift in
the machine's load (it is shared) out of the comparison. Modes:

- promote: ``workbench.promote`` of "lenet" (export and validation run in
  worker processes on the same machine, then the server loads, warms up and
  swaps in the version);
- publish: an already exported version published into ``models/lenet/``
  (the server's share of a promote alone: the version's files are copied into
  a staging folder before the quiet window, and the swap window holds the
  publish itself, a rename and ``model.json``, then the server's load and swap).

Where Linux groups processes by session for scheduling (autogroups), the promote's workers (started from this
process's session) rank below the server's threads only when the server shares that session, as here by default;
``--own-session`` starts the server in a session of its own, as ``workbench up`` does (the notebook kernel that
promotes runs in yet another).

Printed: failed requests (goal 0), and p50/p99 of each model in quiet and swap
windows; "steady"'s p99 in swap windows / quiet windows (goal <= 1.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _load, _servers  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def _loader(targets: list[tuple[_load.Target, int]], rate: float | None, done: Any, send: Any) -> None:
    import asyncio

    send.send(asyncio.run(_load.record(targets, done.is_set, rate)))


def wait_available(url: str, model: str, version: int, timeout: float = 120) -> bool:
    """Whether the server serves ``version`` of ``model`` (TF Serving's version status) within ``timeout`` s."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v1/models/{model}/versions/{version}", timeout=10) as r:
                states = [s["state"] for s in json.load(r).get("model_version_status", [])]
        except OSError:
            states = []
        if "AVAILABLE" in states:
            return True
        if "END" in states:
            return False
        time.sleep(0.02)
    return False


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--swaps", type=int, default=5, help="swaps per mode")
    p.add_argument("--quiet", type=float, default=8.0, help="seconds of each window without a swap")
    p.add_argument("--concurrency", type=int, default=4, help="connections per model")
    p.add_argument("--mode", choices=["promote", "publish", "both"], default="both")
    p.add_argument("--rate", type=float, default=0, help="open loop: requests/s to each model (0: closed loop)")
    p.add_argument("--workers", help="the server's worker processes (default: its own default)")
    p.add_argument(
        "--own-session",
        action="store_true",
        help="start the server in a session of its own, as `workbench up` does (default: this one's, with the promotes)",
    )
    a, _ = p.parse_known_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="serve-hotswap-"))
    ws = tmp / "workspace"
    ws.mkdir(parents=True)
    os.environ["WORKBENCH_WORKSPACE"] = str(ws)
    import workbench as wb
    from workbench.registry import worker
    from workbench.registry.store import ModelStore
    from workbench.workspace import Workspace

    sys.path.insert(0, str(ROOT / "examples" / "lenet"))
    from model import build_lenet

    ckpt = tmp / "ckpt-0001.keras"
    build_lenet().save(ckpt)
    for name in ("lenet", "steady"):
        wb.promote(None, model=name, checkpoint=ckpt, framework="tensorflow", wait=0)
    server = _servers.start_workbench(
        "new",
        Workspace.current().root,
        tmp / "server.log",
        ["lenet", "steady"],
        workers=a.workers,
        grpc=False,
        own_session=a.own_session,
    )
    url = server.rest
    os.environ["WORKBENCH_SERVER_URL"] = url
    x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    targets = [(_load.Target("tfs-rest", url, m, "image", x), a.concurrency) for m in ("lenet", "steady")]
    store = ModelStore(Workspace.current(), "lenet")
    entry = store.read()["versions"]["1"]

    def promote() -> None:
        wb.promote(None, model="lenet", checkpoint=ckpt, framework="tensorflow")

    staged: list[Path] = []

    def stage() -> None:  # the export a publish follows (a hidden folder: the server does not look at it)
        staging = store.staging_dir()
        shutil.copytree(store.dir / "1", staging, dirs_exist_ok=True)
        staged.append(staging)

    def publish() -> None:
        v = store.publish(staged.pop(), entry)
        wait_available(url, "lenet", v)  # the server's own polling finds it (no reload call: a server's internals)

    modes = {"promote": promote, "publish": publish}
    if a.mode != "both":
        modes = {a.mode: modes[a.mode]}
    windows: dict[str, list[tuple[float, float]]] = {"quiet": [], **{m: [] for m in modes}}
    swap_seconds: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for name in ("lenet", "steady"):
            assert wait_available(url, name, 1, timeout=300), f"{name} was not served; see {tmp / 'server.log'}"
        warm_until = time.perf_counter() + 2.0
        asyncio.run(_load.record(targets, lambda: time.perf_counter() > warm_until, a.rate or None))  # warm-up
        # The load comes from a process of its own, as clients do: a thread here would share this process's GIL
        # with promote() and count its pauses as server latency (perf_counter is the same clock in both).
        ctx = multiprocessing.get_context("spawn")
        done = ctx.Event()
        receive, send = ctx.Pipe(duplex=False)
        loader = ctx.Process(target=_loader, args=(targets, a.rate or None, done, send), daemon=True)
        loader.start()
        time.sleep(1.0)  # the child's start-up (imports) stays out of the first window
        for mode, action in modes.items():
            for _ in range(a.swaps):
                if mode == "publish":
                    stage()
                worker.POOL.wait_warm()
                q0 = time.perf_counter()
                time.sleep(a.quiet)
                windows["quiet"].append((q0, time.perf_counter()))
                s0 = time.perf_counter()
                action()
                swap_seconds[mode].append(time.perf_counter() - s0)
                time.sleep(0.5)
                windows[mode].append((s0, time.perf_counter()))
        done.set()
        results: list[_load.Samples] = receive.recv()
        loader.join(30)
        versions = len(store.read()["versions"])
    finally:
        server.stop()

    swapped, steady = results
    load = (
        f"{a.rate:.0f} req/s each (open loop, up to {a.concurrency} connections)"
        if a.rate
        else f"{a.concurrency} connections each (closed loop)"
    )
    session = "a session of its own" if a.own_session else "the promoting process's session"
    print(f"\ntwo LeNet-5 models in one server ({session}), {load}, {os.cpu_count()} CPUs (shared)")
    print(f"{'window':<10} {'seconds':>7}   {'lenet p50':>9} {'p99':>7}   {'steady p50':>10} {'p99':>7}   swap s")
    for kind, spans in windows.items():
        total = sum(b - a_ for a_, b in spans)
        lat_s, lat_t = swapped.within(spans), steady.within(spans)
        swaps = " ".join(f"{s:.1f}" for s in swap_seconds.get(kind, []))
        print(
            f"{kind:<10} {total:>7.0f}   {pct(lat_s, 50):>9.2f} {pct(lat_s, 99):>7.2f}   {pct(lat_t, 50):>10.2f} {pct(lat_t, 99):>7.2f}   {swaps}"
        )
    base = pct(steady.within(windows["quiet"]), 99)
    for mode in modes:
        print(
            f"steady p99 in {mode} windows / quiet windows: {pct(steady.within(windows[mode]), 99) / base:.2f}x (goal <= 1.5x)"
        )
    print(
        f"failed requests: lenet {swapped.errors}, steady {steady.errors} (goal 0); "
        f"{swapped.throughput + steady.throughput:.0f} req/s in all; lenet versions published: {versions}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
