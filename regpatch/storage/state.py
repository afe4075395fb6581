"""regpatch's own state, kept outside ``docker/`` (the registry never reads it).

    <root>/.regpatch/locks/<repo>.lock one patch or rollback per repository at a time
    <state>/journal/<repo>@<tag>.json  what the last patch of that tag has done so far
    <state>/history.jsonl              every tag change: who, when, old -> new, from what
    <state>/reports/<time>-<repo>@<tag>.md  the summary of each run

The state folder defaults to ``<rootdirectory>/.regpatch``; the locks stay under the
storage root whatever the state folder is (docs/architecture.md, "The state folder").
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from datetime import datetime, timezone

log = logging.getLogger("regpatch.state")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def user_at_host() -> str:
    """``user@host`` of this process (the command line's requester when none is given)."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def actor() -> str:
    """Who/what is running: user@host pid, and the Prefect flow run when there is one."""
    who = f"{user_at_host()} pid {os.getpid()}"
    run = os.environ.get("PREFECT__FLOW_RUN_ID")
    return who + (f" flow-run {run}" if run else "")


# -- lock ----------------------------------------------------------------------


# -- journal -------------------------------------------------------------------


# -- history -------------------------------------------------------------------


