"""Every run says what it does (issue 25 item 8): patch, rollback, history, rollout, maintenance
and make-bundle runs each have their own readable name; the maintenance flows require who asked
and why, like patch, rollback and rollout."""

from __future__ import annotations

from prefect.utilities.callables import parameter_schema

from regpatch.fleet.deployments import HISTORY, KINDS, MAINTAIN, PATCH, ROLLBACK
from regpatch_flows.maintenance import maintenance, registry_maintenance
from regpatch_flows.make_bundle import bundle_run_name
from regpatch_tasks.observer import run_name


def test_runs_are_named_for_what_they_do():
    names = [run_name("patch", "site-a", "servercore", "ltsc2019"),
             run_name("rollback", "site-a", "servercore", "ltsc2019"),
             run_name("history", "site-a"),
             run_name("rollout", None, "servercore", "ltsc2019"),
             run_name("maintenance", "site-a", dry_run=True),
             run_name("maintenance"),
             bundle_run_name("docker://registry.connected.example:5000/servercore:ltsc2019", None, None),
             bundle_run_name("/srv/x", "servercore", "ltsc2019")]
    assert names == ["patch site-a servercore:ltsc2019", "rollback site-a servercore:ltsc2019", "history site-a",
                     "rollout servercore:ltsc2019", "maintenance site-a (dry run)", "maintenance",
                     "make-bundle servercore:ltsc2019", "make-bundle servercore:ltsc2019"]
    assert run_name("patch", "site-a", "windows/servercore", "ltsc2019") == "patch site-a windows-servercore:ltsc2019"
    assert run_name("history", "a\nb") == "history a\\nb"  # one line


def test_deployments_are_named_for_what_they_do_to_which_registry():
    assert [k.full_name("site-a") for k in KINDS] == [
        "patch-registry/patch-site-a", "rollback-registry/rollback-site-a", "registry-history/history-site-a",
        "registry-maintenance/maintenance-site-a"]
    assert (PATCH, ROLLBACK, HISTORY, MAINTAIN) == KINDS


def test_the_maintenance_flows_require_the_change_request():
    for fn in (registry_maintenance, maintenance):
        schema = parameter_schema(fn).model_dump_for_openapi()
        assert "change" in schema["required"], fn.name
        change = schema["definitions"]["ChangeParams"]
        assert set(change["required"]) == {"requested_by", "reason"}
