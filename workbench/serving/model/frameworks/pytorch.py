"""PyTorch: serve ``torch.export`` programs (``ExportedProgram``, saved as ``model.pt2``).

Why torch.export and not TorchScript: ``torch.jit.script`` / ``trace`` /
``save`` are deprecated in torch 2.13 (they warn "Please switch to
torch.compile or torch.export"); an ExportedProgram is the format PyTorch
keeps, is self-contained (no model code needed to load it) and keeps a
dynamic batch dimension, which the server's batching needs.

Checkpoints taken:

- an ExportedProgram file (``torch.export.save(program, "ckpt-0003.pt2")``),
  or a checkpoint folder holding ``model.pt2`` (what
  ``examples/mnist_torch`` writes: ``ckpt-0003/model.pt2`` + its training
  state). It is copied as is; export the module you want served (e.g. with a
  softmax at the end) with a dynamic batch dimension;
- weights only (``torch.save(model.state_dict(), "ckpt-0003.pt")``, or a dict
  holding it under ``"model"`` / ``"state_dict"`` / ``"model_state_dict"``)
  with a ``builder`` returning the ``nn.Module``, and an example input as its
  ``example_inputs`` attribute (a tensor or tuple of tensors) or as a
  ``(module, example_inputs)`` pair: it is exported with axis 0 of every
  input dynamic.

The served version is ``<version>/model.pt2``. Signature: the program's user
inputs by name (the ``forward`` argument names), its outputs by key when
``forward`` returns a dict, else ``output_0``, ``output_1``...

Threads: unless ``OMP_NUM_THREADS`` says otherwise, a loaded program computes
with a quarter of the CPUs (at least one). The server batches requests and
shares its CPUs with TensorFlow models and its HTTP loop; torch's default
(one OpenMP thread per CPU) made LeNet 10-25x slower here (2 shared CPUs:
0.9 ms per request with one thread, 8.8 ms with two).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import CheckpointError, RegistryError
from workbench.serving.model.frameworks.base import Framework, Runtime
from workbench.serving.model.frameworks.builder import resolve_builder
from workbench.serving.model.signature import Signature, TensorSpec

PROGRAM = "model.pt2"
STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")


class PyTorch(Framework):
    name = "pytorch"
    format = "torch_export"

    def prepare(self) -> None:
        import torch  # noqa: F401

    def detect_checkpoint(self, path: Path) -> bool:
        return path.suffix in (".pt2", ".pt", ".pth") or (path.is_dir() and _program_in(path) is not None)

    def detect_export(self, version_dir: Path) -> bool:
        return (version_dir / PROGRAM).is_file()

    def export(
        self, checkpoint: Path, dest: Path, *, builder: str | None = None, code_dir: Path | None = None
    ) -> Signature:
        program = (
            _program_in(checkpoint) if checkpoint.is_dir() else checkpoint if checkpoint.suffix == ".pt2" else None
        )
        if program is not None:
            shutil.copyfile(program, dest / PROGRAM)
        else:
            _export_state_dict(checkpoint, dest / PROGRAM, builder, code_dir)
        return program_signature(_load_program(dest / PROGRAM))

    def load(self, version_dir: Path) -> Runtime:
        return ProgramRuntime(version_dir / PROGRAM)


def _program_in(folder: Path) -> Path | None:
    if (folder / PROGRAM).is_file():
        return folder / PROGRAM
    found = sorted(folder.glob("*.pt2"))
    return found[0] if len(found) == 1 else None


def _load_program(path: Path) -> Any:
    import torch

    try:
        return torch.export.load(path)
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a loadable torch.export program ({type(e).__name__}: {e}); "
            "save one with torch.export.save(torch.export.export(model, example_inputs), path)"
        ) from e


def _export_state_dict(checkpoint: Path, dest: Path, builder: str | None, code_dir: Path | None) -> None:
    import torch

    if builder is None:
        raise CheckpointError(
            f"{checkpoint} is not a torch.export program (.pt2, or a folder holding model.pt2); for weights only, "
            "pass builder='module:function' returning the nn.Module (with example_inputs), or save "
            "torch.export.save(torch.export.export(model, example_inputs), 'ckpt-0001.pt2') while training"
        )
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {checkpoint} with torch.load ({type(e).__name__}: {e})") from e
    for key in STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    built = resolve_builder(builder, code_dir)()
    module, example = built if isinstance(built, tuple) else (built, getattr(built, "example_inputs", None))
    if example is None:
        raise CheckpointError(
            f"the builder {builder} must give an example input to export with: set module.example_inputs "
            "(a tensor or tuple of tensors) or return (module, example_inputs)"
        )
    try:
        module.load_state_dict(state)
    except Exception as e:
        raise CheckpointError(f"the weights in {checkpoint} do not fit the builder's module: {e}") from e
    example = example if isinstance(example, tuple) else (example,)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        program = torch.export.export(module.eval(), example, dynamic_shapes=tuple({0: batch} for _ in example))
    except Exception as e:
        raise RegistryError(f"torch.export could not export the builder's module ({type(e).__name__}: {e})") from e
    torch.export.save(program, dest)


def program_signature(program: Any) -> Signature:
    """Inputs and outputs of an ExportedProgram, from its graph's placeholder and output metadata."""
    from torch.export.graph_signature import InputKind

    nodes = {n.name: n for n in program.graph.nodes}
    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    inputs = tuple(_spec(name, nodes[name].meta.get("val")) for name in user)
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    values = [a.meta.get("val") if hasattr(a, "meta") else None for a in out_node.args[0]]
    values = values[-len(program.graph_signature.user_outputs) :]  # mutated buffers come first
    return Signature(
        inputs, tuple(_spec(name, v) for name, v in zip(output_names(program, len(values)), values, strict=True))
    )


def output_names(program: Any, count: int) -> list[str]:
    spec = program.call_spec.out_spec
    if spec is not None and spec.type is dict and len(spec.context) == count:
        return [str(k) for k in spec.context]
    return [f"output_{i}" for i in range(count)]


def _spec(name: str, value: Any) -> TensorSpec:
    import torch

    if value is None or not hasattr(value, "shape"):
        raise RegistryError(f"the exported program's {name!r} is not a tensor; serve programs of tensors only")
    dims = tuple(int(d) if isinstance(d, int) else None for d in value.shape)
    return TensorSpec(name, str(torch.empty((), dtype=value.dtype).numpy().dtype), dims)


class ProgramRuntime(Runtime):
    """An ExportedProgram as a callable module, run under ``torch.inference_mode``."""

    def __init__(self, path: Path):
        import torch

        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // 4))
        program = _load_program(path)
        self.signature = program_signature(program)
        self._names = [t.name for t in self.signature.inputs]
        self._outputs = [t.name for t in self.signature.outputs]
        self._module = program.module()
        self._torch = torch

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        # from_numpy shares memory and warns on read-only arrays: those are copied.
        args = [torch.from_numpy(a if a.flags.writeable else a.copy()) for a in (inputs[n] for n in self._names)]
        with torch.inference_mode():
            out = self._module(*args)
        values = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (list, tuple)) else [out]
        return {name: v.detach().cpu().numpy() for name, v in zip(self._outputs, values, strict=True)}

    def close(self) -> None:
        self._module = None
