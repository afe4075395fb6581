"""A test-only crash hook: ``checkpoint()`` after every durable write step.

When the environment variable ``REGPATCH_FAULT_KILL_AT=N`` is set, the Nth
checkpoint of the process SIGKILLs it, exactly as an operator's ``kill -9``
or a power cut would. Unset (always, outside the crash tests) it costs one
dictionary lookup. The crash test uses it to kill a patch at every kind of
write step and prove the registry never serves a broken image.
"""

from __future__ import annotations

import os
import signal

_ENV = "REGPATCH_FAULT_KILL_AT"
_count = 0


def checkpoint(label: str = "") -> None:
    global _count
    at = os.environ.get(_ENV)
    if not at:
        return
    _count += 1
    if _count == int(at):
        os.write(2, f"regpatch: fault hook: SIGKILL at checkpoint {_count} ({label})\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
