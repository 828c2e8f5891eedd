"""The contract every framework plugin meets, as a test class a plugin's tests subclass (fsspec style).

A subclass provides fixtures only::

    class TestMyFramework(FrameworkSuite):
        framework = "myframework"

        @pytest.fixture
        def checkpoints(self, tmp_path):   # {"full": path, ...}; "weights" (+ builder) if the plugin takes them
            ...
        @pytest.fixture
        def builder(self, tmp_path):       # "file.py:function" for the "weights" checkpoint, or None
            ...
        @pytest.fixture
        def reference(self):               # callable(inputs: dict of arrays) -> dict of arrays, what the
            ...                            # checkpoint's model computes (for the "full" checkpoint)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workbench.errors import CheckpointError, RegistryError
from workbench.serving.model.frameworks import get_framework
from workbench.serving.model.validation import check_outputs


class FrameworkSuite:
    framework = ""

    @pytest.fixture
    def plugin(self):
        return get_framework(self.framework)

    def test_export_then_load_computes_what_the_checkpoint_does(self, plugin, checkpoints, reference, tmp_path):
        dest = tmp_path / "export"
        dest.mkdir()
        assert plugin.detect_checkpoint(checkpoints["full"])
        signature = plugin.export(checkpoints["full"], dest)
        assert plugin.detect_export(dest)
        runtime = plugin.load(dest)
        assert runtime.signature.inputs == signature.inputs and runtime.signature.outputs == signature.outputs
        sample = signature.sample(3)
        outputs = runtime.predict(sample)
        check_outputs(signature, sample, outputs)
        for name, expected in reference(sample).items():
            np.testing.assert_allclose(outputs[name], expected, rtol=1e-4, atol=1e-5)
        runtime.close()

    def test_weights_only_checkpoint_with_a_builder(self, plugin, checkpoints, builder, tmp_path):
        if "weights" not in checkpoints:
            pytest.skip(f"{self.framework} takes no weights-only checkpoints")
        dest = tmp_path / "export"
        dest.mkdir()
        signature = plugin.export(checkpoints["weights"], dest, builder=builder)
        sample = signature.sample(2)
        check_outputs(signature, sample, plugin.load(dest).predict(sample))
        other = tmp_path / "other"
        other.mkdir()
        with pytest.raises(CheckpointError, match="builder"):
            plugin.export(checkpoints["weights"], other)

    def test_unreadable_checkpoint_is_a_clear_error(self, plugin, checkpoints, tmp_path):
        junk = tmp_path / f"junk{Path(checkpoints['full']).suffix or '.bin'}"
        junk.write_bytes(b"definitely not a checkpoint")
        dest = tmp_path / "export"
        dest.mkdir()
        with pytest.raises((CheckpointError, RegistryError)):
            plugin.export(junk, dest)
