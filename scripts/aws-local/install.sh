#!/usr/bin/env bash
# Installs the local AWS API servers that pageflow's integration tests start:
# - moto (server mode): a project-local virtualenv at <repo>/.venv-aws with a pinned moto[server]
#   from PyPI (Kinesis polling, Firehose, S3, DynamoDB);
# - kinesis-local (kinesis-mock built for Node): the npm package pinned in
#   scripts/aws-local/package.json and package-lock.json, into scripts/aws-local/node_modules
#   (realistic Kinesis: 56-digit sequence numbers, resharding, enhanced fan-out).
# Idempotent: each part does nothing when its pinned version is already there. scripts/test.sh
# runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."

MOTO_VERSION="5.2.5"
VENV=".venv-aws"
PYTHON="${PYTHON:-python3}"

# Must match the exact version in scripts/aws-local/package.json (and its lockfile).
KINESIS_LOCAL_VERSION="0.6.2"
NODE_DIR="scripts/aws-local"

say() { echo "aws-local: $*"; }
fail() {
  echo "aws-local: $*" >&2
  exit 1
}

# shellcheck source=scripts/lib/venv.sh
. scripts/lib/venv.sh

moto_installed() {
  [ -x "$VENV/bin/python" ] &&
    installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null)" &&
    [ "$installed" = "$MOTO_VERSION" ] &&
    "$VENV/bin/python" -c 'import moto.server, werkzeug, flask' 2>/dev/null
}

install_moto() {
  if moto_installed; then
    say "moto $MOTO_VERSION already installed in $VENV"
    return 0
  fi

  ensure_venv "$VENV" "$PYTHON"

  say "installing moto[server]==$MOTO_VERSION from PyPI into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" ||
    fail "pip could not install moto[server]==$MOTO_VERSION; check that PyPI is reachable and run this again"

  "$VENV/bin/python" -c 'import moto.server, werkzeug, flask' ||
    fail "moto was installed but does not import; delete $VENV and run this again"
  say "moto $MOTO_VERSION installed in $VENV"
}

# The version of kinesis-local in node_modules, or nothing.
kinesis_local_installed_version() {
  local manifest="$NODE_DIR/node_modules/kinesis-local/package.json"
  [ -f "$manifest" ] && [ -f "$NODE_DIR/node_modules/kinesis-local/main.js" ] || return 0
  node -e 'process.stdout.write(String(require(process.argv[1]).version || ""))' "$PWD/$manifest" 2>/dev/null || true
}

install_kinesis_local() {
  # Node.js with npm (Debian ships them apart); installed like python3-venv above when possible.
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      say "node or npm is missing; installing nodejs and npm with apt-get"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm ||
        say "apt-get could not install nodejs and npm"
    fi
  fi
  if ! command -v node >/dev/null 2>&1; then
    fail "node is not installed; kinesis-local (the local Kinesis server of the enhanced fan-out and resharding tests) needs Node.js 18 or later with npm (Debian: apt-get install -y nodejs npm), then run this again"
  fi
  local node_major
  node_major="$(node -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null || echo 0)"
  case "$node_major" in '' | *[!0-9]*) node_major=0 ;; esac
  if [ "$node_major" -lt 18 ]; then
    fail "node $(node --version 2>/dev/null) is too old for kinesis-local; install Node.js 18 or later (https://nodejs.org or your distribution's nodejs package) and run this again"
  fi

  if [ "$(kinesis_local_installed_version)" = "$KINESIS_LOCAL_VERSION" ]; then
    say "kinesis-local $KINESIS_LOCAL_VERSION already installed in $NODE_DIR/node_modules"
    return 0
  fi

  if ! command -v npm >/dev/null 2>&1; then
    fail "npm is not installed; kinesis-local is installed with npm (Debian: apt-get install -y npm, or install Node.js with its npm from https://nodejs.org), then run this again"
  fi
  grep -q "\"kinesis-local\": \"$KINESIS_LOCAL_VERSION\"" "$NODE_DIR/package.json" ||
    fail "$NODE_DIR/package.json does not pin kinesis-local $KINESIS_LOCAL_VERSION; make it and KINESIS_LOCAL_VERSION in $0 agree, then run this again"

  # `npm ci` installs exactly what the lockfile says (and removes a stale node_modules first);
  # without a lockfile (only when changing the pinned version) `npm install` writes one to commit.
  if [ -f "$NODE_DIR/package-lock.json" ]; then
    say "installing kinesis-local $KINESIS_LOCAL_VERSION from npm into $NODE_DIR/node_modules (npm ci)"
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) ||
      fail "'npm ci' in $NODE_DIR failed; check that the npm registry is reachable and that package-lock.json matches package.json (delete package-lock.json to have it rewritten), then run this again"
  else
    say "installing kinesis-local $KINESIS_LOCAL_VERSION from npm into $NODE_DIR/node_modules (npm install; writes package-lock.json: commit it)"
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error --save-exact) ||
      fail "'npm install' in $NODE_DIR failed; check that the npm registry is reachable, then run this again"
  fi

  local installed
  installed="$(kinesis_local_installed_version)"
  [ "$installed" = "$KINESIS_LOCAL_VERSION" ] ||
    fail "npm installed kinesis-local '${installed:-nothing}' instead of $KINESIS_LOCAL_VERSION; delete $NODE_DIR/node_modules and run this again"
  say "kinesis-local $KINESIS_LOCAL_VERSION installed in $NODE_DIR/node_modules"
}

install_moto
install_kinesis_local
