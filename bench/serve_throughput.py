"""Serving throughput and latency for LeNet at concurrency 1, 8 and 64, side by side in one run.

``python -m bench.serve_throughput [--duration 5] [--levels 1,8,64] [--rounds 3] [--no-mlserver]``

Against the same SavedModel (LeNet-5, exported by ``workbench.promote``):

- in-process: the limit. The model's serving function called directly with
  batches of ``c`` rows (what perfect batching of ``c`` concurrent requests
  gives); a request's latency is one call;
- workbench: ``workbench serve`` (its defaults: the native front end, one
  process), TF Serving REST (row format) and KServe V2, one instance per
  request, ``c`` keep-alive connections; and REST on the Python request path
  (``--native off``, two processes) beside it, unless ``--no-python-path``;
- MLServer (PyPI ``mlserver``, from ``.venv-mlserver``: ``bash
  bench/setup_mlserver.sh``) serving the SavedModel through a custom runtime
  with its adaptive batching (max batch 64), over V2.

In-process, REST and V2 are measured in alternating rounds at each level
(the workbench server stays up, idle, while the in-process side runs), so
that drift in a shared machine's load hits all three alike; the table shows
each one's median round, and each round's ratio is printed too. MLServer runs
after them. The load generator (``workbench.serving.loadgen``) shares the
machine with the server it measures: ``--client native`` (the default where
the C extension is built) is its C closed loop, a few us of CPU per request;
``--client python`` its asyncio one, 10-40 us. Goal: workbench >= 0.6x the
in-process limit, and ahead of MLServer.

``--frameworks pytorch,mxnet`` (the default) adds their rows
(``bench/_frameworks.py``): each framework's in-process limit, the same
server serving its LeNet, and TensorFlow's LeNet served beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MLSERVER = ROOT / ".venv-mlserver" / "bin" / "mlserver"
sys.path.insert(0, str(ROOT))

from workbench.backends.local.processes import free_ports  # noqa: E402
from workbench.serving import loadgen  # noqa: E402


def export_lenet(workspace: Path) -> Path:
    """Export a LeNet-5 (weights as built; they do not change the cost) through the registry; its version dir."""
    import keras

    sys.path.insert(0, str(ROOT / "examples" / "lenet"))
    from model import build_lenet

    import workbench as wb

    workspace.mkdir(parents=True, exist_ok=True)
    ckpt = workspace / "ckpt-0001.keras"
    keras.utils.set_random_seed(0)
    build_lenet().save(ckpt)
    os.environ["WORKBENCH_WORKSPACE"] = str(workspace)
    v = wb.promote(None, model="lenet", checkpoint=ckpt, framework="tensorflow", wait=0)
    return v.path


def served_runtime(version_dir: Path, framework: str) -> Any:
    """The version's runtime as the server runs it: loaded, then optimized (as once a version serves)."""
    from workbench.serving.model.frameworks import get_framework

    runtime = get_framework(framework).load(version_dir)
    runtime.optimize()
    return runtime


def in_process(
    version_dir: Path, levels: list[int], duration: float, framework: str = "tensorflow"
) -> dict[int, dict[str, float]]:
    runtime = served_runtime(version_dir, framework)
    out = {c: in_process_level(runtime, c, duration) for c in levels}
    runtime.close()
    return out


def in_process_level(runtime: Any, c: int, duration: float) -> dict[str, float]:
    """``runtime.predict`` on batches of ``c`` rows for ``duration`` s: rows/s and the latency of one call."""
    batch = runtime.signature.sample(c)
    for _ in range(20):
        runtime.predict(batch)
    times = []
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    stop = wall0 + duration
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        runtime.predict(batch)
        times.append(time.perf_counter() - t0)
    cpu, wall = _cpu_seconds() - cpu0, time.perf_counter() - wall0
    return {
        "rps": c * len(times) / sum(times),
        "p50": float(np.percentile(times, 50)) * 1000,
        "p99": float(np.percentile(times, 99)) * 1000,
        "errors": 0,
        "cpu_us": cpu / (c * len(times)) * 1e6,  # CPU time (every thread of this process) per row
        "cpus": cpu / wall,
    }


