"""The one door from the command line to Prefect's side.

``regpatch.cli`` never imports flows or tasks at module level: when a command runs on a
Prefect API it imports this module by name (``regpatch.cli.prefect_api.prefect_side``),
after every argument, the storage and the plan were checked without Prefect. What the
command line needs of Prefect is listed here and nowhere else.
"""

from __future__ import annotations

from regpatch_flows.deploy import apply as apply_deployments
from regpatch_flows.patch import patch_registry
from regpatch_flows.rollback import rollback_registry
from regpatch_flows.rollout import rollout
from regpatch_tasks.observer import s3_options_for

__all__ = ["apply_deployments", "patch_registry", "rollback_registry", "rollout", "s3_options_for"]
