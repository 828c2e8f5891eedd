"""The serving benchmarks' models and their in-process limit (a helper, not a benchmark of its own).

- LeNet-5 (``examples/lenet``), one 28x28 image per request: so small that the server's own work is everything.
- ResNet-20 (He et al. 2016, the CIFAR-10 network: 3 stages of 3 basic blocks, 16/32/64 filters, ~0.27 M
  weights, ~41 M multiply-adds per 32x32x3 image), weights as initialised (they do not change the cost):
  compute-bound, where a server should come close to calling the model itself.

Both are built with Keras and published by ``workbench.promote`` as ``models/<name>/1/`` (a SavedModel with its
``model.json`` entry, exported and validated in promote's worker processes), in a process of this module's own
(``python -m bench._models export WORKSPACE``), so that the benchmark's process never imports TensorFlow.

The in-process limit (``python -m bench._models in-process VERSION_DIR LEVELS DURATION``): the version's
runtime, loaded as the server loads it, called back to back on batches of ``c`` rows, what perfect batching of
``c`` concurrent one-row requests gives; a request's latency is one call. Measured twice: with TensorFlow's own
default thread pools, and with one intra-op thread (which is faster for LeNet's small ops on two CPUs); the
benchmark's limit is the faster of the two at each level.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# model -> (input name, shape of one row); what the requests send
INPUTS = {"lenet": ("image", (28, 28)), "resnet20": ("image", (32, 32, 3))}


def build_resnet20(num_classes: int = 10) -> Any:
    """ResNet-20 for 32x32x3 images (input "image", output "probabilities"), projection shortcuts."""
    import keras
    from keras import layers

    def block(x: Any, filters: int, stride: int) -> Any:
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.ReLU()(layers.BatchNormalization()(y))
        y = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
        if stride != 1 or x.shape[-1] != filters:
            x = layers.BatchNormalization()(layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x))
        return layers.ReLU()(layers.Add()([x, y]))

    image = keras.Input(shape=(32, 32, 3), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(image)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for stage, filters in enumerate((16, 32, 64)):
        for i in range(3):
            x = block(x, filters, 2 if stage and not i else 1)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(image, out, name="resnet20")


def export(workspace: Path, names: list[str]) -> dict[str, str]:
    """Promote each of ``names`` (lenet, resnet20) into ``workspace``; model name -> its version folder."""
    import keras

    sys.path.insert(0, str(ROOT / "examples" / "lenet"))
    from model import build_lenet

    import workbench as wb

    os.environ["WORKBENCH_WORKSPACE"] = str(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    builders = {"lenet": build_lenet, "resnet20": build_resnet20}
    out = {}
    for name in names:
        keras.utils.set_random_seed(0)
        ckpt = workspace / f"{name}-ckpt-0001.keras"
        builders[name]().save(ckpt)
        out[name] = str(wb.promote(None, model=name, checkpoint=ckpt, framework="tensorflow", wait=0).path)
    return out


def export_in_subprocess(workspace: Path, names: list[str]) -> dict[str, Path]:
    """:func:`export` in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "bench._models", "export", str(workspace), ",".join(names)],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "WORKBENCH_PROMOTE_WARM": "0"},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"exporting {names} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {k: Path(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


class _PlainRuntime:
    """The SavedModel's ``serving_default`` called with TensorFlow's own API: the limit when workbench's runtime
    cannot be imported (its place in the package may move)."""

    def __init__(self, version_dir: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(str(version_dir))
        self._fn = self._loaded.signatures["serving_default"]

    def predict(self, inputs: dict[str, np.ndarray]) -> Any:
        return {k: v.numpy() for k, v in self._fn(**{k: self._tf.constant(v) for k, v in inputs.items()}).items()}


def limit_runtime(version_dir: Path) -> tuple[Any, str]:
    """The version's runtime as workbench's server runs it (loaded, then optimized as once a version serves), and
    what it is; TensorFlow's plain signature call if workbench's runtime is not where this looks for it."""
    try:
        from workbench.serving.model.frameworks import get_framework
    except ImportError:
        try:
            from workbench.registry.frameworks import get_framework  # before the serving rewrite
        except ImportError:
            return _PlainRuntime(version_dir), "tf.saved_model signature call"
    runtime = get_framework("tensorflow").load(version_dir)
    if hasattr(runtime, "optimize"):
        runtime.optimize()
    return runtime, "workbench's TensorFlow runtime"


def batch(model: str, c: int) -> dict[str, np.ndarray]:
    """``c`` rows of ``model``'s input."""
    name, shape = INPUTS[model]
    return {name: np.random.default_rng(0).random((c, *shape), dtype=np.float32)}


def limit_level(runtime: Any, batch: dict[str, np.ndarray], duration: float) -> dict[str, float]:
    """``runtime.predict`` on ``batch`` for ``duration`` s: rows/s and the latency of one call."""
    c = len(next(iter(batch.values())))
    for _ in range(10):
        runtime.predict(batch)
    times = []
    stop = time.perf_counter() + duration
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        runtime.predict(batch)
        times.append(time.perf_counter() - t0)
    return {
        "rps": c * len(times) / sum(times),
        "p50": float(np.percentile(times, 50)) * 1000,
        "p99": float(np.percentile(times, 99)) * 1000,
        "errors": 0,
    }


class Limit:
    """A process holding one version's runtime that measures its in-process limit when asked (loaded once, idle
    in between, so that it can alternate with the servers' levels)."""

    def __init__(self, model: str, version_dir: Path, threads: int | None = None) -> None:
        """``threads``: TensorFlow's intra-op threads (read once, at its first use); None: its default."""
        self.model = model
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
            env.pop(var, None)
            if threads:
                env[var] = str(threads)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench._models", "in-process", model, str(version_dir)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.kind = self._reply()["runtime"]

    def _reply(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the in-process limit of {self.model} exited with {self._proc.wait()}")
        return json.loads(line)

    def level(self, c: int, duration: float) -> dict[str, float]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{c} {duration}\n")
        self._proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait(30)


def _serve_limit(model: str, version_dir: str) -> None:
    runtime, kind = limit_runtime(Path(version_dir))
    print(json.dumps({"runtime": kind}), flush=True)
    for line in sys.stdin:
        c, duration = line.split()
        print(json.dumps(limit_level(runtime, batch(model, int(c)), float(duration))), flush=True)


def main(argv: list[str]) -> int:
    op, *args = argv
    if op == "export":
        print(json.dumps(export(Path(args[0]), args[1].split(","))))
    elif op == "in-process":
        _serve_limit(*args)
    else:
        raise SystemExit(f"unknown operation {op!r}; known: export, in-process")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
