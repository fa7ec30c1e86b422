# Sourced by the install scripts: a project-local Python virtualenv that works.
#
# ensure_venv VENV PYTHON creates VENV with PYTHON when it is missing (replacing a broken one),
# installing Debian's python3-venv first when the venv module is absent and we may (root, apt-get).
# The caller defines say() and fail() (each prints one line; fail exits).
ensure_venv() {
  local venv="$1" python="$2"
  command -v "$python" >/dev/null 2>&1 ||
    fail "$python is not installed; install Python 3 (Debian: apt-get install -y python3 python3-venv) and run this again"
  # The venv module with ensurepip (Debian ships them apart, in python3-venv).
  if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      say "the Python venv module is missing; installing python3-venv with apt-get"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    fi
    "$python" -c 'import venv, ensurepip' >/dev/null 2>&1 ||
      fail "the Python venv module is missing for $python; install it (Debian: apt-get install -y python3-venv) and run this again"
  fi
  if [ -e "$venv" ] && ! [ -x "$venv/bin/python" ]; then
    say "removing the broken virtualenv $venv"
    rm -rf "$venv"
  fi
  if ! [ -x "$venv/bin/python" ]; then
    say "creating the virtualenv $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv" ||
      fail "'$python -m venv $venv' failed; install the venv module (Debian: apt-get install -y python3-venv), delete $venv and run this again"
  fi
  "$venv/bin/python" -m pip --version >/dev/null 2>&1 ||
    fail "pip is missing in $venv; install python3-venv (Debian: apt-get install -y python3-venv), delete $venv and run this again"
}
