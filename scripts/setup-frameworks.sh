#!/usr/bin/env bash
# PyTorch and MXNet for workbench jobs, notebooks and serving (run after scripts/setup.sh;
# scripts/test.sh runs it before the tests). Idempotent: with nothing changed it takes a second.
#
# - PyTorch (torch==2.13.0, CPU) goes into .venv beside TensorFlow: they share numpy 2.
# - MXNet 1.9.1 needs numpy<1.24 (it uses np.bool), which current TensorFlow cannot live with,
#   so it gets its own venv, .venv-mxnet. Jobs with framework="mxnet" and the model server's
#   MXNet worker find it by name (workbench/environments.py: .venv-<name> beside the repo).
#   workbench is installed there editable and without its dependencies (its runtime and
#   datasets need only numpy and psutil), plus tensorboardX for TensorBoard scalars.
#
# WORKBENCH_WITH_MXNET=0 skips the MXNet venv (e.g. a machine that only needs PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."

# Versions: requirements/lock.txt for .venv, requirements/mxnet-lock.txt for .venv-mxnet (`make lock`).
MXNET=(-r requirements/mxnet.in -c requirements/mxnet-lock.txt)

quiet_pip() {  # pip's warnings about the offline index folders it skips are noise here
  "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

if [ ! -x .venv/bin/python ]; then
  echo "setup-frameworks: .venv is missing; run scripts/setup.sh first" >&2
  exit 1
fi

# Stamps: what was installed, so a re-run with nothing changed does nothing.
script_hash=$(cat scripts/setup-frameworks.sh requirements/mxnet.in requirements/mxnet-lock.txt | sha256sum | cut -d' ' -f1)
# The extra's pin (pyproject.toml) matters: a bare "torch" resolves to the multi-GB CUDA build.
mapfile -t extra < <(.venv/bin/python -c \
  'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["pytorch"], sep="\n")')
want="$script_hash ${extra[*]} $(sha256sum < requirements/lock.txt | cut -d' ' -f1)"

if [ "$(cat .venv/.workbench-frameworks 2>/dev/null)" != "$want" ]; then
  echo "installing the pytorch extra (${extra[*]}, CPU) into .venv"
  quiet_pip .venv/bin/python -m pip install -q -c requirements/lock.txt "${extra[@]}"
  echo "$want" > .venv/.workbench-frameworks
fi

if [ "${WORKBENCH_WITH_MXNET:-1}" != "0" ]; then
  if [ ! -x .venv-mxnet/bin/python ]; then
    PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
    echo "creating .venv-mxnet with $PY (MXNet 1.9.1 runs on Python 3.11 with numpy<1.24)"
    "$PY" -m venv .venv-mxnet
  fi
  if [ "$(cat .venv-mxnet/.workbench-setup 2>/dev/null)" != "$script_hash" ]; then
    echo "installing requirements/mxnet.in (pinned by requirements/mxnet-lock.txt) and workbench (no deps) into .venv-mxnet"
    quiet_pip .venv-mxnet/bin/python -m pip install -q "${MXNET[@]}"
    quiet_pip .venv-mxnet/bin/python -m pip install -q --no-deps -e .
    .venv-mxnet/bin/python -c "import mxnet, tensorboardX, workbench.runtime, workbench.datasets.mnist"
    echo "$script_hash" > .venv-mxnet/.workbench-setup
  fi
fi
echo "frameworks ready: torch in .venv$([ -x .venv-mxnet/bin/python ] && echo ', mxnet in .venv-mxnet')"
