import subprocess

import pytest

from workbench.errors import SpecError
from workbench.snapshot import lineage, list_files, snapshot


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_lineage_records_git_commit_and_dirty_flag(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    script = repo / "train.py"
    script.write_text("print(1)\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    clean = lineage(script, "hash", "python")
    assert clean["git_commit"] == head and clean["git_dirty"] is False
    script.write_text("print(2)\n")
    dirty = lineage(script, "hash", "python")
    assert dirty["git_dirty"] is True and dirty["script_sha256"] != clean["script_sha256"]


def test_lineage_outside_git(tmp_path):
    script = tmp_path / "t.py"
    script.write_text("x")
    assert lineage(script, "h", "p")["git_commit"] is None


def test_git_repo_snapshot_follows_gitignore(tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "train.py").write_text("x")
    (repo / "data" / "big.npy").write_text("x")
    (repo / ".gitignore").write_text("data/\n")
    git(repo, "init", "-q")
    assert [p.as_posix() for p in list_files(repo)] == [".gitignore", "train.py"]
    dest = tmp_path / "copy"
    h1 = snapshot(repo / "train.py", dest)
    assert (dest / "train.py").exists() and not (dest / "data").exists()
    (repo / "train.py").write_text("y")
    assert snapshot(repo / "train.py", tmp_path / "copy2") != h1


def test_snapshot_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CODE_MAX_MB", "0.001")
    (tmp_path / "t.py").write_text("x")
    (tmp_path / "blob").write_bytes(b"0" * 5000)
    with pytest.raises(SpecError, match="blob"):
        snapshot(tmp_path / "t.py", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
