#!/usr/bin/env bash
# Checks the running HTTP API against its own OpenAPI document (GET /openapi.json) with
# schemathesis: no answer is a 5xx, every status code is documented, and every body matches its
# schema and content type.
#
# 1. installs schemathesis (pinned, from PyPI) into the project-local virtualenv .venv-schemathesis
#    (does nothing when it is already there);
# 2. builds target/debug/pageflow (or uses $PAGEFLOW_BIN);
# 3. starts `pageflow run` on the embedded synthetic source with one-second windows, an API key
#    (made up for this run, configured by its SHA-256) and every route group but the dashboard
#    needing it, on a free port;
# 4. waits (polling, bounded) for /readyz and a first popular ranking;
# 5. runs schemathesis with the key on every operation but the SSE streams (their answers never
#    end), a bounded number of examples per operation;
# 6. stops the job (SIGTERM) and exits with schemathesis' status.
#
# Takes about a minute on 2 cores once built. SCHEMATHESIS_MAX_EXAMPLES (default 100) and
# SCHEMATHESIS_SEED (default 1) tune the run; arguments are passed on to `st run` (e.g.
# `--report har`). scripts/test.sh calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION="4.32.5"
VENV=".venv-schemathesis"
PYTHON="${PYTHON:-python3}"
BIN="${PAGEFLOW_BIN:-target/debug/pageflow}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-100}"
SEED="${SCHEMATHESIS_SEED:-1}"
# The longest wait for the job to announce its address, be ready and serve a ranking.
START_TIMEOUT_S=90

say() { echo "schemathesis.sh: $*"; }
fail() {
  echo "schemathesis.sh: $*" >&2
  exit 1
}

# shellcheck source=scripts/lib/venv.sh
. scripts/lib/venv.sh

installed() {
  [ -x "$VENV/bin/st" ] &&
    version="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" &&
    [ "$version" = "$SCHEMATHESIS_VERSION" ]
}

install() {
  if installed; then
    say "schemathesis $SCHEMATHESIS_VERSION already installed in $VENV"
    return 0
  fi
  ensure_venv "$VENV" "$PYTHON"
  say "installing schemathesis==$SCHEMATHESIS_VERSION from PyPI into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" ||
    fail "pip could not install schemathesis==$SCHEMATHESIS_VERSION; check that PyPI is reachable and run this again"
  installed || fail "schemathesis was installed but '$VENV/bin/st' does not run; delete $VENV and run this again"
}

install

if [ -z "${PAGEFLOW_BIN:-}" ]; then
  command -v cargo >/dev/null 2>&1 ||
    fail "cargo is not installed; install Rust from https://rustup.rs (or set PAGEFLOW_BIN to a built pageflow)"
  say "building $BIN"
  cargo build --locked --quiet -p pageflow --bin pageflow
fi
[ -x "$BIN" ] || fail "$BIN is not an executable; build it with 'cargo build -p pageflow' or set PAGEFLOW_BIN"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pageflow-schemathesis.XXXXXX")"
JOB_PID=""
stop_job() {
  if [ -n "$JOB_PID" ] && kill -0 "$JOB_PID" 2>/dev/null; then
    kill -TERM "$JOB_PID" 2>/dev/null || true
    # The job stops within its stop timeout; do not wait forever for it.
    for _ in $(seq 1 100); do
      kill -0 "$JOB_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$JOB_PID" 2>/dev/null || true
    wait "$JOB_PID" 2>/dev/null || true
  fi
  JOB_PID=""
}
cleanup() {
  stop_job
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A key made up for this run; the job is told only its SHA-256.
KEY="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))')"
KEY_SHA256="$(printf %s "$KEY" | "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"

say "starting $BIN run (synthetic source, 1 s windows, API key required)"
PAGEFLOW__SERVE__LISTEN="127.0.0.1:0" \
  PAGEFLOW__SINKS__DIR="$WORK/data" \
  PAGEFLOW__SINKS__ARCHIVE="false" \
  PAGEFLOW__CHECKPOINT__ENABLED="false" \
  PAGEFLOW__SOURCE__EVENTS_PER_SECOND="3000" \
  PAGEFLOW__SEMANTICS__SLIDE='"1s"' \
  PAGEFLOW__SEMANTICS__TRENDING_WINDOW='"20s"' \
  PAGEFLOW__SEMANTICS__TRENDING_RECENT='"5s"' \
  PAGEFLOW__SEMANTICS__MAX_OUT_OF_ORDERNESS='"1s"' \
  PAGEFLOW__SERVE__AUTH__RANKINGS="api_key" \
  PAGEFLOW__SERVE__AUTH__RECOMMENDATIONS="api_key" \
  PAGEFLOW__SERVE__AUTH__METRICS="api_key" \
  PAGEFLOW__SERVE__AUTH__DASHBOARD="open" \
  PAGEFLOW__SERVE__RATE_LIMIT__ENABLED="true" \
  PAGEFLOW__SERVE__AUTH__API_KEYS="[{name = \"schemathesis\", sha256 = \"$KEY_SHA256\", per_second = 100000.0, burst = 100000}]" \
  RUST_LOG="warn" \
  "$BIN" run >"$WORK/job.log" 2>&1 &
JOB_PID=$!

# Polls until the job announces its address, answers /readyz with 200 and serves a non-empty
# popular ranking; prints the address. Fails with the job's log after START_TIMEOUT_S.
ADDR="$(
  "$VENV/bin/python" - "$WORK/job.log" "$KEY" "$START_TIMEOUT_S" "$JOB_PID" <<'PY'
import json, os, re, sys, time, urllib.error, urllib.request
log, key, timeout, pid = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
deadline = time.monotonic() + timeout

def alive():
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False

def get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return None, b""

def wait(what, check):
    while time.monotonic() < deadline:
        if not alive():
            sys.exit(f"the job exited while waiting for {what}")
        result = check()
        if result:
            return result
        time.sleep(0.2)
    sys.exit(f"no {what} within {timeout:.0f} s")

def address():
    with open(log, encoding="utf-8", errors="replace") as text:
        found = re.search(r"http://(127\.0\.0\.1:\d+)/", text.read())
    return found and found.group(1)

addr = wait("address announced by the job", address)
wait("200 from /readyz", lambda: get(f"http://{addr}/readyz")[0] == 200)

def ranking():
    status, body = get(f"http://{addr}/v1/portals/g1/popular?n=5", {"x-api-key": key})
    if status != 200:
        return False
    return len(json.loads(body).get("items", [])) > 0

wait("non-empty popular ranking", ranking)
print(addr)
PY
)" || {
  echo "---- the job's log ----" >&2
  cat "$WORK/job.log" >&2
  fail "the job did not become ready (see its log above)"
}
say "the job serves on http://$ADDR/ and has rankings; running schemathesis"

status=0
"$VENV/bin/st" run "http://$ADDR/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path-regex '/stream$' \
  --header "x-api-key: $KEY" \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --workers 2 \
  --request-timeout 10 \
  --generation-database none \
  --no-color \
  "$@" || status=$?

stop_job
if [ "$status" -ne 0 ]; then
  echo "---- the job's log ----" >&2
  tail -n 50 "$WORK/job.log" >&2
  fail "schemathesis found answers that do not match serve/src/openapi.json (exit $status; see above)"
fi
say "the API matches its OpenAPI document"
