"""Jupyter server settings that ``workbench up`` adds to JupyterLab's (through ``JUPYTER_CONFIG_PATH``, so the
user's own ``~/.jupyter`` settings still apply): TensorBoard at ``<base_url>tensorboard/``, one port for both."""

from __future__ import annotations

from pathlib import Path

PREFIX = "tensorboard"  # TensorBoard's path under JupyterLab's base URL, here as in the Helm chart


def config_dir() -> Path:
    """The folder holding ``jupyter_server_config.py``."""
    return Path(__file__).resolve().parent


def rewrite_fonts(response, request) -> None:  # type: ignore[no-untyped-def]  # jupyter-server-proxy's objects
    """TensorBoard's index.html loads its fonts from ``/font-roboto/`` at the root, which ``--path_prefix`` misses:
    move those URLs into the prefix (as the jupyter image does, images/jupyter/jupyter_server_config.py)."""
    marker = f"/{PREFIX}/"
    if marker in request.path and b"url(/font-roboto/" in response.body:
        prefix = request.path[: request.path.index(marker) + len(marker)].encode()
        response.body = response.body.replace(b"url(/font-roboto/", b"url(" + prefix + b"font-roboto/")


def tensorboard_proxy(port: int) -> dict:  # type: ignore[type-arg]
    """jupyter-server-proxy's entry for the TensorBoard that ``workbench up`` runs on ``port`` of this machine,
    started with ``--path_prefix=/tensorboard``: it gets the full request path, so every request stays inside."""
    return {
        "command": [],  # already running: proxied, never started here
        "port": port,
        "absolute_url": True,
        "request_headers_override": {"Accept-Encoding": "identity"},  # uncompressed, so fonts can be rewritten
        "rewrite_response": rewrite_fonts,
        "timeout": 60,
        "launcher_entry": {"title": "TensorBoard"},
    }
