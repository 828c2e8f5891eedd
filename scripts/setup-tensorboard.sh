#!/usr/bin/env bash
# TensorBoard for s3:// workspaces: .venv-tensorboard with tensorboard and boto3 and WITHOUT TensorFlow.
# TensorBoard reads an s3:// logdir only when TensorFlow is not installed beside it (with TensorFlow it fails with
# "Unsupported filename scheme 's3'"); `workbench up` runs TensorBoard from this venv when the workspace is s3://
# (or from WORKBENCH_TENSORBOARD_PYTHON). The same packages as images/tensorboard, under the same lock
# (requirements/tensorboard-lock.txt; `make lock`). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=("tensorboard==2.21.0" "boto3==1.44.8")
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp=.venv-tensorboard/.workbench-setup
want="${PACKAGES[*]} $(sha256sum < requirements/tensorboard-lock.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  [ -x .venv-tensorboard/bin/python ] || "$PY" -m venv .venv-tensorboard
  .venv-tensorboard/bin/python -m pip install -q -c requirements/tensorboard-lock.txt "${PACKAGES[@]}"
  if .venv-tensorboard/bin/python -c "import tensorflow" 2>/dev/null; then
    echo "TensorFlow is in .venv-tensorboard: TensorBoard cannot read s3:// beside it" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
echo "environment ready: .venv-tensorboard"
