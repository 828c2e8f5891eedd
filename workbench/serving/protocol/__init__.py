"""The wire formats the model server speaks, one module each, with exactly one decoder and one encoder per format:

- :mod:`.tfserving`: TensorFlow Serving's REST API (row and columnar predict, status, metadata)
- :mod:`.v2`: KServe's V2 / Open Inference Protocol over REST, JSON and the binary tensor data extension
- :mod:`.tfserving_grpc`: TensorFlow Serving's gRPC messages (``tensorflow-serving-api``'s protos)
- :mod:`.v2_grpc`: KServe V2's gRPC messages (``GRPCInferenceService``)

A decoder turns a request into input arrays checked against the model's signature, or raises
:class:`InputError` with a message for the client (a 400 / INVALID_ARGUMENT); an encoder turns output arrays
into the answer. Nothing here knows about sockets, HTTP or the model repository.
"""

from __future__ import annotations

from math import prod

import numpy as np

from workbench.serving.model.signature import InputError, Signature

#: The most elements one request tensor may declare (2**31: 8 GiB of float32, far past any body limit).
MAX_ELEMENTS = 2**31


def element_count(shape: list[int] | tuple[int, ...], name: str) -> int:
    """The number of elements of ``shape``, refused at once when a dimension is negative or the count is past
    :data:`MAX_ELEMENTS` (Python's integers never wrap, so no shape can pass by overflowing), or when an empty
    shape's other dimensions are (``[0, 2**62, 4]``: numpy cannot even make it)."""
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise InputError(f"input {name!r}: shape must be a list of non-negative integers, got {list(shape)}")
    count = prod(shape)
    if count > MAX_ELEMENTS:
        raise InputError(f"input {name!r}: shape {list(shape)} declares {count} elements; at most {MAX_ELEMENTS}")
    if prod(d for d in shape if d) > MAX_ELEMENTS:  # no elements, but numpy refuses such a shape all the same
        raise InputError(f"input {name!r}: shape {list(shape)} has dimensions past {MAX_ELEMENTS} elements")
    return count


def check_batch(inputs: dict[str, np.ndarray], signature: Signature) -> None:
    """Every input of ``signature`` is in ``inputs``, all with the same, non-zero, batch size."""
    missing = [t.name for t in signature.inputs if t.name not in inputs]
    if missing:
        raise InputError(f"missing inputs {', '.join(missing)}; this model takes {signature.input_names()}")
    if len({len(v) for v in inputs.values()}) > 1:
        raise InputError("inputs have different batch sizes")
    if any(len(v) == 0 for v in inputs.values()):
        raise InputError("the batch is empty")


__all__ = ["MAX_ELEMENTS", "InputError", "check_batch", "element_count"]
