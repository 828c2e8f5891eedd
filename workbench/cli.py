"""``workbench`` command line: mirrors the Python API."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.workspace import Workspace


def _env_pairs(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WorkbenchError(f"--env takes KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def _param_pairs(items: list[str]) -> dict[str, object]:
    from workbench.params import parse_pairs

    return dict(parse_pairs(items))


def _age(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _where(ws: Workspace) -> str:
    """A workspace as the user named it (a bucket: with its local cache folder)."""
    return f"{ws.url} (local cache {ws.root})" if ws.url else str(ws.root)


def cmd_up(a: argparse.Namespace) -> int:
    from workbench import services
    from workbench.workspace import Workspace

    ws = Workspace.current()
    print(f"starting the workbench for workspace {_where(ws)}", flush=True)
    ports = {"jupyter": a.jupyter_port, "tensorboard": a.tensorboard_port, "server": a.server_port}
    enabled = tuple(n for n in services.SERVICES if n not in (a.without or []))
    opts = services.Options(host=a.host, root_dir=Path(a.root_dir), token=a.token or "", ports=ports, enabled=enabled)
    running = services.up(ws, opts)
    if "jupyter" in running.info:
        print(f"\nJupyterLab: {running.info['jupyter']['url']}", flush=True)
    print("Ctrl-C or `workbench down` stops everything.", flush=True)
    running.run_forever()
    return 0


def cmd_down(a: argparse.Namespace) -> int:
    from workbench import services
    from workbench.workspace import Workspace

    stopped = services.down(Workspace.current())
    print("stopped" if stopped else "the workbench was not running")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    from workbench import api, services
    from workbench.workspace import Workspace

    ws = Workspace.current()
    print(f"workspace {_where(ws)}")
    info = services.status(ws)
    if not info:
        print("services: not running (start with `workbench up`)")
    for name, item in info.items():
        state = "up" if item["healthy"] else ("starting" if item["alive"] else "down")
        print(f"  {name:<12} {state:<9} pid {item['pid']:<8} {item['url']}")
    active = [j for j in api.jobs(limit=200) if j.status() in ("queued", "running")]
    print(f"jobs: {len(active)} active")
    positions = _queue_positions()
    for j in active:
        print(f"  {j.id}  {_shown_status(j, positions)}")
    return 0


def cmd_submit(a: argparse.Namespace) -> int:
    from workbench import api

    job = api.submit(
        a.script,
        args=a.args,
        framework=a.framework,
        workers=a.workers,
        ps=a.ps,
        gpus=a.gpus,
        name=a.name,
        env=_env_pairs(a.env or []),
        python=a.python,
        max_restarts=a.max_restarts,
        params=_param_pairs(a.param or []),
        priority=a.priority,
        cpus=a.cpus,
    )
    print(job.id)
    if a.follow:
        job.logs(follow=True)
        state = job.wait()
        print(f"{job.id}: {state}", file=sys.stderr)
        return 0 if state == "succeeded" else 1
    return 0


def _queue_positions() -> dict[str, int]:
    from workbench.backends import get_backend
    from workbench.workspace import Workspace

    return get_backend().queue_positions(Workspace.current())  # none where a cluster schedules


def _shown_status(job: Any, positions: dict[str, int]) -> str:
    """A job's status, with its place in the local queue while it waits ("queued #2")."""
    state = str(job.status())
    return f"{state} #{positions[job.id]}" if state == "queued" and job.id in positions else state


def cmd_jobs(a: argparse.Namespace) -> int:
    from workbench import api

    if a.params or a.metric or a.sweep:
        return _jobs_compared(a)

    rows = api.jobs(limit=a.limit)
    positions = _queue_positions()
    print(f"{'ID':<44} {'STATUS':<10} {'FRAMEWORK':<10} {'REPLICAS':<8} {'CREATED':<19}  MESSAGE")
    for j in rows:
        r = j.record
        spec = r.spec
        n = spec["workers"] + spec.get("ps", 0)
        state = _shown_status(j, positions)
        print(f"{j.id:<44} {state:<10} {spec['framework']:<10} {n:<8} {_age(r.created):<19}  {r.message or ''}")
    return 0


def _jobs_compared(a: argparse.Namespace) -> int:
    """``workbench jobs --params --metric M [--sweep ID]``: a run per line with its params and M's final and best."""
    from workbench.experiments.compare import find_tag, runs

    table = runs(sweep=a.sweep).head(a.limit)
    metrics: dict[str, list[tuple[int, float]]] = {tag: [] for tag in table.attrs.get("metrics", [])}
    tag = find_tag(metrics, a.metric) if a.metric else None
    header = f"{'ID':<44} {'STATUS':<10}"
    if a.metric:
        header += f" {'FINAL ' + a.metric:>24} {'BEST':>10}"
    print(header + ("  PARAMS" if a.params else ""))
    for row in table.to_dict("records"):
        line = f"{row['id']:<44} {row['status']:<10}"
        if a.metric:
            final, best = (row.get(tag), row.get(f"{tag} best")) if tag else (None, None)
            line += f" {_number(final):>24} {_number(best):>10}"
        if a.params:
            line += "  " + " ".join(f"{k}={row[k]}" for k in table.attrs.get("params", []) if not _missing(row[k]))
        print(line)
    return 0


