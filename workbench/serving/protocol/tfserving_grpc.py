"""TensorFlow Serving's gRPC messages: PredictRequest/PredictResponse, model metadata and model status.

The messages are the official ones from PyPI ``tensorflow-serving-api`` (``tensorflow_serving.apis``), whose
modules import TensorFlow's own core protos (``tensorflow.core.framework``): importing this module imports
TensorFlow. Tensors are decoded from the ``TensorProto`` fields with numpy alone (never ``tf.make_ndarray``):
``tensor_content`` holds raw little-endian bytes (what ``tf.make_tensor_proto`` writes for numbers), the typed
``*_val`` fields one value per element (``half_val`` the float16 bit patterns), and ``DT_STRING`` tensors
``string_val``. A typed field must hold exactly as many values as the shape has elements: TF's broadcast of a
single value is not accepted, so no small message can ask for a large allocation.

The dtype names are :data:`workbench.serving.protocol.tfserving.DT`'s; status and metadata answers are built
from the REST module's bodies, which are the protos' JSON form.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2

from workbench.serving.model.signature import Signature, TensorSpec, coerce
from workbench.serving.protocol import InputError, check_batch, element_count, tfserving

NUMPY = {dt: np.dtype(name) for name, dt in tfserving.DT.items()}  # "DT_FLOAT" -> float32
# The typed field of each dtype, and the numpy type of that field's values (TensorFlow's tensor.proto).
TYPED = {
    "DT_FLOAT": ("float_val", np.float32),
    "DT_DOUBLE": ("double_val", np.float64),
    "DT_HALF": ("half_val", np.int32),
    "DT_INT8": ("int_val", np.int32),
    "DT_INT16": ("int_val", np.int32),
    "DT_INT32": ("int_val", np.int32),
    "DT_UINT8": ("int_val", np.int32),
    "DT_UINT16": ("int_val", np.int32),
    "DT_INT64": ("int64_val", np.int64),
    "DT_UINT32": ("uint32_val", np.uint32),
    "DT_UINT64": ("uint64_val", np.uint64),
    "DT_BOOL": ("bool_val", np.bool_),
    "DT_STRING": ("string_val", object),
}


def model_ref(spec: model_pb2.ModelSpec) -> tuple[str, int | None, str | None]:
    """The model name, version and label a ``ModelSpec`` asks for (version and label None when not given)."""
    if not spec.name:
        raise InputError("model_spec.name is empty; name the model to call")
    label = spec.version_label or None
    if not spec.HasField("version"):
        return spec.name, None, label
    if spec.version.value < 1:
        raise InputError(f"model_spec.version must be a positive integer, got {spec.version.value}")
    return spec.name, spec.version.value, None


def decode_predict(
    request: predict_pb2.PredictRequest, signature: Signature
) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """A PredictRequest's inputs as batched arrays checked against ``signature``, and the outputs it asks for
    (``output_filter``; None: all). Raises InputError."""
    key = _signature_name(signature)
    if request.model_spec.signature_name not in ("", key):
        raise InputError(f"unknown signature_name {request.model_spec.signature_name!r}; this model has {key!r}")
    inputs = {}
    for name, tensor in request.inputs.items():
        spec = signature.input(name)
        inputs[spec.name] = to_array(spec, tensor)
    check_batch(inputs, signature)
    return inputs, _wanted(request.output_filter, signature)


def to_array(spec: TensorSpec, tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """One TensorProto as an array of ``spec``'s dtype and shape. Raises InputError."""
    try:
        dt = types_pb2.DataType.Name(tensor.dtype)
    except ValueError:
        dt = str(tensor.dtype)
    if dt not in NUMPY:
        raise InputError(f"input {spec.name!r}: dtype {dt} is not supported; supported: {', '.join(sorted(NUMPY))}")
    if tensor.tensor_shape.unknown_rank:
        raise InputError(f"input {spec.name!r}: tensor_shape has unknown rank; give its dimensions")
    shape = [d.size for d in tensor.tensor_shape.dim]
    count = element_count(shape, spec.name)
    if tensor.tensor_content and dt != "DT_STRING":
        arr = _from_content(spec.name, tensor.tensor_content, NUMPY[dt], shape, count)
    else:
        arr = _from_typed(spec.name, tensor, dt, shape, count)
    return coerce(spec, arr.reshape(shape))


