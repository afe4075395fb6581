"""Who asked for a change and why (issue 25 item 7): ``requested_by`` and ``reason`` on patch,
rollback and rollout, one parameter model (``ChangeParams``), recorded in the history's
versioned format and in the summaries; required in the run forms, filled by the command line."""

from __future__ import annotations

import json

import jsonschema
import pytest
from conftest import REPO, TAG

from regpatch.cli import main
from regpatch.fleet.inventory import parse_inventory
from regpatch.fleet.rollout import FAILED, RegistryOutcome, check_change_for_workers, render_markdown
from regpatch.params import ChangeParams
from regpatch.storage.history import HISTORY_VERSION, read_history, render_history
from regpatch.storage.state import user_at_host


def form_errors(value: dict) -> list[str]:
    schema = ChangeParams.model_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value))


@pytest.mark.parametrize("value, errors", [
    ({}, [": 'reason' is a required property", ": 'requested_by' is a required property"]),
    ({"requested_by": "ana"}, [": 'reason' is a required property"]),
    ({"requested_by": "ana", "reason": ""}, ["reason: '' should be non-empty"]),
    ({"requested_by": "ana", "reason": None}, ["reason: None is not of type 'string'"]),
    ({"requested_by": "ana", "reason": "CHG-1234"}, []),
])
def test_the_form_requires_who_and_why(value, errors):
    assert form_errors(value) == errors


def test_the_model_refuses_what_the_history_must_not_hold():
    assert ChangeParams(requested_by="ana").reason is None  # the command line may leave the reason out
    for bad in ({"requested_by": ""}, {"requested_by": "ana\nforged"}, {"requested_by": "ana", "reason": " x"},
                {"requested_by": "ana", "reason": "x" * 501}, {"requested_by": "ana", "reason": "TOKEN=abc"},
                {"requested_by": "ana", "reason": "CHG-1", "who": "x"}):
        with pytest.raises(ValueError):
            ChangeParams.model_validate(bad)


def test_the_command_line_records_who_and_why_in_the_history_and_the_summary(site, capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(site.root / "no-prefect-here"))
    code = main(["patch", str(site.scenario["staged"]), "--storage", str(site.root), "--repository", REPO,
                 "--tag", TAG, "--reason", "CHG-1234 monthly patch"])
    assert code == 0, capsys.readouterr().err
    code = main(["rollback", "--storage", str(site.root), "--repository", REPO, "--tag", TAG,
                 "--requested-by", "ana@example.org"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    *_, patched, rolled = read_history(site.layout, REPO, TAG)
    assert (patched.action, patched.requested_by, patched.reason) == ("patch", user_at_host(), "CHG-1234 monthly patch")
    assert (rolled.action, rolled.requested_by, rolled.reason) == ("rollback", "ana@example.org", None)
    lines = site.layout.history.read_text().splitlines()
    assert json.loads(lines[-1])["v"] == HISTORY_VERSION == 2
    table = render_history(read_history(site.layout))
    assert f"(requested by {user_at_host()}; reason CHG-1234 monthly patch)" in table
    assert "(requested by ana@example.org)" in table
    reports = sorted((site.root / ".regpatch").rglob("*.md"), key=lambda p: p.stat().st_mtime)
    assert "| reason | CHG-1234 monthly patch |" in reports[-2].read_text()
    assert "| requested by | ana@example.org |\n| reason | not given |" in reports[-1].read_text()
    assert main(["patch", str(site.scenario["staged"]), "--storage", str(site.root), "--repository", REPO,
                 "--tag", TAG, "--reason", "a\nb"]) == 2
    assert "--reason 'a\\nb': " in capsys.readouterr().err


def test_older_history_lines_still_read_and_a_newer_version_keeps_what_is_known(site):
    with open(site.layout.history, "a") as f:
        f.write(json.dumps({"time": "t0", "repository": REPO, "tag": TAG, "old": None, "new": str(site.old),
                            "action": "patch", "source": "0.2", "actor": "root@h pid 1"}) + "\n")
        f.write(json.dumps({"v": 3, "time": "t1", "repository": REPO, "tag": TAG, "old": str(site.old),
                            "new": str(site.new), "action": "patch", "source": "later", "actor": "x",
                            "requested_by": "bo", "reason": "CHG-9", "approved_by": "cy"}) + "\n")
        f.write(json.dumps({"v": 2, "time": "t2", "repository": REPO, "tag": TAG, "old": None,
                            "new": str(site.new), "action": "patch", "source": "bad", "actor": "x",
                            "requested_by": 7}) + "\n")  # a wrong kind: skipped
    *_, old, newer = read_history(site.layout, REPO, TAG)
    assert (old.v, old.requested_by, old.reason, old.source) == (0, None, None, "0.2")
    assert (newer.v, newer.requested_by, newer.reason) == (3, "bo", "CHG-9")


def test_a_rollout_names_who_and_why_and_refuses_pooled_registries_without_a_reason():
    entries = parse_inventory({"registries": [
        {"name": "a", "storage": "/srv/a"}, {"name": "b", "storage": "/srv/b", "work_pool": "pool-b"}]}).select(None)
    check_change_for_workers(ChangeParams(requested_by="ana"), entries[:1])  # patched here: no reason needed
    with pytest.raises(Exception, match="registries b are patched through their patch-registry deployments, "
                                        "which require a reason: give --reason"):
        check_change_for_workers(ChangeParams(requested_by="ana"), entries)
    check_change_for_workers(ChangeParams(requested_by="ana", reason="CHG-1"), entries)
    text = render_markdown([RegistryOutcome("a", "canary", "here", FAILED, error="boom")], "Rollout",
                           ChangeParams(requested_by="ana|x", reason="CHG-1"))
    assert "| requested by | ana\\|x |\n| reason | CHG-1 |" in text

