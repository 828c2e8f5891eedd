"""The lock files (requirements/*lock.txt, `make lock`) agree with what pins versions elsewhere: pyproject's
ranges, the images' ARG pins, environment.yml and the set-up scripts. Refreshing them needs the network; these
checks do not."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
REQS = ROOT / "requirements"
# Which lock constrains each image's pip installs (PIP_CONSTRAINT in its Dockerfile).
IMAGE_LOCKS = {
    "trainer-tensorflow": "lock.txt",
    "trainer-pytorch": "lock.txt",
    "jupyter": "lock.txt",
    "serving": "lock.txt",
    "trainer-mxnet": "mxnet-lock.txt",
    "tensorboard": "tensorboard-lock.txt",
}


def pins(lock: str) -> dict[str, str]:
    text = (REQS / lock).read_text()
    return {canonicalize_name(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)}


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in listed]


@pytest.mark.parametrize("requirement", pyproject_requirements(), ids=str)
def test_lock_covers_pyproject(requirement: Requirement) -> None:
    """A dependency added or narrowed in pyproject.toml without `make lock` fails here."""
    if requirement.marker is not None and not requirement.marker.evaluate({"sys_platform": "linux"}):
        return
    locked = pins("lock.txt").get(canonicalize_name(requirement.name))
    assert locked, f"{requirement.name} is not in requirements/lock.txt: run `make lock`"
    assert requirement.specifier.contains(locked, prereleases=True), (
        f"requirements/lock.txt has {requirement.name}=={locked}, pyproject.toml wants {requirement}: run `make lock`"
    )


def test_torch_stays_the_pinned_cpu_release() -> None:
    # The CPU build is 2.13.0+cpu: a constraint of ==2.13.0 admits it (a local version label matches).
    assert pins("lock.txt")["torch"] == "2.13.0"


@pytest.mark.parametrize("image", sorted(IMAGE_LOCKS))
def test_image_pins_agree_with_its_lock(image: str) -> None:
    """An ARG pin the lock contradicts would make the image's pip install fail on the conflict."""
    locked = pins(IMAGE_LOCKS[image])
    dockerfile = (ROOT / "images" / image / "Dockerfile").read_text()
    assert f"COPY dist/{IMAGE_LOCKS[image]} /opt/venv/constraints.txt" in dockerfile or image in ("jupyter", "serving")
    for name, version in re.findall(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([0-9][^\s\"]*)", dockerfile):
        key = canonicalize_name(name)
        if key in locked:
            assert locked[key] == version, f"images/{image}/Dockerfile pins {name}=={version}, the lock {locked[key]}"


def test_mxnet_lock_holds_numpy_below_1_24() -> None:
    assert Requirement("numpy<1.24").specifier.contains(pins("mxnet-lock.txt")["numpy"])


def test_set_up_and_conda_install_the_same_extras_under_the_lock() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    conda = (ROOT / "environment.yml").read_text()
    extras = re.search(r'-e "\.\[([a-z,]+)\]"', setup)
    assert extras and "-c requirements/lock.txt -e" in setup
    assert extras and '-c requirements/lock.txt -e ".[s3]"' in setup
    assert f"-e .[{extras[1]},s3]" in conda and "-c requirements/lock.txt" in conda
    frameworks = (ROOT / "scripts" / "setup-frameworks.sh").read_text()
    assert "-c requirements/lock.txt" in frameworks and "-c requirements/mxnet-lock.txt" in frameworks
    tensorboard = (ROOT / "scripts" / "setup-tensorboard.sh").read_text()
    assert "-c requirements/tensorboard-lock.txt" in tensorboard