def _missing(value: object) -> bool:
    return value is None or value != value  # NaN where another run has the column


def _number(value: object) -> str:
    return "-" if _missing(value) else f"{value:.4g}"


def cmd_logs(a: argparse.Namespace) -> int:
    from workbench import api

    job = api.job(a.job)
    if a.follow:
        job.logs(follow=True, replica=a.replica)
    else:
        print(job.logs(replica=a.replica))
    return 0


def cmd_cancel(a: argparse.Namespace) -> int:
    from workbench import api

    job = api.job(a.job)
    print(f"{job.id}: {job.cancel()}")
    return 0


def cmd_wait(a: argparse.Namespace) -> int:
    from workbench import api

    state = api.job(a.job).wait(timeout=a.timeout)
    print(state)
    return 0 if state == "succeeded" else 1


def cmd_checkpoints(a: argparse.Namespace) -> int:
    from workbench import api

    for c in api.job(a.job).checkpoints():
        metrics = "  ".join(f"{k}={v:.4g}" for k, v in sorted(c.metrics.items()))
        print(f"{c.step:>8}  {c.path}  {metrics}")
    return 0


def cmd_promote(a: argparse.Namespace) -> int:
    from workbench import api

    checkpoint = int(a.checkpoint) if a.checkpoint.isdigit() else a.checkpoint
    v = api.promote(
        a.job,
        a.model,
        checkpoint,
        metric=a.metric,
        mode=a.mode,
        builder=a.builder,
        framework=a.framework,
        label=a.label,
        live=not a.no_live,
        wait=a.wait,
    )
    metrics = "  ".join(f"{k}={x:.4g}" for k, x in sorted(v.source.get("metrics", {}).items()))
    print(f"{v.model} version {v.version}  (step {v.source.get('step')}  {metrics})  {v.path}")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from workbench import api

    if a.name == "delete":
        return cmd_models_delete(a)
    if a.more:
        raise WorkbenchError(f"unexpected arguments {' '.join(a.more)}; `workbench models delete NAME VERSION`?")
    if a.rollback is not None or a.label or a.split is not None:
        if not a.name:
            raise WorkbenchError("name the model to change: workbench models NAME --rollback/--label/--split")
        for item in a.label or []:
            key, _, version = item.partition("=")
            api.label(a.name, key, version or None)
        if a.split is not None:
            pairs = [p.partition("=") for p in a.split.split(",") if p]
            api.split(a.name, {k: float(w) for k, _, w in pairs} or None)
        if a.rollback is not None:
            print(f"{a.name}: version {api.rollback(a.name, a.rollback or None)} is live")
    for name, m in api.models().items():
        if a.name and name != a.name:
            continue
        labels = "  ".join(f"{k}={v}" for k, v in sorted(m["labels"].items()))
        traffic = f"  traffic {m['traffic']}" if m["traffic"] else ""
        print(f"{name}  live {m['live']}  {labels}{traffic}")
        for v, info in m["versions"].items():
            metrics = "  ".join(f"{k}={x:.4g}" for k, x in sorted(info["metrics"].items()))
            flag = " (rolled back)" if info["rolled_back"] else ""
            print(f"  {v:>4}  {_age(info['created'])}  {info['run_id'] or '-'}  step {info['step']}  {metrics}{flag}")
    return 0


def cmd_gc(a: argparse.Namespace) -> int:
    from workbench.registry.store import clean
    from workbench.workspace import Workspace

    ws = Workspace.current()
    removed = clean(ws)
    for path in removed:
        print(f"removed {path}")
    print(f"models: {len(removed)} leftovers of unfinished promotes removed")
    _gc_jobs(ws, a)
    return 0


def _gc_jobs(ws: Any, a: argparse.Namespace) -> None:
    """``--keep`` / ``--older-than``: finished jobs, besides the registry's leftovers."""
    from workbench.housekeeping import gc, parse_duration

    if a.keep is None and a.older_than is None:
        return
    older = parse_duration(a.older_than) if a.older_than is not None else None
    deleted = gc(ws, keep=a.keep, older_than=older)
    for job_id in deleted:
        print(f"deleted job {job_id}")
    print(f"jobs: {len(deleted)} finished jobs deleted")


