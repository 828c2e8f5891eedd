import pytest

from workbench.errors import SpecError
from workbench.spec import JobSpec


def test_validated_normalizes(write_script):
    script = write_script("print('hi')\n")
    spec = JobSpec(str(script), args=["--a", 1]).validated()  # type: ignore[list-item]
    assert spec.script == str(script.resolve())
    assert spec.args == ("--a", "1")
    assert spec.name == "job"
    assert spec.python


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"framework": "caffe"}, "unknown framework 'caffe'; choose one of tensorflow, pytorch, mxnet, none"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"workers": "2"}, "workers must be an integer"),
        ({"gpus": -1}, "must not be negative"),
        ({"ps": 1, "framework": "pytorch"}, "parameter servers"),
        ({"framework": "mxnet", "workers": 2}, "needs at least one parameter server"),
        ({"args": "--epochs 3"}, "args must be a list"),
        ({"python": "/no/such/python"}, "neither an interpreter"),
    ],
)
def test_bad_specs_say_what_is_wrong(write_script, kwargs, message):
    script = write_script("print('hi')\n")
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        JobSpec(str(script), **kwargs).validated()


def test_missing_script(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        JobSpec(str(tmp_path / "nope.py")).validated()


def test_roles():
    assert JobSpec("x", workers=2).roles() == {"worker": 2}
    assert JobSpec("x", workers=2, ps=1).roles() == {"chief": 1, "worker": 2, "ps": 1}
    assert JobSpec("x", framework="mxnet", workers=2, ps=1).roles() == {"scheduler": 1, "server": 1, "worker": 2}


def test_round_trip():
    spec = JobSpec("x", args=("a",), env={"K": "V"}, workers=3)
    assert JobSpec.from_dict(spec.to_dict()) == spec
