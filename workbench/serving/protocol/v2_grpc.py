"""KServe V2 (Open Inference Protocol) over gRPC: ``inference.GRPCInferenceService``'s messages.

See https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/#grpc. The message classes are
``tritonclient.grpc.service_pb2``'s (PyPI ``tritonclient``), generated from the same ``grpc_service.proto``
KServe publishes. An input's data comes either in ``raw_input_contents`` (one entry per input, in the order of
``inputs``: raw little-endian bytes, BYTES elements each after a 4-byte length, exactly as REST's binary
extension; what ``tritonclient`` sends) or in its typed ``contents`` fields. Answers always carry
``raw_output_contents``, as Triton's do. Datatypes, shape checks and raw bytes are :mod:`.v2`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2

from workbench.serving.model.signature import Signature, TensorSpec, coerce
from workbench.serving.protocol import InputError, check_batch, element_count, v2

# The typed field of InferTensorContents for each datatype, and the numpy type of that field's values.
CONTENTS = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint32),
    "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", object),
}


def model_version(text: str) -> int | None:
    """A request's ``model_version`` ("" for the live one). Raises InputError."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1 or len(text) > 18:
        raise InputError(f"model_version must be a positive integer, got {text!r}")
    return int(text)


def decode_infer(request: service_pb2.ModelInferRequest, signature: Signature) -> v2.InferRequest:
    """A ModelInferRequest's inputs checked against ``signature``, and the outputs it asks for. Raises InputError."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        spec = signature.input(tensor.name)
        if spec.name in inputs:
            raise InputError(f"input {spec.name!r} is given twice")
        header = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            if tensor.HasField("contents"):
                raise InputError(f"input {spec.name!r} has both contents and raw_input_contents; give one")
            inputs[spec.name] = v2.from_bytes(spec, header, raw[i])
        else:
            inputs[spec.name] = _from_contents(spec, header, tensor.contents)
    check_batch(inputs, signature)
    known = [t.name for t in signature.outputs]
    wanted = [o.name for o in request.outputs]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise InputError(f"unknown outputs {', '.join(unknown)}; this model has {', '.join(known)}")
    return v2.InferRequest(inputs, wanted or None, set(), id=request.id or None)


def _from_contents(spec: TensorSpec, header: dict[str, Any], contents: service_pb2.InferTensorContents) -> np.ndarray:
    dt, shape = v2.check_header(spec, header)
    count = element_count(shape, spec.name)
    if dt not in CONTENTS:
        raise InputError(f"input {spec.name!r}: {dt} has no field in contents; send it in raw_input_contents")
    field, container = CONTENTS[dt]
    values = getattr(contents, field)
    if len(values) != count:
        raise InputError(f"input {spec.name!r}: {len(values)} values in contents.{field} do not fill shape {shape}")
    arr = np.array(list(values), dtype=object) if container is object else np.array(values, dtype=container)
    return coerce(spec, arr.reshape(shape))


def encode_infer(
    name: str, version: int, outputs: dict[str, np.ndarray], signature: Signature, request: v2.InferRequest
) -> service_pb2.ModelInferResponse:
    """The ModelInferResponse, each output's data in ``raw_output_contents``."""
    response = service_pb2.ModelInferResponse(model_name=name, model_version=str(version), id=request.id or "")
    for n in v2.output_names(request, signature, outputs):
        arr = np.ascontiguousarray(outputs[n])
        response.outputs.add(name=n, datatype=v2.datatype(arr.dtype), shape=arr.shape)
        response.raw_output_contents.append(v2.to_bytes(arr))
    return response


def encode_metadata(
    name: str, versions: list[int], framework: str, signature: Signature
) -> service_pb2.ModelMetadataResponse:
    """The ModelMetadataResponse (REST's metadata body, which is its JSON form)."""
    return json_format.ParseDict(
        v2.metadata_body(name, versions, framework, signature), service_pb2.ModelMetadataResponse()
    )
