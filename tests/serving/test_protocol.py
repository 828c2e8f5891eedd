"""The server's wire protocols over real HTTP: TF Serving REST, KServe V2, errors, metrics, prediction log."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests

import workbench as wb

from .conftest import metric_samples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def proto(trained, server, publish):
    """Model "proto": version 1 (a copy of step 1, label stable) and version 2 (step 2, live)."""
    publish("proto", label="stable")
    wb.promote(trained, model="proto", checkpoint=2)
    server.wait_version("proto", 2)
    return server.url + "/v1/models/proto"


def test_status_and_metadata(proto):
    status = requests.get(proto, timeout=5).json()
    assert status == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }
    one = requests.get(f"{proto}/versions/1", timeout=5).json()["model_version_status"]
    assert [s["version"] for s in one] == ["1"]
    assert requests.get(f"{proto}/labels/stable", timeout=5).json()["model_version_status"][0]["version"] == "1"

    meta = requests.get(f"{proto}/metadata", timeout=5).json()
    assert meta["model_spec"] == {"name": "proto", "signature_name": "", "version": "2"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    image = sig["inputs"]["image"]
    assert image["dtype"] == "DT_FLOAT" and image["name"] == "serving_default_image:0"
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "28", "28"]
    assert [d["size"] for d in sig["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "10"]
    assert requests.get(f"{proto}/versions/1/metadata", timeout=5).json()["model_spec"]["version"] == "1"


def test_predict_row_and_columnar_formats_by_version_and_label(proto, digits):
    row = requests.post(f"{proto}:predict", json={"instances": digits}, timeout=30)
    assert row.status_code == 200 and row.headers["x-model-version"] == "2"
    predictions = np.array(row.json()["predictions"])
    assert predictions.shape == (4, 10)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-4)

    named = requests.post(f"{proto}:predict", json={"instances": [{"image": d} for d in digits]}, timeout=30).json()
    np.testing.assert_allclose(named["predictions"], predictions, rtol=1e-5)
    columnar = requests.post(f"{proto}:predict", json={"inputs": {"image": digits}}, timeout=30).json()
    np.testing.assert_allclose(columnar["outputs"], predictions, rtol=1e-5)
    bare = requests.post(f"{proto}:predict", json={"inputs": digits, "signature_name": "serving_default"}, timeout=30)
    np.testing.assert_allclose(bare.json()["outputs"], predictions, rtol=1e-5)

    v1 = requests.post(f"{proto}/versions/1:predict", json={"instances": digits}, timeout=30)
    stable = requests.post(f"{proto}/labels/stable:predict", json={"instances": digits}, timeout=30)
    assert v1.headers["x-model-version"] == stable.headers["x-model-version"] == "1"
    assert v1.json() == stable.json() != row.json()
    assert wb.predict("proto", inputs={"image": digits})  # columnar through the client


def test_kserve_v2(proto, server, digits):
    base = server.url + "/v2"
    assert requests.get(f"{base}/health/live", timeout=5).status_code == 200
    assert requests.get(f"{base}/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{base}/models/proto/ready", timeout=5).json() == {"name": "proto", "ready": True}
    meta = requests.get(f"{base}/models/proto", timeout=5).json()
    assert meta["platform"] == "tensorflow_savedmodel" and "2" in meta["versions"]
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]

    flat = np.asarray(digits, dtype="float32").reshape(-1).tolist()
    body = {"id": "r1", "inputs": [{"name": "image", "shape": [4, 28, 28], "datatype": "FP32", "data": flat}]}
    r = requests.post(f"{base}/models/proto/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "proto" and out["model_version"] == "2" and out["id"] == "r1"
    (tensor,) = out["outputs"]
    assert tensor["name"] == "probabilities" and tensor["datatype"] == "FP32" and tensor["shape"] == [4, 10]
    tf_serving = requests.post(f"{server.url}/v1/models/proto:predict", json={"instances": digits}, timeout=30).json()
    np.testing.assert_allclose(np.reshape(tensor["data"], (4, 10)), tf_serving["predictions"], rtol=1e-5)
    v1 = requests.post(f"{base}/models/proto/versions/1/infer", json=body, timeout=30).json()
    assert v1["model_version"] == "1"
    bad = requests.post(
        f"{base}/models/proto/infer", json={**body, "inputs": [{**body["inputs"][0], "datatype": "INT64"}]}, timeout=10
    )
    assert bad.status_code == 400 and "expects FP32" in bad.json()["error"]


@pytest.mark.parametrize(
    ("path", "data", "status", "message"),
    [
        (":predict", b"{not json", 400, "malformed JSON"),
        (":predict", b"", 400, "empty body"),
        (":predict", b"[1, 2]", 400, '"instances" (row format) or "inputs"'),
        (":predict", {"instances": [[1.0, 2.0]]}, 400, "shape [1, 2]; the model expects [?, 28, 28]"),
        (":predict", {"instances": [[["a"] * 28] * 28]}, 400, "must be float32; got strings"),
        (":predict", {"instances": [[[0.0] * 28] * 28, [[0.0] * 27] * 28]}, 400, "not a rectangular array"),
        (":predict", {"instances": []}, 400, "non-empty list"),
        (":predict", {"instances": [1], "inputs": [1]}, 400, "exactly one of"),
        (":predict", {"inputs": {"pixels": [1]}}, 400, "unknown inputs pixels"),
        (":predict", {"instances": [[[0.0] * 28] * 28], "signature_name": "other"}, 400, "unknown signature_name"),
        ("/versions/9:predict", {"instances": [[[0.0] * 28] * 28]}, 404, "no loaded version 9; loaded versions: 1, 2"),
        ("/versions/two:predict", {"instances": [[[0.0] * 28] * 28]}, 400, "version must be a positive integer"),
        ("/labels/beta:predict", {"instances": [[[0.0] * 28] * 28]}, 404, "no label 'beta'; labels: stable"),
        (":classify", {"instances": [[[0.0] * 28] * 28]}, 400, "'classify' is not supported"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(proto, path, data, status, message):
    kwargs = {"data": data} if isinstance(data, bytes) else {"json": data}
    r = requests.post(proto + path, timeout=10, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_unknown_model_oversized_body_wrong_method_and_the_server_stays_up(proto, server, digits):
    r = requests.post(f"{server.url}/v1/models/nope:predict", json={"instances": digits}, timeout=10)
    assert r.status_code == 404 and "model 'nope' not found; models:" in r.json()["error"]
    huge = json.dumps({"instances": [[[0.5] * 28] * 28] * 400}).encode()  # 1.6 MB; the test server takes 1 MB
    r = requests.post(f"{proto}:predict", data=huge, timeout=30)
    assert r.status_code == 413 and "over the limit" in r.json()["error"]
    assert requests.get(f"{proto}:predict", timeout=5).status_code == 405
    assert requests.get(f"{server.url}/v1/nothing", timeout=5).status_code == 404
    assert requests.post(f"{proto}:predict", json={"instances": digits}, timeout=30).status_code == 200
    assert server.proc.poll() is None


def test_metrics_in_prometheus_format(proto, digits, server):
    for _ in range(3):
        requests.post(f"{proto}/versions/1:predict", json={"instances": digits}, timeout=30)
    requests.post(f"{proto}/versions/1:predict", json={"instances": [[1.0]]}, timeout=30)
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    samples = metric_samples(text)
    assert samples['workbench_requests_total{model="proto",version="1",code="200",protocol="rest"}'] >= 3
    assert samples['workbench_requests_total{model="proto",version="1",code="400",protocol="rest"}'] >= 1
    count = samples['workbench_request_latency_seconds_count{model="proto",version="1"}']
    assert (
        count >= 3 and samples['workbench_request_latency_seconds_bucket{model="proto",version="1",le="+Inf"}'] == count
    )
    assert samples['workbench_batch_size_sum{model="proto",version="1"}'] >= 12  # 4 rows per request
    assert samples['workbench_model_version_loaded{model="proto",version="2"}'] == 1
    assert samples['workbench_model_live_version{model="proto"}'] == 2
    assert "# TYPE workbench_request_latency_seconds histogram" in text


def test_prediction_log_summary(proto, digits, server):
    since = time.time()
    for _ in range(5):
        requests.post(f"{proto}:predict", json={"instances": digits}, timeout=30)
    deadline = time.monotonic() + 10
    while (
        not (summary := wb.prediction_summary("proto", since=since)).get("proto", {}).get(2, {}).get("requests", 0) >= 5
    ):
        assert time.monotonic() < deadline, summary
        time.sleep(0.2)
    v2 = summary["proto"][2]
    assert v2["rows"] >= 20
    assert 0 < v2["latency_ms"]["p50"] <= v2["latency_ms"]["p99"]
    dist = v2["outputs"]["probabilities"]
    assert sum(dist["top_class"].values()) >= 20 and 0 < dist["mean_top_score"] <= 1