def _from_content(name: str, content: bytes, dtype: np.dtype, shape: list[int], count: int) -> np.ndarray:
    wire = dtype.newbyteorder("<")
    if len(content) != count * wire.itemsize:
        raise InputError(
            f"input {name!r}: tensor_content has {len(content)} bytes; shape {shape} of {dtype.name} "
            f"needs {count * wire.itemsize}"
        )
    return np.frombuffer(content, dtype=wire).astype(dtype, copy=False)


def _from_typed(name: str, tensor: tensor_pb2.TensorProto, dt: str, shape: list[int], count: int) -> np.ndarray:
    field, container = TYPED[dt]
    values = getattr(tensor, field)
    if len(values) != count:
        raise InputError(f"input {name!r}: {len(values)} values in {field} do not fill shape {shape} ({count})")
    if container is object:
        return np.array(list(values), dtype=object)
    arr: np.ndarray = np.array(values, dtype=container)
    if dt == "DT_HALF":  # float16 bit patterns
        if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
            raise InputError(f"input {name!r}: half_val holds values that are not float16 bit patterns")
        return arr.astype(np.uint16).view(np.float16)
    return arr


def _wanted(names: Iterable[str], signature: Signature) -> list[str] | None:
    wanted = list(names)
    known = [t.name for t in signature.outputs]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise InputError(f"unknown output_filter {', '.join(unknown)}; this model has {', '.join(known)}")
    return wanted or None


def _signature_name(signature: Signature) -> str:
    return str(signature.extra.get("signature_name", "serving_default"))


# ------------------------------------------------------------------ encoding


def encode_predict(
    name: str, version: int, outputs: dict[str, np.ndarray], signature: Signature, wanted: list[str] | None
) -> predict_pb2.PredictResponse:
    """The PredictResponse: every output (or those in ``wanted``) as a TensorProto."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = name
    response.model_spec.version.value = version
    response.model_spec.signature_name = _signature_name(signature)
    for n in wanted or [t.name for t in signature.outputs if t.name in outputs] or list(outputs):
        to_tensor(outputs[n], response.outputs[n])
    return response


def to_tensor(array: np.ndarray, tensor: tensor_pb2.TensorProto) -> None:
    """Fill ``tensor`` with ``array``: numbers as ``tensor_content``, strings as ``string_val``."""
    arr = np.ascontiguousarray(array)
    for d in arr.shape:
        tensor.tensor_shape.dim.add(size=d)
    if arr.dtype == object or arr.dtype.kind in "SU":
        tensor.dtype = types_pb2.DT_STRING
        tensor.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in arr.reshape(-1))
        return
    if arr.dtype.name not in tfserving.DT:
        raise ValueError(f"an output of dtype {arr.dtype.name} cannot travel as a TensorProto")
    tensor.dtype = types_pb2.DataType.Value(tfserving.DT[arr.dtype.name])
    tensor.tensor_content = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def encode_metadata(
    name: str, version: int, signature: Signature, fields: Iterable[str]
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The GetModelMetadataResponse for ``metadata_field`` ``["signature_def"]``, the one TF Serving knows."""
    if list(fields) != ["signature_def"]:
        raise InputError(f"metadata_field must be ['signature_def'], got {list(fields)}")
    body = tfserving.metadata_body(name, version, signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    json_format.ParseDict(body["model_spec"], response.model_spec)
    signatures = json_format.ParseDict(
        body["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap(), ignore_unknown_fields=True
    )
    response.metadata["signature_def"].Pack(signatures)
    return response


def encode_status(rows: list[tuple[int, str, str]]) -> get_model_status_pb2.GetModelStatusResponse:
    """The GetModelStatusResponse of (version, state, error) rows (:meth:`ModelState.status`)."""
    body: dict[str, Any] = tfserving.status_body(rows)
    return json_format.ParseDict(body, get_model_status_pb2.GetModelStatusResponse())
