"""The model server's one ASGI app on uvicorn (what ``workbench serve`` runs) and on granian, side by side: which
HTTP server to build on (docs/architecture.md). LeNet over TF Serving REST and KServe V2 REST with ``wrk``, one
server process each, both started before measuring, levels alternated between them for ``--rounds`` rounds."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import _load, _models, _servers


def start_granian(workspace: Path, log: Path) -> _servers.Server:
    port = _servers.free_ports(1)[0]
    env = {**_servers._env(workspace, None), "WORKBENCH_SERVE_GRPC_PORT": "0"}
    granian = Path(sys.executable).with_name("granian")
    args = [str(granian), "--interface", "asgi", "--factory", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--workers", "1", "--loop", "uvloop", "workbench.serving.server:create_app"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=_servers.ROOT)
    url = f"http://127.0.0.1:{port}"
    _servers.wait_ready(f"{url}/v2/models/lenet/ready", proc, log)
    return _servers.Server("granian", proc, url, None, log)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=4.0, help="seconds per server and level")
    p.add_argument("--levels", default="1,8,64")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    if not _load.wrk_available() or shutil.which("granian", path=str(Path(sys.executable).parent)) is None:
        print("needs wrk and granian: bash scripts/bench-setup.sh", file=sys.stderr)
        return 2
    levels = [int(c) for c in a.levels.split(",")]
    out = Path(tempfile.mkdtemp(prefix="asgi-servers-"))
    ws = out / "workspace"
    _models.export_in_subprocess(ws, ["lenet"])
    servers = [
        _servers.start_workbench("uvicorn", ws, out / "uvicorn.log", ["lenet"], workers="1", grpc=False),
        start_granian(ws, out / "granian.log"),
    ]
    x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    rps: dict[tuple[str, str, int], list[float]] = {}
    try:
        for _ in range(a.rounds):
            for c in levels:
                for proto in ("tfs-rest", "v2-rest"):
                    for server in servers:
                        got = _load.wrk(_load.Target(proto, server.rest, "lenet", "image", x), c, a.duration)
                        rps.setdefault((server.name, proto, c), []).append(got["rps"])
                        print(
                            f"{server.name} {proto} c={c}: {got['rps']:.0f} req/s, {got['errors']} failed", flush=True
                        )
    finally:
        for server in servers:
            server.stop()
    print(f"\nLeNet req/s (median of {a.rounds}), one process each; granian / uvicorn:")
    for proto in ("tfs-rest", "v2-rest"):
        cells = []
        for c in levels:
            u, g = (float(np.median(rps[(n, proto, c)])) for n in ("uvicorn", "granian"))
            cells.append(f"c={c}: uvicorn {u:.0f}, granian {g:.0f} ({g / u:.2f}x)")
        print(f"  {proto}: " + "; ".join(cells))
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(sys.argv[1:]))
