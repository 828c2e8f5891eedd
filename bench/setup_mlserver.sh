#!/usr/bin/env bash
# Benchmark-only: MLServer (PyPI `mlserver`) with TensorFlow in its own venv, .venv-mlserver (git-ignored),
# so its pins never touch .venv. Used by bench/serve_throughput.py for the comparison; not needed by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv-mlserver/bin/mlserver ]; then
  "$PY" -m venv .venv-mlserver
  .venv-mlserver/bin/python -m pip install -q --upgrade pip
  .venv-mlserver/bin/python -m pip install -q "mlserver==1.7.1" "tensorflow-cpu==2.21.0"
fi
echo "mlserver ready: .venv-mlserver/bin/mlserver"
