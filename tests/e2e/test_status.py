"""regpatch status over three real registries in three states: current (patched by the
rollout), behind (left out of it) and unreadable (its storage and API are not there)."""

from __future__ import annotations

import json

import pytest
import yaml

from regpatch.cli import main as regpatch_main
from regpatch.demo.images import push_with_skopeo, scenario_servercore
from regpatch.demo.loopback import LocalRegistry, free_port

REPO, TAG = "servercore", "ltsc2019"


@pytest.fixture
def sites(tmp_path):
    s = scenario_servercore(tmp_path / "sample", base_size=64 << 10, delta_size=16 << 10)
    regs = {}
    try:
        for name in ("site-a", "site-b"):
            regs[name] = LocalRegistry(tmp_path / name).start()
            push_with_skopeo(s["old_layout"], s["ref"], regs[name].host, REPO, TAG)
        yield s, regs
    finally:
        for reg in regs.values():
            reg.stop()


def test_status_names_the_current_the_behind_and_the_unreadable(tmp_path, sites, capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    s, regs = sites
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"registries": [
        {"name": "site-a", "storage": str(regs["site-a"].root), "url": regs["site-a"].url},
        {"name": "site-b", "storage": str(regs["site-b"].root), "url": regs["site-b"].url},
        {"name": "site-c", "storage": str(tmp_path / "gone"), "url": f"http://127.0.0.1:{free_port()}"},
    ]}))
    code = regpatch_main(["rollout", str(s["staged"]), "--inventory", str(inv), "--repository", REPO, "--tag", TAG,
                          "--only", "site-a", "--local"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    new, old = str(s["new"].manifest_digest), str(s["old"].manifest_digest)

    code = regpatch_main(["status", "--inventory", str(inv), "--repository", REPO, "--tag", TAG])
    out, err = capsys.readouterr()
    assert code == 7
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.startswith("site-")}
    assert rows["site-a"][1:5] == ["current", new[7:19], new[7:19], new[7:19]]
    assert rows["site-b"][1:5] == ["behind", old[7:19], old[7:19], new[7:19]]
    assert rows["site-c"][1] == "unreadable"
    assert "site-c: storage" in out and "site-c: API" in out
    assert err.strip().endswith("2 of 3 registries are not current: site-b (servercore:ltsc2019 behind), "
                                "site-c (servercore:ltsc2019 unreadable)")

    code = regpatch_main(["status", "--inventory", str(inv), "--only", "site-a", "--json"])  # tags from the rollouts
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["state"] for r in doc] == ["current"] and doc[0]["verified"] is True
    assert doc[0]["last_change"].split()[1] == "patch" and doc[0]["disk_free"] > 0


def test_the_fleet_status_flow_publishes_the_table_and_fails_on_drift(tmp_path, sites, prefect_api, monkeypatch):
    """The same rows as the markdown artifact of the fleet-status flow (digests compact in the
    table, in full under it); the run fails (an automation's
    trigger) while a registry is behind or unreadable, and passes once every registry is current."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from regpatch.errors import FleetDrift
    from regpatch.params import RolloutParams
    from regpatch_flows.fleet_status import fleet_status

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    s, regs = sites
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"registries": [
        {"name": name, "storage": str(reg.root), "url": reg.url} for name, reg in regs.items()]}))
    assert regpatch_main(["rollout", str(s["staged"]), "--inventory", str(inv), "--repository", REPO, "--tag", TAG,
                          "--only", "site-a", "--local"]) == 0

    def table() -> tuple[list[dict], str]:
        with get_client(sync_client=True) as client:
            (art,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fleet-status"])),
                                           sort=ArtifactSort.CREATED_DESC, limit=1)
        text = str(art.data)
        rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in text.splitlines()
                if line.startswith("| ") and not line.startswith("| registry |")]
        return [{"registry": r[0], "state": r[1].strip("*"), "storage": r[2].strip("`")} for r in rows], text

    with pytest.raises(FleetDrift, match="1 of 2 registries are not current: site-b"):
        fleet_status(rollout=RolloutParams(inventory=str(inv)), repository=REPO, tag=TAG)
    assert [(r["registry"], r["state"]) for r in table()[0]] == [("site-a", "current"), ("site-b", "behind")]
    assert regpatch_main(["rollout", str(s["staged"]), "--inventory", str(inv), "--repository", REPO, "--tag", TAG,
                          "--local"]) == 0
    rows = fleet_status(rollout=RolloutParams(inventory=str(inv)))  # the tags the rollouts wrote state for
    assert [r["state"] for r in rows] == ["current", "current"]
    new = str(s["new"].manifest_digest)
    rows, text = table()
    assert [(r["registry"], r["state"], r["storage"]) for r in rows] == [
        ("site-a", "current", new[7:19] + "…"), ("site-b", "current", new[7:19] + "…")]
    assert f"- `{new[7:19]}…` = `{new}`" in text.splitlines()  # the full digest, once, under the table
