"""Lazy loading of pluggable implementations named by ``"module:Class"`` (backends, framework plugins)."""

from __future__ import annotations

import importlib
from typing import Any

from workbench.errors import WorkbenchError


def instantiate(target: str, what: str, hint: str, error: type[WorkbenchError] = WorkbenchError) -> Any:
    """Import ``module`` of ``"module:Class"`` now and return ``Class()``.

    A missing dependency becomes ``error`` naming ``what`` needs it and how to install it.
    """
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise error(f"{what} needs a missing package ({e.name}): {hint}") from e
    return getattr(module, attr)()
