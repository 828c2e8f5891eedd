"""Promote real checkpoints of a real job and serve them from a real server over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections import Counter

import numpy as np
import pytest
import requests

import workbench as wb
from workbench.errors import CheckpointError, ModelNotFound, RegistryError, ValidationError
from workbench.registry.store import ModelStore
from workbench.workspace import Workspace

from .conftest import metric_samples

pytestmark = pytest.mark.slow


def eventually(check, timeout: float = 10, what: str = "") -> None:
    """Poll ``check()`` (a ServingError counts as not yet) until it is true; fail after ``timeout`` s. The server
    sees registry changes at its next scan of models/ (every 0.2 s here), not at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except wb.ServingError:
            pass
        assert time.monotonic() < deadline, what or "condition not met"
        time.sleep(0.1)


def predict_raw(server, model, digits, suffix=""):
    r = requests.post(f"{server.url}/v1/models/{model}{suffix}:predict", json={"instances": digits[:2]}, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.headers["x-model-version"]), r.json()["predictions"]


def test_promote_latest_best_and_step_with_lineage(trained, server, digits):
    ckpts = trained.checkpoints()
    v1 = wb.promote(trained, model="pick", checkpoint="latest")
    v2 = wb.promote(trained, model="pick", checkpoint="best", metric="val_loss")
    v3 = wb.promote(trained, model="pick", checkpoint=1)
    assert (v1.version, v2.version, v3.version) == (1, 2, 3)
    assert v1.source["step"] == 2
    assert v2.source["step"] == min(ckpts, key=lambda c: c.metrics["val_loss"]).step
    assert v3.source["step"] == 1

    data = json.loads((server.workspace / "models" / "pick" / "model.json").read_text())
    entry = data["versions"]["3"]
    assert entry["source"]["run_id"] == trained.id
    assert entry["source"]["metrics"]["val_accuracy"] == pytest.approx(ckpts[0].metrics["val_accuracy"])
    assert set(entry["code"]) >= {"git_commit", "script_sha256", "code_sha256"}
    assert entry["signature"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": [None, 28, 28]}]
    assert entry["signature"]["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [None, 10]}]
    assert entry["framework"] == "tensorflow" and (v3.path / "saved_model.pb").is_file()
    for ran_under in (entry["validation"]["priority"], entry["validation"]["export_priority"]):
        assert ran_under == "idle" or ran_under.startswith("nice "), ran_under
    assert data["history"][-1]["event"] == "promote"

    # the served model computes what the checkpoint computes
    import keras

    model = keras.models.load_model(ckpts[0].path, compile=False)
    expected = model(np.asarray(digits, dtype="float32")).numpy()
    served, predictions = predict_raw(server, "pick", digits, "/versions/3")
    assert served == 3
    np.testing.assert_allclose(predictions, expected[:2], rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckpointError, match="no checkpoint at step 7; steps: 1, 2"):
        wb.promote(trained, model="pick", checkpoint=7)
    with pytest.raises(CheckpointError, match="no checkpoint .* has metric 'bleu'"):
        wb.promote(trained, model="pick", checkpoint="best", metric="bleu")


def test_new_version_goes_live_without_restart(trained, server, digits, publish):
    pid = server.proc.pid
    publish("live")
    server.wait_version("live", 1)
    out = wb.predict("live", digits[:2])
    assert out.version == 1 and len(out) == 2 and len(out[0]) == 10
    t0 = time.monotonic()
    v2 = wb.promote(trained, model="live", checkpoint=2)  # returns once the server serves it
    assert wb.predict("live", digits[:2]).version == 2, server.log_text()[-2000:]
    print(f"promote to live: {time.monotonic() - t0:.2f} s; {v2.timings}")
    first = predict_raw(server, "live", digits, "/versions/2")[1]
    # the server folds the version's variables in once it serves (or while it loads, with its clients passed on)
    done = re.compile(r"model live version 2 (optimized for serving|loaded, optimized for serving)")
    deadline = time.monotonic() + 30
    while not done.search(server.log_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done.search(server.log_text()), server.log_text()[-2000:]
    # folded into constants it computes the same to float rounding (the server checks rtol 1e-5 before it swaps)
    np.testing.assert_allclose(predict_raw(server, "live", digits, "/versions/2")[1], first, rtol=1e-5)
    assert server.proc.pid == pid and server.proc.poll() is None


def test_rollback_labels_and_traffic_split(publish, server, digits):
    publish("roll")
    publish("roll")
    server.wait_version("roll", 2)
    assert wb.predict("roll", digits[:1]).version == 2

    assert wb.rollback("roll") == 1
    deadline = time.monotonic() + 10
    while wb.predict("roll", digits[:1]).version != 1:
        assert time.monotonic() < deadline, "rollback did not take effect"
        time.sleep(0.1)
    info = wb.models()["roll"]
    assert info["live"] == 1 and info["versions"][2]["rolled_back"]
    with pytest.raises(RegistryError, match="no version before 1"):
        wb.rollback("roll")

    wb.label("roll", "stable", 1)
    wb.label("roll", "canary", 2)
    eventually(lambda: wb.predict("roll", digits[:1], label="canary").version == 2, what="label canary=2 not served")
    assert wb.predict("roll", digits[:1], label="canary").version == 2
    assert wb.predict("roll", digits[:1], label="stable").version == 1
    assert wb.predict("roll", digits[:1], version=2).version == 2
    with pytest.raises(ModelNotFound, match="no label 'beta'; labels: canary=2, stable=1"):
        wb.label("roll", "alias", "beta")

    wb.split("roll", {"stable": 50, "canary": 50})
    # unversioned traffic went to version 1 only; the split shows once some of it reaches version 2
    eventually(lambda: wb.predict("roll", digits[:1]).version == 2, what="the split is not applied")
    seen = Counter(wb.predict("roll", digits[:1]).version for _ in range(40))
    assert seen[1] > 5 and seen[2] > 5, seen
    wb.rollback("roll", 1)  # ends the split
    # 20 in a row on version 1: under a 50/50 split that happens by chance once in a million tries
    eventually(lambda: {wb.predict("roll", digits[:1]).version for _ in range(20)} == {1}, what="split not ended")


def test_bad_checkpoint_or_failed_gate_publishes_nothing(publish, server, digits, tmp_path):
    publish("guard")
    server.wait_version("guard", 1)
    before = (server.workspace / "models" / "guard" / "model.json").read_text()

    junk = tmp_path / "ckpt-0009.keras"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="cannot load .* as a full Keras model"):
        wb.promote(None, model="guard", checkpoint=junk, framework="tensorflow")

    # weights that export fine but answer NaN: stopped by the validation gate
    builder = tmp_path / "dense_model.py"
    builder.write_text(
        "import keras\n"
        "def build():\n"
        "    return keras.Sequential([keras.Input((28, 28), name='image'), keras.layers.Flatten(), keras.layers.Dense(10, name='probabilities')])\n"
    )
    weights = tmp_path / "nan.weights.h5"
    import keras

    nan_model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10)])
    nan_model.set_weights([np.full(w.shape, np.nan, "float32") for w in nan_model.get_weights()])
    nan_model.save_weights(weights)
    with pytest.raises(ValidationError, match="NaN"):
        wb.promote(None, model="guard", checkpoint=weights, builder=f"{builder}:build", framework="tensorflow")
    assert (server.workspace / "models" / "guard" / "model.json").read_text() == before
    assert sorted(
        p.name for p in (server.workspace / "models" / "guard").iterdir() if not p.name.startswith(".lock")
    ) == ["1", "model.json"]
    assert wb.predict("guard", digits[:1]).version == 1


