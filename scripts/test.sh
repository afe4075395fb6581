#!/usr/bin/env bash
# Install what is missing (scripts/bootstrap.sh), then run the whole pytest
# suite from the repository root. Extra arguments go to pytest (paths are
# relative to the repository root). The exit code is pytest's; "no tests
# collected" (pytest's exit 5) is reported as a failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
rc=0
"$ROOT/.venv/bin/pytest" -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
fi
exit "$rc"
