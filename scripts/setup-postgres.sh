#!/usr/bin/env bash
# What the prediction-log tests (tests/serving/test_predlog.py) need beyond scripts/setup.sh: Debian's
# postgresql package (the tests start their own throw-away cluster on 127.0.0.1; the package's own
# cluster is not used) and psycopg 3 in .venv.
# Idempotent: with nothing to do it takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "installing Debian package: postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
if ! .venv/bin/python -c "import psycopg" 2>/dev/null; then
  .venv/bin/python -m pip install -q "psycopg[binary]>=3.2"
fi
