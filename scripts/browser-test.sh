#!/usr/bin/env bash
# The dashboard in headless Chromium against a live job.
#
# Installs what it needs when missing (scripts/browser-install.sh: Debian's chromium package;
# playwright-core, pinned in tests/browser/package-lock.json, with `npm ci`), starts
# `target/debug/pageflow run` on the embedded synthetic source with one-second windows on a free
# loopback port, and runs tests/browser/dashboard.test.mjs against it: the live lists render and
# change by themselves, the related explorer answers, the health panel shows events per second,
# the operator view shows the job graph with records, checkpoints and partition watermarks, a 401
# is explained.
# The screenshot is kept as target/artifacts/dashboard.png (dashboard-failure.png on a failure).
# The job is always stopped. Exits non-zero, saying why, on any failure.
#
# Uses target/debug/pageflow as it is (`cargo test --workspace` builds it); builds it only when
# absent. Set PAGEFLOW_BIN to test another binary, CHROMIUM for another browser executable.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
PAGEFLOW_BIN=${PAGEFLOW_BIN:-$ROOT/target/debug/pageflow}
ARTIFACTS=$ROOT/target/artifacts
# How long the job may take to say where it listens.
START_LIMIT_S=60

fail() {
  echo "browser-test: $*" >&2
  exit 1
}

# --- installs -----------------------------------------------------------------------------------
CHROMIUM=$CHROMIUM bash scripts/browser-install.sh
if [ ! -x "$PAGEFLOW_BIN" ]; then
  echo "browser-test: building pageflow"
  cargo build -p pageflow --locked
fi

# --- the job --------------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pageflow-browser-test.XXXXXX")
JOB_PID=
stop_job() {
  if [ -n "$JOB_PID" ] && kill -0 "$JOB_PID" 2>/dev/null; then
    kill -TERM "$JOB_PID" 2>/dev/null || true
    # SIGTERM: final checkpoint and flush; SIGKILL if that takes longer than 15 s.
    for _ in $(seq 150); do
      kill -0 "$JOB_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$JOB_PID" 2>/dev/null || true
    wait "$JOB_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap stop_job EXIT
trap 'exit 130' INT TERM

# Small windows so that rankings appear and change within seconds, and related lists too.
PAGEFLOW__SERVE__LISTEN=127.0.0.1:0 \
  PAGEFLOW__SINKS__DIR="$WORK/data" \
  PAGEFLOW__CHECKPOINT__ENABLED=true \
  PAGEFLOW__CHECKPOINT__INTERVAL='"2s"' \
  PAGEFLOW__SOURCE__EVENTS_PER_SECOND=3000 \
  PAGEFLOW__SEMANTICS__SLIDE='"1s"' \
  PAGEFLOW__SEMANTICS__TRENDING_WINDOW='"20s"' \
  PAGEFLOW__SEMANTICS__TRENDING_RECENT='"5s"' \
  PAGEFLOW__SEMANTICS__MAX_OUT_OF_ORDERNESS='"1s"' \
  PAGEFLOW__SEMANTICS__COOC_WINDOW='"60s"' \
  PAGEFLOW__SEMANTICS__COOC_SLIDE='"2s"' \
  PAGEFLOW__SEMANTICS__RELATED_INTERVAL='"2s"' \
  RUST_LOG=warn \
  "$PAGEFLOW_BIN" run >"$WORK/job.log" 2>&1 &
JOB_PID=$!

# The job prints "pageflow is running: open http://ADDRESS/" once it listens.
URL=
for _ in $(seq $((START_LIMIT_S * 10))); do
  URL=$(grep -o -m1 'http://[0-9.]*:[0-9]*' "$WORK/job.log" || true)
  [ -n "$URL" ] && break
  kill -0 "$JOB_PID" 2>/dev/null || { cat "$WORK/job.log" >&2; fail "the job exited before listening"; }
  sleep 0.1
done
[ -n "$URL" ] || { cat "$WORK/job.log" >&2; fail "the job did not say where it listens within ${START_LIMIT_S} s"; }
echo "browser-test: job $JOB_PID serving on $URL"

# --- the browser ----------------------------------------------------------------------------------
mkdir -p "$ARTIFACTS"
rm -f "$ARTIFACTS/dashboard.png" "$ARTIFACTS/dashboard-failure.png"
if ! PAGEFLOW_URL=$URL CHROMIUM=$CHROMIUM ARTIFACTS=$ARTIFACTS node tests/browser/dashboard.test.mjs; then
  echo "browser-test: the job's log:" >&2
  tail -n 40 "$WORK/job.log" >&2 || true
  fail "FAILED (screenshot, if any: $ARTIFACTS/dashboard-failure.png)"
fi
echo "browser-test: passed; screenshot $ARTIFACTS/dashboard.png"
