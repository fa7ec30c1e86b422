#!/usr/bin/env bash
# Installs what the browser tests need, when missing: Debian's chromium package and
# playwright-core (pinned in tests/browser/package-lock.json, with `npm ci`). Does nothing when
# both are there. Used by scripts/browser-test.sh (the dashboard) and, before `cargo test`, by
# scripts/test.sh (the tracker's end-to-end test, jobs/tests/end_to_end/tracker.rs, drives
# Chromium through node). Set CHROMIUM for another browser executable.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

fail() {
  echo "browser-install: $*" >&2
  exit 1
}

if [ ! -x "$CHROMIUM" ]; then
  echo "browser-install: installing Debian's chromium package"
  [ "$(id -u)" = 0 ] || fail "$CHROMIUM is missing and installing it needs root: apt-get install -y --no-install-recommends chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  [ -x "$CHROMIUM" ] || fail "apt-get installed chromium but $CHROMIUM is still missing"
fi
command -v node >/dev/null 2>&1 || fail "node is not installed (apt-get install -y nodejs npm)"
if [ ! -f tests/browser/node_modules/playwright-core/package.json ] ||
  [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  echo "browser-install: installing playwright-core (npm ci in tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
