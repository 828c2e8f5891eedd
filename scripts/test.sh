#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, notebooks included.
# scripts/setup-*.sh add what particular test tiers need (extra venvs, system packages).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for extra in scripts/setup-*.sh; do
  [ -e "$extra" ] && bash "$extra"
done
exec .venv/bin/python -m pytest "$@"
