"""What regpatch reads from a registry's config.yml, how a target registry is resolved
and checked, and the parameter models every caller goes through (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regpatch.digest import Digest
from regpatch.errors import ConfigError, InvalidReference, UsageError
from regpatch.params import RegistryParams, S3Params, VerifyParams, has_inline_credentials, refuse_inline_credentials
from regpatch.engine.requests import patch_request, rollback_request
from regpatch.reference import Repository, Tag
from regpatch.registry.config import registry_url_from_config, storage_root_from_config
from regpatch.registry.target import RegistryTarget


def yml(tmp_path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- config.yml

@pytest.mark.parametrize("http, url", [
    ("addr: :5000", "http://127.0.0.1:5000"),
    ("addr: 0.0.0.0:5001", "http://127.0.0.1:5001"),
    ("addr: '[::]:5002'", "http://127.0.0.1:5002"),
    ("addr: reg.local:443", "http://reg.local:443"),
    ("addr: :5443\n  prefix: /registry/\n  tls:\n    certificate: /etc/r.crt\n    key: /etc/r.key",
     "https://127.0.0.1:5443/registry"),
    ("addr: :443\n  tls:\n    letsencrypt:\n      email: ops@example.com", "https://127.0.0.1:443"),
    ("addr: :5000\n  net: tcp\n  prefix: /\n  tls: {}", "http://127.0.0.1:5000"),
])
def test_the_url_a_local_client_reaches_the_registry_at(tmp_path, http, url):
    cfg = yml(tmp_path, f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /srv/r\nhttp:\n  {http}\n")
    assert registry_url_from_config(cfg) == url
    assert storage_root_from_config(cfg) == Path("/srv/r")


@pytest.mark.parametrize("text, func, needle", [
    ("version: 0.1\n", storage_root_from_config, "key storage is missing"),
    ("storage: 5\n", storage_root_from_config, "key storage must be a mapping"),
    ("storage:\n  s3:\n    bucket: b\n  cache: {}\n", storage_root_from_config,
     "key storage.filesystem is missing (it uses s3); regpatch patches only the filesystem storage driver"),
    ("storage:\n  delete: {enabled: true}\n", storage_root_from_config, "key storage.filesystem is missing;"),
    ("storage:\n  filesystem: 5\n", storage_root_from_config, "key storage.filesystem must be a mapping"),
    ("storage:\n  filesystem: {}\n", storage_root_from_config, "key storage.filesystem.rootdirectory is missing"),
    ("storage:\n  filesystem:\n    rootdirectory: '  '\n", storage_root_from_config, "must be a non-empty path"),
    ("storage:\n  filesystem:\n    rootdirectory: data\n", storage_root_from_config, "is the relative path 'data'"),
    ("version: 0.1\n", registry_url_from_config, "key http is missing"),
    ("http: 5\n", registry_url_from_config, "key http must be a mapping"),
    ("http:\n  net: unix\n  addr: /run/r.sock\n", registry_url_from_config, "key http.net is 'unix'"),
    ("http:\n  secret: x\n", registry_url_from_config, "key http.addr is missing"),
    ("http:\n  addr: 5000\n", registry_url_from_config, "key http.addr must be a string, got 5000"),
    ("http:\n  addr: nohostport\n", registry_url_from_config, "key http.addr must be 'host:port' or ':port'"),
    ("http:\n  addr: ':http'\n", registry_url_from_config, "must be 'host:port'"),
    ("http:\n  addr: ':70000'\n", registry_url_from_config, "must be 'host:port'"),
    ("http:\n  addr: '[::1:5000'\n", registry_url_from_config, "must be 'host:port'"),
    ("http:\n  addr: :5000\n  tls: yes\n", registry_url_from_config, "key http.tls must be a mapping"),
    ("http:\n  addr: :5000\n  prefix: [a]\n", registry_url_from_config, "key http.prefix must be a string"),
    ("http: [1, 2\n", registry_url_from_config, "is not valid YAML at line 2 column 1"),
    ("- a list\n", registry_url_from_config, "must be a YAML mapping at the top level"),
])
def test_config_errors_name_the_file_and_the_key(tmp_path, text, func, needle):
    cfg = yml(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        func(cfg)
    assert str(cfg) in str(e.value) and needle in str(e.value)
    assert e.value.exit_code == 2


def test_unreadable_configs_say_why(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; pass the config.yml the registry is started with"):
        storage_root_from_config(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match="cannot be read: Is a directory"):
        registry_url_from_config(tmp_path)
    (tmp_path / "utf16.yml").write_text("version: 0.1\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="cannot be read: UnicodeDecodeError"):
        registry_url_from_config(tmp_path / "utf16.yml")


# --------------------------------------------------------------------------- targets

def test_a_target_comes_from_the_options_or_the_registry_config(tmp_path):
    cfg = yml(tmp_path, "storage:\n  filesystem:\n    rootdirectory: /srv/r\nhttp:\n  addr: :5000\n")
    t = RegistryTarget.resolve(config=str(cfg))
    assert (t.storage, t.url, t.config_path, t.host) == ("/srv/r", "http://127.0.0.1:5000", cfg, "127.0.0.1:5000")
    assert t.describe() == "/srv/r (http://127.0.0.1:5000)"
    # the options win over the config
    t = RegistryTarget.resolve(storage="/other", url="reg.local:5000/", config=str(cfg))
    assert (t.storage, t.url) == ("/other", "https://reg.local:5000")
    assert RegistryTarget.resolve(storage="/s", url="reg.local:5000", insecure=True).url == "http://reg.local:5000"
    bare = RegistryTarget.resolve(storage="/s")
    assert (bare.url, bare.config_path, bare.describe()) == (None, None, "/s")
    with pytest.raises(UsageError, match="no registry URL: pass --registry-url"):
        bare.host
    with pytest.raises(UsageError, match="the registry storage is unknown: pass --storage "):
        RegistryTarget.resolve()
    assert RegistryTarget.resolve(storage="/s", insecure=True).tls_verify() is False
    assert RegistryTarget.resolve(storage="/s", ca_file="/ca.pem").tls_verify() == "/ca.pem"
    assert RegistryTarget.resolve(storage="/s").tls_verify() is True


def test_a_target_is_checked_without_the_network(tmp_path):
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {"127.0.0.1:5000": {"username": "u", "password": "p"}}}))
    url = "http://127.0.0.1:5000"
    RegistryTarget.resolve(storage="/s", url=url, auth_file=str(auth)).check()
    RegistryTarget.resolve(storage="/s").check()
    with pytest.raises(UsageError, match="--registry-ca: CA file .*missing.pem does not exist or is not a file"):
        RegistryTarget.resolve(storage="/s", url=url, ca_file=str(tmp_path / "missing.pem")).check()
    with pytest.raises(UsageError, match="--registry-auth-file: auth file .* does not exist"):
        RegistryTarget.resolve(storage="/s", url=url, auth_file=str(tmp_path)).check()
    with pytest.raises(UsageError, match="need the registry's URL"):
        RegistryTarget.resolve(storage="/s", auth_file=str(auth)).check()
    auth.write_text('{"auths": ')
    with pytest.raises(UsageError, match="is not valid JSON"):
        RegistryTarget.resolve(storage="/s", url=url, auth_file=str(auth)).check()


# --------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("text", [
    "skopeo inspect --creds bob:hunter2 docker://{ref}",
    "skopeo inspect --src-creds=bob:hunter2 docker://{ref}",
    "docker login -p hunter2 reg && docker pull {ref}",
    "REGISTRY_PASSWORD=hunter2 pull {ref}",
    "http://bob:hunter2@reg.local:5000",
])
def test_inline_credentials_are_recognised(text):
    assert has_inline_credentials(text)
    with pytest.raises(UsageError, match="carries a credential inline") as e:
        refuse_inline_credentials("--verify-command", text)
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize("text", [
    "skopeo inspect --creds $CREDS docker://{ref}",
    "skopeo inspect --creds \"$REG_USER:$REG_PASS\" docker://{ref}",
    "REGISTRY_PASSWORD=$SECRET pull {ref}",
    "http://reg.local:5000",
    "skopeo inspect --tls-verify=false docker://{ref}",
])
def test_variables_are_not_credentials(text):
    assert not has_inline_credentials(text)
    refuse_inline_credentials("--verify-command", text)
    refuse_inline_credentials("--verify-command", None)


def test_parameter_models_build_checked_requests(tmp_path):
    root = tmp_path / "storage"
    (root / "docker/registry/v2").mkdir(parents=True)
    registry = RegistryParams(storage=str(root), lock_timeout=5)
    request = patch_request(bundle="/b", repository="servercore", tag="ltsc2019", registry=registry,
                            verify=VerifyParams(always=True), dry_run=True)
    assert (request.repository.name, request.tag.name, request.always_verify, request.lock_timeout) == \
        ("servercore", "ltsc2019", True, 5)
    to = str(Digest.of_bytes(b"x"))
    rb = rollback_request(repository="servercore", tag="ltsc2019", registry=registry, to=to)
    assert str(rb.to) == to and rb.target.storage == str(root)
    with pytest.raises(UsageError, match="registry_url carries a credential inline"):
        RegistryParams(storage=str(root), registry_url="http://u:pw@127.0.0.1:5000").target()
    with pytest.raises(UsageError, match="invalid digest"):
        rollback_request(repository="servercore", tag="t", registry=registry, to="sha256:short")


def test_s3_parameters_become_checked_options(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    opts = S3Params(endpoint_url="http://127.0.0.1:9000", region=None, cache_dir="", retries=2, wait_initial=0.1,
                    wait_max=1, concurrency=2, part_size_mib=16).options(region="eu-west-1")
    assert (opts.endpoint_url, opts.region, opts.cache_dir, opts.retries, opts.part_size, opts.concurrency) == \
        ("http://127.0.0.1:9000", "eu-west-1", None, 2, 16 << 20, 2)
    with pytest.raises(UsageError, match="s3 endpoint_url carries a credential inline"):
        S3Params(endpoint_url="http://key:secret@127.0.0.1:9000").options()


@pytest.mark.parametrize("kind, value", [
    ("repository", "Servercore"), ("repository", "a/_layers"), ("repository", "a//b"), ("repository", "../etc"),
    ("repository", "a" * 256), ("repository", ""), ("repository", None), ("repository", "windows/servercore\n"),
    ("tag", "-latest"), ("tag", "a" * 129), ("tag", "ltsc2019/../x"), ("tag", None), ("tag", "ltsc 2019"),
])
def test_names_that_would_leave_their_folder_are_refused_whole(kind, value):
    with pytest.raises(InvalidReference, match=f"invalid {kind}"):
        (Repository if kind == "repository" else Tag).parse(value)


def test_names_the_registry_accepts_are_kept_as_given():
    assert Repository.parse("windows/servercore").parts == ("windows", "servercore")
    assert str(Repository.parse("a.b_c__d-e--f/g")) == "a.b_c__d-e--f/g"
    assert str(Tag.parse("_10.0.17763.1-ltsc2019")) == "_10.0.17763.1-ltsc2019"
