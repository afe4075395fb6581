"""The fleet as Prefect blocks: the plain data (names, parameters, groups, precedence) and the
block type's own rules, without a server (the server's side: tests/e2e/test_deployments.py)."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError
from support.credentials import literal_cases

from regpatch.errors import UsageError
from regpatch.fleet.blocks import block_name, block_names, from_entry, orphans, select_groups, with_block
from regpatch.fleet.deployments import specs_for
from regpatch.fleet.inventory import RegistryEntry, parse_inventory, refuse_stored_credentials
from regpatch.options import wording
from regpatch.params import RolloutParams, TrustParams, VerifyParams


def entry(name: str = "site-a", **kw) -> RegistryEntry:
    return RegistryEntry(**{"name": name, "storage": f"/srv/{name}", **kw})


def test_block_names_follow_prefects_grammar_and_two_registries_never_share_one():
    assert block_name("Site_A.1") == "site-a-1" and block_name("site-b") == "site-b"
    assert block_names([entry("Site_A"), entry("b.2")]) == {"Site_A": "site-a", "b.2": "b-2"}
    with pytest.raises(UsageError, match=r"'site\.a' and 'site-a' would both be the block regpatch-registry/site-a"):
        block_names([entry("site.a"), entry("site-a")])


def test_a_deployment_names_its_block_and_keeps_the_rest():
    inventory = parse_inventory({"registries": [
        {"name": "site-a", "storage": "/srv/a", "url": "http://127.0.0.1:5000", "work_pool": "pool-a",
         "verify_command": "skopeo inspect docker://{ref}", "trust_keys": ["/etc/regpatch/k.pub"]}]})
    patch = next(s for s in specs_for(inventory, repository="servercore") if s.kind.flow == "patch-registry")
    assert patch.parameters["verify"] and patch.parameters["trust"]  # the prefect.yaml keeps them inline
    block_id = str(uuid.uuid4())
    assert with_block(patch.parameters, block_id) == {
        "registry": {"$ref": {"block_document_id": block_id}}, "repository": "servercore"}
    assert patch.parameters["registry"]["storage"] == "/srv/a"  # the spec itself is left as it was


def test_blocks_whose_registry_left_the_inventory_are_reported_not_lost():
    assert orphans(["site-a", "site-gone", "b-2"], [entry("site-a"), entry("b.2")]) == ["site-gone"]


def test_registries_by_group():
    fleet = [entry("a", group="canary"), entry("b", group="fleet"), entry("c")]
    assert [e.name for e in select_groups(fleet, ["canary"])] == ["a"]
    assert [e.name for e in select_groups(fleet, ["fleet", "default"])] == ["b", "c"]
    assert [e.name for e in select_groups(fleet, ["*"])] == ["a", "b", "c"]
    with wording(None), pytest.raises(UsageError, match="--registry-blocks nope: no regpatch-registry block is in "
                                                         "that group; the blocks' groups: canary, default, fleet"):
        select_groups(fleet, ["nope"])


def test_a_blocks_verify_command_and_trust_keys_win_over_the_forms():
    plain = entry()
    form_verify, form_trust = VerifyParams(command="crane digest {ref}", always=True), \
        TrustParams(trust_keys=["/form.pub"], allow_downgrade=True)
    registry, verify, trust = from_entry(plain, form_verify, form_trust)
    assert registry.name == "site-a" and registry.storage == "/srv/site-a" and not hasattr(registry, "group")
    assert (verify, trust) == (form_verify, form_trust)  # the block says nothing: the form's
    own = entry(verify_command="skopeo inspect docker://{ref}", trust_keys=["/k.pub"], allow_unsigned=True)
    _, verify, trust = from_entry(own, form_verify, form_trust)
    assert verify == VerifyParams(command="skopeo inspect docker://{ref}", always=True)
    assert trust == TrustParams(trust_keys=["/k.pub"], allow_unsigned=True, allow_downgrade=True)


def test_another_pools_block_is_refused():
    pooled = entry(work_pool="pool-a")
    from_entry(pooled, VerifyParams(), TrustParams(), run_pool="pool-a")
    from_entry(pooled, VerifyParams(), TrustParams(), run_pool=None)  # a run of the command line
    with pytest.raises(UsageError, match="'site-a' is on work pool 'pool-a', this run is on 'pool-b'"):
        from_entry(pooled, VerifyParams(), TrustParams(), run_pool="pool-b")


def test_a_block_of_another_registry_is_refused_whatever_the_pools():
    """A registry without a work pool has its deployments on the default pool, and its block
    says no pool: the deployment's own registry (its registry:NAME tag) decides."""
    unpooled = entry()
    from_entry(unpooled, VerifyParams(), TrustParams(), run_pool="regpatch", run_registry="site-a")
    from_entry(unpooled, VerifyParams(), TrustParams(), run_pool=None, run_registry=None)  # the command line
    with pytest.raises(UsageError, match="this deployment is for the registry 'site-b', the block chosen is for "
                                         "'site-a': run a deployment of 'site-a'"):
        from_entry(unpooled, VerifyParams(), TrustParams(), run_pool="regpatch", run_registry="site-b")


