"""The MXNet plugin against the shared framework suite: HybridBlock.export output with its signature file
(what examples/mnist_mxnet writes), and save_parameters weights with a builder.

As in ``promote``, export runs in a worker process of the MXNet environment, and the loaded
runtime here (beside TensorFlow) is a worker process of it too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from workbench.registry import worker
from workbench.serving.model.frameworks import get_framework
from workbench.serving.model.signature import Signature

from ..serving.framework_suite import FrameworkSuite
from .conftest import MXNET_TRAIN

pytestmark = pytest.mark.slow

WRITE = """
import sys, mxnet as mx, numpy as np
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from model import build_lenet, save_checkpoint
mx.random.seed(0)
net = build_lenet()
net.initialize(mx.init.Xavier())
net.hybridize()
out = Path(sys.argv[2])
save_checkpoint(out / "ckpt-0001", net, None)
net.save_parameters(str(out / "ckpt-0001.params"))
"""

REFERENCE = """
import sys, mxnet as mx, numpy as np
sys.path.insert(0, sys.argv[1])
from model import build_lenet
net = build_lenet()
net.load_parameters(sys.argv[2])
np.save(sys.argv[4], mx.nd.softmax(net(mx.nd.array(np.load(sys.argv[3])))).asnumpy())
"""

BUILDER = """
import sys, mxnet as mx
sys.path.insert(0, {example!r})
from model import build_lenet
def build():
    return build_lenet(), mx.nd.zeros((2, 28, 28))
"""


class InMXNetEnvironment:
    """The MXNet plugin as promote uses it: export in a worker of the MXNet environment."""

    def __init__(self) -> None:
        self.plugin = get_framework("mxnet")

    def __getattr__(self, name: str):
        return getattr(self.plugin, name)

    def export(self, checkpoint: Path, dest: Path, *, builder: str | None = None, code_dir: Path | None = None):
        request = {
            "op": "export",
            "checkpoint": str(checkpoint),
            "dest": str(dest),
            "builder": builder,
            "code_dir": None,
        }
        return Signature.from_dict(worker.run("export", "mxnet", self.plugin.python(), request)["signature"])


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, mxnet_python: str) -> Path:
    out = tmp_path_factory.mktemp("mxnet-checkpoints")
    subprocess.run([mxnet_python, "-c", WRITE, str(MXNET_TRAIN.parent), str(out)], check=True, timeout=120)
    return out


class TestMXNet(FrameworkSuite):
    framework = "mxnet"

    @pytest.fixture
    def plugin(self):
        return InMXNetEnvironment()

    @pytest.fixture
    def checkpoints(self, written):
        return {"full": written / "ckpt-0001", "weights": written / "ckpt-0001.params"}

    @pytest.fixture
    def builder(self, tmp_path):
        code = tmp_path / "build.py"
        code.write_text(BUILDER.format(example=str(MXNET_TRAIN.parent)))
        return f"{code}:build"

    @pytest.fixture
    def reference(self, written, mxnet_python, tmp_path):
        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            np.save(tmp_path / "x.npy", inputs["data"])
            args = [str(MXNET_TRAIN.parent), str(written / "ckpt-0001" / "net.params"), str(tmp_path / "x.npy")]
            subprocess.run([mxnet_python, "-c", REFERENCE, *args, str(tmp_path / "y.npy")], check=True, timeout=120)
            return {"output_0": np.load(tmp_path / "y.npy")}

        return run
