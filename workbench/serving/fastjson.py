"""TF Serving predict bodies decoded straight into numpy arrays.

Row-format bodies nest each instance (``[[[0.1], [0.2], ...]]`` for an
image), and the general path (orjson into Python lists, then ``np.asarray``,
which must discover the nesting) costs 200-350 µs for one 28x28 image here,
most of the server's CPU per request. For numeric tensors this module parses
the body with simdjson and copies each tensor out in one call (``as_buffer``,
which flattens nested lists), about 65 µs. (KServe V2 sends ``data`` flat,
which the general path already decodes in about as little time.)

Flattening forgets the nesting, so the tensor is proven rectangular another
way: the body's *skeleton* (its bytes with everything but
``[ ] { } , : "`` deleted) must equal the skeleton the body would have if
every tensor were a rectangular array of its claimed shape. A number leaves
nothing in a skeleton and a string only its two quotes, so equal skeletons
mean equal nesting, and a string holding any of those characters simply
fails to match.

:func:`tfserving` returns None for whatever it does not handle (strings, bools,
named instances, an irregular skeleton, invalid JSON...); the caller then
takes the general path, which also words the error for a bad request. So
this module never rejects a request and never changes what is accepted.

The commonest body of all, one numeric tensor under ``instances`` or
``inputs`` (and perhaps ``signature_name``), goes first to the C decoder
(``workbench.serving._native``, built at install time where a C compiler is
present), which writes floats in the input's dtype and integers as int64
directly: ~17 µs for one 28x28 image, against ~55 µs on the simdjson path.
It returns None for anything else, and this module carries on as above.
:func:`v2` does the same for KServe V2 infer bodies of float tensors.
"""

from __future__ import annotations

from functools import lru_cache
from math import prod
from typing import Any

import numpy as np
import simdjson

from workbench.registry.signature import Signature, TensorSpec, coerce

try:
    from workbench.serving import _native
except ImportError:  # installed without a C compiler: the simdjson path below serves every body
    _native = None  # type: ignore[assignment]

