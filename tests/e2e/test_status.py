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
