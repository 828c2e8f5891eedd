"""LeNet-5 for 28x28 grayscale digits in MXNet Gluon, and its checkpoint format.

A checkpoint is a folder ``ckpt-<step>/`` holding the served model as
``HybridBlock.export`` writes it (``model-symbol.json`` + ``model-0000.params``:
input ``data`` (N, 28, 28) float32 in [0, 1], output (N, 10) class
probabilities, the same signature as the Keras LeNet) with
``model-signature.json`` (the input's name, dtype and shape, which the symbol
file does not record), the training network's parameters (``net.params``)
and, single-process only, the trainer state (``trainer.states``) for
resuming. ``workbench.promote`` serves the exported files; the model server
loads them with ``SymbolBlock.imports``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn

EXPORT_PREFIX = "model"  # model-symbol.json + model-0000.params + model-signature.json
# Shapes: None is any size (axis 0 is the batch). Outputs may be left out: promote runs the model to find them.
SIGNATURE = {"inputs": [{"name": "data", "dtype": "float32", "shape": [None, 28, 28]}]}
NET_PARAMS = "net.params"
TRAINER_STATES = "trainer.states"


def build_lenet(num_classes: int = 10) -> nn.HybridSequential:
    """LeNet-5: two conv/pool stages, three dense layers; (N, 28, 28) in, logits out."""
    net = nn.HybridSequential(prefix="lenet_")
    with net.name_scope():
        net.add(
            nn.HybridLambda(lambda F, x: F.expand_dims(x, axis=1)),  # add the channel axis
            nn.Conv2D(6, 5, padding=2, activation="relu"),
            nn.AvgPool2D(2),
            nn.Conv2D(16, 5, activation="relu"),
            nn.AvgPool2D(2),
            nn.Flatten(),
            nn.Dense(120, activation="relu"),
            nn.Dense(84, activation="relu"),
            nn.Dense(num_classes),
        )
    return net


def serving_block(net: gluon.HybridBlock) -> nn.HybridSequential:
    """The served model: softmax over ``net``'s logits (sharing its parameters)."""
    block = nn.HybridSequential(prefix="serving_")
    block.add(net, nn.HybridLambda("softmax"))
    return block


def save_checkpoint(folder: Path, net: gluon.HybridBlock, trainer: gluon.Trainer | None) -> None:
    """Write checkpoint ``folder`` atomically (see the module docstring)."""
    partial = folder.with_name(".partial-" + folder.name)
    shutil.rmtree(partial, ignore_errors=True)  # left by a run killed mid-save
    partial.mkdir(parents=True)
    block = serving_block(net)
    block.hybridize()
    block(mx.nd.zeros((1, 28, 28)))  # export needs the traced graph
    block.export(str(partial / EXPORT_PREFIX), epoch=0)
    (partial / f"{EXPORT_PREFIX}-signature.json").write_text(json.dumps(SIGNATURE))
    net.save_parameters(str(partial / NET_PARAMS))
    if trainer is not None:
        trainer.save_states(str(partial / TRAINER_STATES))
    partial.rename(folder)  # a checkpoint is whole or absent, even if we are killed mid-save


def load_checkpoint(folder: Path, net: gluon.HybridBlock, trainer: gluon.Trainer | None) -> None:
    """Restore ``net`` (and ``trainer``, when the checkpoint has its state) from ``folder``."""
    net.load_parameters(str(folder / NET_PARAMS))
    if trainer is not None and (folder / TRAINER_STATES).exists():
        trainer.load_states(str(folder / TRAINER_STATES))
