#!/usr/bin/env bash
# Create or update the project's environment: a venv at .venv with workbench
# (editable), TensorFlow, JupyterLab, TensorBoard, the test and docs tools, plus the
# MNIST data file. Idempotent: re-running with nothing changed takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $PY"
  if ! "$PY" -m venv .venv 2>/dev/null; then
    echo "python venv support is missing; installing it with apt-get"
    rm -rf .venv
    apt-get update -qq && apt-get install -y -qq python3-venv
    "$PY" -m venv .venv
  fi
fi

GRPC_PROTOS="tensorflow-serving-api==2.21.0 tritonclient==2.73.0"
stamp=.venv/.workbench-setup
# Versions come from requirements/lock.txt (`make lock` refreshes it); editing it, pyproject.toml or this
# script makes the next run reinstall.
want=$(cat pyproject.toml requirements/lock.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing workbench and its dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c requirements/lock.txt -e ".[tensorflow,pytorch,jupyter,dev,docs]"
  # s3fs alone: resolving it with the rest can stall pip (aiobotocore pins botocore tightly); the lock holds both.
  .venv/bin/python -m pip install -q -c requirements/lock.txt -e ".[s3]"
  # The gRPC messages (TF Serving's, KServe V2's) without their declared dependencies: tensorflow-serving-api
  # requires full `tensorflow` beside tensorflow-cpu, tritonclient pins ml-dtypes and protobuf below TensorFlow's.
  # What their modules import is in pyproject.toml. The pins are part of this file, so of the stamp's hash.
  .venv/bin/python -m pip install -q --no-deps $GRPC_PROTOS
  echo "$want" > "$stamp"
fi
.venv/bin/python -m workbench.datasets.mnist fetch >/dev/null
bash scripts/setup-tensorboard.sh  # TensorBoard without TensorFlow, for s3:// workspaces
if [ "${WORKBENCH_WITH_MXNET:-}" = 1 ]; then
  bash scripts/setup-frameworks.sh  # the MXNet environment (.venv-mxnet), on request
fi
echo "environment ready: .venv (source .venv/bin/activate to put \`workbench\` on PATH)"
