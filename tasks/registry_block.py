"""The ``regpatch registry`` block type: one registry of the fleet, stored by the Prefect server.

Its fields are the inventory entry's (``RegistryEntry``: the same titles, descriptions and
validators, from the one table of options), so the block's form in the UI reads like the
inventory, and a block holds what the inventory says of a registry: storage or config.yml,
URL, restart, auth file and CA (paths on the registry's host, read where they are used),
work pool, group, verify command, trust keys. A block holds no secret: every field refuses
a credential written inline (``regpatch.sanitize``'s detector, as a flow's parameters do);
a registry's password stays in the environment of its worker or in its auth file, an S3
key in an ``AwsCredentials`` block, a webhook's in a Secret block.

``save_blocks`` writes them from the inventory (``regpatch deployments --apply``), in place
on a re-run (same ids); the per-registry deployments name their block
(``regpatch.fleet.blocks.with_block``), so the run form shows the block chosen, not every
field. ``read_blocks`` gives a rollout its registries from the blocks, by group.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.utilities.callables import parameter_schema
from pydantic import ConfigDict, ValidationError, model_validator

from regpatch.errors import UsageError
from regpatch.fleet.blocks import BLOCK_TYPE, BLOCK_TYPE_NAME, block_names, from_entry, orphans
from regpatch.fleet.inventory import Inventory, RegistryEntry, refuse_stored_credentials
from regpatch.params import RegistryParams, TrustParams, VerifyParams


class RegistryBlock(Block, RegistryEntry):
    """A registry of the regpatch fleet: where its storage is, how to reach and restart it,
    the work pool of its host, its wave (group), its verify command and trust keys. Written
    by `regpatch deployments --inventory FILE --apply`; the per-registry deployments
    (patch-registry/patch-NAME...) run with it. No secret here: credentials stay in the worker's
    environment or the auth file the block names."""

    _block_type_name = BLOCK_TYPE_NAME
    _block_type_slug = BLOCK_TYPE

    # the title is the schema's definition name: Prefect's schema check lets a {"$ref": ...}
    # stand for a block by that name; the block's own schema keeps Block's extras (its slug)
    model_config = ConfigDict(extra="forbid", frozen=False, title="RegistryBlock", hide_input_in_errors=True,
                              json_schema_extra=Block.model_config.get("json_schema_extra"))

    @model_validator(mode="after")
    def _no_inline_credentials(self) -> "RegistryBlock":
        try:
            refuse_stored_credentials([self], where="registry block")
        except UsageError as e:
            raise ValueError(str(e)) from None
        return self

    def registry_entry(self) -> RegistryEntry:
        """The block as the plain inventory entry it describes."""
        return RegistryEntry.model_validate(self.model_dump(include=set(RegistryEntry.model_fields)))


BLOCK_FIELD = ("The registry: its regpatch-registry block (Blocks page; written by regpatch deployments --apply "
               "from the inventory). Edit the block to change its storage, URL or restart for every later run.")


def _registry_is_a_block(registry: RegistryBlock) -> None:
    """(The shape of a parameter that is a block, as Prefect writes its schema.)"""


def block_parameter_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A per-registry deployment's parameter schema: the flow's, its ``registry`` a
    ``regpatch-registry`` block. The run form shows a block selector (the deployment's block
    chosen) instead of the registry's fields; the server accepts a block reference there
    (and the fields of a block, as a rollout gives them). The flow itself takes a
    ``RegistryParams``, which a block is: the command line and Python callers are unchanged."""
    shape = parameter_schema(_registry_is_a_block).model_dump_for_openapi()
    out = copy.deepcopy(schema)
    definitions = out.setdefault("definitions", {})
    definitions.update(shape.get("definitions", {}))
    registry = out["properties"]["registry"]
    out["properties"]["registry"] = {
        **{k: v for k, v in shape["properties"]["registry"].items() if k not in ("title", "description", "position")},
        "title": registry["title"], "position": registry["position"], "description": BLOCK_FIELD}
    return out


def _run_pool_and_registry() -> tuple[Optional[str], Optional[str]]:
    """The run's work pool, and the registry its deployment is for (its ``registry:NAME`` tag)."""
    ctx = FlowRunContext.get()
    if not ctx or not ctx.flow_run:
        return None, None
    named = [t[len("registry:"):] for t in ctx.flow_run.tags or [] if t.startswith("registry:")]
    return ctx.flow_run.work_pool_name, named[0] if len(named) == 1 else None


def chosen(registry: RegistryParams, verify: Optional[VerifyParams] = None,
           trust: Optional[TrustParams] = None) -> tuple[RegistryParams, VerifyParams, TrustParams]:
    """The registry a run patches, with its verify command and trust keys: a block's own
    (``regpatch.fleet.blocks.from_entry``), or the fields as given."""
    verify, trust = verify or VerifyParams(), trust or TrustParams()
    if isinstance(registry, RegistryEntry):
        run_pool, run_registry = _run_pool_and_registry()
        return from_entry(registry, verify, trust, run_pool=run_pool, run_registry=run_registry)
    return registry, verify, trust


def _documents(client) -> list:
    found: list[Any] = []
    page = 200
    try:
        while True:
            docs = client.read_block_documents_by_type(BLOCK_TYPE, offset=len(found), limit=page,
                                                       include_secrets=False)
            found += docs
            if len(docs) < page:
                return found
    except ObjectNotFound:  # the type was never registered: no block yet
        return found


def save_blocks(entries: list[RegistryEntry], *, whole: bool) -> tuple[dict[str, str], list[str]]:
    """Create or update the block of every entry (in place: same id). Returns registry name ->
    block id, and one line per block for the operator; with ``whole`` (the whole inventory),
    also a line for each block whose registry left the inventory (left as it is)."""
    names = block_names(entries)
    RegistryBlock.register_type_and_schema()
    with get_client(sync_client=True) as client:
        existing = {d.name for d in _documents(client)}
    ids: dict[str, str] = {}
    lines: list[str] = []
    for e in entries:
        block = RegistryBlock.model_validate(e.model_dump())
        name = names[e.name]
        ids[e.name] = str(block.save(name, overwrite=True))
        lines.append(f"block {BLOCK_TYPE}/{name} {'updated' if name in existing else 'created'}")
    for gone in orphans(existing, entries) if whole else []:
        lines.append(f"block {BLOCK_TYPE}/{gone}: not in the inventory; left as it is (delete it in the "
                     "UI's Blocks page once its registry is gone for good)")
    return ids, lines


def read_blocks() -> Inventory:
    """Every ``regpatch-registry`` block, as an inventory (validated as one: unique names);
    a block that fails its validation (edited by hand) is an error naming it."""
    with get_client(sync_client=True) as client:
        docs = _documents(client)
    entries, problems = [], []
    for d in docs:
        try:
            entries.append(RegistryBlock.model_validate(d.data).registry_entry())
        except ValidationError as e:
            problems.append(f"block {BLOCK_TYPE}/{d.name}: " + "; ".join(
                ".".join(str(p) for p in err["loc"]) + ": " * bool(err["loc"])
                + err["msg"].removeprefix("Value error, ") for err in e.errors()))
    if problems:
        raise UsageError("; ".join(problems))
    if not entries:
        raise UsageError(f"there is no {BLOCK_TYPE} block on this Prefect API: write them with "
                         "regpatch deployments --inventory FILE --apply")
    try:
        return Inventory(registries=entries)
    except ValidationError as e:
        raise UsageError(f"the {BLOCK_TYPE} blocks: " + "; ".join(
            err["msg"].removeprefix("Value error, ") for err in e.errors())) from None
