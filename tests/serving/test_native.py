"""The C predict-body decoders (TF Serving, KServe V2): the general path's bits for all they take, None for the rest."""

from __future__ import annotations

import json
import random
from decimal import Decimal, getcontext

import numpy as np
import orjson
import pytest

from workbench.registry.signature import InputError, Signature, TensorSpec
from workbench.serving import _native, fastjson, v2

DTYPES = {"f": np.float32, "d": np.float64, "q": np.int64}


def general(token: str, kind: str) -> np.ndarray:
    """What the general path makes of one number: orjson's value, through numpy, cast to the input's dtype."""
    return np.asarray([orjson.loads(token)]).astype(DTYPES[kind])


def decode(body: bytes, kind: str = "f"):
    got = _native.decode(body, kind)
    if got is None:
        return None
    key, data, shape, _ = got
    return key, np.frombuffer(data, dtype=DTYPES[kind]).reshape(shape)


def tokens(n: int, seed: int) -> list[tuple[int, str]]:
    """Numbers as clients write them, and the hard cases: decimals next to a double's or float32's rounding midpoint."""
    getcontext().prec = 60
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:  # a float64, shortest repr, over many magnitudes
            out.append((kind, repr(rng.choice([-1, 1]) * rng.uniform(0.1, 1) * 10 ** rng.randint(-8, 12))))
        elif kind == 1:  # a float32 written as its double (numpy's tolist, then orjson)
            out.append((kind, repr(float(np.float32(rng.random())))))
        elif kind == 2:  # 1 to 19 significant digits, any exponent it takes
            digits = str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 18)))
            out.append((kind, f"{rng.choice(['', '-'])}{digits[0]}.{digits[1:] or '0'}e{rng.randint(-26, 20)}"))
        elif kind == 3:  # next to the midpoint of two doubles
            d = rng.uniform(0.1, 1) * 10 ** rng.randint(-7, 8)
            mid = (Decimal(d) + Decimal(float(np.nextafter(d, np.inf)))) / 2
            out.append((kind, format(mid, f".{rng.randint(14, 18)}e")))
        elif kind == 4:  # next to the midpoint of two float32s
            f = np.float32(rng.uniform(0, 300))
            mid = (Decimal(float(f)) + Decimal(float(np.nextafter(f, np.float32(np.inf))))) / 2
            out.append((kind, format(mid, f".{rng.randint(8, 18)}e")))
        else:  # integers: pixel values, and large ones
            out.append((kind, str(rng.randint(0, 255) if rng.random() < 0.5 else rng.randint(-(2**53), 2**53))))
    return out


@pytest.mark.parametrize("kind", ["f", "d"])
def test_every_number_it_takes_has_the_general_paths_bits(kind):
    taken = 0
    for sort, token in tokens(6000, seed=ord(kind)):
        got = decode(b'{"instances": [' + token.encode() + b"]}", kind)
        if got is None:
            assert sort == 2, token  # only numbers past its limits go back (19 digits below 1e-8, say)
            continue
        taken += 1
        want = general(token, kind)
        assert got[1].tobytes() == want.tobytes(), (token, got[1][0], want[0])
    assert taken > 5500


def test_a_float32_image_as_clients_send_it_decodes_whole():
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype("float32")
    got = decode(orjson.dumps({"instances": x.tolist()}))
    assert got is not None and got[0] == "instances"
    assert got[1].shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(got[1], x)
    got[1][0, 0, 0, 0] = 1.0  # writable: the batcher may hand it on as it is


@pytest.mark.parametrize(
    "text",
    [
        '{"inputs": [[1, 2], [3, 4]]}',
        ' \n{ "inputs" :\t[ [1 ,2] ,[ 3,4 ] ] }\r\n',
        json.dumps({"inputs": [[1, 2], [3, 4]]}, indent=4),
    ],
)
def test_whitespace_anywhere_json_allows_it(text):
    key, arr = decode(text.encode(), "d")
    assert key == "inputs" and arr.tolist() == [[1, 2], [3, 4]]


def test_a_signature_name_is_read_and_checked_by_the_server_decoder():
    got = _native.decode(b'{"signature_name": "serving_default", "inputs": [[1, 2]]}', "f")
    assert got is not None and got[0] == "inputs" and got[2] == (1, 2) and got[3] == "serving_default"
    assert _native.decode(b'{"inputs": [[1, 2]]}', "f")[3] is None
    sig = Signature((TensorSpec("x", "float32", (None, 2)),), (TensorSpec("y", "float32", (None,)),))
    for name in ("serving_default", ""):
        inputs, fmt = fastjson.tfserving(orjson.dumps({"instances": [[1, 2]], "signature_name": name}), sig)
        assert fmt == "row" and inputs["x"].tolist() == [[1, 2]]
    # another signature: the general path answers that this model has none of that name
    assert fastjson.tfserving(b'{"instances": [[1, 2]], "signature_name": "classify"}', sig) is None


