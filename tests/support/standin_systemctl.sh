#!/bin/sh
# A stand-in for systemctl (process 1 of the test machine is not systemd): units are files
# $STANDIN_SYSTEMD/<name>.cmd holding the command line of their main process, which is really
# started (its own session, output appended to <name>.log) and really stopped (SIGTERM, then
# waited for, as systemctl waits for its stop job). The verbs regpatch's Systemd uses only.
set -u
dir="${STANDIN_SYSTEMD:?}"
echo "$*" >> "$dir/calls.log"
[ "${1:-}" = "--no-ask-password" ] && shift
verb="${1:-}"; shift
[ "${1:-}" = "-p" ] && shift 3   # show -p MainPID --value NAME
name="${1:-}"
unit="$dir/$name.cmd"; pidf="$dir/$name.pid"
if [ ! -f "$unit" ]; then
    echo "Failed to $verb $name.service: Unit $name.service not found." >&2
    [ "$verb" = "is-active" ] && { echo inactive; exit 3; }
    exit 5
fi
alive() { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }
case "$verb" in
    is-active) if alive; then echo active; exit 0; else echo inactive; exit 3; fi ;;
    show) if alive; then cat "$pidf"; else echo 0; fi ;;
    stop)
        if alive; then
            pid="$(cat "$pidf")"; kill -TERM "$pid"
            while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        fi
        rm -f "$pidf" ;;
    start)
        alive && exit 0
        # the main process: the unit's command itself (setsid and sh exec it), in a session of its own
        setsid sh -c "exec $(cat "$unit")" </dev/null >>"$dir/$name.log" 2>&1 &
        echo "$!" > "$pidf" ;;
    *) echo "stand-in systemctl: unknown verb $verb" >&2; exit 1 ;;
esac
