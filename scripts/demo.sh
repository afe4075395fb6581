#!/usr/bin/env bash
# The embedded default job: install what is missing (scripts/bootstrap.sh), then
# run the seed's story end to end on this machine (python -m regpatch.demo).
#   scripts/demo.sh [--workdir DIR] [--keep-running]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/python" -m regpatch.demo "$@"
