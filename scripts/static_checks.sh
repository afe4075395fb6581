#!/usr/bin/env bash
# Static checks of the product code (regpatch/, flows/, tasks/), run by scripts/test.sh
# before the tests; each must report zero findings. Versions are pinned in
# pyproject.toml's test extra, so a new release cannot change the count.
#   ruff   lint rules of [tool.ruff] (pyflakes, pycodestyle, isort, bugbear, complexity); docs/hooks too
#   mypy   with the pydantic plugin, for Linux and again as on Windows (--platform win32)
#   lint-imports   the layer contracts of [tool.importlinter]: no circle, no import upward
#   mkdocs build --strict   the documentation site (mkdocs.yml): no page left out of the nav, no
#                  broken link or anchor; the CLI reference generated from the parser. Offline, ~1 s
# flows/ and tasks/ install as regpatch_flows and regpatch_tasks: mypy reads them through a
# folder of symbolic links that gives them those names.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.venv/bin"
cd "$ROOT"
rc=0
echo "-- ruff"
"$BIN/ruff" check --no-cache regpatch flows tasks docs/hooks || rc=1
view="$(mktemp -d)"
trap 'rm -rf "$view"' EXIT
ln -s "$ROOT/regpatch" "$view/regpatch"
ln -s "$ROOT/flows" "$view/regpatch_flows"
ln -s "$ROOT/tasks" "$view/regpatch_tasks"
for platform in linux win32; do
    echo "-- mypy --platform $platform"
    (cd "$view" && "$BIN/mypy" --config-file "$ROOT/pyproject.toml" --cache-dir "$ROOT/.mypy_cache" \
        --platform "$platform" -p regpatch -p regpatch_flows -p regpatch_tasks) || rc=1
done
echo "-- import contracts"
"$BIN/lint-imports" --no-cache "$ROOT/pyproject.toml" || rc=1
echo "-- mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 "$BIN/mkdocs" build --strict --quiet --config-file "$ROOT/mkdocs.yml" --site-dir "$view/site" || rc=1
exit "$rc"
