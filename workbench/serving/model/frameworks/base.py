"""The interface a framework plugin implements (export for the registry, load for the server).

A plugin is a class with a no-argument constructor, registered by name in
:mod:`workbench.serving.model.frameworks`. Its module must import nothing heavy at
import time: the framework itself is imported inside the methods, so
``import workbench`` stays fast and a missing framework gives an install hint.

Where each method runs:

- :meth:`Framework.export` and the validation gate run in one-shot worker
  processes started with :meth:`Framework.python` (the current interpreter
  unless the framework lives in another venv, as MXNet does). The worker has
  ``workbench`` importable (``PYTHONPATH`` is set) and calls the method directly.
- :meth:`Framework.load` runs in the model server (and in the gate's worker).
  The :class:`Runtime` it returns may run the model in-process (TensorFlow,
  PyTorch) or proxy to a worker process of another venv (MXNet): the server
  only calls ``predict`` (from one batching thread per version) and ``close``.
"""

from __future__ import annotations

import abc
import tempfile
from pathlib import Path

import numpy as np

from workbench.serving.model.signature import Signature


class Runtime(abc.ABC):
    """One loaded model version, ready to predict."""

    signature: Signature

    @abc.abstractmethod
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a batch: one array per signature input (axis 0 is the batch); one array per output, same batch size.

        Called from a single thread at a time per runtime; may block (release
        the GIL in the framework call where possible).
        """

    def optimize(self) -> bool:
        """Make later predict calls faster where this runtime can, each change checked against its plain call on
        a sample first; True if anything changed. The model server calls it once a version serves (or while
        it loads, where no client waits meanwhile). It may run on another thread while predict runs, and where it
        returns True the server then warms the runtime up with a few predict calls from that thread too."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook: most runtimes just let go of the model
        """Free what the runtime holds (e.g. stop its worker process). Called once, after its last predict."""


class Framework(abc.ABC):
    """Export checkpoints of one framework to its serving format, and load that format for inference."""

    name: str = ""
    format: str = ""  # the serving format written by export, e.g. "tf_saved_model"
    # Whether load() and predict() start no thread or process of their own once prepare() and warm() ran, so a
    # version can be loaded on a short-lived thread below normal priority (see workbench.serving.model.repository).
    loads_without_new_threads: bool = False

    def python(self) -> str | None:
        """Interpreter for export and validation workers; ``None``: the current one."""
        return None

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Import the framework (called when a worker starts, before it gets work, so warm workers answer fast)."""

    def warm_up(self, scratch: Path) -> None:  # noqa: B027 - optional hook
        """Pay first-use costs in an idle worker (e.g. export and load a tiny model in ``scratch``), so its real
        export or validation runs as fast as a second one would."""

    def warm(self) -> str | None:
        """:meth:`warm_up` in a scratch folder of its own; what went wrong, if it failed (that only costs speed)."""
        try:
            with tempfile.TemporaryDirectory(prefix="workbench-warm-") as scratch:
                self.warm_up(Path(scratch))
        except Exception as e:
            return f"warm-up of {self.name} failed ({type(e).__name__}: {e}); carrying on"
        return None

    @abc.abstractmethod
    def detect_checkpoint(self, path: Path) -> bool:
        """Whether ``path`` looks like a checkpoint of this framework (used when a job names no framework)."""

    @abc.abstractmethod
    def detect_export(self, version_dir: Path) -> bool:
        """Whether ``version_dir`` holds this framework's serving format (versions dropped in by hand)."""

    @abc.abstractmethod
    def export(
        self, checkpoint: Path, dest: Path, *, builder: str | None = None, code_dir: Path | None = None
    ) -> Signature:
        """Write ``checkpoint`` in the serving format into ``dest`` (an empty folder); return its signature.

        ``builder`` names a model-building function (``"module:function"`` or
        ``"path/to/file.py:function"``) for weights-only checkpoints; ``code_dir``
        is the job's code snapshot, searched first for it. Raise
        :class:`~workbench.errors.CheckpointError` (unreadable checkpoint, missing
        builder) or :class:`~workbench.errors.RegistryError` with a message that
        says what to do when the checkpoint cannot be exported.
        """

    @abc.abstractmethod
    def load(self, version_dir: Path) -> Runtime:
        """Load an exported version for inference."""