_KEEP = b'[]{},:"'
_DELETE = bytes(c for c in range(256) if c not in _KEEP)
_BUFFER = {"f": ("d", np.float64), "i": ("i", np.int64), "u": ("u", np.uint64)}
# what the C decoder writes for an input dtype (int64 for every int type: coerce checks the range and casts)
_NATIVE = {
    "float32": "f",
    "float64": "d",
    **{t: "q" for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")},
}
_NATIVE_DTYPES = {"f": np.float32, "d": np.float64, "q": np.int64}
_V2_DATATYPES = {"FP32": "float32", "FP64": "float64"}


def skeleton(raw: bytes) -> bytes:
    """``raw`` with everything deleted but the characters that give JSON its structure."""
    return raw.translate(None, _DELETE)


@lru_cache(maxsize=256)
def nested(shape: tuple[int, ...]) -> bytes:
    """The skeleton of a rectangular nested list of numbers of ``shape`` (b"" for a scalar)."""
    if not shape:
        return b""
    inner = nested(shape[1:])
    return b"[" + b",".join([inner] * shape[0]) + b"]"


def tfserving(raw: bytes, signature: Signature) -> tuple[dict[str, np.ndarray], str] | None:
    """Like :func:`workbench.serving.tfserving.parse_predict` on ``raw``, or None: take the general path."""
    try:
        if _native is not None and len(signature.inputs) == 1 and signature.inputs[0].dtype in _NATIVE:
            spec = signature.inputs[0]
            kind = _NATIVE[spec.dtype]
            got = _native.decode(raw, kind)
            if got is not None:
                key, data, shape, asked = got
                if asked not in (None, "", signature.extra.get("signature_name", "serving_default")):
                    return None
                arr = np.frombuffer(data, dtype=_NATIVE_DTYPES[kind]).reshape(shape)
                return {spec.name: coerce(spec, arr)}, "row" if key == "instances" else "columnar"
        doc = simdjson.Parser().parse(raw)
        if not isinstance(doc, simdjson.Object):
            return None
        keys = _keys(doc)
        if not set(keys) <= {"instances", "inputs", "signature_name"} or ("instances" in keys) == ("inputs" in keys):
            return None
        wanted = signature.extra.get("signature_name", "serving_default")
        if "signature_name" in keys and doc["signature_name"] not in ("", wanted):
            return None
        parts: list[bytes] = []
        out: dict[str, np.ndarray] = {}
        for key in keys:
            value = doc[key]
            if key == "signature_name":
                parts.append(b'"":""')
            elif key == "instances" or not isinstance(value, simdjson.Object):
                if len(signature.inputs) != 1:
                    return None
                spec = signature.inputs[0]
                arr, skel = _tensor(value, spec.dtype, None)
                out[spec.name] = arr
                parts.append(b'"":' + skel)
            else:  # columnar, by input name
                inner = []
                for name in _keys(value):
                    spec = _input(signature, name)
                    if spec is None or spec.name in out:
                        return None
                    out[spec.name], skel = _tensor(value[name], spec.dtype, None)
                    inner.append(b'"":' + skel)
                parts.append(b'"":{' + b",".join(inner) + b"}")
        if skeleton(raw) != b"{" + b",".join(parts) + b"}":
            return None
        if len(out) != len(signature.inputs) or len({len(a) for a in out.values()}) != 1:
            return None
        inputs = {spec.name: coerce(spec, out[spec.name]) for spec in signature.inputs}
        return inputs, "row" if "instances" in keys else "columnar"
    except Exception:  # _Fallback, invalid JSON, a wrong type or shape: the general path words the error
        return None


def v2(raw: bytes, signature: Signature) -> tuple[dict[str, np.ndarray], Any] | None:
    """Like :func:`workbench.serving.v2.parse_infer` on ``raw`` plus the body's ``id``, for float tensors; or None."""
    if _native is None:
        return None
    try:
        got = _native.decode_v2(raw)
        if got is None:
            return None
        request_id, tensors = got
        out: dict[str, np.ndarray] = {}
        for name, datatype, shape, data in tensors:
            spec = _input(signature, name)
            dtype = _V2_DATATYPES.get(datatype.upper())
            if spec is None or spec.name in out or dtype is None or spec.dtype != dtype:
                return None
            out[spec.name] = coerce(spec, np.frombuffer(data, dtype=np.float64).astype(dtype).reshape(shape))
        if len(out) != len(signature.inputs) or len({len(a) for a in out.values()}) != 1:
            return None
        return out, request_id
    except Exception:  # a shape that does not fit, a wrong dimension...: the general path words the error
        return None


class _Fallback(Exception):
    pass


def _tensor(value: Any, dtype: str, shape: tuple[int, ...] | None) -> tuple[np.ndarray, bytes]:
    """A numeric tensor out of ``value`` and the skeleton it must have; ``shape`` None: read off its first elements."""
    kind = np.dtype(dtype).kind if dtype != "object" else "O"
    if kind not in _BUFFER or not isinstance(value, simdjson.Array):
        raise _Fallback()
    if shape is None:
        dims, node = [], value
        while isinstance(node, simdjson.Array):
            dims.append(len(node))
            if not dims[-1]:
                raise _Fallback()
            node = node[0]
        shape = tuple(dims)
    of_type, np_type = _BUFFER[kind]
    flat = np.frombuffer(value.as_buffer(of_type=of_type), dtype=np_type)
    if flat.size != prod(shape) or flat.size == 0:
        raise _Fallback()
    return flat.reshape(shape), nested(shape)


def _keys(obj: Any) -> list[str]:
    """An object's keys in body order; a key given twice falls back (orjson keeps the last, simdjson the first)."""
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):
        raise _Fallback()
    return keys


def _input(signature: Signature, name: str) -> TensorSpec | None:
    for spec in signature.inputs:
        if spec.name == name:
            return spec
    return None
