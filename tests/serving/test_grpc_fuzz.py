"""Fuzzing the gRPC services (hypothesis) over a real socket: TF Serving PredictRequests with arbitrary TensorProtos,
KServe V2 ModelInferRequests with typed and raw contents, and model/version/label fields of every call. Every call
gets OK or a client error with a message (INVALID_ARGUMENT, NOT_FOUND), never INTERNAL or UNKNOWN, never a hang.
Bounded: WORKBENCH_FUZZ_CASES cases per test (default 5,000; 3 tests). The models are :mod:`.inprocess`'s numpy
functions, served by a GRPCServer in this process."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.backends.local.processes import free_ports

from .inprocess import DENSE, MULTI, NumpyRuntime, make_app, stop

pytest.importorskip("tensorflow_serving.apis")
pytest.importorskip("tritonclient.grpc")
from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

CASES = int(os.environ.get("WORKBENCH_FUZZ_CASES", "5000"))
FUZZ = settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}

int64 = st.integers(-(2**63), 2**63 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
dims = st.lists(st.one_of(st.integers(0, 6), st.integers(-3, 2**63 - 1), st.just(562949953421313)), max_size=4)
names = st.sampled_from(["x", "a", "n", "text", "zz", ""])
models = st.sampled_from(["dense", "multi", "nope", ""])


def serve(tmp: Path, **models):  # type: ignore[no-untyped-def]
    from workbench.serving.transport.grpc import GRPCServer

    app = make_app(tmp, **models)
    server = GRPCServer(app.repo, app.metrics, "127.0.0.1", free_ports(1)[0])
    server.start()
    return app, server, grpc.insecure_channel(f"127.0.0.1:{server.port}")


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory):
    app, server, channel = serve(
        tmp_path_factory.mktemp("grpcfuzz"), dense=NumpyRuntime(DENSE), multi=NumpyRuntime(MULTI)
    )
    yield channel
    channel.close()
    server.stop(grace=1)
    stop(app)


def check(call, request) -> None:  # type: ignore[no-untyped-def]
    """OK, or a client error that says what is wrong."""
    try:
        call(request, timeout=10)
    except grpc.RpcError as e:
        assert e.code() in CLIENT_ERRORS and e.details(), (request, e.code(), e.details())


@st.composite
def tensor_protos(draw) -> tensor_pb2.TensorProto:  # type: ignore[no-untyped-def]
    t = tensor_pb2.TensorProto(
        dtype=draw(st.sampled_from([1, 2, 3, 4, 6, 7, 9, 10, 17, 19, 22, 23]) | st.integers(0, 40))
    )
    for d in draw(dims):
        t.tensor_shape.dim.add(size=d)
    t.tensor_shape.unknown_rank = draw(st.booleans().filter(lambda b: not b) | st.booleans())
    t.tensor_content = draw(st.binary(max_size=80))
    field, values = draw(
        st.sampled_from(
            [
                ("float_val", st.floats(width=32)),
                ("double_val", st.floats()),
                ("int_val", int32),
                ("half_val", int32),
                ("int64_val", int64),
                ("uint32_val", st.integers(0, 2**32 - 1)),
                ("uint64_val", st.integers(0, 2**64 - 1)),
                ("bool_val", st.booleans()),
                ("string_val", st.binary(max_size=6)),
            ]
        )
    )
    getattr(t, field).extend(draw(st.lists(values, max_size=12)))
    return t


@FUZZ
@given(
    model=models,
    inputs=st.dictionaries(names, tensor_protos(), max_size=3),
    version=st.none() | int64,
    label=st.none() | st.text(max_size=6),
    signature=st.sampled_from(["", "serving_default", "other"]),
    output_filter=st.lists(st.sampled_from(["y", "total", "length", "zz"]), max_size=2),
)
def test_tf_serving_predict(channel, model, inputs, version, label, signature, output_filter):  # type: ignore[no-untyped-def]
    request = predict_pb2.PredictRequest(output_filter=output_filter)
    request.model_spec.name, request.model_spec.signature_name = model, signature
    if label is not None:
        request.model_spec.version_label = label
    if version is not None:
        request.model_spec.version.value = version
    for name, tensor in inputs.items():
        request.inputs[name].CopyFrom(tensor)
    check(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict, request)


@st.composite
def infer_tensors(draw) -> service_pb2.ModelInferRequest.InferInputTensor:  # type: ignore[no-untyped-def]
    datatypes = st.sampled_from(["FP32", "FP64", "INT64", "INT8", "UINT8", "BYTES", "FP16", "BOOL", "fp32", "NOPE"])
    t = service_pb2.ModelInferRequest.InferInputTensor(name=draw(names), datatype=draw(datatypes), shape=draw(dims))
    field, values = draw(
        st.sampled_from(
            [
                ("fp32_contents", st.floats(width=32)),
                ("fp64_contents", st.floats()),
                ("int_contents", int32),
                ("int64_contents", int64),
                ("uint_contents", st.integers(0, 2**32 - 1)),
                ("uint64_contents", st.integers(0, 2**64 - 1)),
                ("bool_contents", st.booleans()),
                ("bytes_contents", st.binary(max_size=6)),
            ]
        )
    )
    getattr(t.contents, field).extend(draw(st.lists(values, max_size=12)))
    return t


@FUZZ
@given(
    model=models,
    version=st.sampled_from(["", "1", "2", "0", "-1", "x", "1" * 19]),
    tensors=st.lists(infer_tensors(), max_size=3),
    raw=st.none() | st.lists(st.binary(max_size=40), max_size=4),
    outputs=st.lists(st.sampled_from(["y", "total", "zz"]), max_size=2),
)
def test_v2_model_infer(channel, model, version, tensors, raw, outputs):  # type: ignore[no-untyped-def]
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, id="f")
    request.inputs.extend(tensors)
    if raw is not None:
        for t in request.inputs:
            t.ClearField("contents")
        request.raw_input_contents.extend(raw)
    for name in outputs:
        request.outputs.add(name=name)
    check(service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer, request)


@FUZZ
@given(
    model=models | st.text(max_size=8),
    version=st.none() | int64,
    text_version=st.text(max_size=20),
    label=st.none() | st.text(max_size=6),
    fields=st.lists(st.sampled_from(["signature_def", "other"]), max_size=2),
)
def test_metadata_status_and_readiness(channel, model, version, text_version, label, fields):  # type: ignore[no-untyped-def]
    spec = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    spec.model_spec.name = model
    if label is not None:
        spec.model_spec.version_label = label
    if version is not None:
        spec.model_spec.version.value = version
    check(prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata, spec)
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.CopyFrom(spec.model_spec)
    check(model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus, status)
    v2 = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    check(v2.ModelMetadata, service_pb2.ModelMetadataRequest(name=model, version=text_version))
    check(v2.ModelReady, service_pb2.ModelReadyRequest(name=model, version=text_version))


def test_fuzzing_would_see_a_server_error_and_it_carries_no_internals(tmp_path: Path) -> None:
    """The check the fuzz tests rely on fails on INTERNAL: a model that breaks at run time gets one, naming model
    and version and nothing of what the model raised."""
    app, server, channel = serve(tmp_path, broken=NumpyRuntime(DENSE, fail="graph text: node MatMul_1 in while/body"))
    request = service_pb2.ModelInferRequest(model_name="broken")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
    try:
        with pytest.raises(AssertionError):
            check(infer, request)
        with pytest.raises(grpc.RpcError) as e:
            infer(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert e.value.details() == "model 'broken' version 1 failed on this input (RuntimeError)"
    finally:
        channel.close()
        server.stop(grace=1)
        stop(app)