def _cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process, or of ``pid`` and its children (a server's worker processes)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *(proc.children(recursive=True) if pid is not None else ())]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout} s")


CLIENT = "python"  # the load generator (main sets it: --client)


def load(url: str, body: bytes, levels: list[int], duration: float) -> dict[int, dict[str, float]]:
    loadgen.run(url, body, 4, 1.0)  # warm-up
    return {c: load_level(url, body, c, duration) for c in levels}


def load_level(url: str, body: bytes, c: int, duration: float, server_pid: int | None = None) -> dict[str, float]:
    """The load generator at concurrency ``c``; with ``server_pid``, also the server's and the load generator's CPU
    time per request."""
    cpu = (_cpu_seconds(server_pid), _cpu_seconds()) if server_pid else None
    r = loadgen.run(url, body, c, duration, client=CLIENT)
    out = {"rps": r.throughput, "p50": r.percentile(50), "p99": r.percentile(99), "errors": r.errors}
    if cpu is not None:
        n = max(1, len(r.latencies))
        server, client = _cpu_seconds(server_pid) - cpu[0], _cpu_seconds() - cpu[1]
        out.update(server_us=server / n * 1e6, client_us=client / n * 1e6, cpus=server / duration)
    return out


def start_workbench(
    workspace: Path, log: Path, workers: str | None = None, own_session: bool = False, native: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``workbench serve`` over ``workspace``, with its default number of worker processes or ``workers``, and
    ``--native native`` if given; ``own_session``: in a session of its own, as ``workbench up`` starts it."""
    port = free_ports(1)[0]
    env = {**os.environ, "WORKBENCH_WORKSPACE": str(workspace)}
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workbench",
                "serve",
                "--port",
                str(port),
                *(["--workers", workers] if workers else []),
                *(["--native", native] if native else []),
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=own_session,
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/v2/models/lenet/ready", proc)
    return proc, url


RUNTIME = """
import tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class SavedModelRuntime(MLModel):
    async def load(self) -> bool:
        self._loaded = tf.saved_model.load(self.settings.parameters.uri)
        self._fn = self._loaded.signatures["serving_default"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype("float32")
        y = self._fn(image=tf.constant(x))["probabilities"].numpy()
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("probabilities", y)])
"""


def start_mlserver(version_dir: Path, folder: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    http, grpc, metrics = free_ports(3)
    model = folder / "lenet"
    model.mkdir(parents=True)
    (model / "lenet_runtime.py").write_text(textwrap.dedent(RUNTIME))
    (model / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "lenet",
                "implementation": "lenet_runtime.SavedModelRuntime",
                "parameters": {"uri": str(version_dir)},
                "max_batch_size": 64,
                "max_batch_time": 0.002,
            }
        )
    )
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http,
                "grpc_port": grpc,
                "metrics_port": metrics,
                "debug": False,
                # inference in the server process: MLServer 1.7's worker pool fails at start with uvloop >= 0.22,
                # and for a model this small one process is also MLServer's faster setting
                "parallel_workers": 0,
            }
        )
    )
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [str(MLSERVER), "start", str(folder)],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    url = f"http://127.0.0.1:{http}"
    try:
        wait_ready(f"{url}/v2/models/lenet/ready", proc, timeout=180)
    except RuntimeError:
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def interleaved(
    version_dir: Path,
    tmp: Path,
    levels: list[int],
    duration: float,
    rounds: int,
    rest_body: bytes,
    v2_body: bytes,
    single: bool = True,
) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, dict[int, list[float]]]]:
    """In-process, workbench REST and V2 (and REST on the Python request path, unless ``single`` is False)
    measured in alternating rounds at each level, so that drift in the shared machine's load hits them alike; each
    target's round with the median throughput, and each round's ratio."""
    runtime = served_runtime(version_dir, "tensorflow")
    proc, url = start_workbench(tmp / "workspace", tmp / "workbench.log")
    servers = [proc]
    targets = {
        "workbench REST": (f"{url}/v1/models/lenet:predict", rest_body, proc.pid),
        "workbench V2": (f"{url}/v2/models/lenet/infer", v2_body, proc.pid),
    }
    if single:
        one, one_url = start_workbench(tmp / "workspace", tmp / "workbench-python.log", native="off")
        servers.append(one)
        targets["workbench REST, Python path"] = (f"{one_url}/v1/models/lenet:predict", rest_body, one.pid)
    samples: dict[str, dict[int, list[dict[str, float]]]] = {"in-process (batched)": {c: [] for c in levels}}
    samples.update({name: {c: [] for c in levels} for name in targets})
    try:
        for url_, body, _ in targets.values():
            loadgen.run(url_, body, 4, 1.0)  # warm-up
        for c in levels:
            for _ in range(rounds):
                samples["in-process (batched)"][c].append(in_process_level(runtime, c, duration))
                for name, (url_, body, pid) in targets.items():
                    samples[name][c].append(load_level(url_, body, c, duration, pid))
    finally:
        for p in servers:
            stop(p)
        runtime.close()
    results = {
        name: {c: sorted(s, key=lambda m: m["rps"])[len(s) // 2] for c, s in by_c.items()}
        for name, by_c in samples.items()
    }
    limit = samples["in-process (batched)"]
    ratios = {
        name: {c: [m["rps"] / ip["rps"] for m, ip in zip(samples[name][c], limit[c], strict=True)] for c in levels}
        for name in targets
    }
    return results, ratios


DEFAULT_LIMIT = "in-process, TF default threads"


def default_threads_limit(
    version_dir: Path, levels: list[int], duration: float, env: dict[str, str]
) -> dict[int, dict[str, float]]:
    """The in-process limit with TensorFlow's own default thread pools, in a process of its own (its threads are
    set at its first use), one round per level."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench._frameworks",
            "in-process",
            "tensorflow",
            str(version_dir),
            ",".join(map(str, levels)),
            str(duration),
        ],
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return {int(c): m for c, m in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def print_cpu(results: dict[str, dict[int, dict[str, float]]], levels: list[int]) -> None:
    """Where the CPUs go, against what 0.6x of the limit leaves per request: all CPUs' time / (0.6 x limit's req/s)."""
    limit, cpus = results["in-process (batched)"], os.cpu_count() or 1
    print(f"CPU time per request (median rounds), against the budget at 0.6x of the limit on {cpus} CPUs:")
    for c in levels:
        rest = results["workbench REST"][c]
        print(
            f"  c={c}: in-process {limit[c]['cpu_us']:.0f} us/row on {limit[c]['cpus']:.2f} CPUs; "
            f"REST server {rest['server_us']:.0f} us + load generator {rest['client_us']:.0f} us, server on "
            f"{rest['cpus']:.2f} CPUs; budget {cpus * 1e6 / (0.6 * limit[c]['rps']):.0f} us"
        )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=5.0, help="seconds per concurrency level and target")
    p.add_argument("--levels", default="1,8,64")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of in-process, REST and V2 per level")
    p.add_argument("--no-mlserver", action="store_true")
    p.add_argument("--frameworks", default="pytorch,mxnet", help="rows for these beside TensorFlow ('' for none)")
    p.add_argument("--no-python-path", action="store_true", help="skip the REST row of a server with --native off")
    p.add_argument("--client", choices=["native", "python"], help="load generator (default: native where built)")
    a, _ = p.parse_known_args(argv)
    levels = [int(x) for x in a.levels.split(",")]
    global CLIENT
    CLIENT = a.client or ("native" if loadgen.native_available() else "python")
    os.environ.setdefault("WORKBENCH_PROMOTE_WARM", "0")  # no idle workers importing frameworks while we measure
    # The limit runs TensorFlow as the server does: with the intra-op threads each of its processes gets beside its
    # native front end (TensorFlow reads these before its first use). A row with TensorFlow's own default threads
    # follows.
    default_env = dict(os.environ)
    from workbench.serving.workers import auto_workers, intra_op_threads

    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, str(intra_op_threads(auto_workers(), native=True)))
    tmp = Path(tempfile.mkdtemp(prefix="serve-throughput-"))
    version_dir = export_lenet(tmp / "workspace")
    x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    rest_body = json.dumps({"instances": x.tolist()}).encode()
    v2_body = json.dumps(
        {"inputs": [{"name": "image", "shape": [1, 28, 28], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    ).encode()

    results, ratios = interleaved(
        version_dir, tmp, levels, a.duration, a.rounds, rest_body, v2_body, single=not a.no_python_path
    )
    from bench import _frameworks

    results[DEFAULT_LIMIT] = default_threads_limit(version_dir, levels, a.duration, default_env)
    others = _frameworks.available([f for f in a.frameworks.split(",") if f])
    if others:
        results.update(_frameworks.rows(tmp / "workspace", others, levels, a.duration, rest_body))
    if not a.no_mlserver:
        if MLSERVER.exists():
            proc, url = start_mlserver(version_dir, tmp / "mlserver", tmp / "mlserver.log")
            try:
                results["MLServer V2"] = load(f"{url}/v2/models/lenet/infer", v2_body, levels, a.duration)
            finally:
                stop(proc)
        else:
            print("MLServer skipped: run `bash bench/setup_mlserver.sh` first")

    print(
        f"\nLeNet-5, one 28x28 image per request, {a.duration:.0f} s per level, {os.cpu_count()} CPUs (shared), "
        f"{CLIENT} load generator"
    )
    print(f"{'target':<36}" + "".join(f"  c={c:<3} req/s  p50 ms  p99 ms  err" for c in levels))
    for name, by_c in results.items():
        print(
            f"{name:<36}"
            + "".join(
                f"  {by_c[c]['rps']:>9.0f} {by_c[c]['p50']:>7.2f} {by_c[c]['p99']:>7.2f} {by_c[c]['errors']:>4.0f}"
                for c in levels
            )
        )
    best = {c: max(results["in-process (batched)"][c]["rps"], results[DEFAULT_LIMIT][c]["rps"]) for c in levels}
    print(
        f"in-process, {os.environ['TF_NUM_INTRAOP_THREADS']} intra-op thread(s) (as served) / TensorFlow's default "
        "threads: "
        + "  ".join(
            f"c={c}: {results['in-process (batched)'][c]['rps'] / results[DEFAULT_LIMIT][c]['rps']:.2f}x"
            for c in levels
        )
    )
    for name in ("workbench REST", "workbench V2"):
        print(
            f"{name} / the faster in-process limit: "
            + "  ".join(f"c={c}: {results[name][c]['rps'] / best[c]:.2f}x" for c in levels)
        )
    for name in [n for n in results if "in-process" not in n]:
        limit = results[_frameworks.limit_of(name, results)]
        print(
            f"{name} / in-process: "
            + "  ".join(f"c={c}: {results[name][c]['rps'] / limit[c]['rps']:.2f}x" for c in levels)
        )
        if name in ratios:
            print(
                "  each round: " + "  ".join(f"c={c}: " + " ".join(f"{r:.2f}" for r in ratios[name][c]) for c in levels)
            )
    print_cpu(results, levels)
    if "MLServer V2" in results:
        print(
            "workbench V2 / MLServer V2: "
            + "  ".join(
                f"c={c}: {results['workbench V2'][c]['rps'] / results['MLServer V2'][c]['rps']:.2f}x" for c in levels
            )
        )
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "serve_throughput.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
