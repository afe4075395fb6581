"""``regpatch status`` over an inventory of real storages in tmp folders (no registry process):
site-a patched by the rollout (current), site-b left out of it (behind), site-c whose storage is
not there and whose URL nothing listens on (unreadable), site-d a host's storage on a work pool."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml
from conftest import REPO, TAG

from regpatch import engine, interrupt
from regpatch.cli import main as regpatch_main
from regpatch.demo.loopback import free_port
from regpatch.errors import FleetDrift, UsageError
from regpatch.fleet.inventory import load_inventory
from regpatch.fleet.rollout import RolloutState
from regpatch.fleet.status import (
    BEHIND,
    CURRENT,
    DRIFT,
    UNREADABLE,
    RegistryStatus,
    _state,
    default_tags,
    drift,
    fleet_status,
    healthy,
    latest_rollout_digest,
    render_markdown,
    render_table,
    status_rows,
    to_json,
)
from regpatch.reference import Repository, Tag
from regpatch.registry.target import RegistryTarget

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


@pytest.fixture
def fleet(site, tmp_path, monkeypatch):
    """Three storages and an inventory; the rollout's state file names the new image."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(interrupt, "sleep", lambda seconds: None)  # the client's backoff: no waiting here
    a, b = tmp_path / "site-a", tmp_path / "site-b"
    shutil.copytree(site.root, a)
    shutil.copytree(site.root, b)
    engine.patch(engine.PatchRequest(bundle=str(site.scenario["staged"]), repository=Repository.parse(REPO),
                                     tag=Tag.parse(TAG), target=RegistryTarget.resolve(storage=str(a))))
    (tmp_path / "pooled").mkdir()  # a host's storage: only its folder is seen from here
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"registries": [
        {"name": "site-a", "storage": str(a), "group": "first"},
        {"name": "site-b", "storage": str(b)},
        {"name": "site-c", "storage": str(tmp_path / "gone"), "url": f"http://127.0.0.1:{free_port()}"},
        {"name": "site-d", "storage": str(tmp_path / "pooled"), "work_pool": "pool-d"},
    ]}))
    RolloutState(RolloutState.default_dir(inv), REPO, TAG, str(site.new)).check_writable()
    return inv, str(site.old), str(site.new)


def test_rows_say_current_behind_and_unreadable(fleet):
    inv, old, new = fleet
    rows = {r.name: r for r in status_rows(str(inv), None, None, REPO, TAG)}
    assert list(rows) == ["site-a", "site-b", "site-c", "site-d"]
    a, b, c, d = rows.values()
    assert (a.state, a.storage_digest, a.rollout_digest, a.served_digest) == (CURRENT, new, new, None)
    assert (a.group, a.where, a.repository, a.tag) == ("first", "local", REPO, TAG)
    assert a.last_change.split()[1:3] == ["patch", "by"] and a.verified is False  # no URL: never verified
    assert a.disk_used > 0 and a.disk_free > 0 and a.problems == ()
    assert (b.state, b.storage_digest, b.rollout_digest) == (BEHIND, old, new)
    assert c.state == UNREADABLE and c.storage_digest is None and c.served_digest is None
    assert [p.split(":")[0] for p in c.problems] == ["storage", "API"]
    assert "does not answer" in c.problems[1] and c.disk_used is None and c.verified is None
    assert d.state == UNREADABLE and d.problems == (f"storage {inv.parent / 'pooled'} not readable here "
                                                    "(on work pool pool-d)",)
    assert not healthy(list(rows.values()))
    error = drift(list(rows.values()))
    assert isinstance(error, FleetDrift) and error.exit_code == 7
    assert str(error) == ("3 of 4 registries are not current: site-b (servercore:ltsc2019 behind), "
                          "site-c (servercore:ltsc2019 unreadable), site-d (servercore:ltsc2019 unreadable)")

    only_a = status_rows(str(inv), ["site-a"], None, None, None)  # the tags the rollouts wrote state for
    assert [(r.name, r.state) for r in only_a] == [("site-a", CURRENT)]
    assert drift(only_a) is None and healthy(only_a)