def test_signs_of_zero_follow_the_general_path():
    _, arr = decode(b'{"instances": [-0, -0.0, 0e5, -0E-3]}', "d")
    want = np.asarray(orjson.loads(b"[-0, -0.0, 0e5, -0E-3]"), dtype=np.float64)
    assert arr.tobytes() == want.tobytes()
    assert not np.signbit(arr[0]) and np.signbit(arr[1])


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2], [3]]}',  # ragged
        b'{"instances": [[1, 2], 3]}',  # mixed depth
        b'{"instances": [1, [2]]}',
        b'{"instances": []}',  # empty: no shape to read
        b'{"instances": [[]]}',
        b'{"instances": ["a"]}',
        b'{"instances": [true]}',
        b'{"instances": [null]}',
        b'{"instances": [NaN]}',
        b'{"instances": [Infinity]}',
        b'{"instances": [01]}',  # not JSON numbers
        b'{"instances": [1.]}',
        b'{"instances": [.5]}',
        b'{"instances": [+1]}',
        b'{"instances": [1e]}',
        b'{"instances": [--1]}',
        b'{"instances": [1 2]}',
        b'{"instances": [1,]}',
        b'{"instances": 1}',
        b'{"instances": [1]} x',  # trailing bytes
        b'{"instances": [1], "signature_nam": "serving_default"}',  # other keys: the Python paths
        b'{"instances": [1], "signature_name": "\\u0073erving_default"}',
        b'{"instances": [1], "signature_name": 7}',
        b'{"signature_name": "", "signature_name": "a", "instances": [1]}',
        b'{"instances": [1], "instances": [2]}',
        b'{"instance": [1]}',
        b'{"inst\\u0061nces": [1]}',
        b"[1, 2]",
        b'{"instances": [12345678901234567890]}',  # 20 digits
        b'{"instances": [1.234567890123456789e-12]}',  # a 19-digit quotient below the exact range
        b'{"instances": [1e300]}',
        b'{"instances": [9007199254740993]}',  # an integer over 2^53: numpy casts it to float32 in one rounding
        b'{"instances": [12345678901234567e5]}',  # a product over 64 bits
        b'{"instances": ' + b"[" * 33 + b"1" + b"]" * 33 + b"}",  # deeper than numpy's 32 dimensions
    ],
)
def test_anything_else_goes_back_to_the_python_paths(body):
    assert _native.decode(body, "f") is None


def test_no_prefix_of_a_body_decodes():
    body = orjson.dumps({"instances": [[0.5, -1.25e-3], [7, 1e2]]})
    assert decode(body) is not None
    for end in range(len(body)):
        assert _native.decode(body[:end], "f") is None, body[:end]


def test_a_bad_kind_is_a_caller_error():
    with pytest.raises(ValueError, match="kind must be"):
        _native.decode(b'{"instances": [1]}', "i")


def test_integers_for_int_inputs_are_read_exactly_and_anything_else_goes_back():
    big = [2**63 - 1, -(2**63), 0, -0, 255, -7]
    _, arr = decode(orjson.dumps({"instances": [big, big[::-1]]}), "q")
    assert arr.dtype == np.int64 and arr.tolist() == [big, big[::-1]]
    for body in (
        b'{"instances": [1.0]}',
        b'{"instances": [1e3]}',
        b'{"instances": [9223372036854775808]}',
        b'{"instances": [-9223372036854775809]}',
        b'{"instances": [1, 2.5]}',
    ):
        assert _native.decode(body, "q") is None, body  # a float or out of int64: the general path
    sig = Signature((TensorSpec("ids", "int32", (None, 3)),), (TensorSpec("y", "float32", (None,)),))
    inputs, _ = fastjson.tfserving(b'{"instances": [[1, 2, 3], [4, 5, -6]]}', sig)
    assert inputs["ids"].dtype == np.int32 and inputs["ids"].tolist() == [[1, 2, 3], [4, 5, -6]]
    # out of int32's range: the general path says so
    assert fastjson.tfserving(b'{"instances": [[1, 2, 3000000000]]}', sig) is None


