#!/usr/bin/env bash
# Set up (if needed) and start the workbench on 127.0.0.1: JupyterLab, TensorBoard, the model server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/workbench up "$@"