def test_the_table_markdown_and_json_show_every_row_and_problem(fleet):
    inv, old, new = fleet
    rows = status_rows(str(inv), ["site-a", "site-b", "site-c"], None, REPO, TAG)
    table = render_table(rows).splitlines()
    assert table[0].split() == ["registry", "state", "storage", "API", "rollout", "verified", "disk", "used/free",
                                "last", "change"]
    cells = {line.split()[0]: line.split() for line in table[1:4]}
    assert cells["site-a"][1:6] == ["current", new[7:19], "-", new[7:19], "no"]
    assert cells["site-b"][1:6] == ["behind", old[7:19], "-", new[7:19], "no"]
    assert cells["site-c"][1:7] == ["unreadable", "-", "-", new[7:19], "-", "-"]
    assert [line.split(":")[0] for line in table[4:]] == ["site-c", "site-c"]
    assert len({line.index(line.split()[1]) for line in table[:4]}) == 1  # the columns line up

    md = render_markdown(rows, "Fleet status").splitlines()
    assert md[0] == "# Fleet status" and md[2] == f"## `{REPO}:{TAG}`"  # a table per repository:tag
    assert md[4] == "| registry | state | storage | API | rollout | verified | disk used / free |"
    short = f"`{new[7:19]}…`"  # compact in the table, in full under it (regpatch.tables)
    assert md[6].startswith(f"| site-a | **current** | {short} | - | {short} | no | ")
    assert md[8] == f"| site-c | **unreadable** | - | - | {short} | - | - |"
    assert md[9] == "" and md[10] == f"- `{new[7:19]}…` = `{new}`" and f"- `{old[7:19]}…` = `{old}`" in md
    assert any(x.startswith("- site-a last change: ") and " patch by " in x for x in md)  # under the table
    assert md[-3] == "" and md[-2].startswith("- site-c: storage: ") and md[-1].startswith("- site-c: API: ")

    doc = json.loads(to_json(rows))
    assert [(r["name"], r["state"], r["storage_digest"]) for r in doc] == [
        ("site-a", CURRENT, new), ("site-b", BEHIND, old), ("site-c", UNREADABLE, None)]
    assert doc[2]["problems"][0].startswith("storage: ")


def test_without_a_rollout_the_storage_alone_says_current(fleet, tmp_path):
    inv, old, new = fleet
    entries = load_inventory(inv).select(["site-a", "site-b"])
    rows = fleet_status(entries, REPO, TAG, tmp_path / "no-rollouts")
    assert [(r.state, r.rollout_digest) for r in rows] == [(CURRENT, None), (CURRENT, None)]
    other_tag = fleet_status(entries, REPO, "other", tmp_path / "no-rollouts")  # a tag the storages lack
    assert [r.state for r in other_tag] == [UNREADABLE, UNREADABLE]
    assert other_tag[0].last_change is None and other_tag[0].problems == ()


def test_the_state_is_drift_when_storage_and_api_disagree():
    def row(**kw) -> RegistryStatus:
        return RegistryStatus("x", "g", "local", REPO, TAG, **kw)

    assert _state(row(storage_digest=D1, served_digest=D2, rollout_digest=D1)) == DRIFT
    assert _state(row(storage_digest=D1, served_digest=D1, rollout_digest=D1)) == CURRENT
    assert _state(row(served_digest=D2, rollout_digest=D1)) == BEHIND  # the API alone
    assert _state(row(served_digest=D1)) == CURRENT
    assert _state(row(rollout_digest=D1)) == UNREADABLE
    drifted = row(storage_digest=D1, served_digest=D2, state=DRIFT, verified=True, disk_used=1 << 20,
                  disk_free=2 << 30, last_change="2026-01-01T00:00:00Z patch by ops")
    assert render_table([drifted]).splitlines()[1].split() == [
        "x", "drift", D1[7:19], D2[7:19], "-", "yes", "1.0", "MiB/2.0", "GiB", "2026-01-01T00:00:00Z", "patch",
        "by", "ops"]
    assert "| x | **drift** |" in render_markdown([drifted], "t") and "| yes | 1.0 MiB / 2.0 GiB |" in \
        render_markdown([drifted], "t")
    assert str(drift([drifted])) == "1 of 1 registries are not current: x (servercore:ltsc2019 drift)"