def test_the_server_decoder_takes_the_native_path_for_float_inputs(monkeypatch):
    sig = Signature((TensorSpec("image", "float32", (None, 2, 2)),), (TensorSpec("p", "float32", (None, 3)),))
    calls = []
    real = _native.decode

    def counting(body, kind):
        calls.append(kind)
        return real(body, kind)

    monkeypatch.setattr(fastjson, "_native", type("Native", (), {"decode": staticmethod(counting)}))
    inputs, fmt = fastjson.tfserving(b'{"instances": [[[1, 2], [3, 4]]]}', sig)
    assert calls == ["f"] and fmt == "row"
    assert inputs["image"].dtype == np.float32 and inputs["image"].shape == (1, 2, 2)
    # a wrong instance shape is not its business: the general path words the error
    assert fastjson.tfserving(b'{"instances": [[1, 2, 3]]}', sig) is None


# ---------------------------------------------------------------- KServe V2

V2_SIG = Signature(
    (TensorSpec("image", "float32", (None, 2, 2)), TensorSpec("scale", "float64", (None,))),
    (TensorSpec("p", "float32", (None, 3)),),
)


def general_v2(raw: bytes, sig: Signature):
    try:
        body = orjson.loads(raw)
        inputs, wanted = v2.parse_infer(body, sig)
        return inputs, body.get("id"), wanted
    except (InputError, orjson.JSONDecodeError) as e:
        return e


def v2_body(**extra) -> dict:
    x = np.random.default_rng(1).random((2, 2, 2)).astype("float32")
    return {
        "inputs": [
            {"name": "image", "shape": [2, 2, 2], "datatype": "FP32", "data": x.reshape(-1).tolist()},
            {"datatype": "fp64", "data": [[0.5], [1e-3]], "name": "scale", "shape": [2]},  # any key order, nested data
        ],
        **extra,
    }


@pytest.mark.parametrize(
    "body", [v2_body(), v2_body(id="req-7"), json.dumps(v2_body(id="ü"), indent=1, ensure_ascii=False).encode()]
)
def test_v2_bodies_of_float_tensors_take_the_native_path_and_agree(body):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    fast = fastjson.v2(raw, V2_SIG)
    assert fast is not None
    inputs, request_id, wanted = general_v2(raw, V2_SIG)
    assert wanted is None and fast[1] == request_id
    assert set(fast[0]) == set(inputs)
    for name, arr in inputs.items():
        assert fast[0][name].dtype == arr.dtype and fast[0][name].shape == arr.shape
        assert fast[0][name].tobytes() == arr.tobytes()


def mutate(change) -> bytes:
    body = v2_body()
    change(body)
    return orjson.dumps(body)


@pytest.mark.parametrize(
    "raw",
    [
        orjson.dumps(v2_body(outputs=[{"name": "p"}])),  # asks for outputs: the general path
        orjson.dumps(v2_body(parameters={})),
        orjson.dumps(v2_body(id=7)),  # a number for an id
        mutate(lambda b: b["inputs"][0].update(name="nope")),  # an unknown input: the general path says so
        mutate(lambda b: b["inputs"][0].update(datatype="FP64")),  # the wrong datatype
        mutate(lambda b: b["inputs"][0].update(datatype="INT32", data=[1] * 8)),
        mutate(lambda b: b["inputs"][0].update(shape=[3, 2, 2])),  # data does not fit the shape
        mutate(lambda b: b["inputs"][0].update(shape=[2, -2, 2])),
        mutate(lambda b: b["inputs"][0].update(data=[[0.0] * 4, [0.0] * 3])),  # ragged
        mutate(lambda b: b["inputs"][0].update(data=["a"] * 8)),
        mutate(lambda b: b["inputs"].pop()),  # an input missing
        mutate(lambda b: b["inputs"].append(dict(b["inputs"][1]))),  # an input twice
        mutate(lambda b: b["inputs"][1].update(shape=[1], data=[0.5])),  # batch sizes differ
        mutate(lambda b: b["inputs"][1].update(parameters={"x": 1})),
        mutate(lambda b: b["inputs"][1].pop("shape")),
        mutate(lambda b: b["inputs"][1].update(name="sc\\u0061le")),
        b'{"inputs": []}',
        b"[]",
        orjson.dumps(v2_body())[:-1],  # truncated
    ],
)
def test_any_other_v2_body_goes_back_to_the_general_path(raw):
    assert fastjson.v2(raw, V2_SIG) is None


def test_every_v2_prefix_is_refused():
    raw = orjson.dumps(v2_body(id="r"))
    for end in range(len(raw)):
        assert _native.decode_v2(raw[:end]) is None
