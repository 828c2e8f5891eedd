"""An s3:// workspace on moto's S3 server, the stand-in for MinIO (no MinIO binary can be installed here)."""

from __future__ import annotations

import os
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from workbench.backends.local.processes import free_ports, wait_for

REPO = Path(__file__).resolve().parents[2]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "minio-stand-in", "AWS_SECRET_ACCESS_KEY": "minio-stand-in-secret"}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def minio() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 at a free port (the MinIO stand-in); yields its endpoint URL."""
    server = REPO / ".venv-moto" / "bin" / "moto_server"
    assert server.exists(), "moto is missing: run scripts/setup-k8s.sh (it makes .venv-moto)"
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _answers(url), 30), "moto's S3 server did not start"
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def make_bucket(endpoint: str, name: str) -> None:
    """Create a bucket (a plain PUT: the stand-in checks no signature; s3fs's mkdir sends a location constraint
    it rejects)."""
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{name}", method="PUT"), timeout=10) as r:
        assert r.status == 200


@pytest.fixture
def s3_env(minio: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The usual S3 variables, pointing at the MinIO stand-in."""
    env = {"AWS_ENDPOINT_URL": minio, "AWS_REGION": "us-east-1", **CREDENTIALS}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def s3_workspace(s3_env: dict[str, str], minio: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, made the current workspace (``s3://<bucket>/ws``), with its cache in tmp_path."""
    bucket = f"wb-{secrets.token_hex(4)}"
    make_bucket(minio, bucket)
    url = f"s3://{bucket}/ws"
    monkeypatch.setenv("WORKBENCH_WORKSPACE", url)
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WORKBENCH_KILL_GRACE", "2")
    monkeypatch.setenv("WORKBENCH_SYNC_INTERVAL", "1")
    assert os.environ["WORKBENCH_WORKSPACE"] == url
    return url


def bucket_files(url: str, rel: str) -> dict[str, int]:
    """Files under ``rel`` of workspace ``url`` in the bucket, read with a fresh s3fs client: name -> size."""
    from workbench.storage import Remote

    return {name: info["size"] for name, info in Remote(url).files(rel).items()}
