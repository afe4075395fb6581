"""The month's bundle found by itself (issue 25 item 2): the newest bundle of a drop folder by
the signed created time of its regpatch-bundle.json; refused when unsigned with trust keys,
too old, or already served by every registry (read in their storages); the command line's
``rollout --drop`` and ``deployments --check``."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from test_signing import imgs, keys, put_image  # noqa: F401  (module fixtures: the images, the keys)

from regpatch.cli import main
from regpatch.errors import UsageError
from regpatch.fleet.drop import choose_bundle
from regpatch.fleet.inventory import parse_inventory
from regpatch.shuttle.make import make_bundle
from regpatch.signing.descriptor import DESCRIPTOR, SIGNATURE
from regpatch.signing.keys import load_private_key, sign_bytes
from regpatch.storage.store import RegistryStore

REPO, TAG = "servercore", "ltsc2019"
NOW = datetime(2026, 12, 9, 3, 0, tzinfo=timezone.utc)


def dated(bundle: Path, created: datetime, key=None) -> Path:
    """The bundle with another created time, signed again with ``key`` (unsigned without)."""
    doc = json.loads((bundle / DESCRIPTOR).read_text())
    doc["created"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    raw = (json.dumps(doc, sort_keys=True, indent=1, separators=(",", ": "), ensure_ascii=True) + "\n").encode()
    (bundle / DESCRIPTOR).write_bytes(raw)
    (bundle / SIGNATURE).unlink(missing_ok=True)
    if key is not None:
        (bundle / SIGNATURE).write_bytes(sign_bytes(load_private_key(key), raw))
    return bundle


@pytest.fixture
def world(tmp_path, imgs, keys):  # noqa: F811
    """Two registries still on last month's image; a drop with November's and December's
    bundles (signed), and a folder that is no bundle."""
    sites = {}
    for name in ("site-a", "site-b"):
        (tmp_path / name).mkdir()
        sites[name] = RegistryStore(tmp_path / name)
        put_image(sites[name], REPO, TAG, imgs["old"])
    drop = tmp_path / "drop"
    drop.mkdir()
    make_bundle(str(imgs["layout"]), str(drop / "2026-12"), sign_key=str(keys["ed"][0]), repository=REPO, tag=TAG)
    dated(drop / "2026-12", NOW - timedelta(days=1), keys["ed"][0])
    shutil.copytree(drop / "2026-12", drop / "2026-11")
    dated(drop / "2026-11", NOW - timedelta(days=30), keys["ed"][0])
    (drop / "notes").mkdir()
    (drop / "notes" / "README.txt").write_text("not a bundle")
    inventory = {"registries": [{"name": n, "storage": str(s.root), "trust_keys": [str(keys["ed"][1])]}
                                for n, s in sites.items()]}
    return dict(sites=sites, drop=drop, inventory=inventory, tmp=tmp_path)


def choose(world, **kw):
    entries = parse_inventory(world["inventory"]).select(None)
    return choose_bundle(str(world["drop"]), repository=REPO, tag=TAG, entries=entries, now=NOW, **kw)


def test_the_newest_signed_bundle_is_taken(world, imgs):  # noqa: F811
    choice = choose(world)
    assert choice.bundle.location == str(world["drop"] / "2026-12")
    assert choice.bundle.image == str(imgs["new"].manifest_digest) and choice.bundle.key
    assert choice.served == {"site-a": False, "site-b": False}
    assert "the newest of 2 bundle(s)" in choice.summary() and "0 of 2 registries already serve" in choice.summary()


def test_an_unsigned_newest_bundle_is_refused_with_trust_keys(world):
    dated(world["drop"] / "2026-12", NOW - timedelta(hours=1))  # re-dated, its signature gone
    with pytest.raises(UsageError, match="2026-12 .*unsigned.* is not signed by a trust key of the inventory"):
        choose(world)
    for e in world["inventory"]["registries"]:
        e.pop("trust_keys")
    assert choose(world).bundle.location.endswith("2026-12")  # no trust keys: dates are taken as written


def test_a_newest_bundle_older_than_the_maximum_age_is_refused(world):
    shutil.rmtree(world["drop"] / "2026-12")
    with pytest.raises(UsageError, match="2026-11 .* is 30 days old, more than the maximum age of 21 days"):
        choose(world, max_age_days=21)
    assert choose(world, max_age_days=35).bundle.location.endswith("2026-11")


def test_a_bundle_every_registry_already_serves_is_refused_one_partly_served_goes_on(world, imgs):  # noqa: F811
    put_image(world["sites"]["site-a"], REPO, TAG, imgs["new"])
    assert choose(world).served == {"site-a": True, "site-b": False}  # a re-run of a partly failed rollout
    put_image(world["sites"]["site-b"], REPO, TAG, imgs["new"])
    with pytest.raises(UsageError, match="every registry of the rollout .site-a, site-b. already serves"):
        choose(world)
    world["inventory"]["registries"].append({"name": "remote", "storage": "/srv/not-on-this-host",
                                             "work_pool": "pool-r"})
    assert choose(world).served["remote"] is None  # its storage is on its own host: not known to serve it


def test_an_empty_drop_says_what_it_found(world):
    for d in ("2026-11", "2026-12"):
        shutil.rmtree(world["drop"] / d)
    with pytest.raises(UsageError, match="no bundle to roll out in the drop location .*: it is empty"):
        choose(world)
    with pytest.raises(UsageError, match="is not a folder on this host"):
        choose_bundle(str(world["tmp"] / "nowhere"), repository=REPO, tag=TAG, entries=[], now=NOW)


def test_the_command_line_checks_and_rolls_out_from_the_drop(world, capsys, monkeypatch, imgs):  # noqa: F811
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(world["tmp"] / "no-prefect-here"))
    for d in ("2026-11", "2026-12"):  # dated now: the command line's clock
        dated(world["drop"] / d, datetime.now(timezone.utc) - timedelta(days=1 if d == "2026-12" else 30),
              Path(world["inventory"]["registries"][0]["trust_keys"][0]).with_suffix(".key"))
    inv = world["tmp"] / "inventory.yml"
    inv.write_text(yaml.safe_dump(world["inventory"]))
    check = ["deployments", "--inventory", str(inv), "--check", "--drop", str(world["drop"]), "--repository", REPO,
             "--tag", TAG]
    assert main(check) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"drop location {world['drop']}: takes {world['drop'] / '2026-12'} (created " in out
    assert main(["rollout", str(world["drop"] / "2026-12"), "--drop", str(world["drop"]), "--inventory", str(inv),
                 "--repository", REPO, "--tag", TAG]) == 2
    assert "give either BUNDLE or --drop" in capsys.readouterr().err
    assert main(["rollout", "--drop", str(world["drop"]), "--inventory", str(inv), "--repository", REPO,
                 "--tag", TAG, "--reason", "CHG-7"]) == 0, capsys.readouterr().err
    for store in world["sites"].values():
        assert str(store.current_tag(*_ref())) == str(imgs["new"].manifest_digest)
    capsys.readouterr()
    assert main(check) == 2  # the next scheduled run would refuse: every registry serves it
    assert "already serves" in capsys.readouterr().err


def _ref():
    from regpatch.reference import Repository, Tag

    return Repository.parse(REPO), Tag.parse(TAG)
