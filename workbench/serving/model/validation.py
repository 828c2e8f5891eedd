"""The validation gate's checks: build a sample input, and check what the model returns for it."""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.errors import ValidationError
from workbench.serving.model.signature import InputError, Signature, coerce


def sample_inputs(signature: Signature, sample: Any = None, batch: int = 2) -> dict[str, np.ndarray]:
    """``sample`` as arrays: a dict of input name -> batch, or (one input) a batch; None: random, from the signature."""
    if sample is None:
        return signature.sample(batch)
    if not isinstance(sample, dict):
        if len(signature.inputs) != 1:
            raise ValidationError(f"the model has inputs {signature.input_names()}: give the sample as a dict")
        sample = {signature.inputs[0].name: sample}
    try:
        missing = [t.name for t in signature.inputs if t.name not in sample]
        if missing:
            raise InputError(f"the sample lacks inputs {', '.join(missing)}")
        return {name: coerce(signature.input(name), value) for name, value in sample.items()}
    except InputError as e:
        raise ValidationError(f"the sample input does not fit the model's signature: {e}") from None


def check_outputs(signature: Signature, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    """Raise ValidationError unless ``outputs`` has every declared output, one row per input row, finite values."""
    rows = len(next(iter(inputs.values())))
    want = {t.name: t for t in signature.outputs}
    if set(outputs) != set(want):
        raise ValidationError(f"the model returned outputs {sorted(outputs)}; its signature declares {sorted(want)}")
    for name, value in outputs.items():
        spec = want[name]
        if value.ndim != len(spec.shape) or value.shape[:1] != (rows,):
            raise ValidationError(
                f"output {name!r} has shape {list(value.shape)} for a batch of {rows}; expected {spec.describe()}"
            )
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValidationError(f"output {name!r} has NaN or infinite values on the sample input")
