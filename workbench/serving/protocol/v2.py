"""KServe's V2 inference protocol (Open Inference Protocol) over REST: infer requests and answers, metadata.

See https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/. Tensors travel as
``{"name", "shape", "datatype", "data"}`` with ``data`` flat in row-major order (nested lists are accepted
too), or, with the binary tensor data extension
(https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md), as raw
little-endian bytes after the JSON: the ``Inference-Header-Content-Length`` header gives the JSON's length, an
input's ``parameters.binary_data_size`` its share of the bytes that follow (BYTES elements each prefixed by a
4-byte length). Outputs come back the same way when the request asks (``parameters.binary_data_output`` for
all, or an output's ``parameters.binary_data``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.serving.model.signature import Signature, TensorSpec, coerce
from workbench.serving.protocol import InputError, check_batch, element_count
from workbench.serving.protocol.tfserving import dumps, loads

HEADER_LENGTH = "inference-header-content-length"
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


@dataclass
class InferRequest:
    """A decoded infer request."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # the outputs asked for, in order (None: all)
    binary: set[str]  # outputs to answer as binary data
    id: Any = None


def datatype(dtype: np.dtype | str) -> str:
    return DATATYPES.get(np.dtype(dtype).name if not isinstance(dtype, str) else dtype, "BYTES")


# ------------------------------------------------------------------ decoding


def decode_infer(raw: bytes, signature: Signature, header_length: str | None = None) -> InferRequest:
    """An infer body (JSON, or JSON then binary data when ``header_length`` is given). Raises InputError."""
    binary = b""
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(raw):
            raise InputError(
                f"{HEADER_LENGTH} must be the length of the JSON part of the body ({len(raw)} bytes), "
                f"got {header_length!r}"
            )
        n = int(header_length)
        raw, binary = raw[:n], raw[n:]
    body = loads(raw)
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InputError(
            'the body must be a JSON object with "inputs": a list of {"name", "shape", "datatype", "data"}'
        )
    out: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype"} <= set(tensor):
            raise InputError('each input needs "name", "shape", "datatype" and "data" (or binary data)')
        spec = signature.input(str(tensor["name"]))
        if spec.name in out:
            raise InputError(f"input {spec.name!r} is given twice")
        size = _parameters(tensor).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InputError(
                    f"input {spec.name!r}: binary_data_size {size!r} does not fit the {len(binary) - offset} "
                    "bytes of binary data left in the body"
                )
            out[spec.name] = from_bytes(spec, tensor, binary[offset : offset + size])
            offset += size
        elif "data" in tensor:
            out[spec.name] = _from_json(spec, tensor)
        else:
            raise InputError(f'input {spec.name!r} has neither "data" nor parameters.binary_data_size')
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes of binary data in the body belong to no input")
    check_batch(out, signature)
    return InferRequest(out, *_wanted(body, signature), id=_request_id(body))


def _parameters(obj: dict[str, Any]) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InputError('"parameters" must be an object')
    return params


def _request_id(body: dict[str, Any]) -> Any:
    rid = body.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InputError('"id" must be a string')
    return rid


def _wanted(body: dict[str, Any], signature: Signature) -> tuple[list[str] | None, set[str]]:
    known = [t.name for t in signature.outputs]
    all_binary = bool(_parameters(body).get("binary_data_output", False))
    wanted = body.get("outputs")
    if not wanted:
        return None, set(known) if all_binary else set()
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
        raise InputError('"outputs" must be a list of {"name": ...}')
    names = [o["name"] for o in wanted]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown outputs {', '.join(unknown)}; this model has {', '.join(sorted(known))}")
    binary = {o["name"] for o in wanted if _parameters(o).get("binary_data", all_binary)}
    return names, binary


def check_header(spec: TensorSpec, tensor: dict[str, Any]) -> tuple[str, list[int]]:
    """A tensor's datatype and shape (``tensor["datatype"]``, ``tensor["shape"]``) checked against ``spec``."""
    dt = tensor["datatype"]
    if not isinstance(dt, str) or dt.upper() not in NUMPY:
        raise InputError(f"input {spec.name!r}: unknown datatype {dt!r}; known: {', '.join(sorted(NUMPY))}")
    want = DATATYPES.get(spec.dtype)
    if dt.upper() != want:
        raise InputError(f"input {spec.name!r} has datatype {dt.upper()}; the model expects {want}")
    shape = tensor["shape"]
    if not isinstance(shape, list):
        raise InputError(f"input {spec.name!r}: shape must be a list of non-negative integers")
    element_count(shape, spec.name)
    return dt.upper(), shape


