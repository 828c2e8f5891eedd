"""Code snapshots and lineage: what exactly a run ran.

``submit`` copies the script's folder into ``runs/<id>/code/`` and replicas run
from that copy, so editing files while a job runs changes nothing and the run
keeps an exact record of its code (Kubernetes pods later read it from the
workspace too).
"""

from __future__ import annotations

import fnmatch
import getpass
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from workbench import settings
from workbench.errors import SpecError

ALWAYS_SKIP = (".git", "__pycache__", ".ipynb_checkpoints", ".venv", ".venv-*", "*.pyc", ".DS_Store")


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _skipped(rel: Path, patterns: list[str]) -> bool:
    for part in rel.parts:
        if any(fnmatch.fnmatch(part, p) for p in ALWAYS_SKIP):
            return True
    for p in patterns:
        anchored = p.startswith("/")
        p = p.strip("/")
        if fnmatch.fnmatch(rel.as_posix(), p) or (not anchored and any(fnmatch.fnmatch(x, p) for x in rel.parts)):
            return True
    return False


def list_files(folder: Path) -> list[Path]:
    """Files of ``folder`` to snapshot, relative to it, skipping what .gitignore skips."""
    listed = _git(folder, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", ".")
    if listed is not None:
        files = [Path(p) for p in listed.split("\0") if p]
        return sorted(f for f in files if (folder / f).is_file() and not _skipped(f, []))
    patterns: list[str] = []
    ignore = folder / ".gitignore"
    if ignore.is_file():
        patterns = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder)
        dirnames[:] = [d for d in dirnames if not _skipped(rel_dir / d, patterns)]
        found += [rel_dir / f for f in filenames if not _skipped(rel_dir / f, patterns)]
    return sorted(found)


def snapshot(script: Path, dest: Path) -> str:
    """Copy the script's folder into ``dest``; return a content hash of what was copied.

    Raises :class:`SpecError` when the folder is over the size cap, naming the
    largest files, before anything is copied.
    """
    folder = script.parent
    files = list_files(folder)
    cap = int(float(settings.CODE_SNAPSHOT_MAX_MB.get()) * 1024 * 1024)
    sizes = {f: (folder / f).stat().st_size for f in files}
    total = sum(sizes.values())
    if total > cap:
        biggest = sorted(sizes, key=sizes.__getitem__, reverse=True)[:3]
        listed = ", ".join(f"{f} ({sizes[f] / 1e6:.1f} MB)" for f in biggest)
        raise SpecError(
            f"the code folder {folder} holds {total / 1e6:.1f} MB, over the {cap / 1e6:.0f} MB snapshot cap "
            f"({settings.CODE_SNAPSHOT_MAX_MB.name}); largest: {listed}. Put data in the workspace or add it "
            f"to .gitignore, or move the script into a folder of its own"
        )
    digest = hashlib.sha256()
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / f, target)
        digest.update(f.as_posix().encode() + b"\0" + (folder / f).read_bytes())
    return digest.hexdigest()


def lineage(script: Path, code_hash: str, python: str) -> dict[str, Any]:
    """Where the code came from and who ran it: git commit and dirty flag, hashes, user."""
    folder = script.parent
    commit = _git(folder, "rev-parse", "HEAD")
    dirty = _git(folder, "status", "--porcelain", "--", ".")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(dirty.strip()) if dirty is not None and commit else None,
        "script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        "code_sha256": code_hash,
        "user": user,
        "host": platform.node(),
        "python": python,
    }
