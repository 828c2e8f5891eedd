"""Request inputs checked against a signature, in both TF Serving formats and KServe V2, without a model."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.serving.model.signature import InputError, Signature, TensorSpec
from workbench.serving import tfserving, v2

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


def test_v2_infer_request_and_response():
    body = {
        "inputs": [{"name": "image", "shape": [1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "p"}],
    }
    inputs, wanted = v2.parse_infer(body, ONE)
    assert inputs["image"].shape == (1, 2, 2) and wanted == ["p"]
    out = v2.infer_body("m", 3, {"p": np.array([[0.1, 0.2, 0.7]], "float32")}, ONE, wanted, "id-1")
    assert out["model_version"] == "3" and out["id"] == "id-1"
    assert out["outputs"][0]["shape"] == [1, 3] and out["outputs"][0]["datatype"] == "FP32"
    with pytest.raises(InputError, match="does not fit shape"):
        v2.parse_infer({"inputs": [{**body["inputs"][0], "shape": [2, 2, 2]}]}, ONE)
    with pytest.raises(InputError, match="unknown input 'pixels'"):
        v2.parse_infer({"inputs": [{**body["inputs"][0], "name": "pixels"}]}, ONE)
    with pytest.raises(InputError, match="unknown outputs q"):
        v2.parse_infer({**body, "outputs": [{"name": "q"}]}, ONE)


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
