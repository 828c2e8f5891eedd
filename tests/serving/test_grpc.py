"""gRPC over real sockets: TF Serving's stock stubs (``tensorflow-serving-api``) and KServe V2's stock client
(``tritonclient.grpc``) against a real ``workbench serve`` process get what REST gets; errors, the token, hot swap.
The first two tests start a GRPCServer in this process over an empty workspace (no model, seconds)."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import numpy as np
import pytest
import requests

import workbench as wb
from workbench.errors import WorkbenchError

from .conftest import metric_samples

tf = pytest.importorskip("tensorflow")
tc = pytest.importorskip("tritonclient.grpc")
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tritonclient.utils import InferenceServerException  # noqa: E402

OVERFLOW_ROWS = 2**60 + 1  # rows * 784 wraps to 784 (one row) in 64-bit arithmetic


# ------------------------------------------------------------------ in process, no model


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """A GRPCServer with a token (scope "all") over an empty workspace, on a free port; messages up to 10 kB."""
    from workbench.serving.metrics import ServerMetrics
    from workbench.serving.model.repository import ModelRepository
    from workbench.serving.transport.grpc import GRPCServer
    from workbench.workspace import Workspace

    monkeypatch.setenv("WORKBENCH_SERVE_MAX_BODY_MB", "0.01")
    repo = ModelRepository(Workspace(tmp_path))
    server = GRPCServer(repo, ServerMetrics(), "127.0.0.1", free_port(), token="s3cret", token_scope="all")
    server.start()
    yield server
    server.stop(grace=1)


def free_port() -> int:
    from workbench.backends.local.processes import free_ports

    return free_ports(1)[0]


def test_token_needed_except_for_health_probes_and_unimplemented_calls_say_so(bare):
    client = tc.InferenceServerClient(f"127.0.0.1:{bare.port}")
    assert client.is_server_live()
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED.*Bearer"):
        client.get_server_metadata()
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.get_server_metadata(headers={"authorization": "Bearer wrong"})
    assert client.get_server_metadata(headers={"authorization": "Bearer s3cret"}).name == "workbench"
    with pytest.raises(InferenceServerException, match="NOT_FOUND.*model 'lenet' not found"):
        client.is_model_ready("lenet", headers={"authorization": "Bearer s3cret"})
    with pytest.raises(InferenceServerException, match="UNIMPLEMENTED.*ModelConfig is not implemented"):
        client.get_model_config("lenet", headers={"authorization": "Bearer s3cret"})

    with grpc.insecure_channel(f"127.0.0.1:{bare.port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Classify(classification_pb2.ClassificationRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and "Classify is not implemented" in e.value.details()


def test_a_message_past_the_body_limit_is_refused(bare):
    client = tc.InferenceServerClient(f"127.0.0.1:{bare.port}")
    for rows, refusal in ((4, "RESOURCE_EXHAUSTED"), (1, "NOT_FOUND")):  # 12.5 kB; 3 kB gets through to the model
        x = np.zeros((rows, 28, 28), dtype=np.float32)
        image = tc.InferInput("image", list(x.shape), "FP32")
        image.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match=refusal):
            client.infer("lenet", [image], headers={"authorization": "Bearer s3cret"}, client_timeout=5)


def test_without_tensorflow_serving_protos_only_v2_serves_and_the_log_says_why(tmp_path, monkeypatch, caplog):
    import sys

    from workbench.serving.metrics import ServerMetrics
    from workbench.serving.model.repository import ModelRepository
    from workbench.serving.transport.grpc import GRPCServer
    from workbench.workspace import Workspace

    monkeypatch.setitem(sys.modules, "tensorflow_serving.apis", None)  # importing it raises ImportError
    monkeypatch.delitem(sys.modules, "workbench.serving.transport.grpc.tfserving", raising=False)
    server = GRPCServer(ModelRepository(Workspace(tmp_path)), ServerMetrics(), "127.0.0.1", free_port())
    server.start()
    try:
        assert "the tfserving service is off" in caplog.text and "tensorflow-serving-api" in caplog.text
        assert tc.InferenceServerClient(f"127.0.0.1:{server.port}").get_server_metadata().name == "workbench"
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as e:
                model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                    get_model_status_pb2.GetModelStatusRequest(), timeout=5
                )
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=1)


def test_a_port_in_use_fails_loudly(tmp_path):
    from workbench.serving.metrics import ServerMetrics
    from workbench.serving.model.repository import ModelRepository
    from workbench.serving.transport.grpc import GRPCServer
    from workbench.workspace import Workspace

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = GRPCServer(ModelRepository(Workspace(tmp_path)), ServerMetrics(), "127.0.0.1", port)
        with pytest.raises(WorkbenchError, match=f"cannot serve gRPC on 127.0.0.1:{port}.*--grpc-port"):
            server.start()


# ------------------------------------------------------------------ a real server, a trained LeNet


@pytest.fixture(scope="module")
def model(trained, server, publish):
    """Model "grpcm": version 1 (a copy of step 1, label stable) and version 2 (step 2, live)."""
    publish("grpcm", label="stable")
    wb.promote(trained, model="grpcm", checkpoint=2)
    server.wait_version("grpcm", 2)
    return "grpcm"


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc) as ch:
        yield ch


def rest(server, model: str, digits, version: int | None = None) -> np.ndarray:
    path = f"/versions/{version}" if version else ""
    r = requests.post(f"{server.url}/v1/models/{model}{path}:predict", json={"instances": digits}, timeout=30)
    assert r.status_code == 200, r.text
    return np.array(r.json()["predictions"], dtype=np.float32)


def tf_predict(channel, model: str, images, version: int | None = None, label: str | None = None, timeout=30):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.asarray(images, dtype=np.float32)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
    return response.model_spec.version.value, tf.make_ndarray(response.outputs["probabilities"])


def v2_infer(client, model: str, images, version: str = ""):
    x = np.asarray(images, dtype=np.float32)
    image = tc.InferInput("image", list(x.shape), "FP32")
    image.set_data_from_numpy(x)
    result = client.infer(model, [image], model_version=version, client_timeout=30)
    return result.get_response().model_version, result.as_numpy("probabilities")


@pytest.mark.slow
def test_tfserving_stub_predicts_as_rest_does_by_version_and_label(model, server, channel, digits):
    live, one = rest(server, model, digits), rest(server, model, digits, 1)
    assert not np.allclose(live, one)  # two versions that answer differently, so picking one shows
    version, probs = tf_predict(channel, model, digits)
    assert version == 2
    np.testing.assert_allclose(probs, live, rtol=1e-5, atol=1e-7)
    assert tf_predict(channel, model, digits, version=1)[0] == 1
    np.testing.assert_allclose(tf_predict(channel, model, digits, version=1)[1], one, rtol=1e-5, atol=1e-7)
    version, probs = tf_predict(channel, model, digits, label="stable")
    assert version == 1
    np.testing.assert_allclose(probs, one, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_tfserving_model_status_and_metadata(model, channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    status = stub.GetModelStatus(request, timeout=10).model_version_status
    assert [(s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state)) for s in status] == [
        (2, "AVAILABLE"),
        (1, "AVAILABLE"),
    ]
    request.model_spec.version_label = "stable"
    assert [s.version for s in stub.GetModelStatus(request, timeout=10).model_version_status] == [1]

    meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_request.model_spec.name = model
    meta = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(meta_request, timeout=10)
    defs = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(defs)
    image = defs.signature_def["serving_default"].inputs["image"]
    assert meta.model_spec.version.value == 2 and [d.size for d in image.tensor_shape.dim] == [-1, 28, 28]


@pytest.mark.slow
def test_tritonclient_predicts_as_rest_does(model, server, digits):
    client = tc.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(model) and client.is_model_ready(model, "1") and not client.is_model_ready(model, "9")
    meta = client.get_model_metadata(model)
    assert list(meta.versions) == ["1", "2"] and meta.inputs[0].name == "image" and meta.outputs[0].datatype == "FP32"
    version, probs = v2_infer(client, model, digits)
    assert version == "2"
    np.testing.assert_allclose(probs, rest(server, model, digits), rtol=1e-5, atol=1e-7)
    version, probs = v2_infer(client, model, digits, "1")
    assert version == "1"
    np.testing.assert_allclose(probs, rest(server, model, digits, 1), rtol=1e-5, atol=1e-7)
    client.close()

    metrics = metric_samples(requests.get(f"{server.url}/metrics", timeout=5).text)
    assert metrics[f'workbench_requests_total{{model="{model}",version="1",code="200",protocol="v2-grpc"}}'] >= 1


@pytest.mark.slow
def test_bad_input_is_refused_at_once_and_the_model_keeps_answering(model, server, channel, digits):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def tf_call(name: str, tensor) -> grpc.StatusCode:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.inputs["image"].CopyFrom(tensor)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(request, timeout=5)
        assert time.monotonic() - t0 < 2.5  # far below the 5 s timeout: refused, not waited out or allocated
        return e.value.code()

    good = tf.make_tensor_proto(np.asarray(digits, dtype=np.float32))
    overflow = tf.make_tensor_proto(np.asarray(digits[:1], dtype=np.float32))
    overflow.tensor_shape.dim[0].size = OVERFLOW_ROWS
    wrong = tf.make_tensor_proto(np.zeros((2, 28, 27), dtype=np.float32))
    assert tf_call(model, overflow) == grpc.StatusCode.INVALID_ARGUMENT
    assert tf_call(model, wrong) == grpc.StatusCode.INVALID_ARGUMENT
    assert tf_call("nope", good) == grpc.StatusCode.NOT_FOUND

    client = tc.InferenceServerClient(server.grpc)
    x = np.asarray(digits[:1], dtype=np.float32)
    for shape, code in (([OVERFLOW_ROWS, 28, 28], "INVALID_ARGUMENT"), ([1, 28, 28], "NOT_FOUND")):
        image = tc.InferInput("image", list(x.shape), "FP32")
        image.set_data_from_numpy(x)
        image.set_shape(shape)  # what a hostile client declares over the same 784 values
        t0 = time.monotonic()
        with pytest.raises(InferenceServerException, match=code):
            client.infer(model if code != "NOT_FOUND" else "nope", [image], client_timeout=5)
        assert time.monotonic() - t0 < 2.5  # far below the 5 s timeout: refused, not waited out or allocated
    with pytest.raises(InferenceServerException, match="NOT_FOUND.*no loaded version 7"):
        v2_infer(client, model, digits, "7")
    assert v2_infer(client, model, digits)[1].shape == (4, 10)
    assert tf_predict(channel, model, digits)[1].shape == (4, 10)
    client.close()
    metrics = metric_samples(requests.get(f"{server.url}/metrics", timeout=5).text)
    assert metrics[f'workbench_requests_total{{model="{model}",version="2",code="400",protocol="grpc"}}'] >= 2
    assert metrics[f'workbench_requests_total{{model="{model}",version="2",code="400",protocol="v2-grpc"}}'] >= 1


@pytest.mark.slow
def test_hot_swap_under_grpc_load_fails_no_request(server, publish, channel, digits):
    publish("grpcswap")
    server.wait_version("grpcswap", 1)
    client = tc.InferenceServerClient(server.grpc)
    stop, seen, failures = threading.Event(), set(), []

    def load(call) -> None:
        while not stop.is_set():
            try:
                seen.add(int(call()))
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                failures.append(repr(e))

    callers = [
        lambda: tf_predict(channel, "grpcswap", digits)[0],
        lambda: v2_infer(client, "grpcswap", digits)[0],
    ]
    threads = [threading.Thread(target=load, args=(c,)) for c in callers]
    for t in threads:
        t.start()
    try:
        for _ in range(3):  # keep=2: each new version retires the oldest while requests run on it
            version = publish("grpcswap")
            server.wait_version("grpcswap", version)
            time.sleep(0.5)  # requests run on this version for a while before the next one retires it
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        client.close()
    assert failures == []
    assert {1, 4} <= seen, seen


@pytest.mark.slow
def test_two_worker_processes_share_the_grpc_port(serving_ws, publish, digits):
    from .conftest import start_server, stop_server

    two = start_server(serving_ws, serving_ws.parent / "grpc-two-workers.log", "--workers", "2", "--poll", "0.2")
    try:
        publish("grpcpair")
        two.wait_version("grpcpair", 1)  # AVAILABLE: both processes serve it
        assert two.log_text().count(f"workbench.serving: gRPC on {two.grpc}") == 2  # each process bound it
        for _ in range(20):  # new connections: the kernel spreads them over both processes
            with grpc.insecure_channel(two.grpc) as channel:
                assert tf_predict(channel, "grpcpair", digits[:1])[0] == 1
        metrics = metric_samples(requests.get(f"{two.url}/metrics", timeout=5).text)
        assert metrics['workbench_requests_total{model="grpcpair",version="1",code="200",protocol="grpc"}'] == 20
    finally:
        stop_server(two)
