"""TensorFlow / Keras: export to a SavedModel (the layout TF Serving loads), load it for inference.

Checkpoints taken as they are written naturally:

- a full Keras model: ``.keras`` (``model.save``, ``ModelCheckpoint``) or legacy ``.h5``;
- a SavedModel folder with a ``serving_default`` signature (copied as is);
- weights only, with a ``builder`` that builds the model: ``*.weights.h5``
  (``model.save_weights``) or a ``tf.train.Checkpoint`` prefix / folder whose
  root tracks the model as ``model`` (``tf.train.Checkpoint(model=model, ...)``).

Keras models are exported with one ``serving_default`` signature whose inputs
and outputs carry the model's input and output layer names.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import CheckpointError, RegistryError
from workbench.serving.model.frameworks.base import Framework, Runtime
from workbench.serving.model.frameworks.builder import resolve_builder
from workbench.serving.model.signature import Signature, TensorSpec

SIGNATURE_KEY = "serving_default"


class TensorFlow(Framework):
    name = "tensorflow"
    format = "tf_saved_model"
    loads_without_new_threads = True  # TF's thread pools start with its first use (prepare/warm_up); checked

    def prepare(self) -> None:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

    def warm_up(self, scratch: Path) -> None:
        import keras

        model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2, name="y")])
        export_keras(model, scratch / "model")
        runtime = self.load(scratch / "model")
        runtime.predict(runtime.signature.sample(2))
        runtime.close()

    def detect_checkpoint(self, path: Path) -> bool:
        return (
            path.suffix in (".keras", ".h5", ".hdf5")
            or (path.is_dir() and ((path / "saved_model.pb").exists() or (path / "checkpoint").exists()))
            or Path(f"{path}.index").exists()
        )

    def detect_export(self, version_dir: Path) -> bool:
        return (version_dir / "saved_model.pb").is_file()

    def export(
        self, checkpoint: Path, dest: Path, *, builder: str | None = None, code_dir: Path | None = None
    ) -> Signature:
        if checkpoint.is_dir() and (checkpoint / "saved_model.pb").exists():
            shutil.copytree(checkpoint, dest, dirs_exist_ok=True)
            return read_signature(dest)
        model = self._load_model(checkpoint, builder, code_dir)
        export_keras(model, dest)
        return read_signature(dest)

    def load(self, version_dir: Path) -> Runtime:
        return SavedModelRuntime(version_dir)

    def _load_model(self, checkpoint: Path, builder: str | None, code_dir: Path | None) -> Any:
        import keras

        name = checkpoint.name
        weights_only = name.endswith(".weights.h5") or _tf_checkpoint_prefix(checkpoint) is not None
        if not weights_only and checkpoint.suffix in (".keras", ".h5", ".hdf5"):
            try:
                return keras.models.load_model(checkpoint, compile=False)
            except Exception as e:
                if builder is None:
                    raise CheckpointError(
                        f"cannot load {checkpoint} as a full Keras model ({type(e).__name__}: {e}); if it holds "
                        "weights only, pass builder='module:function' that builds the model"
                    ) from e
                weights_only = True
        if not weights_only:
            raise CheckpointError(
                f"{checkpoint} is not a checkpoint TensorFlow export knows: expected a .keras file, a SavedModel "
                "folder, a .weights.h5 file or a tf.train.Checkpoint prefix"
            )
        if builder is None:
            raise CheckpointError(
                f"{checkpoint} holds weights only; pass builder='module:function' (e.g. 'model:build_lenet') that "
                "returns the model, or save full models (model.save('ckpt-0001.keras'))"
            )
        model = resolve_builder(builder, code_dir)()
        _restore_weights(model, checkpoint)
        return model


def _tf_checkpoint_prefix(path: Path) -> str | None:
    import os

    if Path(f"{path}.index").exists():
        return str(path)
    if path.is_dir() and (path / "checkpoint").exists():
        import tensorflow as tf

        return tf.train.latest_checkpoint(os.fspath(path))  # type: ignore[no-any-return]
    return None


def _restore_weights(model: Any, checkpoint: Path) -> None:
    try:
        if checkpoint.name.endswith(".h5"):
            model.load_weights(checkpoint)
            return
        import tensorflow as tf

        prefix = _tf_checkpoint_prefix(checkpoint)
        status = tf.train.Checkpoint(model=model).restore(prefix)
        status.expect_partial()  # the optimizer's slots are not wanted for serving
        status.assert_existing_objects_matched()
    except Exception as e:
        raise CheckpointError(
            f"the weights in {checkpoint} do not fit the model the builder returned ({type(e).__name__}: {e}); "
            "a tf.train.Checkpoint must track the model as 'model' (tf.train.Checkpoint(model=model, ...))"
        ) from e


def export_keras(model: Any, dest: Path) -> None:
    """Write ``model`` as a SavedModel whose ``serving_default`` names inputs and outputs after the model's layers."""
    import tensorflow as tf

    inputs = list(model.inputs)
    specs = [
        tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=_tensor_name(t, i, "input")) for i, t in enumerate(inputs)
    ]
    names = [s.name for s in specs]
    output_names = _output_names(model)

    def serve(*args: Any) -> dict[str, Any]:
        x = args[0] if len(args) == 1 else dict(zip(names, args, strict=True)) if _takes_dict(model) else list(args)
        y = model(x, training=False)
        ys = list(y.values()) if isinstance(y, dict) else list(y) if isinstance(y, (list, tuple)) else [y]
        return dict(zip(output_names, ys, strict=True))

    module = tf.Module()
    module.serve = tf.function(serve, input_signature=specs)
    signatures = {SIGNATURE_KEY: module.serve.get_concrete_function()}
    # Tracking only the weights, not the Keras objects around them, makes a SavedModel that loads in about half the
    # time (LeNet: ~120 vs ~210 ms here) with half the GIL-holding stretches that requests to the other models
    # served wait behind during a swap. A function that captures other resources (a lookup layer's table) cannot
    # be saved that way, and gets the whole model tracked.
    module.weights = list(model.variables)
    try:
        tf.saved_model.save(module, str(dest), signatures=signatures)
    except (AssertionError, ValueError):
        shutil.rmtree(dest, ignore_errors=True)
        module.model = model
        tf.saved_model.save(module, str(dest), signatures=signatures)


