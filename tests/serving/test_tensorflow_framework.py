"""The TensorFlow/Keras plugin against the shared framework suite: .keras, .weights.h5, tf.train.Checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from .framework_suite import FrameworkSuite

pytestmark = pytest.mark.slow

LENET = Path(__file__).resolve().parents[2] / "examples" / "lenet" / "model.py"


@pytest.fixture(scope="module")
def lenet():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lenet_model", LENET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_lenet()


class TestTensorFlow(FrameworkSuite):
    framework = "keras"  # an alias of tensorflow

    @pytest.fixture
    def checkpoints(self, lenet, tmp_path):
        lenet.save(tmp_path / "ckpt-0001.keras")
        lenet.save_weights(tmp_path / "ckpt-0001.weights.h5")
        return {"full": tmp_path / "ckpt-0001.keras", "weights": tmp_path / "ckpt-0001.weights.h5"}

    @pytest.fixture
    def builder(self):
        return f"{LENET}:build_lenet"

    @pytest.fixture
    def reference(self, lenet):
        return lambda inputs: {"probabilities": lenet(inputs["image"]).numpy()}


def test_tf_train_checkpoint_and_saved_model_dir(lenet, tmp_path):
    import keras
    import numpy as np
    import tensorflow as tf

    from workbench.serving.model.frameworks import get_framework

    tf_fw = get_framework("tensorflow")
    prefix = tf.train.Checkpoint(model=lenet, optimizer=keras.optimizers.Adam()).save(str(tmp_path / "tf" / "ckpt"))
    exported = tmp_path / "from-ckpt"
    exported.mkdir()
    sig = tf_fw.export(Path(prefix), exported, builder="model:build_lenet", code_dir=LENET.parent)
    x = sig.sample(2)
    np.testing.assert_allclose(
        tf_fw.load(exported).predict(x)["probabilities"], lenet(x["image"]).numpy(), rtol=1e-4, atol=1e-6
    )

    copied = tmp_path / "copied"
    copied.mkdir()
    assert tf_fw.export(exported, copied).to_dict() == sig.to_dict()  # a SavedModel folder is taken as is

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    from workbench.errors import CheckpointError

    small = tmp_path / "small.py"
    small.write_text(
        "import keras\ndef build():\n    return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(3)])\n"
    )
    with pytest.raises(CheckpointError, match="do not fit the model the builder returned"):
        tf_fw.export(Path(prefix), wrong, builder=f"{small}:build")


def test_runtime_calls_the_signature_with_ordered_inputs_and_gets_the_same_answers(tmp_path):
    import numpy as np
    import tensorflow as tf

    from workbench.serving.model.frameworks.tensorflow import SavedModelRuntime

    class TwoInputs(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.range(4, dtype=tf.float32))

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 4], tf.float32, name="zeta"),
                tf.TensorSpec([None], tf.int64, name="alpha"),
            ]
        )
        def serve(self, zeta, alpha):
            return {"score": tf.reduce_sum(zeta * self.w, axis=1) + tf.cast(alpha, tf.float32), "twice": alpha * 2}

    module = TwoInputs()
    tf.saved_model.save(
        module, str(tmp_path / "m"), signatures={"serving_default": module.serve.get_concrete_function()}
    )
    runtime = SavedModelRuntime(tmp_path / "m")
    assert runtime._flat is not None and not runtime.frozen  # the fast path passed its check against the keyword call
    assert runtime.optimize() and runtime.frozen  # its one small variable folded in (checked the same way)
    assert not runtime.optimize()  # (done)
    inputs = {"alpha": np.array([1, 2, 3]), "zeta": np.arange(12, dtype=np.float32).reshape(3, 4)}
    out = runtime.predict(inputs)
    assert out["twice"].tolist() == [2, 4, 6]
    assert out["score"].tolist() == [15.0, 40.0, 65.0]  # (0,1,2,3).w + alpha, rows 0..2
    keyword = runtime._call(inputs)
    assert all(np.array_equal(keyword[k].numpy(), out[k]) for k in out)


def save_plain(path):
    """A SavedModel whose function reads one small variable and writes none: y = x . (2, 3)."""
    import tensorflow as tf

    class Plain(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable([2.0, 3.0])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.reduce_sum(x * self.w, axis=1)}

    plain = Plain()
    tf.saved_model.save(plain, str(path), signatures={"serving_default": plain.serve.get_concrete_function()})


def test_runtime_keeps_the_variables_of_a_function_that_writes_them_or_of_a_big_model(tmp_path, monkeypatch):
    import numpy as np
    import tensorflow as tf

    from workbench.serving.model.frameworks import tensorflow as tf_fw

    class Counting(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable([2.0, 3.0])
            self.calls = tf.Variable(0, dtype=tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            self.calls.assign_add(1)
            return {"y": tf.reduce_sum(x * self.w, axis=1), "calls": tf.fill([tf.shape(x)[0]], self.calls)}

    module = Counting()
    tf.saved_model.save(
        module, str(tmp_path / "c"), signatures={"serving_default": module.serve.get_concrete_function()}
    )
    runtime = tf_fw.SavedModelRuntime(tmp_path / "c")
    assert not runtime.optimize() and not runtime.frozen  # (its answers change from call to call: keyword call)
    first = runtime.predict({"x": np.ones((2, 2), np.float32)})
    second = runtime.predict({"x": np.ones((1, 2), np.float32)})
    assert first["y"].tolist() == [5.0, 5.0]
    assert second["calls"][0] == first["calls"][0] + 1  # each call still counts

    save_plain(tmp_path / "p")
    assert tf_fw.SavedModelRuntime(tmp_path / "p").optimize()
    monkeypatch.setattr(tf_fw, "FREEZE_MAX_BYTES", 4)  # its 8 bytes of weights are now "big"
    big = tf_fw.SavedModelRuntime(tmp_path / "p")
    assert (
        not big.optimize() and not big.frozen and big.predict({"x": np.ones((1, 2), np.float32)})["y"].tolist() == [5.0]
    )


def test_keras_exports_track_only_the_weights_unless_the_model_holds_other_resources(lenet, tmp_path):
    import keras
    import numpy as np
    import tensorflow as tf

    from workbench.serving.model.frameworks import get_framework
    from workbench.serving.model.frameworks.tensorflow import export_keras

    export_keras(lenet, tmp_path / "light")
    loaded = tf.saved_model.load(str(tmp_path / "light"))
    assert not hasattr(loaded, "model") and len(loaded.weights) == len(lenet.variables)  # no Keras objects to restore

    # a lookup layer's table is a resource the serving function captures: the whole model is tracked instead
    words = keras.Input((1,), dtype="string", name="word")
    ids = keras.layers.StringLookup(vocabulary=["a", "b", "c"], name="ids")(words)
    model = keras.Model(words, keras.layers.Dense(2, name="score")(keras.ops.cast(ids, "float32")))
    export_keras(model, tmp_path / "lookup")
    assert hasattr(tf.saved_model.load(str(tmp_path / "lookup")), "model")
    runtime = get_framework("tensorflow").load(tmp_path / "lookup")
    out = runtime.predict({"word": np.array([["b"], ["zzz"]], dtype=object)})["score"]
    assert runtime._flat is not None  # string inputs too take the ordered call (through tf.constant)
    np.testing.assert_allclose(out, model(tf.constant([["b"], ["zzz"]])).numpy(), rtol=1e-5)


def test_the_folded_function_may_differ_from_the_keyword_call_only_by_rounding(tmp_path):
    import numpy as np
    import tensorflow as tf

    from workbench.serving.model.frameworks.tensorflow import SavedModelRuntime

    save_plain(tmp_path / "p")
    runtime = SavedModelRuntime(tmp_path / "p")

    def off_by(relative: float):
        def flat(inputs):
            y = runtime._call(inputs)["y"].numpy()
            return {"y": tf.constant(y * np.float32(1 + relative))}

        return flat

    assert runtime._checked(off_by(2e-7), rounding=True) is not None  # float rounding: a folded graph may do this
    assert runtime._checked(off_by(2e-7)) is None  # the ordered call must match exactly
    assert runtime._checked(off_by(1e-3), rounding=True) is None  # more than rounding: keep the plain call
