"""MXNet: serve ``HybridBlock.export`` output (symbol + params), loaded with ``SymbolBlock.imports``.

MXNet 1.9 needs numpy<1.24, so it lives in its own environment (``.venv-mxnet``,
found like a job's: :func:`workbench.environments.for_framework`). Export and
the validation gate run in worker processes of that environment
(:meth:`MXNet.python`); the model server, which runs beside TensorFlow, serves
each MXNet version from a long-lived worker process of it
(:class:`~workbench.serving.model.frameworks.remote.RemoteRuntime`). Inside the
MXNet environment the model runs in-process (:class:`SymbolRuntime`).

Checkpoints taken:

- a folder (or the ``*-symbol.json`` file) with what ``HybridBlock.export(prefix)``
  wrote: ``<prefix>-symbol.json`` and ``<prefix>-<epoch>.params`` (the latest
  epoch is used), plus ``<prefix>-signature.json``, because the symbol records
  no input shapes: ``{"inputs": [{"name": "data", "dtype": "float32", "shape":
  [null, 28, 28]}]}`` (``null``: any size; axis 0 is the batch; "outputs" may
  be left out: the model is run once to find them). ``examples/mnist_mxnet``
  writes all three;
- weights only (``net.save_parameters("ckpt-0003.params")``) with a ``builder``
  returning the ``HybridBlock``, and an example input as its ``example_inputs``
  attribute (an NDArray or tuple of them) or as a ``(block, example_inputs)`` pair.

The served version is ``model-symbol.json``, ``model-0000.params`` and
``model-signature.json``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from workbench import environments
from workbench.errors import CheckpointError, RegistryError
from workbench.serving.model.frameworks.base import Framework, Runtime
from workbench.serving.model.frameworks.builder import resolve_builder
from workbench.serving.model.signature import Signature, TensorSpec

PREFIX = "model"
SYMBOL, PARAMS, SIGNATURE = f"{PREFIX}-symbol.json", f"{PREFIX}-0000.params", f"{PREFIX}-signature.json"
_PARAMS = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d{4})\.params$")


def mxnet_here() -> bool:
    """Whether this interpreter has MXNet (the MXNet environment, or an image built for it)."""
    return importlib.util.find_spec("mxnet") is not None


class MXNet(Framework):
    name = "mxnet"
    format = "mxnet_symbol"

    def python(self) -> str | None:
        env = environments.for_framework(self.name)
        if env is None and not mxnet_here():
            raise RegistryError(
                "MXNet models need the MXNet environment (.venv-mxnet): run `bash scripts/setup-frameworks.sh`, "
                "or name one with WORKBENCH_ENVIRONMENTS=mxnet=/path/to/python"
            )
        return env

    def prepare(self) -> None:
        if mxnet_here():  # else its models run in a worker of the MXNet environment: nothing to import here
            import mxnet  # noqa: F401

    def detect_checkpoint(self, path: Path) -> bool:
        if path.name.endswith("-symbol.json") or _PARAMS.match(path.name):
            return True
        return path.is_dir() and any(path.glob("*-symbol.json")) and any(path.glob("*.params"))

    def detect_export(self, version_dir: Path) -> bool:
        return (version_dir / SYMBOL).is_file() and (version_dir / PARAMS).is_file()

    def export(
        self, checkpoint: Path, dest: Path, *, builder: str | None = None, code_dir: Path | None = None
    ) -> Signature:
        if checkpoint.is_dir() or checkpoint.name.endswith("-symbol.json"):
            _copy_export(checkpoint, dest)
        else:
            _export_weights(checkpoint, dest, builder, code_dir)
        signature = read_signature(dest)
        if not signature.outputs:  # found by running the model once on a sample
            try:
                outputs = SymbolRuntime(dest, signature).predict(signature.sample(2))
            except Exception as e:
                raise CheckpointError(f"the model in {checkpoint} does not load or run: {type(e).__name__}: {e}") from e
            specs = tuple(TensorSpec(k, v.dtype.name, (None, *v.shape[1:])) for k, v in outputs.items())
            signature = Signature(signature.inputs, specs)
            (dest / SIGNATURE).write_text(json.dumps(signature.to_dict()))
        return signature

    def load(self, version_dir: Path) -> Runtime:
        if mxnet_here():
            return SymbolRuntime(version_dir)
        from workbench.serving.model.frameworks.remote import RemoteRuntime

        python = self.python()
        assert python is not None  # python() raises when there is no MXNet anywhere
        return RemoteRuntime(self.name, python, version_dir)


def _copy_export(checkpoint: Path, dest: Path) -> None:
    symbols = [checkpoint] if checkpoint.is_file() else sorted(checkpoint.glob("*-symbol.json"))
    if len(symbols) != 1:
        raise CheckpointError(
            f"{checkpoint} holds {len(symbols)} *-symbol.json files; expected the one of HybridBlock.export"
        )
    prefix = symbols[0].name.removesuffix("-symbol.json")
    folder = symbols[0].parent
    params = sorted(p for p in folder.glob(f"{prefix}-*.params") if _PARAMS.match(p.name))
    if not params:
        raise CheckpointError(f"{folder} has {symbols[0].name} but no {prefix}-<epoch>.params beside it")
    signature = folder / f"{prefix}-signature.json"
    if not signature.is_file():
        raise CheckpointError(
            f"{folder} has no {signature.name}: MXNet symbols do not record input shapes, so write one beside "
            """them, e.g. {"inputs": [{"name": "data", "dtype": "float32", "shape": [null, 28, 28]}]} """
            "(see examples/mnist_mxnet/model.py)"
        )
    shutil.copyfile(symbols[0], dest / SYMBOL)
    shutil.copyfile(params[-1], dest / PARAMS)
    shutil.copyfile(signature, dest / SIGNATURE)


def _export_weights(checkpoint: Path, dest: Path, builder: str | None, code_dir: Path | None) -> None:
    import mxnet as mx

    if builder is None:
        raise CheckpointError(
            f"{checkpoint} is not HybridBlock.export output (a folder with <prefix>-symbol.json and "
            "<prefix>-0000.params); for weights saved with save_parameters, pass builder='module:function' "
            "returning the HybridBlock (with example_inputs)"
        )
    built = resolve_builder(builder, code_dir)()
    block, example = built if isinstance(built, tuple) else (built, getattr(built, "example_inputs", None))
    if example is None:
        raise CheckpointError(
            f"the builder {builder} must give an example input to export with: set block.example_inputs "
            "(an NDArray or tuple of them) or return (block, example_inputs)"
        )
    example = example if isinstance(example, (tuple, list)) else (example,)
    try:
        block.load_parameters(str(checkpoint), ctx=mx.cpu())
    except Exception as e:
        raise CheckpointError(f"the weights in {checkpoint} do not fit the builder's block: {e}") from e
    block.hybridize()
    block(*example)
    block.export(str(dest / PREFIX), epoch=0)
    names = [f"data{i}" if len(example) > 1 else "data" for i in range(len(example))]  # what export names them
    inputs = [TensorSpec(n, np.dtype(x.dtype).name, (None, *x.shape[1:])) for n, x in zip(names, example, strict=True)]
    (dest / SIGNATURE).write_text(json.dumps(Signature(tuple(inputs), ()).to_dict()))


def read_signature(version_dir: Path) -> Signature:
    try:
        data = json.loads((version_dir / SIGNATURE).read_text())
        data.setdefault("outputs", [])
        return Signature.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RegistryError(f"{version_dir / SIGNATURE} is missing or not a signature: {e}") from e


class SymbolRuntime(Runtime):
    """The exported symbol and params as a ``SymbolBlock`` on the CPU, in this (MXNet) process."""

    def __init__(self, version_dir: Path, signature: Signature | None = None):
        import mxnet as mx

        self.signature = signature or read_signature(version_dir)
        self._names = [t.name for t in self.signature.inputs]
        self._outputs = [t.name for t in self.signature.outputs]
        with warnings.catch_warnings():  # the symbol's inputs carry no dtype; the signature gives it per call
            warnings.filterwarnings("ignore", "Cannot decide type for the following arguments", UserWarning)
            self._block = mx.gluon.SymbolBlock.imports(
                str(version_dir / SYMBOL), self._names, str(version_dir / PARAMS), ctx=mx.cpu()
            )
        self._mx = mx

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nd = self._mx.nd
        out = self._block(*[nd.array(inputs[n], dtype=inputs[n].dtype) for n in self._names])
        values = [o.asnumpy() for o in (out if isinstance(out, (list, tuple)) else [out])]
        names = self._outputs or [f"output_{i}" for i in range(len(values))]
        return dict(zip(names, values, strict=True))

    def close(self) -> None:
        self._block = None
