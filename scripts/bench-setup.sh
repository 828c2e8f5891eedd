#!/usr/bin/env bash
# What bench/serve_throughput.py compares against and loads with (run after scripts/setup.sh). Idempotent: with
# nothing changed it takes a second or two. Not named setup-*.sh on purpose: scripts/test.sh (and so CI) runs
# those, and CI needs none of this (MLServer's venv is a second TensorFlow, minutes to install); the bench's smoke
# test skips, with the reason printed, whatever is missing.
#
# - wrk (Debian): the REST load generator, driven by bench/wrk_post.lua; gcc + python3-dev: to build the old
#   server's C extension (below).
# - aiohttp (and granian, for bench.asgi_servers) in .venv, for the Python REST load processes (the gRPC ones use the stock stubs that scripts/setup.sh
#   installs: tensorflow-serving-api and tritonclient, both --no-deps).
# - .venv-mlserver: MLServer 1.7.1 with TensorFlow, the comparison server, in a venv of its own so its pins never
#   touch .venv (bench/_mlserver_runtime.py is its runtime for our SavedModels).
# - bench/out/old-server: a git worktree of 5a4e060, the last commit of the hand-written C server, with its
#   extension built in place by .venv's python; the bench starts it with PYTHONPATH pointing there, once, so that
#   the cost of the rewrite is on record. It needs the old server's own dependencies in .venv (httptools,
#   pysimdjson, uvloop), installed here if the new pyproject dropped them.
#
# WORKBENCH_BENCH_MLSERVER=0 skips .venv-mlserver; WORKBENCH_BENCH_OLD_SERVER=0 skips the old server.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

OLD_SERVER_COMMIT=5a4e060
MLSERVER=("mlserver==1.7.1" "tensorflow-cpu==2.21.0")

quiet_pip() {  # pip's warnings about the offline index folders it skips are noise here
  "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

quiet_check() {  # an import check: its output (TensorFlow's start-up chatter) only when it fails
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }
}

if [ ! -x .venv/bin/python ]; then
  echo "bench-setup: .venv is missing; run scripts/setup.sh first" >&2
  exit 1
fi
script_hash=$(sha256sum < scripts/bench-setup.sh | cut -d' ' -f1)

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v gcc >/dev/null || missing+=(gcc)
# the headers of .venv's own python (a python.org or pyenv build carries them; Debian's comes with python3-dev)
.venv/bin/python -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' ||
  missing+=(python3-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$(cat .venv/.workbench-bench 2>/dev/null)" != "$script_hash" ]; then
  .venv/bin/python -c "import aiohttp" 2>/dev/null || quiet_pip .venv/bin/python -m pip install -q "aiohttp>=3.9"
  # granian, to compare the server's ASGI app on it with uvicorn (bench.asgi_servers)
  .venv/bin/python -c "import granian" 2>/dev/null || quiet_pip .venv/bin/python -m pip install -q "granian>=2.5"
  if ! quiet_check .venv/bin/python -c \
      "import aiohttp, grpc.aio, tensorflow_serving.apis.prediction_service_pb2_grpc, tritonclient.grpc.aio"; then
    echo "bench-setup: the stock gRPC clients are missing from .venv; run scripts/setup.sh" >&2
    exit 1
  fi
  echo "$script_hash" > .venv/.workbench-bench
fi

if [ "${WORKBENCH_BENCH_MLSERVER:-1}" != "0" ]; then
  if [ ! -x .venv-mlserver/bin/python ]; then
    PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
    echo "creating .venv-mlserver with $PY"
    "$PY" -m venv .venv-mlserver
  fi
  if [ "$(cat .venv-mlserver/.workbench-setup 2>/dev/null)" != "$script_hash" ]; then
    echo "installing ${MLSERVER[*]} into .venv-mlserver (a few minutes the first time)"
    quiet_pip .venv-mlserver/bin/python -m pip install -q "${MLSERVER[@]}"
    quiet_check .venv-mlserver/bin/python -c "import mlserver, tensorflow"
    echo "$script_hash" > .venv-mlserver/.workbench-setup
  fi
fi

if [ "${WORKBENCH_BENCH_OLD_SERVER:-1}" != "0" ]; then
  old=bench/out/old-server
  if [ ! -e "$old/.git" ]; then
    mkdir -p bench/out
    git worktree prune
    echo "checking out the old C server ($OLD_SERVER_COMMIT) into $old"
    git worktree add --detach "$old" "$OLD_SERVER_COMMIT" >/dev/null
  fi
  if [ "$(cat "$old/.workbench-bench-build" 2>/dev/null)" != "$script_hash" ]; then
    .venv/bin/python -c "import httptools, simdjson, uvloop" 2>/dev/null ||
      quiet_pip .venv/bin/python -m pip install -q "httptools>=0.6" "pysimdjson>=6.0" "uvloop>=0.19"
    echo "building the old server's C extension in place"
    (cd "$old" && "$root/.venv/bin/python" setup.py -q build_ext --inplace >/dev/null)
    ls "$old"/workbench/serving/_native*.so >/dev/null
    echo "$script_hash" > "$old/.workbench-bench-build"
  fi
fi
echo "bench ready: wrk $(command -v wrk)$([ -x .venv-mlserver/bin/mlserver ] && echo ', .venv-mlserver')$(
  [ -e bench/out/old-server/.workbench-bench-build ] && echo ', bench/out/old-server')"
