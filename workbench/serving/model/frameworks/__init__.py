"""Framework plugins for export (registry) and model loading (server), chosen by name.

``FRAMEWORKS`` maps a name to ``"module:Class"`` (a
:class:`~workbench.serving.model.frameworks.base.Framework`) and an install hint.
The module is imported only when the framework is used, so a missing
framework gives the hint instead of a traceback at ``import workbench``.

Adding a framework (e.g. PyTorch, MXNet) takes one module implementing
:class:`~workbench.serving.model.frameworks.base.Framework` and one line here.
The shared test suite in ``tests/serving/framework_suite.py`` runs against a
plugin given a fixture that writes a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from workbench.errors import RegistryError
from workbench.plugins import instantiate
from workbench.serving.model.frameworks.base import Framework, Runtime

FRAMEWORKS: dict[str, tuple[str, str]] = {
    # name: ("module:Class", install hint)
    "tensorflow": ("workbench.serving.model.frameworks.tensorflow:TensorFlow", "pip install 'workbench[tensorflow]'"),
    "pytorch": ("workbench.serving.model.frameworks.pytorch:PyTorch", "pip install 'workbench[pytorch]'"),
    "mxnet": (
        "workbench.serving.model.frameworks.mxnet:MXNet",
        "bash scripts/setup-frameworks.sh (builds .venv-mxnet)",
    ),
}
ALIASES = {"keras": "tensorflow", "tf": "tensorflow"}


def known() -> list[str]:
    return sorted(FRAMEWORKS)


def get_framework(name: str) -> Framework:
    """The plugin called ``name`` (aliases: keras, tf -> tensorflow)."""
    name = ALIASES.get(name, name)
    if name not in FRAMEWORKS:
        raise RegistryError(f"no exporter for framework {name!r}; known frameworks: {', '.join(known())}")
    target, hint = FRAMEWORKS[name]
    plugin: Framework = instantiate(target, f"framework {name}", hint, RegistryError)
    return plugin


def detect_checkpoint(path: Path) -> str | None:
    """The first framework that recognizes ``path`` as its checkpoint, or None."""
    return _detect(lambda f: f.detect_checkpoint(path))


def detect_export(version_dir: Path) -> str | None:
    """The first framework whose serving format is in ``version_dir``, or None."""
    return _detect(lambda f: f.detect_export(version_dir))


def _detect(test) -> str | None:  # type: ignore[no-untyped-def]
    for name in known():
        try:
            if test(get_framework(name)):
                return name
        except RegistryError:
            continue
    return None


__all__ = ["FRAMEWORKS", "Framework", "Runtime", "detect_checkpoint", "detect_export", "get_framework", "known"]
