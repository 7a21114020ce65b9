#!/usr/bin/env bash
# The linter and the formatter check, as CI runs them: `ruff check` and `ruff format --check`
# with the configuration in pyproject.toml ([tool.ruff]).
#
#   tools/lint.sh                 # the whole tree
#   tools/lint.sh cslr tasks.py   # only these paths
#   tools/lint.sh --fix cslr      # apply ruff's safe fixes and format the paths instead of checking
#
# ruff comes from $RUFF, else PATH, else .venv/bin/ruff. Exit: 0 clean, 1 findings, 127 no ruff.
set -uo pipefail
cd "$(dirname "$0")/.."
fix=0
if [ "${1:-}" = "--fix" ]; then fix=1; shift; fi
paths=("$@")
[ "${#paths[@]}" -gt 0 ] || paths=(.)
ruff="${RUFF:-}"
[ -n "$ruff" ] || ruff="$(command -v ruff || true)"
[ -n "$ruff" ] || { [ -x .venv/bin/ruff ] && ruff=.venv/bin/ruff; }
if [ -z "$ruff" ]; then
  echo "lint: ruff not found; install it (pip install ruff) or set RUFF=/path/to/ruff" >&2
  exit 127
fi
if [ "$fix" = 1 ]; then
  "$ruff" check --fix "${paths[@]}"; rc=$?
  "$ruff" format "${paths[@]}" || rc=1
  exit "$rc"
fi
rc=0
"$ruff" check "${paths[@]}" || rc=1
"$ruff" format --check "${paths[@]}" || rc=1
exit "$rc"
