"""Fixtures of the chart, image and browser tiers (helpers in tests/k8s/tooling.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s import tooling


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[tooling.DockerEngine]:
    """Our own dockerd, stopped (and the tier's lock released) when the module's tests end. Skips, with
    the reason, only when the engine cannot start."""
    engine = tooling.DockerEngine()
    try:
        engine.start()
    except tooling.EngineUnavailable as e:
        engine.stop()
        pytest.skip(f"docker tier skipped: the Docker engine cannot start on this machine: {e}")
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def built_images(docker_engine: tooling.DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """Every image built with images/build.sh on the debootstrap base; returns seconds per phase."""
    times = {}
    start = time.monotonic()
    docker_engine.ensure_base()
    times["base"] = time.monotonic() - start
    start = time.monotonic()
    wheels = tooling.fill_wheelhouse(tooling.build_wheel())
    times["wheelhouse"] = time.monotonic() - start
    log = tmp_path_factory.mktemp("build") / "build.log"
    start = time.monotonic()
    with tooling.WheelServer(wheels) as server:
        done = tooling.build_images(docker_engine, server.url, log)
    times["build"] = time.monotonic() - start
    assert done.returncode == 0, f"images/build.sh failed; end of {log}:\n{log.read_text()[-6000:]}"
    docker_engine.docker("image", "prune", "--force")  # what earlier runs built and nothing uses now
    print(
        f"\nimage tier: debootstrap base {times['base']:.0f} s, wheelhouse {times['wheelhouse']:.0f} s, "
        f"image builds {times['build']:.0f} s"
    )
    return times


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """A folder that the containers' non-root user (uid 1000) can write into."""
    tmp_path.chmod(0o777)
    return tmp_path
