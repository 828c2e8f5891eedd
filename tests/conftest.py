"""Fixtures shared by every test: a fresh workspace per test, helpers to write tiny job scripts."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LENET = REPO / "examples" / "lenet" / "train.py"


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty workspace, made current through WORKBENCH_WORKSPACE."""
    ws = tmp_path / "workspace"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(ws))
    monkeypatch.setenv("WORKBENCH_KILL_GRACE", "2")
    return ws


@pytest.fixture
def write_script(tmp_path: Path):
    """Write a small Python job script into its own folder; returns its path."""

    def write(body: str, name: str = "job.py", folder: str = "code") -> Path:
        d = tmp_path / folder
        d.mkdir(exist_ok=True)
        path = d / name
        path.write_text(textwrap.dedent(body))
        return path

    return write


PYTHON = sys.executable