@pytest.mark.parametrize("field", ["storage", "registry_auth_file", "registry_ca", "state_dir", "group",
                                   "work_pool", "trust_keys"])
def test_every_text_of_an_entry_refuses_an_inline_credential(field):
    text, secret = literal_cases()[0]
    value = [text] if field == "trust_keys" else text
    with pytest.raises(UsageError, match=f"'{field}' of registry block site-a carries a credential inline") as e:
        refuse_stored_credentials([entry(**{field: value})], where="registry block")
    assert secret not in str(e.value)


def test_a_rollout_takes_the_inventory_or_the_blocks():
    assert RolloutParams(registry_blocks=["canary, fleet"], state_dir="/var/lib/r").registry_blocks == \
        ["canary", "fleet"]
    with wording(None):
        for bad, message in (({}, "give --inventory or --registry-blocks"),
                             ({"inventory": "/i.yml", "registry_blocks": ["a"], "state_dir": "/s"},
                              "give --inventory or --registry-blocks"),
                             ({"registry_blocks": ["canary"]}, "with --registry-blocks, give the rollout's state"),
                             ({"registry_blocks": [" , "], "state_dir": "/s"}, "names no group")):
            with pytest.raises(ValidationError, match=message):
                RolloutParams(**bad)


def test_the_block_type_is_the_inventory_entry():
    """Prefect's side: the block's fields are the entry's (titles, descriptions, validators), it
    refuses a credential, and a per-registry deployment's registry is a reference to one (checked
    by Prefect's own schema check), or a block's fields (a rollout's run); the flow's own form is
    unchanged."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from regpatch_flows.patch import patch_registry
    from regpatch_tasks.registry_block import RegistryBlock, block_parameter_schema

    assert RegistryBlock.model_fields.keys() == RegistryEntry.model_fields.keys()
    assert all(RegistryBlock.model_fields[f].description == RegistryEntry.model_fields[f].description
               for f in RegistryEntry.model_fields)
    schema = RegistryBlock.model_json_schema()
    assert schema["block_type_slug"] == "regpatch-registry" and schema["title"] == "RegistryBlock"
    with pytest.raises(ValidationError, match="'url' of registry block site-a carries a credential inline"):
        RegistryBlock(name="site-a", storage="/srv/a", url="https://ana:S3cret-99@registry.example:5000")
    with pytest.raises(ValidationError, match="must be 1-63 letters"):
        RegistryBlock(name="site a", storage="/srv/a")
    block = RegistryBlock(name="site-a", storage="/srv/a", group="canary")
    assert type(block.registry_entry()) is RegistryEntry and block.registry_entry().group == "canary"

    flow_schema = parameter_schema(patch_registry).model_dump_for_openapi()
    per_registry = block_parameter_schema(flow_schema)
    assert per_registry["properties"]["registry"]["$ref"] == "#/definitions/RegistryBlock"
    assert flow_schema["properties"]["registry"]["$ref"] == "#/definitions/RegistryParams"
    values = {"bundle": "/b", "repository": "servercore", "tag": "ltsc2019",
              "change": {"requested_by": "ana", "reason": "CHG-1"}}
    ref = {"$ref": {"block_document_id": str(uuid.uuid4())}}
    fields = {"name": "site-a", "storage": "/srv/a", "registry_url": "http://127.0.0.1:5000"}
    assert validate({**values, "registry": ref}, per_registry) == []
    assert validate({**values, "registry": fields}, per_registry) == []
    assert validate({**values, "registry": {"$ref": {"block_document_id": 7}}}, per_registry) != []
    assert validate({**values, "registry": ref}, flow_schema) != []  # the generic form: fields only
