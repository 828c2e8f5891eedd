"""MLServer runtime for the benchmark's comparison rows: one TensorFlow SavedModel version folder, as exported by
``workbench.promote`` (``parameters.uri`` in its ``model-settings.json``), served through its ``serving_default``
signature. It runs inside ``.venv-mlserver`` (``scripts/bench-setup.sh``): nothing of workbench is imported.

Inputs are matched to the signature's by name (an input without a name takes the signature's only one); every
output of the signature is answered, by its name. MLServer's adaptive batching stacks requests along the first
axis before :meth:`predict` sees them.
"""

from __future__ import annotations

import tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class SavedModelRuntime(MLModel):
    async def load(self) -> bool:
        self._loaded = tf.saved_model.load(self.settings.parameters.uri)
        self._fn = self._loaded.signatures["serving_default"]
        self._inputs = {name: spec.dtype for name, spec in self._fn.structured_input_signature[1].items()}
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        only = next(iter(self._inputs)) if len(self._inputs) == 1 else None
        feed = {}
        for request_input in payload.inputs:
            name = request_input.name if request_input.name in self._inputs else only
            if name is None:
                raise ValueError(f"unknown input {request_input.name!r}; inputs: {', '.join(self._inputs)}")
            array = NumpyCodec.decode_input(request_input)
            feed[name] = tf.constant(array, dtype=self._inputs[name])
        outputs = self._fn(**feed)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name, value.numpy()) for name, value in outputs.items()],
        )
