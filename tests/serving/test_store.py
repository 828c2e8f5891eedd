"""model.json bookkeeping: versions under concurrency, live version, rollback, labels, traffic split."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from workbench.errors import ModelNotFound, RegistryError
from workbench.registry.store import ModelStore, live_version
from workbench.workspace import Workspace


def publish(store: ModelStore, **kw) -> int:
    staging = store.staging_dir()
    (staging / "payload").write_text(str(os.getpid()))
    return store.publish(staging, {"framework": "none"}, **kw)


def _publish_many(root: str, n: int, out) -> None:  # in another process
    store = ModelStore(Workspace(__import__("pathlib").Path(root)), "m")
    out.put([publish(store) for _ in range(n)])


def test_concurrent_publishers_in_several_processes_get_distinct_versions(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_publish_many, args=(str(tmp_path), 5, out)) for _ in range(4)]
    for p in procs:
        p.start()
    versions = sorted(v for _ in procs for v in out.get(timeout=60))
    for p in procs:
        p.join(30)
    assert versions == list(range(1, 21))
    store = ModelStore(Workspace(tmp_path), "m")
    data = store.read()
    assert sorted(map(int, data["versions"])) == versions
    assert sorted(int(p.name) for p in store.dir.iterdir() if p.name.isdigit()) == versions
    assert all((store.dir / str(v) / "payload").exists() for v in versions)


def test_live_is_the_newest_until_rolled_back(tmp_path):
    store = ModelStore(Workspace(tmp_path), "m")
    for _ in range(3):
        publish(store)
    assert live_version(store.read()) == 3
    assert store.rollback() == 2
    assert store.rollback() == 1
    data = store.read()
    assert live_version(data) == 1 and data["versions"]["3"]["rolled_back"] and data["versions"]["2"]["rolled_back"]
    with pytest.raises(RegistryError, match="no version before 1"):
        store.rollback()
    assert store.rollback(3) == 3 and not store.read()["versions"]["3"].get("rolled_back")
    assert publish(store) == 4 and live_version(store.read()) == 4  # a live promote takes over again


def test_promote_not_live_keeps_serving_the_current_version(tmp_path):
    store = ModelStore(Workspace(tmp_path), "m")
    publish(store)
    assert publish(store, live=False, label="canary") == 2
    data = store.read()
    assert live_version(data) == 1 and data["labels"] == {"canary": 2}


def test_labels_and_traffic(tmp_path):
    store = ModelStore(Workspace(tmp_path), "m")
    publish(store)
    publish(store)
    store.set_label("stable", 1)
    store.set_label("canary", "stable")  # a label may name another label's version
    assert store.read()["labels"] == {"stable": 1, "canary": 1}
    with pytest.raises(ModelNotFound, match="no version 7; versions: 1, 2"):
        store.set_label("x", 7)
    with pytest.raises(RegistryError, match="label 'bad label' must be"):
        store.set_label("bad label", 1)
    store.set_traffic({"stable": 90, "2": 10})
    assert store.read()["traffic"] == {"stable": 90.0, "2": 10.0}
    with pytest.raises(RegistryError, match="carries traffic"):
        store.set_label("stable", None)
    with pytest.raises(RegistryError, match="must not all be 0"):
        store.set_traffic({"stable": 0})
    store.rollback(1)
    assert store.read()["traffic"] is None


def test_unknown_model(tmp_path):
    store = ModelStore(Workspace(tmp_path), "ghost")
    with pytest.raises(ModelNotFound, match="no model 'ghost'"):
        store.rollback()
    assert not store.dir.exists()
    with pytest.raises(RegistryError, match="model name '../x' must be"):
        from workbench.registry.store import check_name

        check_name("../x")
