"""Named job environments: the interpreter a framework's jobs run in.

MXNet 1.9 needs ``numpy<1.24`` and cannot share a venv with TensorFlow, so a
job names the environment it runs in. Environments come from
``WORKBENCH_ENVIRONMENTS`` (``name=/path/to/python,...``) and from venvs the
set-up made beside the repo (``.venv-<name>``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from workbench import settings

# Frameworks whose jobs default to a named environment when it exists.
FRAMEWORK_ENVIRONMENTS = {"mxnet": "mxnet"}


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def known() -> dict[str, str]:
    """Map of environment name to interpreter path."""
    found: dict[str, str] = {"default": sys.executable}
    for venv in sorted(_repo_root().glob(".venv-*")):
        python = venv / "bin" / "python"
        if python.exists():
            found[venv.name.removeprefix(".venv-")] = str(python)
    for item in filter(None, (p.strip() for p in settings.ENVIRONMENTS.get().split(","))):
        name, _, path = item.partition("=")
        if name and path:
            found[name.strip()] = str(Path(path.strip()).expanduser())
    return found


def for_framework(framework: str) -> str | None:
    name = FRAMEWORK_ENVIRONMENTS.get(framework)
    return known().get(name) if name else None
