"""LeNet-5 for 28x28 grayscale digits in PyTorch, and its checkpoint format.

A checkpoint is a folder ``ckpt-<step>/`` holding ``model.pt2``, a
``torch.export`` ExportedProgram of :class:`Probabilities` (what the model
server runs: input ``image`` (N, 28, 28) float32 in [0, 1], output (N, 10)
class probabilities, the same signature as the Keras LeNet), and
``train_state.pt`` (weights, optimizer, epoch) for resuming.
``workbench.promote`` needs nothing more: it serves ``model.pt2``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

MODEL = "model.pt2"  # what promote exports
TRAIN_STATE = "train_state.pt"  # what resuming reads


class LeNet(nn.Module):
    """LeNet-5: two conv/pool stages, three dense layers; returns logits."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image.unsqueeze(1)))


class Probabilities(nn.Module):
    """The served model: softmax over the network's logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(image), dim=1)


def save_checkpoint(folder: Path, net: nn.Module, train_state: dict) -> None:
    """Write checkpoint ``folder`` atomically: the exported serving model plus ``train_state``."""
    serving = Probabilities(net).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(serving, (torch.zeros(2, 28, 28),), dynamic_shapes={"image": {0: batch}})
    partial = folder.with_name(".partial-" + folder.name)
    shutil.rmtree(partial, ignore_errors=True)  # left by a run killed mid-save
    partial.mkdir(parents=True)
    torch.export.save(program, partial / MODEL)
    torch.save(train_state, partial / TRAIN_STATE)
    partial.rename(folder)  # a checkpoint is whole or absent, even if we are killed mid-save


def load_train_state(folder: Path) -> dict:
    """The training state saved in checkpoint ``folder`` (weights, optimizer, epoch)."""
    return torch.load(folder / TRAIN_STATE, weights_only=True)
