#!/usr/bin/env bash
# Installs the local AWS API server (moto, server mode) that pageflow's integration tests start:
# a project-local virtualenv at <repo>/.venv-aws with a pinned moto[server] from PyPI.
# Idempotent: does nothing when the pinned version is already there. scripts/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."

MOTO_VERSION="5.2.5"
VENV=".venv-aws"
PYTHON="${PYTHON:-python3}"

say() { echo "aws-local: $*"; }
fail() {
  echo "aws-local: $*" >&2
  exit 1
}

# Already installed at the pinned version: nothing to do.
if [ -x "$VENV/bin/python" ] &&
  installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null)" &&
  [ "$installed" = "$MOTO_VERSION" ] &&
  "$VENV/bin/python" -c 'import moto.server, werkzeug, flask' 2>/dev/null; then
  say "moto $MOTO_VERSION already installed in $VENV"
  exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  fail "$PYTHON is not installed; install Python 3 (Debian: apt-get install -y python3 python3-venv) and run this again"
fi

# The venv module with ensurepip (Debian ships them apart, in python3-venv).
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    say "the Python venv module is missing; installing python3-venv with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  fi
  "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 ||
    fail "the Python venv module is missing for $PYTHON; install it (Debian: apt-get install -y python3-venv) and run this again"
fi

if [ -e "$VENV" ] && ! [ -x "$VENV/bin/python" ]; then
  say "removing the broken virtualenv $VENV"
  rm -rf "$VENV"
fi
if ! [ -x "$VENV/bin/python" ]; then
  say "creating the virtualenv $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV" ||
    fail "'$PYTHON -m venv $VENV' failed; install the venv module (Debian: apt-get install -y python3-venv), delete $VENV and run this again"
fi

"$VENV/bin/python" -m pip --version >/dev/null 2>&1 ||
  fail "pip is missing in $VENV; install python3-venv (Debian: apt-get install -y python3-venv), delete $VENV and run this again"

say "installing moto[server]==$MOTO_VERSION from PyPI into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" ||
  fail "pip could not install moto[server]==$MOTO_VERSION; check that PyPI is reachable and run this again"

"$VENV/bin/python" -c 'import moto.server, werkzeug, flask' ||
  fail "moto was installed but does not import; delete $VENV and run this again"
say "moto $MOTO_VERSION installed in $VENV"
