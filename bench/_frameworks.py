"""PyTorch and MXNet rows of ``bench.serve_throughput`` (a helper, not a benchmark of its own).

For each framework: the LeNet-5 of its example (``examples/mnist_torch``,
``examples/mnist_mxnet``; weights as initialised: they do not change the
cost) is promoted into the benchmark's workspace, its in-process limit is
measured like TensorFlow's (batches of ``c`` rows through the plugin's
runtime; for MXNet in its own environment, ``.venv-mxnet``), and one
``workbench serve`` serving all of them, TensorFlow's LeNet included, is
loaded over TF Serving REST with wrk. The TensorFlow row of that server shows whether
serving PyTorch and MXNet models beside it costs TensorFlow anything.
``python -m bench._frameworks in-process FRAMEWORK VERSION_DIR LEVELS
DURATION`` prints one in-process measurement as JSON (how it runs in the
MXNet environment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
Rows = dict[str, dict[int, dict[str, float]]]

MXNET_CHECKPOINT = """
import sys, mxnet as mx
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from model import build_lenet, save_checkpoint
mx.random.seed(0)
net = build_lenet()
net.initialize(mx.init.Xavier())
save_checkpoint(Path(sys.argv[2]), net, None)
"""


def available(frameworks: list[str]) -> list[str]:
    """Those of ``frameworks`` (pytorch, mxnet) this machine has; says which it skips."""
    import importlib.util

    from workbench import environments

    found = []
    for fw in frameworks:
        have = importlib.util.find_spec("torch") is not None if fw == "pytorch" else environments.for_framework(fw)
        if have:
            found.append(fw)
        else:
            print(f"{fw} skipped: run `bash scripts/setup-frameworks.sh` first")
    return found


def checkpoint(framework: str, folder: Path) -> Path:
    """A ``ckpt-0001`` folder as the framework's example writes it."""
    path = folder / f"{framework}-ckpt-0001"
    if framework == "pytorch":
        import importlib.util

        import torch

        # By path: the name "model" may already be taken by another example's model.py.
        spec = importlib.util.spec_from_file_location(
            "mnist_torch_model", ROOT / "examples" / "mnist_torch" / "model.py"
        )
        assert spec is not None and spec.loader is not None
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
        torch.manual_seed(0)
        net = example.LeNet()
        example.save_checkpoint(path, net, {"model": net.state_dict()})
    else:
        from workbench import environments

        python = environments.for_framework("mxnet")
        assert python is not None
        example = str(ROOT / "examples" / "mnist_mxnet")
        subprocess.run([python, "-c", MXNET_CHECKPOINT, example, str(path)], check=True, capture_output=True)
    return path


def promote(framework: str, workspace: Path) -> tuple[str, Path]:
    """Promote the framework's example LeNet into ``workspace``; (model name, version dir)."""
    import workbench as wb

    os.environ["WORKBENCH_WORKSPACE"] = str(workspace)
    name = f"lenet-{framework}"
    v = wb.promote(None, model=name, checkpoint=checkpoint(framework, workspace), framework=framework, wait=0)
    return name, v.path


def in_process(framework: str, version_dir: Path, levels: list[int], duration: float) -> dict[int, dict[str, float]]:
    """The batched in-process limit, in the framework's own interpreter."""
    from workbench.serving.model.frameworks import get_framework

    python = get_framework(framework).python()
    if python is None:
        return measure(version_dir, levels, duration, framework)
    args = ["in-process", framework, str(version_dir), ",".join(map(str, levels)), str(duration)]
    done = subprocess.run(
        [python, "-m", "bench._frameworks", *args], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return {int(c): row for c, row in json.loads(done.stdout.splitlines()[-1]).items()}


def measure(version_dir: Path, levels: list[int], duration: float, framework: str) -> dict[int, dict[str, float]]:
    """The framework's runtime for ``version_dir`` (as the server runs it) on batches of ``c`` LeNet rows."""
    from bench._models import limit_level
    from workbench.serving.model.frameworks import get_framework

    runtime = get_framework(framework).load(version_dir)
    runtime.optimize()
    try:
        return {c: limit_level(runtime, runtime.signature.sample(c), duration) for c in levels}
    finally:
        runtime.close()


def rows(workspace: Path, frameworks: list[str], levels: list[int], duration: float) -> Rows:
    """The rows for ``frameworks``, and TensorFlow's LeNet (model ``lenet``, already promoted) served beside them,
    over TF Serving REST (wrk)."""
    import numpy as np

    from bench import _load, _servers

    served = {fw: promote(fw, workspace) for fw in frameworks}
    out: Rows = {
        f"{fw} in-process (batched)": in_process(fw, path, levels, duration) for fw, (_, path) in served.items()
    }
    x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)  # every LeNet takes (n, 28, 28)
    with tempfile.TemporaryDirectory() as tmp:
        names = ["lenet", *(name for name, _ in served.values())]
        server = _servers.start_workbench("new", workspace, Path(tmp) / "workbench.log", names, grpc=False)
        try:
            for fw, (name, _) in served.items():
                t = _load.Target("tfs-rest", server.rest, name, "image", x)
                out[f"{fw} new TFS REST (wrk)"] = {c: _load.wrk(t, c, duration) for c in levels}
            t = _load.Target("tfs-rest", server.rest, "lenet", "image", x)
            beside = "+".join(frameworks)
            out[f"new TFS REST (wrk), beside {beside}"] = {c: _load.wrk(t, c, duration) for c in levels}
        finally:
            server.stop()
    return out


def limit_of(name: str, results: Rows) -> str:
    """The in-process row a served row is compared with: its framework's, else TensorFlow's."""
    framework = name.split(" ", 1)[0]
    own = f"{framework} in-process (batched)"
    return own if own in results else "in-process (batched)"


def main(argv: list[str]) -> int:
    op, framework, version_dir, levels, duration = argv
    if op != "in-process":
        raise SystemExit(f"unknown operation {op!r}")
    result = measure(Path(version_dir), [int(x) for x in levels.split(",")], float(duration), framework)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
