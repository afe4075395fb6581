"""A hook the core calls after every durable write step; a no-op unless a test installs one.

``checkpoint(label)`` runs after each staged blob, installed blob, manifest blob, link,
journal save and history line, and every 8 MiB of a blob being staged. The crash test
(``tests/support/crash.py``) installs a hook that SIGKILLs the process at its Nth
checkpoint, as an operator's ``kill -9`` or a power cut would, and proves the registry
never serves a broken image. Outside that test nothing is installed and a checkpoint
costs one global lookup.
"""

from __future__ import annotations

from typing import Optional, Protocol


class CheckpointHook(Protocol):
    def __call__(self, label: str) -> None: ...


_hook: Optional[CheckpointHook] = None


def install_checkpoint_hook(hook: Optional[CheckpointHook]) -> None:
    """Install ``hook`` (None removes it). Only the test kit calls this."""
    global _hook
    _hook = hook


def checkpoint(label: str = "") -> None:
    if _hook is not None:
        _hook(label)
