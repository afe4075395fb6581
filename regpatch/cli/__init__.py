"""regpatch command line: parses, checks, runs the engine (or its flow), maps errors to exit codes.

Every argument is checked before Prefect is imported. Without a Prefect API
(``PREFECT_API_URL`` or the active profile) ``patch`` and ``rollback`` run the
engine here and never start a temporary server; with one, they run the flow
there, visible in the UI. SIGINT/SIGTERM stop a run at the next chunk boundary
(``regpatch.interrupt``) with exit 130/143.
"""

from __future__ import annotations

import signal
import sys
import traceback
from typing import Optional, Sequence

from regpatch import interrupt
from regpatch.cli.bundle_commands import run_bundle, run_check_bundle, run_contents, run_inspect, run_keygen
from regpatch.cli.console import _console_logging
from regpatch.cli.fleet_commands import run_deployments, run_rollout
from regpatch.cli.parser import build_parser
from regpatch.cli.prefect_api import _prepare_environment, _quiet_tracebacks, _use_prefect
from regpatch.cli.registry_commands import run_history, run_patch, run_rollback
from regpatch.errors import Interrupted, RegpatchError, os_error

# --------------------------------------------------------------------------- where a run goes


# --------------------------------------------------------------------------- patch


# --------------------------------------------------------------------------- the shuttle side
# contents (site), bundle (connected side), keygen, check-bundle (site): no Prefect run.


SHUTTLE_COMMANDS = {"contents": run_contents, "bundle": run_bundle, "keygen": run_keygen,
                    "check-bundle": run_check_bundle}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _prepare_environment(args.debug)
    interrupt.install_handlers()
    try:
        if args.command == "history":
            run_history(args)
            return 0
        if args.command == "deployments":
            run_deployments(args)
            return 0
        if args.command == "inspect":
            return run_inspect(args)
        if args.command in SHUTTLE_COMMANDS:  # no Prefect: plain core calls
            _console_logging(args.debug)
            SHUTTLE_COMMANDS[args.command](args)
            return 0
        if not _use_prefect(args):
            _console_logging(args.debug)
        else:
            _quiet_tracebacks(args.debug)
        if args.command == "patch":
            run_patch(args)
        elif args.command == "rollback":
            run_rollback(args)
        elif args.command == "rollout":
            run_rollout(args)
        return 0
    except RegpatchError as e:
        if args.debug:
            traceback.print_exc()
        print(f"regpatch: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # one the core did not map itself: the same mapping, one line
        if interrupt.stopping():
            return _interrupted(args.debug)
        if args.debug:
            traceback.print_exc()
        err = os_error(e, doing="accessing")
        print(f"regpatch: error: {err}", file=sys.stderr)
        return err.exit_code
    except BaseException:  # KeyboardInterrupt, or an orchestrator's own signal exception
        if interrupt.stopping() or sys.exc_info()[0] is KeyboardInterrupt:
            return _interrupted(args.debug)
        raise


def _interrupted(debug: bool) -> int:
    if debug:
        traceback.print_exc()
    err = Interrupted(interrupt.signal_number() or signal.SIGINT)
    print(f"regpatch: error: {err}", file=sys.stderr)
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
