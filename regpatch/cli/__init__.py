"""regpatch command line: parses, checks, runs the engine (or its flow), maps errors to exit codes.

Every argument is checked before Prefect is imported. Without a Prefect API
(``PREFECT_API_URL`` or the active profile) ``patch`` and ``rollback`` run the
engine here and never start a temporary server; with one, they run the flow
there, visible in the UI. SIGINT/SIGTERM stop a run at the next chunk boundary
(``regpatch.interrupt``) with exit 130/143.
"""

from __future__ import annotations

import importlib
import signal
import sys
import traceback
from typing import Optional, Sequence

from regpatch import interrupt
from regpatch.cli.parser import build_parser
from regpatch.errors import Interrupted, RegpatchError, os_error

# command -> (module of regpatch.cli, function, how it logs): the module is imported once
# the arguments are parsed, so that a bad argument is answered before any of it loads.
#   "plain": no Prefect ever;  "inspect": sets its own logging;  "run": Prefect when an API is configured
COMMANDS = {
    "patch": ("registry_commands", "run_patch", "run"),
    "rollback": ("registry_commands", "run_rollback", "run"),
    "rollout": ("fleet_commands", "run_rollout", "run"),
    "history": ("registry_commands", "run_history", "none"),
    "deployments": ("fleet_commands", "run_deployments", "none"),
    "status": ("fleet_commands", "run_status", "plain"),
    "prune": ("maintenance_commands", "run_prune", "plain"),
    "inspect": ("bundle_commands", "run_inspect", "none"),
    "contents": ("bundle_commands", "run_contents", "plain"),
    "bundle": ("bundle_commands", "run_bundle", "plain"),
    "keygen": ("bundle_commands", "run_keygen", "plain"),
    "check-bundle": ("bundle_commands", "run_check_bundle", "plain"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from regpatch.cli.console import survive_any_code_page  # after the arguments are parsed (start-up)
    from regpatch.cli.prefect_api import _prepare_environment  # after the arguments are parsed (start-up)

    _prepare_environment(args.debug)
    survive_any_code_page()
    interrupt.install_handlers()
    module, function, logs = COMMANDS[args.command]
    try:
        return _run(args, module, function, logs)
    finally:
        interrupt.finished()  # a console-close handler waiting for the run may let it end now


def _run(args, module: str, function: str, logs: str) -> int:
    from regpatch.cli.console import _console_logging  # after the arguments are parsed (start-up)
    from regpatch.cli.prefect_api import _quiet_tracebacks, _use_prefect  # after the arguments are parsed (start-up)

    try:
        run = getattr(importlib.import_module(f"regpatch.cli.{module}"), function)
        if logs == "plain" or (logs == "run" and not _use_prefect(args)):
            _console_logging(args.debug)
        elif logs == "run":
            _quiet_tracebacks(args.debug)
        run(args)
        return 0
    except RegpatchError as e:
        if interrupt.stopping() and not isinstance(e, Interrupted):  # raised while unwinding: the stop wins
            return _interrupted(args.debug)
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