def test_the_latest_rollout_of_a_tag_is_the_newest_state_file_of_it(tmp_path):
    folder = tmp_path / "rollouts"
    assert latest_rollout_digest(folder, REPO, TAG) is None and default_tags(folder) == []
    files = {}
    for n, (repo, tag, digest) in enumerate([(REPO, TAG, D1), (REPO, TAG, D2), ("other", "1", D3)]):
        state = RolloutState(folder, repo, tag, digest)
        state.check_writable()
        os.utime(state.path, (1_000_000 + n * 100, 1_000_000 + n * 100))
        files[digest] = state.path
    (folder / "rollout-junk.json").write_text("[]")  # not a rollout's
    (folder / "rollout-torn.json").write_text('{"repository": "servercore", "tag": "ltsc2019", "digest": ')
    (folder / "rollout-nodigest.json").write_text(json.dumps({"repository": REPO, "tag": TAG, "digest": 5}))
    os.utime(folder / "rollout-nodigest.json", (2_000_000, 2_000_000))
    (folder / "notes.json").write_text(json.dumps({"repository": REPO, "tag": TAG, "digest": D3}))
    assert latest_rollout_digest(folder, REPO, TAG) == D2
    assert latest_rollout_digest(folder, REPO, "other-tag") is None
    assert default_tags(folder) == [(REPO, TAG), ("other", "1")]  # newest first (the no-digest file is newest)
    os.utime(files[D1], (3_000_000, 3_000_000))  # the older rollout ran again
    assert latest_rollout_digest(folder, REPO, TAG) == D1
    os.utime(files[D3], (4_000_000, 4_000_000))
    assert default_tags(folder) == [("other", "1"), (REPO, TAG)]


def test_status_needs_a_repository_and_tag_together_or_rollout_state(fleet, tmp_path):
    inv, _, _ = fleet
    with pytest.raises(UsageError, match="give the repository and the tag together"):
        status_rows(str(inv), None, None, REPO, None)
    with pytest.raises(UsageError, match="no rollout state in .*: give the repository and the tag"):
        status_rows(str(inv), None, str(tmp_path / "empty"), None, None)
    with pytest.raises(UsageError, match="invalid repository"):
        status_rows(str(inv), None, None, "Bad", TAG)
    with pytest.raises(UsageError, match="not in the inventory"):
        status_rows(str(inv), ["site-z"], None, REPO, TAG)


def test_regpatch_status_prints_the_table_and_exits_7_with_one_line(fleet, capsys):
    inv, old, new = fleet
    code = regpatch_main(["status", "--inventory", str(inv), "--only", "site-a,site-b,site-c",
                          "--repository", REPO, "--tag", TAG])
    out, err = capsys.readouterr()
    assert code == 7
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.startswith("site-")
            and not line.split()[0].endswith(":")}
    assert rows["site-a"][1:5] == ["current", new[7:19], "-", new[7:19]]
    assert rows["site-b"][1:5] == ["behind", old[7:19], "-", new[7:19]]
    assert rows["site-c"][1] == "unreadable" and "site-c: storage" in out and "site-c: API" in out
    errors = [line for line in err.splitlines() if line.startswith("regpatch: error:")]
    assert errors == ["regpatch: error: 2 of 3 registries are not current: site-b (servercore:ltsc2019 behind), "
                      "site-c (servercore:ltsc2019 unreadable)"]

    code = regpatch_main(["status", "--inventory", str(inv), "--only", "site-a", "--json"])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert code == 0, err
    assert [(r["name"], r["state"], r["rollout_digest"]) for r in doc] == [("site-a", CURRENT, new)]
    assert doc[0]["last_change"].split()[1] == "patch" and doc[0]["disk_free"] > 0

    code = regpatch_main(["status", "--inventory", str(inv), "--repository", REPO])
    assert code == 2 and "together" in capsys.readouterr().err
