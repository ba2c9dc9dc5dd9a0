# Sourced by scripts/serve, scripts/test and .ci/run: create .venv if missing and
# install the project (editable, with the dev extras: http + embedded + test tools) when
# pyproject changed; and
# `apt_tool` for the real tools the tests drive.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.triage-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # the distribution was called `triage` before it became `trio-triage`: drop the old one
  .venv/bin/python -m pip uninstall --quiet --yes triage >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi

# apt_tool COMMAND PACKAGE: make COMMAND available, installing Debian's PACKAGE when this
# is root with apt-get. Returns 1 (having said why) when it can't.
apt_tool() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "$0: $1 is missing and can't be installed here (needs root and apt-get)" >&2
    return 1
  fi
  echo "$0: installing Debian's $2 (apt-get)..." >&2
  if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2") >/dev/null 2>&1; then
    echo "$0: apt-get install $2 failed" >&2
    return 1
  fi
}