def cmd_delete(a: argparse.Namespace) -> int:
    from workbench import api

    for job in a.jobs:
        print(f"deleted {api.delete(job)}")
    return 0


def cmd_models_delete(a: argparse.Namespace) -> int:
    from workbench.registry import delete_version

    if len(a.more) != 2:
        raise WorkbenchError("usage: workbench models delete NAME VERSION")
    name, version = a.more
    delete_version(name, version)
    print(f"{name}: version {version} deleted")
    return 0


def _read_input(path: str) -> dict[str, Any]:
    """``--input`` of ``workbench predict``: a .npy array (rows), or JSON: a list (rows), or an object with
    ``instances`` or ``inputs``."""
    import json

    import numpy as np

    try:
        if path.endswith(".npy"):
            return {"instances": np.load(path, allow_pickle=False)}
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise WorkbenchError(f"cannot read --input {path}: {e}") from e
    if isinstance(data, list):
        return {"instances": data}
    if isinstance(data, dict) and ("instances" in data) != ("inputs" in data):
        return {k: data[k] for k in ("instances", "inputs") if k in data}
    raise WorkbenchError(f"{path}: give a list of rows, or an object with 'instances' (rows) or 'inputs' (columns)")


def cmd_predict(a: argparse.Namespace) -> int:
    import json

    import numpy as np

    from workbench.serving.client import predict

    body = _read_input(a.input)
    answer = predict(a.model, body.get("instances"), inputs=body.get("inputs"), version=a.version, label=a.label)
    version = getattr(answer, "version", None)
    print(json.dumps({"predictions" if "instances" in body else "outputs": _plain(answer, np), "version": version}))
    return 0


def _plain(value: Any, np: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v, np) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, np) for v in value]
    return value


