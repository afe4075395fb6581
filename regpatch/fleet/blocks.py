"""The fleet as Prefect blocks, as plain data (no Prefect here).

``regpatch deployments --apply`` writes one block of the type ``regpatch-registry`` per
registry of the inventory (its fields are the inventory entry's: ``RegistryEntry``), and
the per-registry deployments name their block (``{"$ref": {"block_document_id": ID}}``)
instead of holding the registry's fields: the run form shows the chosen block. A rollout
can take its registries from these blocks, by group, instead of from the inventory file.
The block class itself is Prefect's side (``regpatch_tasks.registry_block``).

A block document's name is Prefect's grammar (lowercase letters, digits, '-'); a registry
name also allows capitals, '.' and '_': the block's name is the registry's, lowercased,
with '.' and '_' as '-', and two registries whose names meet there are refused.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

from regpatch.errors import UsageError
from regpatch.fleet.inventory import DEFAULT_GROUP, RegistryEntry
from regpatch.options import opt
from regpatch.params import RegistryParams, TrustParams, VerifyParams

BLOCK_TYPE = "regpatch-registry"      # the block type's slug
BLOCK_TYPE_NAME = "regpatch registry"
ALL_GROUPS = "*"


def block_name(registry: str) -> str:
    """The block document's name of a registry: ``Site_A.1`` -> ``site-a-1``."""
    return re.sub(r"[._]", "-", registry.lower())


def block_names(entries: Iterable[RegistryEntry]) -> dict[str, str]:
    """Registry name -> block name; UsageError when two registries would share a block."""
    names: dict[str, str] = {}
    owner: dict[str, str] = {}
    for e in entries:
        name = block_name(e.name)
        if name in owner:
            raise UsageError(f"registries {owner[name]!r} and {e.name!r} would both be the block "
                             f"{BLOCK_TYPE}/{name} (a block's name has only lowercase letters, digits and '-'): "
                             "rename one of them in the inventory")
        owner[name] = e.name
        names[e.name] = name
    return names


def parameter_ref(block_id: str) -> dict[str, Any]:
    """A flow parameter that Prefect replaces by the block (and the run form shows as chosen)."""
    return {"$ref": {"block_document_id": str(block_id)}}


def with_block(parameters: dict[str, Any], block_id: str) -> dict[str, Any]:
    """A per-registry deployment's parameters once its block exists: the registry is the
    block; the entry's verify command and trust keys are the block's too (not copied)."""
    out = {k: v for k, v in parameters.items() if k not in ("verify", "trust")}
    out["registry"] = parameter_ref(block_id)
    return out


def orphans(existing: Iterable[str], entries: Iterable[RegistryEntry]) -> list[str]:
    """The block names of registries that are no longer in the inventory (left as they are)."""
    kept = {block_name(e.name) for e in entries}
    return sorted(n for n in existing if n not in kept)


def select_groups(entries: list[RegistryEntry], groups: list[str]) -> list[RegistryEntry]:
    """The registries of these groups (``*``: all), in the blocks' order; UsageError when none."""
    if ALL_GROUPS in groups:
        chosen = list(entries)
    else:
        chosen = [e for e in entries if e.wave in groups]
    if not chosen:
        known = sorted({e.wave for e in entries})
        raise UsageError(f"{opt.registry_blocks} {', '.join(groups)}: no {BLOCK_TYPE} block is in "
                         + ("that group" if len(groups) == 1 else "these groups")
                         + (f"; the blocks' groups: {', '.join(known)}" if known else
                            "; there is no such block: write them with regpatch deployments --inventory FILE --apply")
                         + (f" (a block without a group is in {DEFAULT_GROUP!r})" if known else ""))
    return chosen


def from_entry(entry: RegistryEntry, verify: VerifyParams, trust: TrustParams, *, run_pool: Optional[str] = None,
               run_registry: Optional[str] = None) -> tuple[RegistryParams, VerifyParams, TrustParams]:
    """What a per-registry run uses when its registry is a block (an inventory entry): the
    entry's own verify command wins over the form's (as in a rollout), and its trust keys,
    when it has any, over the form's (the form's allow_downgrade is kept). A run on another
    work pool than the block's (another registry's block chosen in a form) is refused: its
    paths are those of another host; so is a run of a deployment made for another registry
    (``run_registry``, its ``registry:NAME`` tag), whatever the pools: it would patch a
    registry its deployment does not name."""
    if run_registry and run_registry != entry.name:
        raise UsageError(f"this deployment is for the registry {run_registry!r}, the block chosen is for "
                         f"{entry.name!r}: run a deployment of {entry.name!r} (patch-{entry.name}, "
                         f"rollback-{entry.name}, ...)")
    if entry.work_pool and run_pool and run_pool != entry.work_pool:
        raise UsageError(f"the registry {entry.name!r} is on work pool {entry.work_pool!r}, this run is on "
                         f"{run_pool!r}: run that registry's own deployment (patch-{entry.name}, "
                         f"rollback-{entry.name}, ...)")
    verify = verify.model_copy(update={"command": entry.verify_command or verify.command})
    if entry.trust_keys:
        trust = TrustParams(trust_keys=list(entry.trust_keys), allow_unsigned=entry.allow_unsigned,
                            allow_downgrade=trust.allow_downgrade)
    return entry.registry_params(), verify, trust
