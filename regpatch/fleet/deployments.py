"""Per-registry Prefect deployments from the inventory, as plain data (no Prefect here).

For every registry of the inventory, four deployments, each named for what it does to
that registry (the UI's list of deployments shows the name, not the flow), on its work
pool (the host that owns its disk; ``default_pool`` for entries without one):

    patch-registry/patch-<name>              the patch; the run form needs only bundle, repository, tag
    rollback-registry/rollback-<name>        the rollback; the form needs only repository and tag
    registry-history/history-<name>          the registry's tag changes as an artifact
    registry-maintenance/maintenance-<name>  prune and the registry's garbage collection (the maintenance flow's)

Deployments written before under the registry's bare name (``patch-registry/<name>``)
are replaced by ``regpatch deployments --apply`` (``old_name``).

Their ``registry`` parameter is the registry as the inventory describes it (name,
storage, config.yml, URL, restart, auth file, CA, insecure; with ``--apply`` its
``regpatch-registry`` block), so a run from the UI never asks where the registry is.
``render_prefect_yaml`` writes them as a prefect.yaml for ``prefect deploy --all``;
``regpatch_flows.deploy.apply`` creates or updates them on the API directly
(``regpatch deployments --apply``), each registry then a ``regpatch-registry`` block
that its deployments name instead (``regpatch.fleet.blocks.with_block``): the run form
shows the block chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from regpatch.fleet.inventory import Inventory, RegistryEntry
from regpatch.options import opt

DEFAULT_POOL = "regpatch"


@dataclass(frozen=True)
class FlowKind:
    flow: str           # the flow's name on the API
    entrypoint: str     # module path: workers run the installed code, nothing is pulled
    what: str
    verb: str = ""      # the deployment of registry NAME is "<verb>-NAME"

    def deployment_name(self, registry: str) -> str:
        """``patch-site-a``: what it does and to which registry, in one word for ``prefect deployment run``."""
        return f"{self.verb}-{registry}"

    def full_name(self, registry: str) -> str:
        """``patch-registry/patch-site-a``, the name ``run_deployment`` and the CLI take."""
        return f"{self.flow}/{self.deployment_name(registry)}"


PATCH = FlowKind("patch-registry", "regpatch_flows.patch.patch_registry",
                 "Patch a repository:tag of {name} ({where}) with a bundle: the form needs the bundle, "
                 "the repository and the tag; the registry is filled in.", "patch")
ROLLBACK = FlowKind("rollback-registry", "regpatch_flows.rollback.rollback_registry",
                    "Roll a repository:tag of {name} ({where}) back to the image it had before its last "
                    "change (or to a digest): the form needs the repository and the tag.", "rollback")
HISTORY = FlowKind("registry-history", "regpatch_flows.history.registry_history",
                   "Every tag change recorded in {name} ({where}), as the artifact history-{name}.", "history")
MAINTAIN = FlowKind("registry-maintenance", "regpatch_flows.maintenance.registry_maintenance",
                    "Prune {name} ({where}) and run its own garbage collection in a maintenance window "
                    "(stopped and started through its restart, every kept image pulled): a dry run unless apply.",
                    "maintenance")
KINDS = (PATCH, ROLLBACK, HISTORY, MAINTAIN)


@dataclass
class DeploymentSpec:
    kind: FlowKind
    name: str
    work_pool: str
    parameters: dict[str, Any]
    tags: list[str]
    description: str
    registry: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.kind.flow}/{self.name}"

    @property
    def old_name(self) -> str:
        """The name the registry's deployment had before (its bare name), replaced on --apply."""
        return self.registry

    def to_yaml_dict(self) -> dict[str, Any]:
        return {"name": self.name, "entrypoint": self.kind.entrypoint, "description": self.description,
                "tags": list(self.tags), "work_pool": {"name": self.work_pool}, "parameters": self.parameters,
                "pull": []}


def registry_parameter(entry: RegistryEntry) -> dict[str, Any]:
    """The ``registry`` parameter of an entry: the fields it sets, with its name."""
    params = entry.registry_params().model_dump(exclude_defaults=True)
    return {"name": entry.name, **params}


def specs_for(inventory: Inventory, *, default_pool: str = DEFAULT_POOL, repository: Optional[str] = None,
              only: Optional[list[str]] = None) -> list[DeploymentSpec]:
    """The deployments of every selected registry (one per kind), in inventory order."""
    specs = []
    for entry in inventory.select(only):
        pool = entry.work_pool or default_pool
        where = f"storage {entry.storage}, work pool {pool}"
        registry = registry_parameter(entry)
        for kind in KINDS:
            params: dict[str, Any] = {"registry": dict(registry)}
            if repository and kind in (PATCH, ROLLBACK):
                params["repository"] = repository
            if kind is PATCH and entry.verify_command:
                params["verify"] = {"command": entry.verify_command}
            if kind is PATCH and entry.trust_keys:
                params["trust"] = entry.trust_params().model_dump()
            specs.append(DeploymentSpec(kind, kind.deployment_name(entry.name), pool, params,
                                        ["regpatch", f"registry:{entry.name}"],
                                        kind.what.format(name=entry.name, where=where), registry=entry.name))
    return specs


def render_prefect_yaml(specs: list[DeploymentSpec], source: str) -> str:
    """The deployments as a prefect.yaml (``prefect deploy --all --prefect-file FILE``)."""
    doc = {"name": "regpatch-registries", "prefect-version": ">=3.4", "build": None, "push": None, "pull": [],
           "deployments": [s.to_yaml_dict() for s in specs]}
    header = (f"# Per-registry deployments of regpatch, written by `regpatch deployments` from {source}.\n"
              "# Deploy from any folder of a host where regpatch is installed:\n"
              "#     prefect deploy --all --prefect-file THIS_FILE\n"
              f"# or let the command do it: regpatch deployments {opt.inventory} --apply\n")
    return header + yaml.safe_dump(doc, sort_keys=False, width=100)
