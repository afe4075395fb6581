"""regpatch's own state, kept outside ``docker/`` (the registry never reads it).

    <root>/.regpatch/locks/<repo>~<hash>.lock          one patch or rollback per repository at a time
    <state>/journal/<repo>@<tag>~<hash>.json           what the last patch of that tag has done so far
    <state>/journal/<repo>@<tag>~<hash>.rollback.json  the same for its last rollback
    <state>/history.jsonl                              every tag change: who, when, old -> new, from what
    <state>/reports/<time>-<repo>@<tag>~<hash>.md      the summary of each run

(``<hash>``: the sha256 of the full names, ``storage.layout.state_name``.)

The state folder defaults to ``<rootdirectory>/.regpatch``; the locks stay under the
storage root whatever the state folder is (docs/architecture.md, "The state folder").
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timezone

from regpatch import platform

log = logging.getLogger("regpatch.state")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def user_at_host() -> str:
    """``user@host`` of this process (the command line's requester when none is given)."""
    return f"{platform.user_name()}@{socket.gethostname()}"  # (a uid when there is no passwd entry)


def actor() -> str:
    """Who/what is running: user@host pid, and the Prefect flow run when there is one."""
    who = f"{user_at_host()} pid {os.getpid()}"
    run = os.environ.get("PREFECT__FLOW_RUN_ID")
    return who + (f" flow-run {run}" if run else "")



