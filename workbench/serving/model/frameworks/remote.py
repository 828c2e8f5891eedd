"""A model version served from a long-lived worker process in another interpreter (e.g. ``.venv-mxnet``).

MXNet 1.9 needs numpy<1.24 and cannot be imported beside TensorFlow, so the
server (in the TensorFlow environment) runs MXNet models in a child process of
the MXNet environment: :class:`RemoteRuntime` is the server's side,
``python -m workbench.serving.model.frameworks.remote FRAMEWORK VERSION_DIR`` the
child's, which loads the version with the framework's own (in-process)
runtime and answers predict requests until its stdin closes.

Over the child's stdin/stdout each message is a 4-byte little-endian header
length, a JSON header (with the name, dtype and shape of each array) and the
arrays' raw bytes in that order: no pickle, so the two sides may run
different numpy versions (numpy 2 pickles do not load in numpy 1). The
server's batching thread blocks in pipe I/O, which releases the GIL, so
models served in-process (TensorFlow) are not slowed by a remote one.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import IO, Any

import numpy as np

from workbench.errors import RegistryError
from workbench.serving.model.frameworks.base import Runtime
from workbench.serving.model.signature import Signature

START_TIMEOUT_S = 300
Arrays = dict[str, np.ndarray]


def write_message(f: IO[bytes], header: dict[str, Any], arrays: Arrays | None = None) -> None:
    arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
    specs = [{"name": k, "dtype": a.dtype.str, "shape": list(a.shape)} for k, a in arrays.items()]
    if any(a.dtype.hasobject for a in arrays.values()):
        raise RegistryError("a remote runtime takes numeric and boolean arrays only, not strings or objects")
    head = json.dumps({**header, "arrays": specs}).encode()
    f.write(struct.pack("<I", len(head)) + head)
    for a in arrays.values():
        f.write(a.data)
    f.flush()


def read_message(f: IO[bytes]) -> tuple[dict[str, Any], Arrays] | None:
    """The next message, or None when the other side closed the pipe."""
    size = _read_exact(f, 4)
    if size is None:
        return None
    head = _read_exact(f, struct.unpack("<I", size)[0])
    if head is None:
        return None
    header = json.loads(head)
    arrays = {}
    for spec in header.pop("arrays"):
        dtype = np.dtype(spec["dtype"])
        data = _read_exact(f, int(np.prod(spec["shape"], dtype=np.int64)) * dtype.itemsize)
        if data is None:
            return None
        arrays[spec["name"]] = np.frombuffer(data, dtype).reshape(spec["shape"])
    return header, arrays


def _read_exact(f: IO[bytes], n: int) -> bytes | None:
    data = f.read(n)
    return data if len(data) == n else None


class RemoteRuntime(Runtime):
    """Runs ``framework``'s runtime for ``version_dir`` in a child process of interpreter ``python``.

    A child that dies is started again once per request before the request fails. The child
    is stopped by :meth:`close`, or when the runtime is garbage-collected without it.
    """

    def __init__(self, framework: str, python: str, version_dir: Path, start_timeout: float = START_TIMEOUT_S):
        self._cmd = [python, "-m", __name__, framework, str(version_dir)]
        self._what = f"{framework} worker for {version_dir}"
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._box: list[subprocess.Popen[bytes] | None] = [None]  # the child; shared with the finalizer
        weakref.finalize(self, _stop, self._box)
        self.signature = self._start()

    def _start(self) -> Signature:
        root = str(Path(__file__).resolve().parents[3])  # so another venv's python imports this workbench
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self._box[0] = proc = subprocess.Popen(self._cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], self._start_timeout)
        answer = read_message(proc.stdout) if ready else None
        if answer is None or not answer[0].get("ok"):
            _stop(self._box)
            why = answer[0].get("error") if answer else f"no answer within {self._start_timeout:.0f} s or it exited"
            raise RegistryError(f"the {self._what} did not start: {why}")
        return Signature.from_dict(answer[0]["signature"])

    def predict(self, inputs: Arrays) -> Arrays:
        with self._lock:
            for attempt in (0, 1):
                try:
                    return self._exchange(inputs)
                except (BrokenPipeError, EOFError, ConnectionError):
                    if attempt:
                        raise RegistryError(f"the {self._what} died twice in one request") from None
                    _stop(self._box)
                    self._start()
        raise AssertionError("unreachable")

    def _exchange(self, inputs: Arrays) -> Arrays:
        proc = self._box[0]
        if proc is None or proc.poll() is not None:
            raise EOFError
        assert proc.stdin is not None and proc.stdout is not None
        write_message(proc.stdin, {"op": "predict"}, inputs)
        answer = read_message(proc.stdout)
        if answer is None:
            raise EOFError
        header, outputs = answer
        if not header.get("ok"):
            raise RegistryError(f"{self._what}: {header.get('error')}")
        return outputs

    def close(self) -> None:
        with self._lock:
            _stop(self._box)


def _stop(box: list[subprocess.Popen[bytes] | None]) -> None:
    proc, box[0] = box[0], None
    if proc is None:
        return
    try:
        if proc.stdin is not None:
            proc.stdin.close()  # the child exits when its stdin closes
        proc.wait(5)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def main(argv: list[str]) -> int:
    """The child: load the version in-process, then answer predict requests until stdin closes."""
    from workbench.serving.model.frameworks import get_framework

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what the framework prints goes to the log, not into the protocol
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    framework, version_dir = argv
    try:
        runtime = get_framework(framework).load(Path(version_dir))
    except Exception as e:
        write_message(out, {"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    write_message(out, {"ok": True, "signature": runtime.signature.to_dict()})
    while (request := read_message(stdin)) is not None:
        try:
            outputs = runtime.predict(request[1])
            write_message(out, {"ok": True}, outputs)
        except Exception as e:  # the caller raises it; this worker keeps serving
            write_message(out, {"ok": False, "error": f"{type(e).__name__}: {e}"})
    runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
