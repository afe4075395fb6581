"""Hooks the core calls at fixed places; each a no-op unless a test installs one.

``checkpoint(label)`` runs after each staged blob, installed blob, manifest blob, link,
journal save and history line, and every 8 MiB of a blob being staged. The crash test
(``tests/support/crash.py``) installs a hook that SIGKILLs the process at its Nth
checkpoint, as an operator's ``kill -9`` or a power cut would, and proves the registry
never serves a broken image. Outside that test nothing is installed and a checkpoint
costs one global lookup.

``hook_point(name)`` marks a named place where a test acts as another process would, e.g.
``"tag-flip:swap"`` (the tag's compare-and-swap, between its last check and the rename) and
``"tag-flip:swapped"`` (just after the rename, before the checks that follow it): the unit
tests of the race write the tag there, as a concurrent push would.
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


class PointHook(Protocol):
    def __call__(self) -> None: ...


_points: dict[str, PointHook] = {}


def install_hook_point(name: str, hook: Optional[PointHook]) -> None:
    """Run ``hook`` when the core reaches ``hook_point(name)`` (None removes it). Only tests call this."""
    if hook is None:
        _points.pop(name, None)
    else:
        _points[name] = hook


def hook_point(name: str) -> None:
    if _points:
        hook = _points.get(name)
        if hook is not None:
            hook()
