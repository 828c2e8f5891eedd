"""Loaded by the JupyterLab of ``workbench up`` (see :mod:`workbench.jupyter_config`)."""

import os

from workbench.jupyter_config import PREFIX, tensorboard_proxy
from workbench.settings import TENSORBOARD_PORT_VAR

c = get_config()  # type: ignore[name-defined]  # noqa: F821  (Jupyter defines it for the config files it loads)

_port = os.environ.get(TENSORBOARD_PORT_VAR, "")
if _port:  # `workbench up --without tensorboard` runs none: no proxy entry then
    c.ServerProxy.servers = {PREFIX: tensorboard_proxy(int(_port))}