def _from_json(spec: TensorSpec, tensor: dict[str, Any]) -> np.ndarray:
    dt, shape = check_header(spec, tensor)
    try:
        arr = np.asarray(tensor["data"], dtype=object if dt == "BYTES" else NUMPY[dt])
    except (ValueError, TypeError, OverflowError) as e:
        raise InputError(f"input {spec.name!r}: data is not an array of {dt} ({e})") from None
    if arr.size != element_count(shape, spec.name):
        raise InputError(f"input {spec.name!r}: {arr.size} values do not fill shape {shape}")
    return coerce(spec, arr.reshape(shape))


def from_bytes(spec: TensorSpec, tensor: dict[str, Any], data: bytes) -> np.ndarray:
    """A tensor from its raw little-endian bytes (BYTES: each element after a 4-byte length), as REST's binary
    extension and gRPC's ``raw_input_contents`` carry it."""
    dt, shape = check_header(spec, tensor)
    count = element_count(shape, spec.name)
    if dt == "BYTES":
        arr = np.array(_split_bytes(spec.name, data, count), dtype=object)
    else:
        dtype = np.dtype(NUMPY[dt]).newbyteorder("<")
        if len(data) != count * dtype.itemsize:
            raise InputError(
                f"input {spec.name!r}: {len(data)} bytes of binary data for shape {shape} of {dt}; "
                f"expected {count * dtype.itemsize}"
            )
        arr = np.frombuffer(data, dtype=dtype).astype(NUMPY[dt], copy=False)
    return coerce(spec, arr.reshape(shape))


def _split_bytes(name: str, data: bytes, count: int) -> list[bytes]:
    items, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise InputError(f"input {name!r}: truncated length prefix in its binary BYTES data")
        (n,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + n > len(data):
            raise InputError(f"input {name!r}: a BYTES element runs past the end of its binary data")
        items.append(data[offset : offset + n])
        offset += n
    if len(items) != count:
        raise InputError(f"input {name!r}: {len(items)} BYTES elements in its binary data; the shape says {count}")
    return items


# ------------------------------------------------------------------ encoding


def encode_infer(
    name: str, version: int, outputs: dict[str, np.ndarray], signature: Signature, request: InferRequest
) -> tuple[bytes, int | None]:
    """The answer's bytes, and the length of its JSON part when binary data follows it (else None)."""
    tensors, chunks = [], []
    for n in output_names(request, signature, outputs):
        arr = np.ascontiguousarray(outputs[n])
        tensor: dict[str, Any] = {"name": n, "datatype": datatype(arr.dtype), "shape": list(arr.shape)}
        if n in request.binary:
            chunk = to_bytes(arr)
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = _jsonable(arr.reshape(-1))
        tensors.append(tensor)
    body: dict[str, Any] = {"model_name": name, "model_version": str(version), "outputs": tensors}
    if request.id is not None:
        body["id"] = request.id
    head = dumps(body)
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def output_names(request: InferRequest, signature: Signature, outputs: dict[str, np.ndarray]) -> list[str]:
    """The outputs an answer carries, in order: those asked for, else the signature's."""
    return request.outputs or [t.name for t in signature.outputs if t.name in outputs] or list(outputs)


def to_bytes(arr: np.ndarray) -> bytes:
    """``arr`` as raw little-endian bytes (strings: each after a 4-byte length), the inverse of from_bytes."""
    if arr.dtype == object or arr.dtype.kind in "SU":
        parts = []
        for v in arr.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode()
            parts += [struct.pack("<I", len(b)), b]
        return b"".join(parts)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _jsonable(flat: np.ndarray) -> Any:
    if flat.dtype != object and flat.dtype.kind not in "SU":
        return flat
    return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in flat]


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
