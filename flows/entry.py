"""The one door from the command line to Prefect's side.

``regpatch.cli`` never imports flows or tasks at module level: when a command runs on a
Prefect API it imports this module by name (``regpatch.cli.prefect_api.prefect_side``),
after every argument, the storage and the plan were checked without Prefect. What the
command line needs of Prefect is listed here and nowhere else.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from regpatch_flows import patch, rollback
from regpatch_flows import rollout as rollout_flow
from regpatch_tasks.observer import s3_options_for

__all__ = ["apply_deployments", "apply_notification", "patch_registry", "rollback_registry", "rollout",
           "s3_options_for"]


def _from_the_terminal(flow: Callable[..., Any]) -> Callable[..., Any]:
    """A flow run started by the command line: watched by the terminal it runs in (Ctrl-C,
    SIGTERM end it, Cancelled or Crashed), so it sends no heartbeats. Prefect's heartbeat
    thread sleeps in one-second steps and is joined when the run ends: half a second, on
    average, at the end of every run (a run on a worker keeps them: its worker watches)."""
    def run(**parameters: Any) -> Any:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            return flow(**parameters)

    run.__doc__ = flow.__doc__
    return run


patch_registry = _from_the_terminal(patch.patch_registry)
rollback_registry = _from_the_terminal(rollback.rollback_registry)
rollout = _from_the_terminal(rollout_flow.rollout)


def apply_deployments(specs: list, entries: list, whole: bool) -> list[str]:
    """``regpatch_flows.deploy.apply``."""
    from regpatch_flows.deploy import apply  # Prefect's deployment machinery, only for --apply (start-up)

    return apply(specs, entries, whole=whole)


def apply_notification(block: str) -> str:
    """``regpatch_flows.deploy.apply_notification``."""
    from regpatch_flows.deploy import apply_notification as apply  # only for --notify (start-up)

    return apply(block)
