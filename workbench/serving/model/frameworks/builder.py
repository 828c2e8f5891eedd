"""Resolve a model-building function named by the user (for weights-only checkpoints)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.errors import RegistryError


def resolve_builder(spec: str, code_dir: Path | None = None) -> Callable[[], Any]:
    """``"module:function"`` or ``"path/to/file.py:function"`` as a callable.

    A relative file is looked up in the job's code snapshot (``code_dir``) by
    its name first, then from the current directory; a module name is
    imported with ``code_dir`` on ``sys.path``, so ``"model:build_lenet"``
    finds the ``model.py`` the job ran with.
    """
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not func:
        raise RegistryError(f"builder must be 'module:function' or 'file.py:function', got {spec!r}")
    local = code_dir / (target.replace(".", "/") + ".py") if code_dir is not None else None
    if target.endswith(".py"):
        module = _from_file(target, code_dir)
    elif local is not None and local.is_file():
        # Load the snapshot's own file: a plain import could return another run's
        # ``model`` module already in sys.modules under the same name.
        module = _from_file(str(local), None)
    else:
        if code_dir is not None and str(code_dir) not in sys.path:
            sys.path.insert(0, str(code_dir))
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise RegistryError(f"cannot import the builder module {target!r}: {e}") from e
    fn = getattr(module, func, None)
    if not callable(fn):
        raise RegistryError(f"{target} has no function {func!r}")
    return fn  # type: ignore[no-any-return]


def _from_file(target: str, code_dir: Path | None) -> Any:
    candidates = [Path(target)]
    if code_dir is not None:
        candidates = [code_dir / Path(target).name, code_dir / target, Path(target)]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise RegistryError(f"builder file {target} not found (looked in {', '.join(str(c) for c in candidates)})")
    if str(path.parent.resolve()) not in sys.path:
        sys.path.insert(0, str(path.parent.resolve()))  # so the file's own sibling imports work
    unique = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"_workbench_builder_{path.stem}_{unique}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
