# Sourced by scripts/*: make .venv when absent and install the project into it.
# $1: pip extras spec ("" or "[test]").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
fi
# Reinstall only when pyproject.toml changed since the last install.
STAMP="$VENV/.seamline-installed${1:-}"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  if ! "$VENV/bin/python" -m pip install -q -e "$ROOT${1:-}" >"$VENV/pip.log" 2>&1; then
    cat "$VENV/pip.log" >&2
    echo "scripts: installing seamline$1 into $VENV failed (log above)" >&2
    exit 1
  fi
  touch "$STAMP"
fi
