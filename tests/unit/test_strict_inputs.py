"""Inputs read strictly: YAML with a key given twice, one storage under two paths."""

from __future__ import annotations

import os

import pytest

from regpatch.errors import ConfigError
from regpatch.fleet.inventory import InventoryError, load_inventory
from regpatch.registry.config import storage_root_from_config
from regpatch.yamldoc import DuplicateKey, load_yaml


def test_a_second_trust_keys_cannot_switch_the_signature_check_off(tmp_path):
    inv = tmp_path / "inventory.yml"
    inv.write_text("registries:\n"
                   "  - name: site-a\n"
                   "    storage: /srv/a\n"
                   "    trust_keys: [/etc/regpatch/site.pub]\n"
                   "    trust_keys: []\n")
    with pytest.raises(InventoryError) as e:
        load_inventory(inv)
    assert "registries[0] ('site-a'): key 'trust_keys' is given twice (lines 4 and 5)" in str(e.value)


def test_a_second_registries_list_is_refused_not_dropped(tmp_path):
    inv = tmp_path / "inventory.yml"
    inv.write_text("registries:\n  - {name: a, storage: /a}\nregistries:\n  - {name: b, storage: /b}\n")
    with pytest.raises(InventoryError, match="the top level: key 'registries' is given twice \\(lines 1 and 3\\)"):
        load_inventory(inv)


def test_a_registry_config_with_a_key_twice_is_refused(tmp_path):
    cfg = tmp_path / "config.yml"
    cfg.write_text("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /a\n    rootdirectory: /b\n")
    with pytest.raises(ConfigError, match="storage.filesystem: key 'rootdirectory' is given twice"):
        storage_root_from_config(cfg)


def test_aliases_are_checked_once_and_plain_documents_load():
    bomb = "a: &a [x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    assert len(load_yaml(bomb)["i"]) == 2  # shared, not expanded, and walked once
    with pytest.raises(DuplicateKey):
        load_yaml("x: {k: 1, k: 2}\n")


def test_one_storage_under_two_paths_is_one_registry(tmp_path):
    real = tmp_path / "data"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    for other in (str(link), "/" + str(real), str(real) + "/./"):
        inv = tmp_path / "inventory.yml"
        inv.write_text(f"registries:\n  - {{name: a, storage: '{real}'}}\n  - {{name: b, storage: '{other}'}}\n")
        with pytest.raises(InventoryError, match="is the storage of registries\\[0\\] \\('a'\\) too"):
            load_inventory(inv)
    assert os.path.samefile(link, real)
