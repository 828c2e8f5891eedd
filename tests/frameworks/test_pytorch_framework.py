"""The PyTorch plugin against the shared framework suite: a checkpoint folder holding a torch.export
program (what examples/mnist_torch writes), and a state dict with a builder."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from ..serving.framework_suite import FrameworkSuite
from .conftest import TORCH_TRAIN

MODEL = TORCH_TRAIN.parent / "model.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("mnist_torch_model", MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def net(example):
    import torch

    torch.manual_seed(0)
    return example.LeNet().eval()


class TestPyTorch(FrameworkSuite):
    framework = "pytorch"

    @pytest.fixture
    def checkpoints(self, example, net, tmp_path):
        import torch

        example.save_checkpoint(tmp_path / "ckpt-0001", net, {"model": net.state_dict(), "epoch": 1})
        torch.save({"model": net.state_dict(), "epoch": 1}, tmp_path / "ckpt-0001.pt")
        return {"full": tmp_path / "ckpt-0001", "weights": tmp_path / "ckpt-0001.pt"}

    @pytest.fixture
    def builder(self, tmp_path):
        code = tmp_path / "build.py"
        code.write_text(
            f"import importlib.util, torch\n"
            f"spec = importlib.util.spec_from_file_location('example_model', {str(MODEL)!r})\n"
            "model = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(model)\n"
            "def build():\n"
            "    return model.LeNet(), torch.zeros(2, 28, 28)\n"
        )
        return f"{code}:build"

    @pytest.fixture
    def reference(self, example, net):
        import torch

        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.no_grad():
                return {"output_0": example.Probabilities(net)(torch.from_numpy(inputs["image"])).numpy()}

        return run