def cmd_serve(a: argparse.Namespace) -> int:
    import os

    from workbench import settings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", settings.TF_CPP_MIN_LOG_LEVEL.get())  # before TensorFlow loads
    from workbench.serving.server import serve

    return serve(
        a.host,
        a.port,
        grpc_port=a.grpc_port,
        workers=a.workers,
        poll=a.poll,
        max_batch=a.max_batch,
        max_wait_ms=a.max_wait_ms,
        log_sample=a.log_sample,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description="ML experimentation workbench")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("up", help="start JupyterLab, TensorBoard and the model server; Ctrl-C stops them")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--jupyter-port", type=int, default=0, help="default 8888, or a free port")
    s.add_argument("--tensorboard-port", type=int, default=0, help="default 6006, or a free port")
    s.add_argument("--server-port", type=int, default=0, help="default 8501, or a free port")
    s.add_argument(
        "--token",
        help="JupyterLab token (default: WORKBENCH_JUPYTER_TOKEN, else random, printed in the URL); an option is "
        "visible to other users in `ps`: prefer the variable",
    )
    s.add_argument("--root-dir", default=".", help="folder JupyterLab opens (default: current)")
    s.add_argument("--without", action="append", help="a service not to start (repeatable)")
    s.set_defaults(fn=cmd_up)

    sub.add_parser("down", help="stop what `workbench up` started").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="services and active jobs").set_defaults(fn=cmd_status)

    s = sub.add_parser("submit", help="run a training script as a job")
    s.add_argument("script")
    s.epilog = "Arguments for the script go after --: workbench submit train.py --workers 2 -- --epochs 3"
    s.add_argument("--framework", default="tensorflow", help="tensorflow, pytorch, mxnet or none")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--ps", type=int, default=0, help="parameter servers (tensorflow, mxnet)")
    s.add_argument("--gpus", type=int, default=0, help="GPUs per training replica")
    s.add_argument("--name")
    s.add_argument("--env", action="append", metavar="KEY=VALUE")
    s.add_argument("--python", help="interpreter, venv or named environment")
    s.add_argument("--max-restarts", type=int, default=0)
    s.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a hyperparameter (repeatable): JSON when it parses (0.01, true), else a string; the script gets "
        "--NAME VALUE and WORKBENCH_PARAMS",
    )
    s.add_argument("--priority", type=int, default=0, help="local queue: higher starts first (default 0)")
    s.add_argument("--cpus", type=int, help="local queue: CPU slots the job holds (default: one per replica)")
    s.add_argument("-f", "--follow", action="store_true", help="stream logs until the job ends")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("jobs", help="list jobs, newest first")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--params", action="store_true", help="show each run's params")
    s.add_argument("--metric", help="show this scalar's final and best value (a tag, its last part, val_accuracy)")
    s.add_argument("--sweep", help="only the trials of this sweep")
    s.set_defaults(fn=cmd_jobs)

    s = sub.add_parser("logs", help="a job's replica logs")
    s.add_argument("job")
    s.add_argument("-f", "--follow", action="store_true")
    s.add_argument("--replica", help="e.g. worker-1")
    s.set_defaults(fn=cmd_logs)

    for name, fn, text in (("cancel", cmd_cancel, "stop a job"), ("checkpoints", cmd_checkpoints, "list checkpoints")):
        s = sub.add_parser(name, help=text)
        s.add_argument("job")
        s.set_defaults(fn=fn)

    s = sub.add_parser("wait", help="wait for a job to end; exit 0 if it succeeded")
    s.add_argument("job")
    s.add_argument("--timeout", type=float)
    s.set_defaults(fn=cmd_wait)

    s = sub.add_parser("promote", help="export a job's checkpoint, validate it, publish it as a model version")
    s.add_argument("job", help="job id (or unique prefix)")
    s.add_argument("--model", help="model name (default: the job's name)")
    s.add_argument("--checkpoint", default="latest", help="latest, best, a step number or a path")
    s.add_argument("--metric", help="metric for --checkpoint best (default: val_accuracy if logged)")
    s.add_argument("--mode", choices=["max", "min"], help="best is the max or min of --metric")
    s.add_argument("--builder", help="module:function that builds the model (weights-only checkpoints)")
    s.add_argument("--framework", help="default: the job's")
    s.add_argument("--label", help="also point this label (e.g. canary) at the new version")
    s.add_argument("--no-live", action="store_true", help="publish without sending unversioned traffic to it")
    s.add_argument("--wait", type=float, default=60, help="seconds to wait for the running server to serve it")
    s.set_defaults(fn=cmd_promote)

    s = sub.add_parser("models", help="list models and versions; roll back, label, split traffic")
    s.add_argument("name", nargs="?")
    s.add_argument("--rollback", nargs="?", const="", metavar="VERSION", help="serve the previous (or this) version")
    s.add_argument("--label", action="append", metavar="LABEL=VERSION", help="set a label; LABEL= removes it")
    s.add_argument(
        "--split", metavar="REF=W,...", help="split unversioned traffic, e.g. stable=90,canary=10; '' ends it"
    )
    s.add_argument("more", nargs="*", help=argparse.SUPPRESS)  # `workbench models delete NAME VERSION`
    s.epilog = "workbench models delete NAME VERSION: remove a version no label, split or rollback pin uses"
    s.set_defaults(fn=cmd_models)

    s = sub.add_parser(
        "gc",
        help="remove what crashed promotes left (staging folders, unlisted versions, workers); with --keep or "
        "--older-than, also finished jobs",
    )
    s.add_argument("--keep", type=int, metavar="N", help="keep the N newest finished jobs, delete older ones")
    s.add_argument("--older-than", metavar="D", help="delete finished jobs that ended over D ago (90s, 30m, 12h, 7d)")
    s.set_defaults(fn=cmd_gc)

    s = sub.add_parser("delete", help="remove finished jobs: run folder and record (cancel a running one first)")
    s.add_argument("jobs", nargs="+", metavar="JOB", help="id, unique id prefix or name")
    s.set_defaults(fn=cmd_delete)

    s = sub.add_parser("predict", help="predict through the model server; prints the answer as JSON")
    s.add_argument("model")
    s.add_argument("--input", required=True, help="file.json (rows, or {instances}/{inputs}) or file.npy (rows)")
    pick = s.add_mutually_exclusive_group()
    pick.add_argument("--version", type=int)
    pick.add_argument("--label")
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser(
        "serve", help="run the model server (TF Serving and KServe V2, REST and gRPC) over the workspace's models/"
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8501, help="REST port")
    s.add_argument("--grpc-port", type=int, help="gRPC port, default 8500; 0: no gRPC (WORKBENCH_SERVE_GRPC_PORT)")
    s.add_argument("--poll", type=float, help="seconds between scans of models/ (WORKBENCH_SERVE_POLL)")
    s.add_argument("--max-batch", type=int, help="rows per batched model call (WORKBENCH_SERVE_MAX_BATCH)")
    s.add_argument("--max-wait-ms", type=float, help="ms a batch waits for more requests (WORKBENCH_SERVE_MAX_WAIT_MS)")
    s.add_argument("--log-sample", type=float, help="fraction of predictions logged (WORKBENCH_SERVE_LOG_SAMPLE)")
    s.add_argument("--workers", help="server processes sharing the ports: a number or auto (WORKBENCH_SERVE_WORKERS)")
    s.set_defaults(fn=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" belongs to the training script, so options may
    # come before or after the script's path.
    script_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1 :]
    a = p.parse_args(argv)
    if script_args and a.command != "submit":
        p.error("only `workbench submit` takes arguments after --")
    a.args = script_args
    try:
        return int(a.fn(a))
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
