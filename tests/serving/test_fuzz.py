"""Fuzzing the server's decoders through its HTTP app (hypothesis): TF Serving bodies, KServe V2 bodies with and
without binary data, and model/version/label paths. Every input gets a 2xx or a 4xx that says what is wrong,
never a 5xx, never a hang. Bounded: WORKBENCH_FUZZ_CASES cases per test (default 5,000; 4 tests)."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .inprocess import DENSE, MULTI, NumpyRuntime, check_answer, client, make_app, stop


def dumps(value) -> bytes:  # type: ignore[no-untyped-def]
    return json.dumps(value).encode()  # stdlib: it writes integers past 64 bits too


CASES = int(os.environ.get("WORKBENCH_FUZZ_CASES", "5000"))
FUZZ = settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), database=None)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=40,
)
numbers = st.one_of(st.floats(allow_nan=False, width=32), st.integers(-(2**65), 2**65), st.booleans())
shapes = st.lists(
    st.one_of(
        st.integers(0, 6), st.integers(-3, 2**64), st.just(562949953421313), st.floats(0, 4), st.text(max_size=2)
    ),
    max_size=4,
)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    app = make_app(tmp_path_factory.mktemp("fuzz"), dense=NumpyRuntime(DENSE), multi=NumpyRuntime(MULTI))
    yield app
    stop(app)


def run(app, requests):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        async with client(app) as c:
            for method, path, kwargs in requests:
                r = await asyncio.wait_for(c.request(method, path, **kwargs), timeout=10)
                check_answer(r, (method, path, kwargs))

    asyncio.run(go())


tfserving_bodies = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {"instances": st.lists(st.lists(numbers, max_size=5) | numbers | json_value, max_size=4)},
        optional={"signature_name": json_value, "inputs": json_value},
    ),
    st.fixed_dictionaries({"inputs": st.dictionaries(st.sampled_from(["x", "a", "n", "text", "?"]), json_value)}),
    st.fixed_dictionaries(
        {"instances": st.lists(st.dictionaries(st.sampled_from(["a", "n", "text", "b64"]), json_value), max_size=3)}
    ),
)


@FUZZ
@given(body=tfserving_bodies, model=st.sampled_from(["dense", "multi"]), raw=st.binary(max_size=64))
def test_tf_serving_bodies(app, body, model, raw):  # type: ignore[no-untyped-def]
    run(
        app,
        [
            ("POST", f"/v1/models/{model}:predict", {"content": dumps(body)}),
            ("POST", f"/v1/models/{model}:predict", {"content": raw}),
        ],
    )


def v2_tensor(binary: bool):  # type: ignore[no-untyped-def]
    base = {
        "name": st.sampled_from(["x", "a", "n", "text", "zz"]) | json_value,
        "shape": shapes,
        "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "FP16", "BOOL", "UINT8", "fp32", "NOPE"]) | json_value,
    }
    if binary:
        return st.fixed_dictionaries(
            base, optional={"parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-2, 70) | json_value})}
        )
    return st.fixed_dictionaries(
        base, optional={"data": st.lists(numbers | st.text(max_size=3), max_size=20) | json_value}
    )


@FUZZ
@given(
    tensors=st.lists(v2_tensor(False), max_size=4),
    extra=st.dictionaries(st.sampled_from(["id", "outputs", "parameters"]), json_value),
    model=st.sampled_from(["dense", "multi"]),
)
def test_v2_json_bodies(app, tensors, extra, model):  # type: ignore[no-untyped-def]
    body = {"inputs": tensors, **extra}
    run(app, [("POST", f"/v2/models/{model}/infer", {"content": dumps(body)})])


@FUZZ
@given(
    tensors=st.lists(v2_tensor(True), min_size=1, max_size=3),
    blob=st.binary(max_size=80),
    header=st.one_of(st.none(), st.just("json"), st.text(max_size=4)),
    outputs=st.dictionaries(st.just("parameters"), st.fixed_dictionaries({"binary_data_output": json_value})),
    model=st.sampled_from(["dense", "multi"]),
)
def test_v2_binary_bodies(app, tensors, blob, header, outputs, model):  # type: ignore[no-untyped-def]
    head = dumps({"inputs": tensors, **outputs})
    length = str(len(head)) if header == "json" else header
    headers = {} if length is None else {"inference-header-content-length": length}
    safe = {k: v for k, v in headers.items() if v.isascii() and v.isprintable()}
    run(app, [("POST", f"/v2/models/{model}/infer", {"content": head + blob, "headers": safe})])


segment = st.text(max_size=12)


@FUZZ
@given(
    model=segment,
    version=st.one_of(segment, st.integers(-5, 2**70).map(str)),
    label=segment,
    form=st.sampled_from(["v1", "v1version", "v1label", "v1meta", "v2", "v2version", "v2ready", "v2infer"]),
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE"]),
)
def test_model_version_and_label_paths(app, model, version, label, form, method):  # type: ignore[no-untyped-def]
    q = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
    path = {
        "v1": f"/v1/models/{q(model)}:predict",
        "v1version": f"/v1/models/{q(model)}/versions/{q(version)}:predict",
        "v1label": f"/v1/models/{q(model)}/labels/{q(label)}",
        "v1meta": f"/v1/models/{q(model)}/versions/{q(version)}/metadata",
        "v2": f"/v2/models/{q(model)}",
        "v2version": f"/v2/models/{q(model)}/versions/{q(version)}",
        "v2ready": f"/v2/models/{q(model)}/versions/{q(version)}/ready",
        "v2infer": f"/v2/models/{q(model)}/versions/{q(version)}/infer",
    }[form]
    body = dumps({"instances": [[0.0, 1.0, 2.0, 3.0]]})
    run(app, [(method, path, {"content": body}), (method, path.replace(q(model), "dense", 1), {"content": body})])


def test_fuzzing_would_see_a_server_error(tmp_path: Path) -> None:
    """The check the fuzz tests rely on fails on a 5xx: a model that breaks at run time gets one."""
    broken = make_app(tmp_path, broken=NumpyRuntime(DENSE, fail="graph text: node MatMul_1 in while/body"))
    with pytest.raises(AssertionError):
        run(broken, [("POST", "/v1/models/broken:predict", {"content": b'{"instances": [[1, 2, 3, 4]]}'})])
    stop(broken)
