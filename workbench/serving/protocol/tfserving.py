"""TensorFlow Serving's REST API: request parsing and response bodies.

See https://www.tensorflow.org/tfx/serving/api_rest. Predict takes the row
format (``{"instances": [...]}``, answered with ``{"predictions": [...]}``) or
the columnar format (``{"inputs": ...}``, answered with ``{"outputs": ...}``);
a model with one input may give each instance as a bare value. Binary
strings travel as ``{"b64": "<base64>"}``, both ways (outputs: those whose
bytes are not UTF-8 text, or whose name ends in ``_bytes``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson

from workbench.serving.model.signature import InputError, Signature, TensorSpec, coerce

DT = {
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "float16": "DT_HALF",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
    "object": "DT_STRING",
}


def decode_predict(raw: bytes, signature: Signature) -> tuple[dict[str, np.ndarray], str]:
    """A predict body: its inputs as batched arrays, and its format ("row" or "columnar"). Raises InputError."""
    body = loads(raw)
    try:
        return parse_predict(body, signature)
    except RecursionError:  # a string input nested deeper than Python recurses
        raise InputError("the inputs are nested too deeply") from None


def loads(raw: bytes) -> Any:
    """A JSON body (orjson), or InputError."""
    if not raw:
        raise InputError("empty body; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e}") from None


def dumps(body: Any) -> bytes:
    """A JSON answer (orjson; numpy arrays written directly, other array types through ``tolist``)."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} cannot be written as JSON")


def parse_predict(body: Any, signature: Signature) -> tuple[dict[str, np.ndarray], str]:
    """A decoded predict body's inputs as batched arrays, and its format ("row" or "columnar"). Raises InputError."""
    if not isinstance(body, dict):
        raise InputError('the body must be a JSON object with "instances" (row format) or "inputs" (columnar format)')
    name = body.get("signature_name")
    if name not in (None, "", signature.extra.get("signature_name", "serving_default")):
        raise InputError(
            f"unknown signature_name {name!r}; this model has {signature.extra.get('signature_name', 'serving_default')!r}"
        )
    if ("instances" in body) == ("inputs" in body):
        raise InputError('give exactly one of "instances" (row format) or "inputs" (columnar format)')
    if "instances" in body:
        return _rows(body["instances"], signature), "row"
    return _columns(body["inputs"], signature), "columnar"


def _rows(instances: Any, sig: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InputError('"instances" must be a non-empty list, one entry per example')
    names = [t.name for t in sig.inputs]
    named = isinstance(instances[0], dict) and (len(names) > 1 or names[0] in instances[0])
    if not named:
        if len(names) > 1:
            raise InputError(f"this model has several inputs ({sig.input_names()}): each instance must be an object")
        return {names[0]: _coerce(sig.inputs[0], instances)}
    out = {}
    for spec in sig.inputs:
        try:
            values = [inst[spec.name] for inst in instances]
        except (KeyError, TypeError):
            raise InputError(f"every instance must be an object with inputs {sig.input_names()}") from None
        out[spec.name] = _coerce(spec, values)
    _no_extra(instances[0], sig)
    return out


def _columns(inputs: Any, sig: Signature) -> dict[str, np.ndarray]:
    names = [t.name for t in sig.inputs]
    if not isinstance(inputs, dict):  # a JSON object is always a map of input names; anything else is a tensor
        if len(names) > 1:
            raise InputError(f'"inputs" must be an object with {sig.input_names()}')
        inputs = {names[0]: inputs}
    _no_extra(inputs, sig)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise InputError(f'"inputs" lacks {", ".join(missing)}; this model takes {sig.input_names()}')
    out = {spec.name: _coerce(spec, inputs[spec.name]) for spec in sig.inputs}
    sizes = {len(v) for v in out.values()}
    if len(sizes) > 1:
        raise InputError(f"inputs have different batch sizes: {sorted(sizes)}")
    if 0 in sizes:
        raise InputError("the batch is empty")
    return out


def _coerce(spec: TensorSpec, value: Any) -> np.ndarray:
    if spec.dtype == "object":
        value = _unb64(value, spec.name)
    return coerce(spec, value)


def _unb64(value: Any, name: str) -> Any:
    """Nested lists with ``{"b64": ...}`` leaves as nested lists of bytes."""
    if isinstance(value, list):
        return [_unb64(v, name) for v in value]
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise InputError(f'input {name!r}: a binary value must be {{"b64": "<base64 string>"}}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as e:
            raise InputError(f"input {name!r}: invalid base64 ({e})") from None
    return value


def _jsonable(name: str, array: np.ndarray) -> Any:
    """``array`` as orjson can write it; string tensors as text, or {"b64": ...} for binary."""
    if array.dtype != object and array.dtype.kind not in "SU":
        return array
    as_b64 = name.endswith("_bytes")

    def one(v: Any) -> Any:
        if isinstance(v, bytes):
            if not as_b64:
                try:
                    return v.decode()
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(v).decode()}
        return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)

    return [one(v) for v in array.reshape(-1)] if array.ndim <= 1 else [_jsonable(name, a) for a in array]


def _no_extra(given: dict[str, Any], sig: Signature) -> None:
    extra = set(given) - {t.name for t in sig.inputs}
    if extra:
        raise InputError(f"unknown inputs {', '.join(sorted(extra))}; this model takes {sig.input_names()}")


def encode_predict(outputs: dict[str, np.ndarray], signature: Signature, fmt: str) -> bytes:
    """The predict answer's bytes."""
    return dumps(predict_body(outputs, signature, fmt))


def predict_body(outputs: dict[str, np.ndarray], signature: Signature, fmt: str) -> dict[str, Any]:
    names = [t.name for t in signature.outputs if t.name in outputs] or list(outputs)
    arrays = {n: _jsonable(n, np.ascontiguousarray(outputs[n])) for n in names}
    if fmt == "columnar":
        return {"outputs": arrays[names[0]] if len(names) == 1 else arrays}
    if len(names) == 1:
        return {"predictions": arrays[names[0]]}
    rows = len(arrays[names[0]])
    return {"predictions": [{n: arrays[n][i] for n in names} for i in range(rows)]}


def status_body(versions: list[tuple[int, str, str]]) -> dict[str, Any]:
    """``versions``: (version, state, error message) with TF Serving's states (AVAILABLE, LOADING, END)."""
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": state,
                "status": {"error_code": "UNKNOWN" if err else "OK", "error_message": err},
            }
            for v, state, err in sorted(versions, reverse=True)
        ]
    }


def metadata_body(name: str, version: int, signature: Signature) -> dict[str, Any]:
    key = signature.extra.get("signature_name", "serving_default")
    tensor_names = signature.extra.get("tensor_names", {})

    def infos(specs: tuple[TensorSpec, ...], kind: str) -> dict[str, Any]:
        return {
            t.name: {
                "dtype": DT.get(t.dtype, "DT_INVALID"),
                "tensor_shape": {
                    "dim": [{"size": str(-1 if s is None else s), "name": ""} for s in t.shape],
                    "unknown_rank": False,
                },
                "name": tensor_names.get(kind, {}).get(t.name, t.name),
            }
            for t in specs
        }

    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    key: {
                        "inputs": infos(signature.inputs, "inputs"),
                        "outputs": infos(signature.outputs, "outputs"),
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }
