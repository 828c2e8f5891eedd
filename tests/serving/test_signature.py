"""Request inputs checked against a signature, in both TF Serving formats and KServe V2, without a model."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from workbench.serving.model.signature import InputError, Signature, TensorSpec
from workbench.serving.protocol import tfserving, v2

ONE = Signature((TensorSpec("image", "float32", (None, 2, 2)),), (TensorSpec("p", "float32", (None, 3)),))
TWO = Signature(
    (TensorSpec("a", "float32", (None, 2)), TensorSpec("b", "int64", (None,))),
    (TensorSpec("y", "float32", (None,)), TensorSpec("z", "int64", (None, 2))),
)


def test_row_and_columnar_formats_give_the_same_arrays():
    x = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    rows, fmt = tfserving.parse_predict({"instances": x}, ONE)
    named, _ = tfserving.parse_predict({"instances": [{"image": i} for i in x]}, ONE)
    cols, fmt2 = tfserving.parse_predict({"inputs": {"image": x}}, ONE)
    bare, _ = tfserving.parse_predict({"inputs": x}, ONE)
    assert (fmt, fmt2) == ("row", "columnar")
    for got in (rows, named, cols, bare):
        assert got["image"].dtype == np.float32 and got["image"].shape == (2, 2, 2)
        np.testing.assert_array_equal(got["image"], np.array(x, "float32"))


def test_several_inputs_and_outputs():
    inputs, _ = tfserving.parse_predict({"instances": [{"a": [1.0, 2.0], "b": 3}, {"a": [0.5, 0], "b": 4}]}, TWO)
    assert inputs["b"].dtype == np.int64 and inputs["b"].tolist() == [3, 4]
    outputs = {"y": np.array([1.0, 2.0], "float32"), "z": np.array([[1, 2], [3, 4]])}
    assert tfserving.predict_body(outputs, TWO, "row")["predictions"][1]["z"].tolist() == [3, 4]
    assert set(tfserving.predict_body(outputs, TWO, "columnar")["outputs"]) == {"y", "z"}
    with pytest.raises(InputError, match="each instance must be an object"):
        tfserving.parse_predict({"instances": [[1.0, 2.0]]}, TWO)
    with pytest.raises(InputError, match="different batch sizes"):
        tfserving.parse_predict({"inputs": {"a": [[1.0, 2.0]], "b": [1, 2]}}, TWO)
    with pytest.raises(InputError, match="lacks b"):
        tfserving.parse_predict({"inputs": {"a": [[1.0, 2.0]]}}, TWO)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": {"a": [[1.0, 2.0]], "b": [1.5]}}, "input 'b' must be int64; got floating-point numbers"),
        ({"inputs": {"a": [[1.0, 2.0]], "b": [2**70]}}, "must be int64"),
        ({"inputs": {"a": [[1.0, 2.0]], "b": [[1]]}}, "input 'b' has shape [1, 1]; the model expects [?]"),
        ({"inputs": {"a": [["x", "y"]], "b": [1]}}, "must be float32; got strings"),
        ({"inputs": {"a": [[True, False]], "b": [1]}}, None),  # booleans are numbers enough for a float input
    ],
)
def test_dtype_and_shape_errors(body, message):
    if message is None:
        tfserving.parse_predict(body, TWO)
        return
    with pytest.raises(InputError) as e:
        tfserving.parse_predict(body, TWO)
    assert message in str(e.value)


def _v2(body, signature=ONE, binary=b""):
    raw = orjson.dumps(body)
    return v2.decode_infer(raw + binary, signature, str(len(raw)) if binary else None)


def test_v2_infer_request_and_response():
    body = {
        "id": "id-1",
        "inputs": [{"name": "image", "shape": [1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "p"}],
    }
    request = _v2(body)
    assert request.inputs["image"].shape == (1, 2, 2) and request.outputs == ["p"] and not request.binary
    raw, json_length = v2.encode_infer("m", 3, {"p": np.array([[0.1, 0.2, 0.7]], "float32")}, ONE, request)
    out = orjson.loads(raw)
    assert json_length is None and out["model_version"] == "3" and out["id"] == "id-1"
    assert out["outputs"][0]["shape"] == [1, 3] and out["outputs"][0]["datatype"] == "FP32"
    with pytest.raises(InputError, match="do not fill shape"):
        _v2({"inputs": [{**body["inputs"][0], "shape": [2, 2, 2]}]})
    with pytest.raises(InputError, match="unknown input 'pixels'"):
        _v2({"inputs": [{**body["inputs"][0], "name": "pixels"}]})
    with pytest.raises(InputError, match="unknown outputs q"):
        _v2({**body, "outputs": [{"name": "q"}]})


def test_v2_binary_tensor_data_both_ways():
    x = np.arange(8, dtype="<f4").reshape(2, 2, 2)
    body = {
        "inputs": [{"name": "image", "shape": [2, 2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 32}}],
        "parameters": {"binary_data_output": True},
    }
    request = _v2(body, binary=x.tobytes())
    np.testing.assert_array_equal(request.inputs["image"], x)
    assert request.binary == {"p"}
    p = np.array([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]], "float32")
    raw, json_length = v2.encode_infer("m", 1, {"p": p}, ONE, request)
    head = orjson.loads(raw[:json_length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 24} and "data" not in head["outputs"][0]
    np.testing.assert_array_equal(np.frombuffer(raw[json_length:], "<f4").reshape(2, 3), p)
    with pytest.raises(InputError, match="expected 32"):
        _v2({"inputs": [{**body["inputs"][0], "parameters": {"binary_data_size": 28}}]}, binary=x.tobytes()[:28])
    with pytest.raises(InputError, match="does not fit the 32 bytes"):
        _v2({"inputs": [{**body["inputs"][0], "parameters": {"binary_data_size": 64}}]}, binary=x.tobytes())
    with pytest.raises(InputError, match="belong to no input"):
        _v2(body, binary=x.tobytes() + b"extra")
    with pytest.raises(InputError, match="inference-header-content-length"):
        v2.decode_infer(b"{}", ONE, "99")


def test_v2_bytes_tensors_in_binary_data():
    sig = Signature((TensorSpec("text", "object", (None,)),), (TensorSpec("label", "object", (None,)),))
    data = b"".join(struct.pack("<I", len(b)) + b for b in (b"hi", b"\x00\xff"))
    body = {
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(data)}}]
    }
    request = _v2(body, sig, data)
    assert list(request.inputs["text"]) == [b"hi", b"\x00\xff"]
    with pytest.raises(InputError, match="truncated length prefix|runs past the end"):
        _v2({"inputs": [{**body["inputs"][0], "parameters": {"binary_data_size": len(data) - 1}}]}, sig, data[:-1])


@pytest.mark.parametrize("shape", [[562949953421313, 128, 256], [2**62, 2**62, 4], [-1, 2, 2], [1.5, 2, 2], "x"])
def test_v2_shapes_that_overflow_or_are_not_shapes_are_refused_at_once(shape):
    body = {"inputs": [{"name": "image", "shape": shape, "datatype": "FP32", "data": [0.0] * 8}]}
    with pytest.raises(InputError, match="shape"):
        _v2(body)
    binary = {"inputs": [{**body["inputs"][0], "parameters": {"binary_data_size": 32}}]}
    del binary["inputs"][0]["data"]
    with pytest.raises(InputError, match="shape"):
        _v2(binary, binary=bytes(32))


def test_sample_fits_the_signature():
    sample = TWO.sample(3)
    assert sample["a"].shape == (3, 2) and sample["a"].dtype == np.float32
    assert sample["b"].shape == (3,) and sample["b"].dtype == np.int64
    assert Signature.from_dict(TWO.to_dict()) == TWO


def test_binary_strings_travel_as_b64_both_ways():
    sig = Signature(
        (TensorSpec("text", "object", (None,)),),
        (TensorSpec("label", "object", (None,)), TensorSpec("image_bytes", "object", (None,))),
    )
    inputs, _ = tfserving.parse_predict({"instances": [{"b64": "AAH/"}, "plain"]}, sig)
    assert inputs["text"].dtype == object and inputs["text"].tolist() == [b"\x00\x01\xff", "plain"]
    cols, _ = tfserving.parse_predict({"inputs": {"text": [{"b64": "aGk="}]}}, sig)
    assert cols["text"].tolist() == [b"hi"]
    with pytest.raises(InputError, match="invalid base64"):
        tfserving.parse_predict({"instances": [{"b64": "not base64!"}]}, sig)
    with pytest.raises(InputError, match='must be {"b64"'):
        tfserving.parse_predict({"instances": [{"b64": "aGk=", "extra": 1}]}, sig)
    out = {"label": np.array([b"cat", b"\xff\xfe"], dtype=object), "image_bytes": np.array([b"hi", b"x"], dtype=object)}
    body = tfserving.predict_body(out, sig, "row")
    assert body["predictions"][0] == {"label": "cat", "image_bytes": {"b64": "aGk="}}
    assert body["predictions"][1]["label"] == {"b64": "//4="}  # not UTF-8
    import orjson

    assert orjson.loads(orjson.dumps(tfserving.predict_body(out, sig, "columnar")))["outputs"]["label"] == [
        "cat",
        {"b64": "//4="},
    ]
