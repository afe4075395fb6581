"""What the Prefect run forms and per-registry deployments are made of, without Prefect:
the parameter models' schema, messages in the caller's terms, deployment specs, the
rollout table's errors."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from regpatch.errors import StorageError, UsageError, VerificationError, os_error
from regpatch.fleet.deployments import render_prefect_yaml, specs_for
from regpatch.fleet.inventory import load_inventory, parse_inventory
from regpatch.fleet.rollout import FAILED, RegistryOutcome, outcome_of, render_markdown, tag_state
from regpatch.options import inventory_namer, opt, wording
from regpatch.params import RegistryParams, form_terms

ROOT = Path(__file__).resolve().parents[2]


def schema_errors(registry: dict) -> list[str]:
    schema = RegistryParams.model_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(registry))


@pytest.mark.parametrize("registry,errors", [
    ({}, [": 'storage' is a required property"]),
    ({"storage": ""}, ["storage: '' should be non-empty"]),
    ({"registry_config": ""}, [": 'storage' is a required property"]),
    ({"registry_config": None, "registry_url": "http://127.0.0.1:5000"},
     [": 'storage' is a required property", "registry_config: None is not of type 'string'"]),
    ({"storage": "/srv/registry/data"}, []),
    ({"registry_config": "/etc/docker/registry/config.yml"}, []),
    ({"storage": "/srv/registry/data", "registry_config": "/etc/docker/registry/config.yml"}, []),
])
def test_the_form_schema_refuses_a_registry_without_storage_or_config(registry, errors):
    assert schema_errors(registry) == errors


def test_storage_and_config_are_plain_text_fields_with_titles_and_descriptions():
    props = RegistryParams.model_json_schema()["properties"]
    for key in ("storage", "registry_config"):
        assert props[key]["type"] == "string" and "default" not in props[key] and "anyOf" not in props[key]
    for key, prop in props.items():
        assert prop.get("title") and prop.get("description"), key
        assert "<" not in prop["description"], f"{key}: the UI renders descriptions as markdown"


def test_registry_label_and_name_rules():
    assert RegistryParams(name="site-a", storage="/x").label() == "site-a"
    label = RegistryParams(storage="/srv/registry/data").label()
    assert label.endswith("-srv-registry-data") and len(label) <= 63
    assert RegistryParams(name="", storage="/x").name is None
    with pytest.raises(ValueError, match="'bad/name' must be 1-63 letters"):
        RegistryParams(name="bad/name", storage="/x")


def test_messages_name_options_as_their_reader_knows_them():
    def message() -> str:
        return f"pass {opt.storage} or {opt.registry_config}; see {opt.verify_command}, {opt.image}, {opt.only}"

    assert message() == "pass --storage or --registry-config; see --verify-command, --image, --only"
    with form_terms():
        text = message()
    assert text == ('pass "Storage folder (rootdirectory)" (registry.storage) or "Registry config.yml" '
                    '(registry.registry_config); see "Verify command" (verify.command), the field \'image\', '
                    '"Only these registries" (rollout.only)')
    with wording(inventory_namer("site-a")):
        assert f"{opt.registry_url} / {opt.storage}" == "'url' of inventory entry site-a / " \
                                                          "'storage' of inventory entry site-a"
    with pytest.raises(UsageError) as e, form_terms():  # a core message raised inside a flow
        RegistryParams().target()
    assert "registry.storage" in str(e.value) and "--storage" not in str(e.value)
    with pytest.raises(StorageError) as e, form_terms():  # an OS error's advice, named when raised
        raise os_error(OSError(errno.EXDEV, "Invalid cross-device link", "/x"), doing="renaming")
    assert '"State folder" (registry.state_dir)' in str(e.value) and e.value.exit_code == 4


def test_deployment_specs_from_the_inventory():
    inv = load_inventory(ROOT / "deployments/inventory.example.yml")
    specs = specs_for(inv, repository="servercore")
    assert [s.full_name for s in specs[:3]] == ["patch-registry/patch-site-a", "rollback-registry/rollback-site-a",
                                                "registry-history/history-site-a"]
    assert len(specs) == 4 * len(inv.registries)
    by = {s.full_name: s for s in specs}
    assert by["patch-registry/patch-site-a"].work_pool == "site-a-pool"
    assert by["patch-registry/patch-local-mirror"].work_pool == "regpatch"  # no work_pool: where the rollout runs
    assert by["patch-registry/patch-site-b"].parameters == {
        "registry": {"name": "site-b", "storage": "D:\\registry\\data",
                     "registry_url": "https://registry.site-b.example:5000",
                     "registry_ca": "C:\\regpatch\\site-b-ca.pem"},
        "repository": "servercore"}
    assert "repository" not in by["registry-history/history-site-b"].parameters
    assert by["rollback-registry/rollback-site-a"].tags == ["regpatch", "registry:site-a"]
    for s in specs:  # the form's schema has no nulls for these: a null would be refused
        assert None not in s.parameters["registry"].values()
        RegistryParams(**s.parameters["registry"])
    doc = yaml.safe_load(render_prefect_yaml(specs, "inventory.example.yml"))
    assert len(doc["deployments"]) == len(specs) and doc["pull"] == []
    assert doc["deployments"][0]["entrypoint"] == "regpatch_flows.patch.patch_registry"


def test_a_registry_that_requires_signatures_keeps_them_in_its_patch_deployment():
    inv = parse_inventory({"registries": [{"name": "site-a", "storage": "/x", "trust_keys": ["/etc/regpatch/k.pub"]}]})
    by = {s.full_name: s for s in specs_for(inv)}
    assert by["patch-registry/patch-site-a"].parameters["trust"] == {"trust_keys": ["/etc/regpatch/k.pub"],
                                                               "allow_unsigned": False, "allow_downgrade": False}
    assert "trust" not in by["rollback-registry/rollback-site-a"].parameters


def test_deployments_command_prints_yaml_without_importing_prefect(tmp_path):
    out = tmp_path / "registries.yaml"
    code = ("import sys\nfrom regpatch.cli import main\n"
            f"rc = main(['deployments', '--inventory', {str(ROOT / 'deployments/inventory.example.yml')!r}, "
            f"'--only', 'site-a', '--output', {str(out)!r}])\n"
            "assert 'prefect' not in sys.modules, 'prefect was imported'\nsys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4 deployments" in proc.stdout
    assert [d["name"] for d in yaml.safe_load(out.read_text())["deployments"]] == [
        "patch-site-a", "rollback-site-a", "history-site-a", "maintenance-site-a"]  # each says what it does


def test_rollout_table_keeps_every_error_whole_and_says_where_the_tag_is():
    entry = parse_inventory({"registries": [{"name": "site-a", "storage": "/x"}]}).registries[0]

    class Result:
        dry_run, tag_moved, old, new = False, False, "sha256:" + "a" * 64, "sha256:" + "b" * 64

    error = StorageError("disk full while writing blobs/sha256/ab/" + "c" * 64 + "/data; free space and retry")
    error.result = Result()
    outcome = outcome_of(entry, error=error)
    assert outcome.status == FAILED
    assert outcome.error.endswith("; the tag was not moved: it still points at sha256:" + "a" * 64)
    assert repr(outcome) == "RegistryOutcome(site-a: failed)"
    text = render_markdown([outcome, RegistryOutcome("site-b", "fleet", "local", "not-run", note="not run")], "t")
    errors = text.split("## Errors", 1)[1]
    assert f"- **site-a**: {outcome.error}" in errors and "site-b" not in errors
    assert outcome_of(entry, error=UsageError("bad")).error == "bad; the tag was not moved"
    assert tag_state(True) == "the tag was moved to the new image before the failure"
    # the engine put the tag back after the flip: said once, not contradicted
    back = VerificationError(f"the registry serves sha256:{'b' * 64}; the tag was put back on sha256:{'a' * 64}")
    back.result = Result()
    assert outcome_of(entry, error=back).error == str(back)


def test_deployments_refuse_an_inventory_with_an_inline_credential(tmp_path, capsys):
    from regpatch.cli import main

    inv = tmp_path / "inv.yml"
    inv.write_text(yaml.safe_dump({"registries": [
        {"name": "site-a", "storage": "/x", "verify_command": "skopeo inspect --creds u:secret docker://{ref}"}]}))
    assert main(["deployments", "--inventory", str(inv)]) == 2
    out, err = capsys.readouterr()
    assert "'verify_command' of inventory entry site-a carries a credential inline" in err
    assert "secret" not in out + err
    inv.write_text(yaml.safe_dump({"registries": [  # the restart spec is a deployment parameter too
        {"name": "site-a", "storage": "/x", "restart": "command:curl -fsS http://admin:secret@127.0.0.1:9/r"}]}))
    assert main(["deployments", "--inventory", str(inv)]) == 2
    out, err = capsys.readouterr()
    assert "'restart' of inventory entry site-a carries a credential inline" in err
    assert "secret" not in out + err


def test_the_hardening_options_are_form_fields_with_the_flags_names():
    props = RegistryParams.model_json_schema()["properties"]
    for key in ("ignore_url_policy", "allow_cross_repository"):
        assert props[key]["type"] == "boolean" and props[key]["default"] is False and props[key]["title"]
    with form_terms():
        text = f"or pass {opt.allow_cross_repository} if this repository may use it; or {opt.ignore_url_policy}"
    assert "(registry.allow_cross_repository)" in text and "(registry.ignore_url_policy)" in text and "--" not in text