def test_corrupt_version_on_disk_is_skipped_and_old_one_keeps_serving(publish, server, digits):
    publish("corrupt")
    publish("corrupt")
    server.wait_version("corrupt", 2)
    store = ModelStore(Workspace.current(), "corrupt")  # published past the validation gate: model.json lists it
    staging = store.staging_dir()
    shutil.copytree(store.dir / "2", staging, dirs_exist_ok=True)
    (staging / "saved_model.pb").write_bytes(b"\x00garbage" * 100)
    assert store.publish(staging, store.read()["versions"]["2"]) == 3
    deadline = time.monotonic() + 20
    while "model corrupt version 3 could not be loaded" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()[-3000:]
        time.sleep(0.2)
    assert wb.predict("corrupt", digits[:1]).version == 2
    status = requests.get(f"{server.url}/v1/models/corrupt", timeout=5).json()["model_version_status"]
    by_version = {s["version"]: s for s in status}
    assert by_version["2"]["state"] == "AVAILABLE"
    assert by_version["3"]["state"] == "END" and by_version["3"]["status"]["error_message"]
    r = requests.post(f"{server.url}/v1/models/corrupt/versions/3:predict", json={"instances": digits[:1]}, timeout=10)
    assert r.status_code == 404 and "failed to load" in r.json()["error"]
    metrics = metric_samples(requests.get(f"{server.url}/metrics", timeout=5).text)
    assert metrics['workbench_model_load_failures_total{model="corrupt",version="3"}'] == 1


def test_a_version_folder_the_index_does_not_name_is_never_served(publish, server, digits):
    publish("unlisted")
    server.wait_version("unlisted", 1)
    shutil.copytree(server.workspace / "models" / "unlisted" / "1", server.workspace / "models" / "unlisted" / "2")
    requests.post(f"{server.url}/workbench/reload", timeout=5)
    publish("unlisted", live=False)  # the index changes (a new version 3, not live): the server rescans
    server.wait_version("unlisted", 3)
    status = requests.get(f"{server.url}/v1/models/unlisted", timeout=5).json()["model_version_status"]
    assert sorted(s["version"] for s in status) == ["1", "3"]
    assert wb.predict("unlisted", digits[:1]).version == 1


def test_concurrent_promotes_get_distinct_versions(trained, server):
    results, errors = [], []

    def go(step):
        try:
            results.append(wb.promote(trained, model="race", checkpoint=step, wait=0).version)
        except Exception as e:  # collected: the assertion below shows it
            errors.append(e)

    threads = [threading.Thread(target=go, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == [1, 2]
    data = ModelStore(Workspace.current(), "race").read()
    assert sorted(data["versions"], key=int) == ["1", "2"]
    assert {data["versions"][v]["source"]["step"] for v in ("1", "2")} == {1, 2}
    assert not [p for p in (server.workspace / "models" / "race").iterdir() if p.name.startswith(".staging")]
