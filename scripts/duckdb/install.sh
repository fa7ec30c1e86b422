#!/usr/bin/env bash
# Installs DuckDB, the query engine the curated lake's end-to-end test reads the Parquet files with
# (jobs/tests/end_to_end/curated.rs runs scripts/duckdb/check_curated.py in it): a project-local
# virtualenv at <repo>/.venv-duckdb with a pinned duckdb from PyPI (a self-contained wheel, no
# compiler needed). Idempotent: does nothing when the pinned version is already there.
# scripts/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."

DUCKDB_VERSION="2.0.0"
VENV=".venv-duckdb"
PYTHON="${PYTHON:-python3}"

say() { echo "duckdb: $*"; }
fail() {
  echo "duckdb: $*" >&2
  exit 1
}

# shellcheck source=scripts/lib/venv.sh
. scripts/lib/venv.sh

duckdb_installed() {
  [ -x "$VENV/bin/python" ] &&
    installed="$("$VENV/bin/python" -c 'import duckdb; print(duckdb.__version__)' 2>/dev/null)" &&
    [ "$installed" = "$DUCKDB_VERSION" ]
}

if duckdb_installed; then
  say "duckdb $DUCKDB_VERSION already installed in $VENV"
  exit 0
fi

ensure_venv "$VENV" "$PYTHON"

say "installing duckdb==$DUCKDB_VERSION from PyPI into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "duckdb==$DUCKDB_VERSION" ||
  fail "pip could not install duckdb==$DUCKDB_VERSION; check that PyPI is reachable and run this again"

duckdb_installed ||
  fail "duckdb was installed but does not import as version $DUCKDB_VERSION; delete $VENV and run this again"
say "duckdb $DUCKDB_VERSION installed in $VENV"
