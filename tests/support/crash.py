"""The crash-test harness: ``python tests/support/crash.py ARGS...`` runs ``regpatch ARGS...``
with a checkpoint hook that SIGKILLs the process at its Nth checkpoint (``REGPATCH_FAULT_KILL_AT=N``),
exactly as an operator's ``kill -9`` or a power cut would (``regpatch.hooks``)."""

from __future__ import annotations

import os
import signal
import sys

from regpatch.cli import main
from regpatch.hooks import install_checkpoint_hook


def killer(at: int):
    count = 0

    def hook(label: str) -> None:
        nonlocal count
        count += 1
        if count == at:
            os.write(2, f"regpatch: fault hook: SIGKILL at checkpoint {count} ({label})\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


if __name__ == "__main__":
    at = os.environ.get("REGPATCH_FAULT_KILL_AT")
    if at:
        install_checkpoint_hook(killer(int(at)))
    sys.exit(main(sys.argv[1:]))
