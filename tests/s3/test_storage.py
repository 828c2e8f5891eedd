"""Workspace URLs: clear errors for unusable ones; the storage layer's pull/push against the MinIO stand-in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import workbench as wb
from workbench import settings
from workbench.errors import WorkspaceError
from workbench.storage import Pusher, Remote
from workbench.workspace import Workspace

from .conftest import bucket_files


@pytest.mark.parametrize(
    "url, says",
    [
        ("s3:/bars/ws", "write it as s3://bucket/prefix"),
        ("s3://", "write it as s3://bucket/prefix"),
        ("gs://bars/ws", "cannot use gs://"),
        ("http://minio:9000/bars", "cannot use http://"),
        ("ftp://host/ws", "cannot use ftp://"),
    ],
)
def test_a_workspace_url_the_workbench_cannot_use_is_a_clear_error(url, says, tmp_path, monkeypatch, write_script):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_WORKSPACE", url)
    with pytest.raises(WorkspaceError, match=says) as e:
        wb.submit(str(write_script("print('hi')\n")), framework="none")
    assert "s3://bucket/prefix" in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["code"]  # no folder named after the URL (the old "s3:" folder)


def test_local_paths_stay_local(tmp_path, monkeypatch):
    for given in (str(tmp_path / "ws"), f"file://{tmp_path / 'ws'}"):
        monkeypatch.setenv("WORKBENCH_WORKSPACE", given)
        ws = Workspace.current()
        assert (ws.root, ws.url, ws.remote, ws.location) == (tmp_path / "ws", None, None, str(tmp_path / "ws"))


def test_an_s3_workspace_has_a_local_cache_per_url(monkeypatch):
    monkeypatch.delenv("WORKBENCH_CACHE_DIR", raising=False)
    monkeypatch.setenv("WORKBENCH_WORKSPACE", "s3://bars/ws/")
    ws = Workspace.current()
    assert ws.url == "s3://bars/ws" and ws.location == "s3://bars/ws"
    assert ws.root.parent == Path.home() / ".cache" / "workbench" and len(ws.root.name) == 16
    assert settings.workspace_root() == ws.root
    assert Workspace.at("s3://other/ws").root != ws.root


def test_a_missing_bucket_is_a_clear_error(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(WorkspaceError, match="bucket 'no-such-bucket' does not exist"):
        Workspace.at("s3://no-such-bucket/ws").ensure()


def test_pull_and_push_move_only_new_or_changed_files(s3_workspace, tmp_path):
    remote = Remote(s3_workspace)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("bb")
    (src / ".partial").write_text("skipped")
    pusher = Pusher(remote, src, "runs/r/tb")
    assert {p.name for p in pusher.push()} == {"a.txt", "b.txt"}
    assert bucket_files(s3_workspace, "runs/r/tb") == {"a.txt": 1, "sub/b.txt": 2}
    assert pusher.push() == []  # nothing changed
    (src / "a.txt").write_text("a2")
    assert [p.name for p in pusher.push()] == ["a.txt"]

    dest = tmp_path / "dest"
    assert sorted(remote.pull("runs/r/tb", dest)) == ["a.txt", "sub/b.txt"]
    assert (dest / "a.txt").read_text() == "a2" and (dest / "sub" / "b.txt").read_text() == "bb"
    assert remote.pull("runs/r/tb", dest) == []  # current: nothing moves
    (src / "sub" / "b.txt").write_text("b3")
    pusher.push()
    assert remote.pull("runs/r/tb", dest) == ["sub/b.txt"]
    assert (dest / "sub" / "b.txt").read_text() == "b3"
    assert not [p for p in dest.rglob(".*") if p.name != ".workbench-pulled.json"]  # no partial download left


def test_an_unreachable_endpoint_is_a_clear_error(tmp_path, monkeypatch):
    from workbench.backends.local.processes import free_ports

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_ports(1)[0]}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(WorkspaceError, match="cannot be reached .*check AWS_ENDPOINT_URL"):
        Workspace.at("s3://bars/ws").ensure()
