#!/usr/bin/env bash
# Lint, format and type checks (CI runs them before the tests; `make lint` is the same). Needs .venv
# (scripts/setup.sh). ruff's and mypy's settings are in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(workbench tests bench examples scripts)
.venv/bin/ruff check "${paths[@]}"
.venv/bin/ruff format --check "${paths[@]}"
.venv/bin/mypy workbench
