"""KServe's V2 inference protocol (Open Inference Protocol), REST: infer requests and metadata bodies.

See https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/.
Tensors travel as ``{"name", "shape", "datatype", "data"}`` with ``data``
flat in row-major order (nested lists are accepted too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.registry.signature import InputError, Signature, TensorSpec, coerce

DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "object": "BYTES",
}
NUMPY = {v: k for k, v in DATATYPES.items()}


def parse_infer(body: Any, signature: Signature) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """The inputs as arrays, and the output names asked for (None: all). Raises InputError."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InputError(
            'the body must be a JSON object with "inputs": a list of {"name", "shape", "datatype", "data"}'
        )
    out: dict[str, np.ndarray] = {}
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= set(tensor):
            raise InputError('each input needs "name", "shape", "datatype" and "data"')
        spec = signature.input(str(tensor["name"]))
        out[spec.name] = _tensor(spec, tensor)
    missing = [t.name for t in signature.inputs if t.name not in out]
    if missing:
        raise InputError(f"missing inputs {', '.join(missing)}; this model takes {signature.input_names()}")
    if len({len(v) for v in out.values()}) > 1:
        raise InputError("inputs have different batch sizes")
    wanted = body.get("outputs")
    names = None
    if wanted:
        names = [str(o.get("name")) if isinstance(o, dict) else "" for o in wanted]
        known = {t.name for t in signature.outputs}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(f"unknown outputs {', '.join(unknown)}; this model has {', '.join(sorted(known))}")
    return out, names


def _tensor(spec: TensorSpec, tensor: dict[str, Any]) -> np.ndarray:
    datatype = str(tensor["datatype"]).upper()
    if datatype not in NUMPY:
        raise InputError(f"input {spec.name!r}: unknown datatype {datatype!r}; known: {', '.join(sorted(NUMPY))}")
    want = DATATYPES.get(spec.dtype)
    if datatype != want:
        raise InputError(f"input {spec.name!r} has datatype {datatype}; the model expects {want}")
    shape = tensor["shape"]
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise InputError(f"input {spec.name!r}: shape must be a list of non-negative integers")
    try:
        arr = np.asarray(tensor["data"], dtype=None if datatype == "BYTES" else NUMPY[datatype])
        arr = arr.reshape(shape)
    except (ValueError, TypeError) as e:
        raise InputError(
            f"input {spec.name!r}: data does not fit shape {shape} and datatype {datatype} ({e})"
        ) from None
    return coerce(spec, arr)


def infer_body(
    name: str,
    version: int,
    outputs: dict[str, np.ndarray],
    signature: Signature,
    names: list[str] | None,
    request_id: Any = None,
) -> dict[str, Any]:
    order = names or [t.name for t in signature.outputs if t.name in outputs] or list(outputs)
    body: dict[str, Any] = {
        "model_name": name,
        "model_version": str(version),
        "outputs": [
            {
                "name": n,
                "datatype": DATATYPES.get(outputs[n].dtype.name, "BYTES"),
                "shape": list(outputs[n].shape),
                "data": np.ascontiguousarray(outputs[n]).reshape(-1),
            }
            for n in order
        ],
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def metadata_body(name: str, versions: list[int], framework: str, signature: Signature) -> dict[str, Any]:
    def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "datatype": DATATYPES.get(t.dtype, "BYTES"),
                "shape": [-1 if s is None else s for s in t.shape],
            }
            for t in specs
        ]

    platform = {"tensorflow": "tensorflow_savedmodel"}.get(framework, framework)
    return {
        "name": name,
        "versions": [str(v) for v in sorted(versions)],
        "platform": platform,
        "inputs": tensors(signature.inputs),
        "outputs": tensors(signature.outputs),
    }
