"""The registry under faults: a full disk at every step of a promote, kill -9 of promotes, leftovers cleaned.

A version exists once ``model.json`` lists it; whatever fails, ``model.json``, the folders a server may load
(:func:`published_dirs`) and ``workbench models`` agree, and nothing half-made is listed.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from workbench.backends.local.processes import wait_for
from workbench.errors import RegistryError
from workbench.registry import models
from workbench.registry.promote import promote
from workbench.registry.store import ModelStore, clean, published_dirs, read_model_json, version_dirs
from workbench.registry.worker import _BOOT
from workbench.workspace import Workspace

PAGE = 4096
PROGRAM = """
import sys, torch
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(4, 2)
    def forward(self, x):
        return torch.softmax(self.dense(x), dim=-1)
program = torch.export.export(Tiny(), (torch.randn(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
torch.export.save(program, sys.argv[1])
"""


@pytest.fixture(autouse=True)
def full_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers at normal priority: under the idle policy a busy CI machine starves them (minutes, not seconds)."""
    monkeypatch.setenv("WORKBENCH_PROMOTE_PRIORITY", "0")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PyTorch ExportedProgram checkpoint (a real promote of it takes ~3 s: two fresh workers)."""
    path = tmp_path_factory.mktemp("ckpt") / "ckpt-0001.pt2"
    subprocess.run([sys.executable, "-c", PROGRAM, str(path)], check=True, timeout=120)
    return path


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 1 MiB tmpfs mounted for the test (needs root / CAP_SYS_ADMIN; skipped where mounting is impossible,
    and the write-hook test below covers the same failures there)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of ``folder`` until ENOSPC, then free ``leave`` bytes."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * PAGE)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
        f.truncate(max(0, f.tell() - leave))
    return filler


def assert_consistent(ws: Workspace, name: str) -> list[int]:
    """model.json, the folders a server may load and ``workbench models`` agree; no staging is left."""
    model_dir = ws.model_dir(name)
    data = read_model_json(model_dir)
    listed = sorted(int(v) for v in data["versions"])
    assert sorted(published_dirs(model_dir, data)) == listed
    for v in listed:
        assert (model_dir / str(v) / "model.pt2").is_file() or (model_dir / str(v) / "payload").is_file()
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".staging-")]
    return listed


def cli_versions(ws: Workspace, name: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "models", name],
        capture_output=True,
        text=True,
        env={**os.environ, "WORKBENCH_WORKSPACE": str(ws.root)},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [int(line.split()[0]) for line in out.stdout.splitlines()[1:] if line.strip()]


def test_promote_on_a_full_disk_at_every_point_leaves_the_registry_as_it_was(small_fs, checkpoint, monkeypatch):
    """Real promotes (export + validation workers) into a real 1 MiB tmpfs with 0, 1, 2... pages free: each
    either publishes a whole version or raises a RegistryError naming the path and the full disk."""
    monkeypatch.setenv("WORKBENCH_PROMOTE_WARM", "0")
    ws = Workspace(small_fs / "ws").ensure()
    first = promote(None, "tiny", checkpoint, framework="pytorch", workspace=ws, warm=False)
    assert first.version == 1
    failures, published = [], [1]
    for pages in range(0, 6):  # export, workbench.json, model.json fail in turn; then it fits
        before = (ws.model_dir("tiny") / "model.json").read_bytes()
        filler = fill(small_fs, pages * PAGE)
        try:
            v = promote(None, "tiny", checkpoint, framework="pytorch", workspace=ws, warm=False)
            published.append(v.version)
        except RegistryError as e:
            failures.append(str(e))
            assert "no space left" in str(e).lower() and str(ws.model_dir("tiny")) in str(e), e
            assert (ws.model_dir("tiny") / "model.json").read_bytes() == before
        finally:
            filler.unlink()
        assert assert_consistent(ws, "tiny") == published
    assert failures, "the disk was never too full: the test proves nothing"
    assert len(published) > 1, "no promote fit: the test never reached the last steps"
    assert published == sorted(set(published))  # numbers never reused
    assert cli_versions(ws, "tiny") == published


class FullDisk:
    """A write hook: the ``n``-th call of a filesystem function ``publish`` uses raises ENOSPC (it stands in for a
    full disk where no small filesystem can be mounted)."""

    CALLS = ("fsync", "rename", "replace", "open", "mkdir", "write")

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int):
        self.count, self.n = 0, n
        for name in self.CALLS:
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, fn):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.count += 1
            if self.count == self.n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return fn(*args, **kwargs)

        return call


def test_publish_fails_cleanly_at_every_filesystem_call(tmp_path):
    """The write hook ENOSPC at call 1, 2, 3... of publish, until one publish makes it through."""
    ws = Workspace(tmp_path)
    store = ModelStore(ws, "m")
    published = []
    for n in range(1, 200):
        staging = store.staging_dir()
        (staging / "payload").write_text("weights")
        before = (store.dir / "model.json").read_bytes() if (store.dir / "model.json").exists() else None
        mp = pytest.MonkeyPatch()
        hook = FullDisk(mp, n)
        try:
            published.append(store.publish(staging, {"framework": "none"}))
        except RegistryError as e:
            assert "no space left" in str(e) and str(store.dir) in str(e)
            now = (store.dir / "model.json").read_bytes() if (store.dir / "model.json").exists() else None
            assert now == before
        finally:
            mp.undo()
        import shutil

        shutil.rmtree(staging, ignore_errors=True)  # the caller's part (promote does it)
        assert assert_consistent(ws, "m") == published
        if hook.count < n:  # no call was failed: every point has been tried
            break
    assert n > 3 and published[-1] == max(published)
    assert cli_versions(ws, "m") == published


def test_gc_removes_leftovers_and_numbers_skip_them(tmp_path):
    ws = Workspace(tmp_path)
    store = ModelStore(ws, "m")
    staging = store.staging_dir()
    (staging / "payload").write_text("v1")
    assert store.publish(staging, {"framework": "none"}) == 1
    (store.dir / "2").mkdir()  # a crash between rename and model.json
    (store.dir / "2" / "payload").write_text("half")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (store.dir / f".staging-{dead.pid}-{time.time_ns()}").mkdir()  # its promote was killed
    mine = store.staging_dir()  # a promote in progress in this process: kept
    staging = store.staging_dir()
    (staging / "payload").write_text("v3")
    assert store.publish(staging, {"framework": "none"}) == 3  # never collides with the leftover 2
    removed = {p.name for p in clean(ws)}
    assert "2" in removed and any(r.startswith(f".staging-{dead.pid}-") for r in removed)
    assert mine.exists()
    assert sorted(version_dirs(store.dir)) == [1, 3] == sorted(map(int, store.read()["versions"]))
    staging = store.staging_dir()
    (staging / "payload").write_text("v4")
    assert store.publish(staging, {"framework": "none"}) == 4  # 2 was never published, but 3 was: 4
    (store.dir / "9").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "gc"],
        capture_output=True,
        text=True,
        env={**os.environ, "WORKBENCH_WORKSPACE": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    assert str(store.dir / "9") in out.stdout and mine.name not in out.stdout  # mine's owner (this test) runs
    assert not (store.dir / "9").exists() and mine.exists()


KILLABLE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import workbench as wb
    from workbench.workspace import Workspace
    v = wb.promote(None, "tiny", Path(sys.argv[2]), framework="pytorch", workspace=Workspace(Path(sys.argv[1])))
    print("published", v.version, flush=True)
    """
)


def orphan_workers() -> list[int]:
    found = []
    for p in psutil.process_iter(["cmdline", "ppid"]):
        try:
            if _BOOT in (p.info["cmdline"] or []):
                parent = int(p.environ().get("WORKBENCH_PROMOTE_PARENT") or 0)
                if parent and p.info["ppid"] != parent:
                    found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_kill_9_of_promote_at_random_points_leaves_nothing_behind(tmp_path, checkpoint, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    rng = random.Random(18)
    killed_children: list[int] = []
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(ws.root), str(checkpoint)])
        time.sleep(rng.uniform(0.3, 3.5))  # a random point of its promote: the moment of the fault, not a wait
        killed_children += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the killed promotes' workers notice their parent is gone on their own, within seconds
    assert wait_for(lambda: not any(psutil.pid_exists(p) and p in orphan_workers() for p in killed_children), 10)
    monkeypatch.setenv("WORKBENCH_PROMOTE_WARM", "0")
    v = promote(None, "tiny", checkpoint, framework="pytorch", workspace=ws, warm=False)
    listed = assert_consistent(ws, "tiny")
    assert v.version in listed and not [p for p in version_dirs(ws.model_dir("tiny")) if p not in listed]
    assert not orphan_workers()
    assert cli_versions(ws, "tiny") == listed
    assert json.loads((ws.model_dir("tiny") / "model.json").read_text())["versions"]


def test_a_version_folder_not_in_model_json_is_not_a_version(tmp_path):
    ws = Workspace(tmp_path)
    (ws.model_dir("ghost") / "1").mkdir(parents=True)
    assert models(ws) == {}
    assert cli_versions(ws, "ghost") == []
