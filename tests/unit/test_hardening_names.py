"""Names and values are validated as whole strings; state file names stay bounded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hardening_helpers import REPO, TAG, empty_storage

from regpatch.digest import Digest
from regpatch.errors import ConfigError, InvalidReference, MalformedLink, StorageError
from regpatch.fleet.inventory import InventoryError, parse_inventory
from regpatch.reference import Repository, Tag
from regpatch.registry.config import registry_url_from_config, storage_root_from_config
from regpatch.storage.journal import Journal
from regpatch.storage.layout import Layout, state_name
from regpatch.storage.lock import repository_lock
from regpatch.storage.store import RegistryStore

HEX = "0123456789abcdef" * 4
CYRILLIC_O = "\u043e"  # looks like 'o'

# a valid value followed by something a regex '$' lets through, or a look-alike
SUFFIXES = ["\n", "\r\n", "\x00", " ", "\u200b", "\u2028"]


@pytest.mark.parametrize("suffix", SUFFIXES, ids=repr)
def test_repository_tag_digest_refuse_anything_after_a_valid_value(suffix):
    with pytest.raises(InvalidReference):
        Repository.parse("servercore" + suffix)
    with pytest.raises(InvalidReference):
        Repository.parse("windows/servercore" + suffix + "/x")
    with pytest.raises(InvalidReference):
        Tag.parse("ltsc2019" + suffix)
    with pytest.raises(InvalidReference):
        Digest.parse(f"sha256:{HEX}{suffix}")


@pytest.mark.parametrize("value", [f"serverc{CYRILLIC_O}re", "ｓervercore", "servercorе", "ＬTSC"])
def test_unicode_look_alikes_are_refused(value):
    with pytest.raises(InvalidReference):
        Repository.parse(value)
    with pytest.raises(InvalidReference):
        Tag.parse(value)


def test_the_normalised_length_is_dockers():
    from regpatch.reference import normalized_length

    assert normalized_length("a" * 237) == 255 and normalized_length("a" * 238) == 256
    assert normalized_length("b/" + "a" * 243) == 255 and normalized_length("b/" + "a" * 244) == 256
    assert normalized_length("x.y/" + "a" * 251) == 255 == normalized_length("localhost/" + "a" * 245)


def test_valid_names_at_their_limits():
    assert Repository.parse("a" * 255).name == "a" * 255
    with pytest.raises(InvalidReference):
        Repository.parse("a" * 256)
    assert Tag.parse("T" * 128).name == "T" * 128
    with pytest.raises(InvalidReference):
        Tag.parse("T" * 129)
    assert Digest.parse(f"sha256:{HEX}").hex == HEX


def test_a_digest_cannot_hold_anything_but_64_hex():
    for bad in (HEX + "\n", HEX.upper(), HEX[:-1], "../" + HEX[3:]):
        with pytest.raises(InvalidReference):
            Digest("sha256", bad)
    with pytest.raises(InvalidReference):
        Digest("sha512", HEX)


def test_invalid_reference_message_is_one_line():
    with pytest.raises(InvalidReference) as e:
        Tag.parse("v1\nregpatch: error: forged")
    assert "\n" not in str(e.value) and "forged" in str(e.value)


# -- inventory and registry config ------------------------------------------------------

def _inventory(**entry):
    return {"registries": [{"name": "site-a", "storage": "/srv/registry", **entry}]}


@pytest.mark.parametrize("field,value", [
    ("name", "site-a\n"), ("url", "http://127.0.0.1:5000\n"), ("url", "http://127.0.0.1:5000\x00"),
    ("storage", "/srv/registry\n"), ("storage", "/srv/registry "), ("registry_config", "/etc/c.yml\r"),
    ("group", "canary\x1b[31m"), ("work_pool", "pool\n"), ("verify_command", "skopeo {ref}\x00"),
])
def test_inventory_refuses_values_with_trailing_control_characters(field, value):
    with pytest.raises(InventoryError) as e:
        parse_inventory(_inventory(**{field: value}) if field != "name" else
                        {"registries": [{"name": value, "storage": "/srv/registry"}]})
    assert field in str(e.value)
    assert "\n" not in str(e.value)


def test_inventory_accepts_the_same_values_without_them():
    inv = parse_inventory(_inventory(url="http://127.0.0.1:5000", group="canary", work_pool="pool",
                                     verify_command="skopeo inspect docker://{ref}"))
    assert inv.registries[0].url == "http://127.0.0.1:5000"


def test_registry_config_values_are_used_whole(tmp_path):
    cfg = tmp_path / "config.yml"
    cfg.write_text('storage:\n  filesystem:\n    rootdirectory: "/var/lib/registry\\n"\n'
                   'http:\n  addr: ":5000"\n')
    with pytest.raises(ConfigError, match="rootdirectory"):
        storage_root_from_config(cfg)
    cfg.write_text('storage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n'
                   'http:\n  addr: ":5000\\n"\n')
    assert storage_root_from_config(cfg).as_posix() == "/var/lib/registry"
    with pytest.raises(ConfigError, match="http.addr"):
        registry_url_from_config(cfg)
    cfg.write_text("http:\n  addr: ' reg.local:443 '\n")  # Go cannot listen on it: not trimmed
    with pytest.raises(ConfigError, match="http.addr"):
        registry_url_from_config(cfg)
    cfg.write_text('http:\n  addr: ":５０００"\n')  # full-width digits: str.isdigit() says yes
    with pytest.raises(ConfigError, match="http.addr"):
        registry_url_from_config(cfg)


# -- link files ---------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    f"sha256:{HEX}\n".encode(), f"sha256:{HEX}\r\n".encode(), f" sha256:{HEX}".encode(),
    b"\xef\xbb\xbf" + f"sha256:{HEX}".encode(), f"sha256:{HEX}".encode("utf-16"),
    f"sha256:{HEX.upper()}".encode(), f"sha256:{HEX}\x00".encode(), f"sha512:{HEX}{HEX}".encode(),
    b"sha256:" + HEX.encode() + b"/../../../../etc/passwd", b"x" * 5000, b"",
], ids=lambda b: repr(b[:24]))
def test_link_files_are_read_strictly(tmp_path, content):
    store = RegistryStore(empty_storage(tmp_path / "root"))
    link = store.layout.tag_current_link(REPO, TAG)
    link.parent.mkdir(parents=True)
    link.write_bytes(content)
    with pytest.raises(MalformedLink) as e:
        store.read_link(link)
    assert e.value.exit_code == 4
    assert "\n" not in str(e.value) and "\r" not in str(e.value)
    assert "_manifests/tags/v1/current/link" in str(e.value)


def test_exact_link_is_read_and_its_digest_rebuilt(tmp_path):
    store = RegistryStore(empty_storage(tmp_path / "root"))
    link = store.layout.tag_current_link(REPO, TAG)
    link.parent.mkdir(parents=True)
    link.write_bytes(f"sha256:{HEX}".encode())
    assert store.read_link(link) == Digest("sha256", HEX)
    assert store.read_link(link.with_name("absent")) is None


def test_malformed_current_link_is_replaced_but_os_errors_are_not_swallowed(tmp_path, caplog):
    store = RegistryStore(empty_storage(tmp_path / "root"))
    link = store.layout.tag_current_link(REPO, TAG)
    link.parent.mkdir(parents=True)
    link.write_bytes(f"sha256:{HEX}\n".encode())
    with caplog.at_level(logging.WARNING, logger="regpatch.store"):
        assert store.current_tag(REPO, TAG) is None
    assert "regpatch replaces it when it moves the tag" in caplog.text
    link.unlink()
    link.mkdir()  # a folder where the link must be: an error of the storage, not a bad link
    with pytest.raises(StorageError) as e:
        store.current_tag(REPO, TAG)
    assert not isinstance(e.value, MalformedLink) and "EISDIR" in str(e.value)


# -- state file names -------------------------------------------------------------

def test_state_names_are_bounded_for_the_longest_valid_names(tmp_path):
    store = RegistryStore(empty_storage(tmp_path / "root"))
    for repo, tag in ((Repository.parse("a" * 255), Tag.parse("t" * 128)),
                      (Repository.parse("/".join(["b" * 49] * 5)), Tag.parse("T" * 128)),
                      (Repository.parse("c" * 200), Tag.parse("x" * 128))):
        Journal(repo.name, tag.name, f"sha256:{HEX}", None, "test").save(store)
        with repository_lock(store.layout, repo, timeout=1):
            pass
        for path in (store.layout.journal(repo, tag), store.layout.lock(repo)):
            assert path.is_file()
            assert len(path.name.encode()) < 200
        assert Journal.load(store.layout.journal(repo, tag)).repository == repo.name


def test_state_names_are_unique_and_readable():
    names = set()
    repos = ["a" * 64 + suffix for suffix in ("", "b", "c", "/b", "-b")] + ["app", "team/app", "team-app"]
    tags = ["v1", "V1", "x" * 32 + "1", "x" * 32 + "2"]
    for r in repos:
        names.add(state_name(Repository.parse(r)))
        for t in tags:
            names.add(state_name(Repository.parse(r), Tag.parse(t)))
    assert len(names) == len(repos) * (len(tags) + 1)
    # unique even on a case-insensitive filesystem
    assert len({n.lower() for n in names}) == len(names)
    assert state_name(Repository.parse("team/app"), Tag.parse("v1")).startswith("team+app@v1~")
    layout = Layout(Path("/r"))
    assert layout.lock(Repository.parse("team/app")).parent.name == "locks"


@pytest.mark.parametrize("url", ["http://127.0.0.1:5000\n", "http://127.0.0.1:5000\r\n", "http://127.0.0.1:5000\x00"],
                         ids=repr)
def test_registry_url_with_a_control_character_is_refused_before_any_io(url):
    from regpatch.errors import UsageError
    from regpatch.registry.target import RegistryTarget

    with pytest.raises(UsageError, match="control character"):
        RegistryTarget.resolve(storage="/nonexistent", url=url)
    assert RegistryTarget.resolve(storage="/x", url="http://127.0.0.1:5000").url == "http://127.0.0.1:5000"
