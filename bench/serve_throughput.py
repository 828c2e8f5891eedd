"""Serving throughput and latency, side by side in one run: workbench's server, MLServer, the in-process limit and
the old C server.

``python -m bench.serve_throughput [--duration 5] [--levels 1,8,64] [--resnet-levels 8,64] [--rounds 1]
[--client-procs 2] [--workers N] [--skip mlserver,old,resnet20] [--frameworks pytorch,mxnet]``

Set-up: ``bash scripts/bench-setup.sh`` (wrk, the stock gRPC clients, ``.venv-mlserver``, the old server's
checkout); what is missing is skipped, with the reason printed.

Models (``bench/_models.py``), each published by ``workbench.promote`` into one workspace: LeNet-5, one 28x28
image per request (HTTP and protocol overhead is everything), and ResNet-20, one 32x32x3 image per request
(compute-bound).

Targets, at each concurrency level ``c`` (closed loop, ``c`` requests in flight):

- in-process (batched): the limit. The version's runtime called back to back on batches of ``c`` rows (what
  perfect batching of ``c`` concurrent requests gives), in a process of its own, with TensorFlow's default threads
  and with one intra-op thread; the limit is the faster of the two at each level;
- new: ``workbench serve`` of this checkout over TF Serving REST and KServe V2 REST, driven by ``wrk`` (the
  fastest client, so that the figure is the server's) and by aiohttp processes; over TF Serving's
  ``PredictionService`` and KServe V2's ``GRPCInferenceService`` on ``--grpc-port``, driven by grpcio processes
  with the stock stubs. The aiohttp and grpcio rows come from the same client processes (``--client-procs``,
  each an asyncio loop), so "gRPC vs REST" compares like with like (``bench/_load.py``);
- MLServer 1.7 (``.venv-mlserver``), LeNet only, V2 REST (wrk) and V2 gRPC, through a custom runtime over the
  same SavedModel (``bench/_mlserver_runtime.py``) with its adaptive batching (max 64 rows / 2 ms);
- old C: ``workbench serve`` of ``5a4e060`` (the hand-written C front end; ``bench/out/old-server``), LeNet,
  REST only (it has no gRPC), wrk: what the rewrite costs.

Every target is measured once per level per round, one after the other (all servers up, idle while another is
measured), so drift in a shared machine's load hits them alike; with ``--rounds`` > 1 the table shows each
one's median round. Goals printed beside the figures: new >= 5x MLServer at every LeNet level; ResNet-20 >= 0.85x
the in-process limit over REST and gRPC; gRPC >= REST at c=8 and 64. Figures go to
``bench/out/serve_throughput.json``. ``--frameworks pytorch,mxnet`` adds PyTorch's and MXNet's LeNet
(``bench/_frameworks.py``): each one's in-process limit, and one server serving them beside TensorFlow's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _load, _models, _servers  # noqa: E402

Rows = dict[str, dict[int, dict[str, Any]]]
IN_PROCESS = "in-process (batched)"
LIMITS = {"in-process, TF default threads": None, "in-process, 1 intra-op thread": 1}
MLSERVER_GOAL, RESNET_GOAL = 5.0, 0.85


def targets(server: _servers.Server, model: str, x: np.ndarray, clients: _load.Clients) -> dict[str, Any]:
    """Row name -> (driver, target) for one server and model; a driver "wrk" or "python", or a reason it cannot
    be measured here (printed, and the row left out)."""
    name = _models.INPUTS[model][0]
    out: dict[str, Any] = {}
    for proto, label in (("tfs-rest", "TFS REST"), ("v2-rest", "V2 REST"), ("v2-rest-binary", "V2 REST binary")):
        if (server.name == "MLServer" and proto != "v2-rest") or (server.name != "new" and proto == "v2-rest-binary"):
            continue  # MLServer speaks V2 only; the binary rows are the new server's alone
        t = _load.Target(proto, server.rest, model, name, x)
        out[f"{server.name} {label} (wrk)"] = ("wrk", t) if _load.wrk_available() else "wrk is not installed"
        if server.name == "new":
            out[f"{server.name} {label} (aiohttp)"] = ("python", t)
    for proto, label in (("tfs-grpc", "TFS gRPC"), ("v2-grpc", "V2 gRPC")):
        if server.name == "MLServer" and proto == "tfs-grpc":
            continue
        if server.name == "old C":
            continue  # no gRPC
        row = f"{server.name} {label} (grpcio)"
        if server.grpc is None:
            out[row] = f"the {server.name} server serves no gRPC (see above)"
        else:
            out[row] = clients.missing(proto) or ("python", _load.Target(proto, server.grpc, model, name, x))
    return out


def measure(
    model: str,
    servers: list[_servers.Server],
    limits: dict[str, _models.Limit],
    clients: _load.Clients,
    levels: list[int],
    duration: float,
    rounds: int,
) -> Rows:
    """Every target at every level, ``rounds`` times in turn; each target's median round."""
    x = np.random.default_rng(0).random((1, *_models.INPUTS[model][1]), dtype=np.float32)
    plan: dict[str, Any] = {}
    for server in servers:
        plan.update(targets(server, model, x, clients))
    for row, what in plan.items():
        if isinstance(what, str):
            print(f"{model}: {row} skipped: {what}", flush=True)
    plan = {row: what for row, what in plan.items() if not isinstance(what, str)}
    samples: dict[str, dict[int, list[dict[str, Any]]]] = {row: {c: [] for c in levels} for row in [*limits, *plan]}
    for r in range(rounds):
        for c in levels:
            for row, limit in limits.items():
                samples[row][c].append(limit.level(c, duration))
                progress(f"{model} round {r + 1} c={c}: {row}", samples[row][c][-1])
            for row, (driver, target) in plan.items():
                got = _load.wrk(target, c, duration) if driver == "wrk" else clients.run(target, c, duration)
                samples[row][c].append(got)
                progress(f"{model} round {r + 1} c={c}: {row}", got)
    rows = {
        row: {c: sorted(s, key=lambda m: m["rps"])[len(s) // 2] for c, s in by_c.items()}
        for row, by_c in samples.items()
    }
    best = {c: max((rows[row][c] for row in limits), key=lambda m: m["rps"]) for c in levels}
    return {IN_PROCESS: best, **rows}


def progress(what: str, got: dict[str, Any]) -> None:
    print(
        f"{what}: {got['rps']:.0f} req/s, p50 {got['p50']:.2f} ms, p99 {got['p99']:.2f} ms, {got['errors']} failed"
        + (f" (first: {got['first_error']})" if got.get("first_error") else ""),
        flush=True,
    )


def print_table(title: str, rows: Rows, levels: list[int]) -> None:
    print(f"\n{title}")
    print(f"{'target':<36}" + "".join(f"  c={c:<3}  req/s  p50 ms  p99 ms   err" for c in levels))
    for name, by_c in rows.items():
        print(
            f"{name:<36}"
            + "".join(
                f"  {by_c[c]['rps']:>11.0f} {by_c[c]['p50']:>7.2f} {by_c[c]['p99']:>7.2f} {by_c[c]['errors']:>5}"
                for c in levels
            )
        )


def ratios(rows: Rows, num: str, den: str, levels: list[int], goal: float | None = None) -> dict[int, float] | None:
    """Print ``num / den`` at each level (against ``goal`` if given); None where a row is missing."""
    if num not in rows or den not in rows:
        print(f"  {num} / {den}: not measured (see above)")
        return None
    r = {c: rows[num][c]["rps"] / rows[den][c]["rps"] if rows[den][c]["rps"] else float("nan") for c in levels}
    verdict = ""
    if goal is not None:
        verdict = f"   goal >= {goal:g}x: " + ("met" if all(v >= goal for v in r.values()) else "NOT met")
    print(f"  {num} / {den}: " + "  ".join(f"c={c}: {v:.2f}x" for c, v in r.items()) + verdict)
    return r


def goals(lenet: Rows | None, resnet: Rows | None, levels: list[int], resnet_levels: list[int]) -> dict[str, Any]:
    """Print each goal beside its figures; the ratios, by name."""
    out: dict[str, Any] = {}
    if lenet:
        print("\nLeNet, new vs MLServer (same protocol, same client):")
        for proto in ("V2 REST (wrk)", "V2 gRPC (grpcio)"):
            out[f"lenet new/MLServer {proto}"] = ratios(
                lenet, f"new {proto}", f"MLServer {proto}", levels, MLSERVER_GOAL
            )
        out["lenet new TFS REST/MLServer V2 REST (wrk)"] = ratios(
            lenet, "new TFS REST (wrk)", "MLServer V2 REST (wrk)", levels, MLSERVER_GOAL
        )
        print("LeNet, new vs the in-process limit (no goal) and vs the old C server (the cost of the rewrite):")
        for row in ("new TFS REST (wrk)", "new V2 REST (wrk)", "new TFS gRPC (grpcio)", "new V2 gRPC (grpcio)"):
            out[f"lenet {row}/in-process"] = ratios(lenet, row, IN_PROCESS, levels)
        for proto in ("TFS REST (wrk)", "V2 REST (wrk)"):
            out[f"lenet new/old C {proto}"] = ratios(lenet, f"new {proto}", f"old C {proto}", levels)
    if resnet:
        print(f"\nResNet-20, new vs the in-process limit (goal >= {RESNET_GOAL}x):")
        for row in (
            "new TFS REST (wrk)",
            "new V2 REST (wrk)",
            "new V2 REST binary (wrk)",
            "new TFS gRPC (grpcio)",
            "new V2 gRPC (grpcio)",
        ):
            out[f"resnet20 {row}/in-process"] = ratios(resnet, row, IN_PROCESS, resnet_levels, RESNET_GOAL)
    for model, rows, lv in (("lenet", lenet, levels), ("resnet20", resnet, resnet_levels)):
        high = [c for c in lv if c >= 8]
        if not rows or not high:
            continue
        print(
            f"\n{model}, gRPC vs REST at c={'/'.join(map(str, high))} (goal gRPC >= REST; same Python client "
            "processes, then against wrk):"
        )
        for proto in ("TFS", "V2"):
            for rest in ("aiohttp", "wrk"):
                sub = {k: {c: v[c] for c in high} for k, v in rows.items()}
                out[f"{model} {proto} gRPC/REST ({rest})"] = ratios(
                    sub, f"new {proto} gRPC (grpcio)", f"new {proto} REST ({rest})", high, 1.0
                )
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=5.0, help="seconds per target and level (wrk: whole seconds)")
    p.add_argument("--levels", default="1,8,64", help="LeNet's concurrency levels")
    p.add_argument("--resnet-levels", default="8,64", help="ResNet-20's concurrency levels ('' to skip it)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of every target at every level (median shown)")
    p.add_argument("--client-procs", type=int, default=2, help="Python load processes (aiohttp and grpcio rows)")
    p.add_argument("--workers", help="the new server's --workers (default: its own default)")
    p.add_argument("--skip", default="", help="comma-separated: mlserver, old, lenet, resnet20")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="folder for serve_throughput.json")
    p.add_argument("--frameworks", default="", help="LeNet rows for these too (pytorch,mxnet; bench/_frameworks.py)")
    a, _ = p.parse_known_args(argv)
    levels = [int(x) for x in a.levels.split(",") if x]
    resnet_levels = [int(x) for x in a.resnet_levels.split(",") if x]
    skip = set(filter(None, a.skip.split(",")))
    models = [m for m, lv in (("lenet", levels), ("resnet20", resnet_levels)) if lv and m not in skip]
    tmp = Path(tempfile.mkdtemp(prefix="serve-throughput-"))
    ws = tmp / "workspace"
    t0 = time.monotonic()
    print(f"exporting {', '.join(models)} into {ws}", flush=True)
    versions = _models.export_in_subprocess(ws, models)

    servers: list[_servers.Server] = []
    limits: dict[str, dict[str, _models.Limit]] = {}
    results: dict[str, Rows] = {}
    try:
        servers.append(_servers.start_workbench("new", ws, tmp / "new.log", models, workers=a.workers))
        if "lenet" in models:
            why = "skipped (--skip)" if "old" in skip else _servers.old_server_missing()
            if why:
                print(f"old C server skipped: {why}")
            else:
                servers.append(
                    _servers.start_workbench(
                        "old C", ws, tmp / "old.log", models, checkout=_servers.OLD_SERVER, grpc=False
                    )
                )
            why = "skipped (--skip)" if "mlserver" in skip else _servers.mlserver_missing()
            if why:
                print(f"MLServer skipped: {why}")
            else:
                servers.append(_servers.start_mlserver({"lenet": versions["lenet"]}, tmp / "mlserver", tmp / "ml.log"))
        for m in models:
            limits[m] = {row: _models.Limit(m, versions[m], threads) for row, threads in LIMITS.items()}
        print(f"servers up after {time.monotonic() - t0:.0f} s: " + ", ".join(s.name for s in servers), flush=True)
        with _load.Clients(procs=a.client_procs) as clients:
            for m, lv in (("lenet", levels), ("resnet20", resnet_levels)):
                if m in models:
                    serving = [s for s in servers if m == "lenet" or s.name == "new"]
                    results[m] = measure(m, serving, limits[m], clients, lv, a.duration, a.rounds)
    finally:
        for by_row in limits.values():
            for limit in by_row.values():
                limit.close()
        for s in servers:
            s.stop()
    from bench import _frameworks

    others = _frameworks.available([f for f in a.frameworks.split(",") if f])
    if others and "lenet" in models:
        results["frameworks"] = _frameworks.rows(ws, others, levels, a.duration)
    cpus = os.cpu_count()
    header = f"{a.duration:g} s per target and level, {a.rounds} round(s), {cpus} CPUs (shared), " + (
        f"{a.client_procs} Python client process(es); in-process limit: "
        + ", ".join(f"{m}: {next(iter(by_row.values())).kind}" for m, by_row in limits.items())
        + f"; {IN_PROCESS}: the faster of its two thread settings at each level"
    )
    if "lenet" in results:
        print_table(f"LeNet-5, one 28x28 image per request; {header}", results["lenet"], levels)
    if "resnet20" in results:
        print_table(f"ResNet-20, one 32x32x3 image per request; {header}", results["resnet20"], resnet_levels)
    if "frameworks" in results:
        print_table(f"LeNet-5 of {', '.join(others)} beside TensorFlow's, one server", results["frameworks"], levels)
    summary = goals(results.get("lenet"), results.get("resnet20"), levels, resnet_levels)
    print(f"\nwhole run: {time.monotonic() - t0:.0f} s; logs in {tmp}")
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_throughput.json").write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "setting": header,
                **results,
                "ratios": summary,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
