#!/usr/bin/env bash
# Make a Debian 12 machine ready for regpatch's demo and tests. Idempotent:
# a second run installs nothing and takes a second or two.
#
#   1. apt-get install what is missing of: docker-registry skopeo podman
#      apache2-utils python3-venv xfsprogs postgresql chromium golang-go (and python3 itself if
#      absent); postgresql for the Prefect server's database (the deployment
#      tests start their own cluster), chromium for the browser test, golang-go
#      for the tar reader's reference (Go's archive/tar, tests/support/tarref), exfat-fuse and
#      exfatprogs for a case-insensitive storage (tests/e2e/test_case_insensitive.py);
#   2. make sure the Debian docker-registry *service* is not running: it would
#      listen on :5000 on all interfaces. The tests and the demo start their own
#      registries on 127.0.0.1 with generated configs;
#   3. create <repo>/.venv with python3 (>= 3.11) if missing;
#   4. pip install -e "<repo>[test]", skipped while pyproject.toml is unchanged
#      since the last successful install (stamp file inside .venv).
#
# Runs as root, or through sudo when not root. Works from any folder.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.regpatch-bootstrap-stamp"
APT_PACKAGES=(docker-registry skopeo podman apache2-utils python3-venv xfsprogs postgresql chromium golang-go
              exfat-fuse exfatprogs)

log() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "root is needed for: $*; run this script as root or install sudo"
    fi
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

python_ok() {  # $1: interpreter; true when it is Python >= 3.11
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

# --------------------------------------------------------------------------- 1. system packages
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${APT_PACKAGES[@]}"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
else
    # Not a Debian system: check the commands and say what is missing.
    for cmd in docker-registry skopeo podman htpasswd python3; do
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd is missing and this is not a Debian system (no dpkg); install it by hand"
    done
fi

if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]}"
    # Keep the Debian docker-registry service from being started by the package's
    # maintainer scripts (they honour policy-rc.d, with or without systemd). The
    # guard is only put in place, and removed again, when no policy-rc.d exists.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        guard=/usr/sbin/policy-rc.d
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
        printf '#!/bin/sh\n# temporary, from regpatch scripts/bootstrap.sh\nexit 101\n' \
            | as_root tee "$guard" >/dev/null
        as_root chmod 0755 "$guard"
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    if [ -n "$guard" ]; then
        as_root rm -f "$guard"
        trap - EXIT
    fi
fi

# --------------------------------------------------------------------------- 2. no Debian registry service
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if systemctl is-active --quiet docker-registry.service 2>/dev/null \
        || systemctl is-enabled --quiet docker-registry.service 2>/dev/null; then
        log "stopping and disabling the Debian docker-registry service (it listens on :5000, all interfaces)"
        as_root systemctl disable --now docker-registry.service >/dev/null 2>&1 \
            || as_root systemctl stop docker-registry.service
    fi
elif [ -x /etc/init.d/docker-registry ]; then
    # No systemd: the package's init script runs the service with a pidfile.
    pid="$(cat /run/docker-registry.pid 2>/dev/null || true)"
    if [ -n "$pid" ] && ps -p "$pid" >/dev/null 2>&1; then
        log "stopping the Debian docker-registry service (pid $pid; it listens on :5000, all interfaces)"
        as_root /etc/init.d/docker-registry stop >/dev/null
    fi
    if compgen -G '/etc/rc[2345].d/S[0-9][0-9]docker-registry' >/dev/null && command -v update-rc.d >/dev/null 2>&1; then
        log "disabling the Debian docker-registry service at boot"
        as_root update-rc.d docker-registry disable >/dev/null 2>&1 || true
    fi
fi

# --------------------------------------------------------------------------- 3. virtual environment
if ! { [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python"; }; then
    PY=""
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            PY="$(command -v "$candidate")"
            break
        fi
    done
    [ -n "$PY" ] || die "no Python >= 3.11 found (python3 is $(python3 --version 2>&1 || echo absent))"
    log "creating $VENV with $PY ($("$PY" --version 2>&1))"
    if [ -e "$VENV" ]; then
        "$PY" -m venv --clear "$VENV"   # present but unusable
    else
        "$PY" -m venv "$VENV"
    fi
fi

# --------------------------------------------------------------------------- 4. the project, editable
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $ROOT"
installed_ok() {
    # regpatch must resolve to this checkout, and the main dependencies must be there.
    "$VENV/bin/python" -I - "$ROOT" <<'PY' >/dev/null 2>&1
import importlib.util, os, sys
root = os.path.realpath(sys.argv[1])
for name in ("prefect", "pytest", "moto", "bcrypt", "httpx", "yaml", "tenacity", "boto3", "pydantic", "coverage",
             "playwright", "ruff", "mypy", "importlinter", "mkdocs", "material"):
    if importlib.util.find_spec(name) is None:
        sys.exit(1)
for own in ("regpatch", "regpatch_flows", "regpatch_tasks"):
    spec = importlib.util.find_spec(own)
    if not (spec and spec.origin and os.path.realpath(spec.origin).startswith(root + os.sep)):
        sys.exit(1)
PY
}
# The environment may set PYTHONDONTWRITEBYTECODE: compile the project once, so every
# command starts from bytecode (cheap; rewrites only what changed).
compile_project() { "$VENV/bin/python" -m compileall -q "$ROOT/regpatch" "$ROOT/tasks" "$ROOT/flows" >/dev/null || true; }

if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ] && installed_ok; then
    compile_project
    log "ready (system packages present, $VENV up to date)"
else
    log "pip install -e \"$ROOT[test]\" into $VENV"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
    installed_ok || die "regpatch is not importable from $VENV after pip install"
    printf '%s\n' "$want" > "$STAMP"
    compile_project
    log "ready"
fi
