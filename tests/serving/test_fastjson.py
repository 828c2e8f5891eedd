"""The fast TF Serving body decoder: the bodies clients send most take it, and it never accepts what the general path rejects."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from workbench.registry.signature import InputError, Signature, TensorSpec
from workbench.serving import fastjson, tfserving

IMAGE = Signature((TensorSpec("image", "float32", (None, 2, 2)),), (TensorSpec("p", "float32", (None, 3)),))
PAIR = Signature(
    (TensorSpec("a", "float32", (None, 2)), TensorSpec("b", "int64", (None,))), (TensorSpec("y", "float32", (None,)),)
)
SMALL = Signature((TensorSpec("x", "int8", (None, 2)),), (TensorSpec("y", "float32", (None,)),))
X = [[[0.1, 2], [3, -4e-3]], [[5, 6.5], [7, 8]]]


def general_tfserving(raw: bytes, sig: Signature):
    try:
        return tfserving.parse_predict(orjson.loads(raw), sig)
    except (InputError, orjson.JSONDecodeError) as e:
        return e


def same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k])


def raw(body) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


FAST_TFSERVING = [
    (IMAGE, {"instances": X}),
    (IMAGE, {"instances": X[:1], "signature_name": "serving_default"}),
    (IMAGE, {"inputs": X}),
    (IMAGE, {"inputs": {"image": X}}),
    (PAIR, {"inputs": {"b": [3, -1], "a": [[1.5, 2], [0, 1e-7]]}}),
    (SMALL, {"instances": [[1, -2], [127, -128]]}),
    (IMAGE, json.dumps({"instances": X}, indent=2).encode()),
    (IMAGE, orjson.dumps({"instances": np.random.default_rng(0).random((64, 2, 2)).astype("float32").tolist()})),
]


@pytest.mark.parametrize(("sig", "body"), FAST_TFSERVING)
def test_common_tfserving_bodies_take_the_fast_path_and_agree(sig, body):
    fast = fastjson.tfserving(raw(body), sig)
    assert fast is not None
    expected = general_tfserving(raw(body), sig)
    assert not isinstance(expected, Exception), expected
    same_arrays(fast[0], expected[0])
    assert fast[1] == expected[1]


FALLBACK_TFSERVING = [
    (PAIR, {"instances": [[1, 2], [3], [4, 5, 6]]}),  # ragged with as many numbers as a 3x2 array
    (PAIR, {"instances": [[1, 2], 3, [4]]}),
    (IMAGE, {"instances": [[[1, 2], [3, 4]], [[5, 6, 7, 8]]]}),
    (IMAGE, {"instances": [[[1, 2], [3, 4]]], "signature_name": "[,]"}),
    (IMAGE, {"instances": [[[1, 2], [3, 4]]], "signature_name": "other"}),
    (IMAGE, b'{"instances": [[[1, 2], [3, 4]]], "instances": [[[5, 6], [7, 8]]]}'),
    (IMAGE, {"instances": [[[True, False], [1, 0]]]}),
    (IMAGE, {"instances": [{"image": [[1, 2], [3, 4]]}]}),
    (IMAGE, {"instances": []}),
    (IMAGE, {"instances": [[[1, 2], [3, 4]]], "inputs": [[[1, 2], [3, 4]]]}),
    (IMAGE, b'{"instances": [[[1, 2], [3, 4]]]'),
    (IMAGE, b'{"instances": [[[1, 2], [3, NaN]]]}'),
    (PAIR, {"inputs": {"a": [[1.0, 2.0]], "b": [1.5]}}),
    (PAIR, {"inputs": {"a": [[1.0, 2.0]], "b": [2**70]}}),
    (PAIR, {"inputs": {"a": [[1.0, 2.0]], "b": [1, 2]}}),
    (PAIR, {"inputs": {"a": [[1.0, 2.0]]}}),
    (SMALL, {"instances": [[1, 300]]}),
    (IMAGE, {"instances": [["a", "b"], ["c", "d"]]}),
    (IMAGE, b"[1, 2]"),
]


@pytest.mark.parametrize(("sig", "body"), FALLBACK_TFSERVING)
def test_irregular_tfserving_bodies_fall_back_to_the_general_path(sig, body):
    assert fastjson.tfserving(raw(body), sig) is None


def test_skeleton_of_a_rectangular_array():
    assert fastjson.nested((2, 3)) == b"[[,,],[,,]]"
    assert fastjson.skeleton(b'{"a": [[1, 2.5e-3], [-3, 4]], "s": "x y"}') == b'{"":[[,],[,]],"":""}'