def _output_names(model: Any) -> list[str]:
    """The layers that produce the outputs name them (``output_i`` when they clash or are unknown)."""
    names = list(getattr(model, "output_names", None) or [])
    if not names:
        for t in model.outputs:
            history = getattr(t, "_keras_history", None)
            names.append(str(history[0].name) if history else "")
    if len(set(names)) != len(names) or not all(names):
        names = [f"output_{i}" for i in range(len(model.outputs))]
    return names


def _tensor_name(t: Any, i: int, kind: str) -> str:
    name = str(getattr(t, "name", "") or f"{kind}_{i}")
    return name.split(":")[0].replace("/", "_")


def _takes_dict(model: Any) -> bool:
    return isinstance(getattr(model, "_inputs_struct", None), dict)


def read_signature(version_dir: Path) -> Signature:
    """The ``serving_default`` signature of a SavedModel, read from ``saved_model.pb`` (nothing is loaded)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    except Exception as e:
        raise RegistryError(f"{version_dir} is not a readable SavedModel: {e}") from e
    defs = proto.meta_graphs[0].signature_def if proto.meta_graphs else {}
    if SIGNATURE_KEY not in defs:
        raise RegistryError(
            f"the SavedModel in {version_dir} has no {SIGNATURE_KEY!r} signature (has: {', '.join(defs) or 'none'}); "
            "export it with model.export(path) or tf.saved_model.save(obj, path, signatures=...)"
        )
    sig = defs[SIGNATURE_KEY]

    def specs(infos: Any) -> tuple[TensorSpec, ...]:
        out = []
        for key in infos:
            info = infos[key]
            dtype = tf.dtypes.as_dtype(info.dtype)
            np_name = "object" if dtype == tf.string else np.dtype(dtype.as_numpy_dtype).name
            dims = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
            out.append(TensorSpec(key, np_name, dims))
        return tuple(out)

    tensor_names = {
        "inputs": {k: sig.inputs[k].name for k in sig.inputs},
        "outputs": {k: sig.outputs[k].name for k in sig.outputs},
    }
    return Signature(
        specs(sig.inputs),
        specs(sig.outputs),
        "predict",
        {"signature_name": SIGNATURE_KEY, "tensor_names": tensor_names},
    )


# Folding the variables into the graph as constants saves each call their reads (~90 us per call on LeNet-5, with
# oneDNN: 20-25% of a small batch); only for models this small, as the weights are then held twice.
FREEZE_MAX_BYTES = 64 << 20
# Ops that change a variable: a signature function with any of these keeps its variables (freezing would drop
# the change).
_WRITES = ("Assign", "ResourceApply", "ResourceScatter", "ResourceSparseApply", "ResourceStridedSliceAssign")


class SavedModelRuntime(Runtime):
    """A SavedModel's ``serving_default`` function, called eagerly (TF releases the GIL while it computes)."""

    def __init__(self, version_dir: Path):
        import tensorflow as tf

        self.signature = read_signature(version_dir)
        self._loaded = tf.saved_model.load(str(version_dir))
        self._fn = self._loaded.signatures[SIGNATURE_KEY]
        self._tf = tf
        self.frozen = False  # whether predict calls the function with its variables folded in (see optimize)
        self._flat = self._checked(self._unfrozen())

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._flat(inputs) if self._flat is not None else self._call(inputs)
        return {k: v.numpy() for k, v in out.items()}

    def optimize(self) -> bool:
        """Fold the variables into the function as constants (:meth:`_frozen`); ~0.1 s for LeNet-5, so the
        model server does it once the version serves, or while it loads with no client to keep waiting, rather
        than on the way to the first answer (the validation gate never does)."""
        flat = None if self.frozen else self._checked(self._frozen(), rounding=True)
        if flat is None:
            return False
        self._flat, self.frozen = flat, True
        return True

    def _call(self, inputs: dict[str, np.ndarray]) -> Any:
        tf = self._tf
        return self._fn(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})

    def _checked(
        self, flat: Callable[[dict[str, np.ndarray]], Any] | None, rounding: bool = False
    ) -> Callable[..., Any] | None:
        """``flat`` (a faster call of the signature function, or None) if it answers a sample exactly as the
        keyword call does (``rounding``: floats within rounding, rtol 1e-5; a graph with its variables folded in
        is optimized differently, and a trained LeNet's probabilities moved by up to 8e-7); else None.

        Calling a signature function by keyword spends ~200-370 us of Python (with the GIL) per call matching the
        arguments to its signature, more than LeNet's whole computation here; the inputs this runtime gets are
        always exactly the signature's, so it can skip that (:meth:`_unfrozen`, :meth:`_frozen`). These use
        ConcreteFunction internals (``function_type``, ``_call_flat``), hence the check: any difference or missing
        piece leaves the keyword call (or the faster call already in use)."""
        if flat is None:
            return None
        try:
            sample = self.signature.sample(2)
            want, got = self._call(sample), flat(sample)
            if set(want) != set(got):
                return None
            for k in want:
                a, b = want[k].numpy(), got[k].numpy()
                same = a.shape == b.shape and a.dtype == b.dtype
                if rounding and same and a.dtype.kind == "f":
                    same = bool(np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))
                elif same:
                    same = bool(np.array_equal(a, b))
                if not same:
                    return None
            return flat
        except Exception:  # noqa: BLE001 - anything unexpected in TF's internals: keep what is in use
            return None

    def _unfrozen(self) -> Callable[[dict[str, np.ndarray]], Any] | None:
        try:
            fn = self._fn
            names = list(fn.function_type.parameters)
            captured = fn.captured_inputs
            call = fn._call_flat
        except AttributeError:
            return None
        if sorted(names) != sorted(t.name for t in self.signature.inputs):
            return None

        tensors = self._tensors(names)

        def flat(inputs: dict[str, np.ndarray]) -> Any:
            return call(tensors(inputs), captured)

        return flat

    def _tensors(self, names: list[str]) -> Callable[[dict[str, np.ndarray]], list[Any]]:
        """Inputs -> eager tensors in the order of ``names``: numeric ones built directly (``EagerTensor``, what
        ``tf.constant`` ends in; in a busy server tf.constant's Python took ~55 us per call, this ~45), others
        through ``tf.constant`` (~half ``convert_to_tensor``'s cost)."""
        tf = self._tf
        specs = {t.name: t for t in self.signature.inputs}
        try:
            from tensorflow.python.eager import context
            from tensorflow.python.framework.ops import EagerTensor

            ctx = context.context()
            enums = [
                tf.as_dtype(specs[n].dtype).as_datatype_enum if specs[n].dtype != "object" else None for n in names
            ]
        except (AttributeError, ImportError, TypeError):
            enums = [None] * len(names)

        def tensors(inputs: dict[str, np.ndarray]) -> list[Any]:
            return [
                EagerTensor(inputs[n], ctx.device_name, e) if e is not None else tf.constant(inputs[n])
                for n, e in zip(names, enums, strict=True)
            ]

        return tensors

    def _frozen(self) -> Callable[[dict[str, np.ndarray]], Any] | None:
        """The signature function with its variables as constants (``convert_variables_to_constants_v2``), where
        its variables are small and it writes none of them; None otherwise."""
        try:
            from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

            fn = self._fn
            size = sum(v.shape.num_elements() * v.dtype.size for v in fn.variables)
            if not fn.variables or size > FREEZE_MAX_BYTES:
                return None
            graph = fn.graph.as_graph_def()
            ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
            if any(op.startswith(_WRITES) for op in ops):
                return None
            frozen = convert_variables_to_constants_v2(fn)
            names = [t.name.split(":")[0] for t in frozen.inputs]
            structure, call = fn.structured_outputs, frozen._call_flat
        except Exception:  # noqa: BLE001 - a model the conversion does not cover (tables, ...): keep the variables
            return None
        if sorted(names) != sorted(t.name for t in self.signature.inputs) or not isinstance(structure, dict):
            return None
        keys, tensors = sorted(structure), self._tensors(names)  # (a dict's values flatten in key order)

        def flat(inputs: dict[str, np.ndarray]) -> Any:
            return dict(zip(keys, call(tensors(inputs), []), strict=True))

        return flat

    def close(self) -> None:
        self._fn = None
        self._loaded = None
