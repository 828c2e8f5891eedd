"""The gRPC protocol modules without a server: TF Serving's and KServe V2's messages as the stock clients build
and read them (``tf.make_tensor_proto`` / ``tf.make_ndarray``, ``tritonclient.grpc``'s request and result code)."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.serving.model.signature import Signature, TensorSpec
from workbench.serving.protocol import MAX_ELEMENTS, InputError

tf = pytest.importorskip("tensorflow")
tfs = pytest.importorskip("workbench.serving.protocol.tfserving_grpc")
v2g = pytest.importorskip("workbench.serving.protocol.v2_grpc")
tc = pytest.importorskip("tritonclient.grpc")
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tritonclient.grpc import _utils as triton_utils  # noqa: E402
from tritonclient.grpc import service_pb2  # noqa: E402

LENET = Signature(
    (TensorSpec("image", "float32", (None, 28, 28)),),
    (TensorSpec("probabilities", "float32", (None, 10)),),
    extra={"signature_name": "serving_default"},
)
TWO = Signature(
    (TensorSpec("text", "object", (None,)), TensorSpec("count", "int8", (None, 2))),
    (TensorSpec("label", "object", (None,)), TensorSpec("score", "float16", (None,))),
)
OVERFLOW = [562949953421313, 128, 256]  # wraps to one row in 64-bit arithmetic


def images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).random((n, 28, 28), dtype=np.float32)


def tf_request(sig: Signature = LENET, **inputs: tensor_pb2.TensorProto) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    for name, tensor in inputs.items():
        request.inputs[name].CopyFrom(tensor)
    return request


# ------------------------------------------------------------------ TF Serving


def test_tfserving_tensor_content_as_tf_make_tensor_proto_writes_it():
    x = images()
    inputs, wanted = tfs.decode_predict(tf_request(image=tf.make_tensor_proto(x)), LENET)
    np.testing.assert_array_equal(inputs["image"], x)
    assert inputs["image"].dtype == np.float32 and wanted is None
    # float64 from a client that did not cast: coerced to the signature's dtype, as REST does
    inputs, _ = tfs.decode_predict(tf_request(image=tf.make_tensor_proto(x.astype(np.float64))), LENET)
    assert inputs["image"].dtype == np.float32


def test_tfserving_typed_fields_and_strings():
    text = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"a", "é".encode()])
    text.tensor_shape.dim.add(size=2)
    count = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT8, int_val=[1, -2, 3, 4])
    count.tensor_shape.dim.add(size=2)
    count.tensor_shape.dim.add(size=2)
    inputs, _ = tfs.decode_predict(tf_request(TWO, text=text, count=count), TWO)
    assert inputs["text"].tolist() == [b"a", "é".encode()]
    assert inputs["count"].dtype == np.int8 and inputs["count"].tolist() == [[1, -2], [3, 4]]

    half = tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF, half_val=np.float16([0.5] * 784).view(np.uint16).tolist())
    for d in (1, 28, 28):
        half.tensor_shape.dim.add(size=d)
    inputs, _ = tfs.decode_predict(tf_request(image=half), LENET)
    assert inputs["image"].dtype == np.float32 and np.all(inputs["image"] == 0.5)

    out_of_range = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[1, 300, 3, 4])
    out_of_range.tensor_shape.dim.add(size=2)
    out_of_range.tensor_shape.dim.add(size=2)
    with pytest.raises(InputError, match="outside the range of int8"):
        tfs.decode_predict(tf_request(TWO, text=text, count=out_of_range), TWO)


def shaped(dtype: int, shape: list[int], content: bytes = b"", **fields) -> tensor_pb2.TensorProto:
    t = tensor_pb2.TensorProto(dtype=dtype, tensor_content=content, **fields)
    for d in shape:
        t.tensor_shape.dim.add(size=d)
    return t


@pytest.mark.parametrize(
    "tensor, message",
    [
        (shaped(types_pb2.DT_FLOAT, OVERFLOW, b"\0" * 4 * 32768), "at most 2147483648"),
        (shaped(types_pb2.DT_FLOAT, [-1, 28, 28]), "non-negative"),
        (shaped(types_pb2.DT_FLOAT, [0, 2**62, 28]), "has dimensions past 2147483648"),  # no elements, yet no array
        (shaped(types_pb2.DT_FLOAT, [2, 28, 28], b"\0" * 12), "tensor_content has 12 bytes"),
        (shaped(types_pb2.DT_FLOAT, [2, 28, 28], float_val=[1.0]), "1 values in float_val do not fill"),
        (shaped(types_pb2.DT_COMPLEX64, [1, 28, 28], b"\0" * 8 * 784), "DT_COMPLEX64 is not supported"),
        (shaped(99, [1, 28, 28]), "dtype 99 is not supported"),
        (shaped(types_pb2.DT_FLOAT, [1, 28, 27], b"\0" * 4 * 28 * 27), r"shape \[1, 28, 27\]; the model expects"),
        (shaped(types_pb2.DT_STRING, [1, 28, 28], string_val=[b"x"] * 784), "must be float32"),
        (shaped(types_pb2.DT_FLOAT, [0, 28, 28]), "the batch is empty"),
    ],
)
def test_tfserving_bad_tensors_are_input_errors(tensor, message):
    with pytest.raises(InputError, match=message):
        tfs.decode_predict(tf_request(image=tensor), LENET)


def test_tfserving_bad_requests_are_input_errors():
    image = tf.make_tensor_proto(images())
    with pytest.raises(InputError, match="unknown input 'x'"):
        tfs.decode_predict(tf_request(x=image), LENET)
    with pytest.raises(InputError, match="missing inputs image"):
        tfs.decode_predict(tf_request(), LENET)
    request = tf_request(image=image)
    request.output_filter.append("logits")
    with pytest.raises(InputError, match="unknown output_filter logits"):
        tfs.decode_predict(request, LENET)
    request = tf_request(image=image)
    request.model_spec.signature_name = "other"
    with pytest.raises(InputError, match="unknown signature_name 'other'"):
        tfs.decode_predict(request, LENET)


def test_tfserving_model_spec():
    spec = tf_request().model_spec
    assert tfs.model_ref(spec) == ("m", None, None)
    spec.version_label = "stable"
    assert tfs.model_ref(spec) == ("m", None, "stable")
    spec.version.value = 3  # version and version_label are one oneof: setting one clears the other
    assert tfs.model_ref(spec) == ("m", 3, None)
    spec.version.value = 0
    with pytest.raises(InputError, match="positive integer"):
        tfs.model_ref(spec)
    spec.name = ""
    with pytest.raises(InputError, match="model_spec.name is empty"):
        tfs.model_ref(spec)


def test_tfserving_encoding_reads_back_with_tf_make_ndarray():
    outputs = {"label": np.array([b"seven", "two"], dtype=object), "score": np.float16([0.25, 1.5])}
    response = tfs.encode_predict("m", 4, outputs, TWO, None)
    assert response.model_spec.name == "m" and response.model_spec.version.value == 4
    assert tf.make_ndarray(response.outputs["label"]).tolist() == [b"seven", b"two"]
    score = tf.make_ndarray(response.outputs["score"])
    assert score.dtype == np.float16 and score.tolist() == [0.25, 1.5]
    assert list(tfs.encode_predict("m", 4, outputs, TWO, ["score"]).outputs) == ["score"]


def test_tfserving_status_and_metadata():
    status = tfs.encode_status([(2, "AVAILABLE", ""), (1, "END", "bad file")])
    assert [(s.version, s.state, s.status.error_message) for s in status.model_version_status] == [
        (2, 30, ""),
        (1, 50, "bad file"),
    ]
    meta = tfs.encode_metadata("m", 2, LENET, ["signature_def"])
    from tensorflow_serving.apis import get_model_metadata_pb2

    defs = get_model_metadata_pb2.SignatureDefMap()
    assert meta.metadata["signature_def"].Unpack(defs)
    image = defs.signature_def["serving_default"].inputs["image"]
    assert image.dtype == types_pb2.DT_FLOAT and [d.size for d in image.tensor_shape.dim] == [-1, 28, 28]
    with pytest.raises(InputError, match="metadata_field must be"):
        tfs.encode_metadata("m", 2, LENET, [])


# ------------------------------------------------------------------ KServe V2


def v2_request(
    *inputs: tc.InferInput, raw: bool = True, outputs: tuple[str, ...] = ()
) -> service_pb2.ModelInferRequest:
    """The request tritonclient sends (its own request builder: raw_input_contents)."""
    request = triton_utils._get_inference_request(
        "m",
        list(inputs),
        "",
        "r1",
        [tc.InferRequestedOutput(o) for o in outputs] or None,
        0,
        False,
        False,
        0,
        None,
        None,
    )
    if not raw:  # the typed contents a hand-written client may send instead
        del request.raw_input_contents[:]
    return request


def infer_input(name: str, array: np.ndarray, datatype: str) -> tc.InferInput:
    i = tc.InferInput(name, list(array.shape), datatype)
    i.set_data_from_numpy(array)
    return i


def test_v2_raw_contents_as_tritonclient_sends_them():
    x = images()
    request = v2g.decode_infer(v2_request(infer_input("image", x, "FP32")), LENET)
    np.testing.assert_array_equal(request.inputs["image"], x)
    assert request.id == "r1" and request.outputs is None

    text = np.array([b"a", "é".encode()], dtype=object)
    count = np.int8([[1, -2], [3, 4]])
    request = v2g.decode_infer(
        v2_request(infer_input("text", text, "BYTES"), infer_input("count", count, "INT8"), outputs=("score",)), TWO
    )
    assert request.inputs["text"].tolist() == text.tolist() and request.inputs["count"].tolist() == count.tolist()
    assert request.outputs == ["score"]


def test_v2_typed_contents():
    request = service_pb2.ModelInferRequest(model_name="m")
    text = request.inputs.add(name="text", datatype="BYTES", shape=[2])
    text.contents.bytes_contents.extend([b"a", b"b"])
    count = request.inputs.add(name="count", datatype="INT8", shape=[2, 2])
    count.contents.int_contents.extend([1, -2, 3, 4])
    inputs = v2g.decode_infer(request, TWO).inputs
    assert inputs["text"].tolist() == [b"a", b"b"] and inputs["count"].dtype == np.int8
    count.contents.int_contents[1] = -200
    with pytest.raises(InputError, match="outside the range of int8"):
        v2g.decode_infer(request, TWO)


def test_v2_bad_requests_are_input_errors():
    x = images(1)
    good = infer_input("image", x, "FP32")

    def overflow(request: service_pb2.ModelInferRequest) -> None:
        del request.inputs[0].shape[:]
        request.inputs[0].shape.extend(OVERFLOW)
        request.raw_input_contents[0] = b"\0" * 4 * 32768

    def extra_raw(request: service_pb2.ModelInferRequest) -> None:
        request.raw_input_contents.append(b"")

    def both(request: service_pb2.ModelInferRequest) -> None:
        request.inputs[0].contents.fp32_contents.append(1.0)

    def datatype(request: service_pb2.ModelInferRequest) -> None:
        request.inputs[0].datatype = "FP64"

    def unknown_datatype(request: service_pb2.ModelInferRequest) -> None:
        request.inputs[0].datatype = "COMPLEX"

    def short(request: service_pb2.ModelInferRequest) -> None:
        request.raw_input_contents[0] = request.raw_input_contents[0][:-4]

    def renamed(request: service_pb2.ModelInferRequest) -> None:
        request.inputs[0].name = "x"

    cases = [
        (overflow, f"at most {MAX_ELEMENTS}"),
        (extra_raw, "raw_input_contents has 2 entries for 1 inputs"),
        (both, "both contents and raw_input_contents"),
        (datatype, "has datatype FP64; the model expects FP32"),
        (unknown_datatype, "unknown datatype 'COMPLEX'"),
        (short, "3132 bytes of binary data"),
        (renamed, "unknown input 'x'"),
    ]
    for spoil, message in cases:
        request = v2_request(good)
        spoil(request)
        with pytest.raises(InputError, match=message):
            v2g.decode_infer(request, LENET)
    with pytest.raises(InputError, match="missing inputs image"):
        v2g.decode_infer(service_pb2.ModelInferRequest(model_name="m"), LENET)
    with pytest.raises(InputError, match="unknown outputs logits"):
        v2g.decode_infer(v2_request(good, outputs=("logits",)), LENET)
    half = service_pb2.ModelInferRequest(model_name="m")
    half.inputs.add(name="score", datatype="FP16", shape=[1])
    with pytest.raises(InputError, match="FP16 has no field in contents"):
        v2g.decode_infer(half, Signature((TensorSpec("score", "float16", (None,)),), ()))
    for text in ("0", "-1", "x", "1" * 19):
        with pytest.raises(InputError, match="model_version must be a positive integer"):
            v2g.model_version(text)
    assert v2g.model_version("") is None and v2g.model_version("12") == 12


def test_v2_encoding_reads_back_with_tritonclient():
    outputs = {"label": np.array([b"seven", "two"], dtype=object), "score": np.float16([0.25, 1.5])}
    request = v2g.decode_infer(
        v2_request(
            infer_input("text", np.array([b"a"] * 2, dtype=object), "BYTES"),
            infer_input("count", np.int8([[1, 2]] * 2), "INT8"),
        ),
        TWO,
    )
    response = v2g.encode_infer("m", 3, outputs, TWO, request)
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "r1")
    result = tc.InferResult(response)
    assert result.as_numpy("label").tolist() == [b"seven", b"two"]
    assert result.as_numpy("score").dtype == np.float16 and result.as_numpy("score").tolist() == [0.25, 1.5]

    meta = v2g.encode_metadata("m", [1, 3], "tensorflow", LENET)
    assert list(meta.versions) == ["1", "3"] and meta.platform == "tensorflow_savedmodel"
    assert (meta.inputs[0].name, meta.inputs[0].datatype, list(meta.inputs[0].shape)) == ("image", "FP32", [-1, 28, 28])
