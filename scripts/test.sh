#!/usr/bin/env bash
# Runs every test of pageflow on a fresh machine: installs what the tests need, then runs them.
# This is the README's test command; .ci/run calls it after the format and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "pageflow: cargo is not installed; install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi

# The local AWS API server (moto, in the project-local virtualenv .venv-aws) that the integration
# tests start; does nothing when it is already installed.
bash scripts/aws-local/install.sh

# DuckDB (from PyPI into .venv-duckdb), which the curated lake's end-to-end test reads the
# Parquet files with; does nothing when it is already installed.
bash scripts/duckdb/install.sh

# The CloudFormation template (deploy/cloudformation/): cfn-lint clean and no failed checkov check
# (both from PyPI into .venv-cfn). Its deployment into moto is an end-to-end test below.
bash deploy/cloudformation/validate.sh

# Chromium and playwright-core for the browser tests (the tracker's end-to-end test drives them
# from `cargo test`; without them it fails saying to run this script).
bash scripts/browser-install.sh

# Unit, property and integration tests of every crate, doc examples included.
cargo test --workspace --locked

# The API docs build without a broken or ambiguous link (a newcomer follows them).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# The served API against its OpenAPI document (schemathesis, from PyPI into .venv-schemathesis):
# no 5xx, every answer as documented.
bash scripts/schemathesis.sh

# The dashboard in headless Chromium (Debian's chromium, playwright-core from npm): the live lists
# render and change; the screenshot is kept as target/artifacts/dashboard.png.
bash scripts/browser-test.sh
