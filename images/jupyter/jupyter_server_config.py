"""Jupyter server settings of the workbench jupyter image: TensorBoard at ``<base_url>tensorboard/``.

jupyter-server-proxy serves TensorBoard under JupyterLab's own URL (and its token), in one of two ways:

- ``WORKBENCH_TENSORBOARD_PORT`` set (the Helm chart): a TensorBoard already listens on that port of
  127.0.0.1, a sidecar from the tensorboard image (no TensorFlow, so it reads ``s3://`` logdirs too)
  started with ``--path_prefix=<base_url>tensorboard``; it is proxied, nothing is started here.
- unset (the image run on its own): TensorBoard over ``$WORKBENCH_WORKSPACE/runs`` is started on the
  first visit.

Either way TensorBoard gets the full request path (``absolute_url``) and serves under that same
prefix, so every page, script and data request it makes stays inside the proxy: no page that loads
but shows nothing because its requests went to ``/data/...`` at the server's root. One thing
``--path_prefix`` misses: TensorBoard's index.html loads its fonts from ``/font-roboto/`` at the
root; the proxy rewrites those URLs into the prefix (tests/k8s/test_browser.py catches any request
that escapes it).
"""

import os
import sys

c = get_config()  # noqa: F821  (provided by Jupyter when it loads this file)


def _tensorboard_command(port: int, base_url: str) -> list[str]:
    runs = os.path.join(os.environ.get("WORKBENCH_WORKSPACE", os.getcwd()), "runs")
    os.makedirs(runs, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "tensorboard.main",
        f"--logdir={runs}",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--path_prefix={base_url}tensorboard",
        "--reload_interval=5",
    ]


def _fonts_inside_prefix(response, request) -> None:  # noqa: ANN001  (jupyter-server-proxy's objects)
    marker = "/tensorboard/"
    if marker in request.path and b"url(/font-roboto/" in response.body:
        prefix = request.path[: request.path.index(marker) + len(marker)].encode()
        response.body = response.body.replace(b"url(/font-roboto/", b"url(" + prefix + b"font-roboto/")


_sidecar_port = os.environ.get("WORKBENCH_TENSORBOARD_PORT", "")
c.ServerProxy.servers = {
    "tensorboard": {
        "command": [] if _sidecar_port else _tensorboard_command,
        "port": int(_sidecar_port or 0),
        "absolute_url": True,
        # Uncompressed answers, so that the font URLs above can be rewritten.
        "request_headers_override": {"Accept-Encoding": "identity"},
        "rewrite_response": _fonts_inside_prefix,
        "timeout": 60,  # TensorBoard answers about 5 s after start, longer on a busy node
        "launcher_entry": {"title": "TensorBoard"},
    }
}
