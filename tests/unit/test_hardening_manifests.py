"""Manifests, configs and layouts are read the way the registry's Go code reads them;
only foreign layers may be missing; the registry's URL policy is applied before any write."""

from __future__ import annotations

import json
import logging
import random

import pytest
from hardening_helpers import descriptor, digest_of, empty_storage, manifest_bytes, plan, staged_bundle
from support.util import tree_hash

from regpatch.bundle.local import LocalFolderSource
from regpatch.bundle.open import load_bundle
from regpatch.engine.plan import FOREIGN, url_refusals
from regpatch.errors import BlobMissing, ConfigError, ManifestError
from regpatch.manifest import (
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    MAX_JSON_DEPTH,
    OCI_INDEX,
    OCI_LAYER,
    OCI_ND_LAYER,
    json_depth,
    load_json,
    parse_manifest,
)
from regpatch.registry.url_policy import UrlPolicy, url_policy_from_config
from regpatch.storage.store import RegistryStore

LAYER = b"layer bytes"


@pytest.fixture
def store(tmp_path):
    return RegistryStore(empty_storage(tmp_path / "root"))


def _nested(levels: int) -> bytes:
    return b'{"schemaVersion":2,"x":' + b"[" * levels + b"]" * levels + b"}"


# -- depth ---------------------------------------------------------------------------

def test_depth_scan_is_exact_on_json_with_brackets_and_escapes_in_strings():
    def reference(o):
        if isinstance(o, list):
            return 1 + max([reference(x) for x in o] or [0])
        if isinstance(o, dict):
            return 1 + max([reference(x) for x in o.values()] or [0])
        return 0

    rnd = random.Random(7)

    def gen(n):
        r = rnd.random()
        if n <= 0 or r < 0.3:
            return rnd.choice(['a\\"[{', "\\", 'x\\\\"]', 1, None, "]}", "\u0022[", "ſ"])
        if r < 0.65:
            return [gen(n - 1) for _ in range(rnd.randint(0, 3))]
        return {rnd.choice(["k", "[", '\\"{', "}\\"]) + str(i): gen(n - 1) for i in range(rnd.randint(0, 3))}

    for _ in range(2000):
        doc = gen(rnd.randint(0, 9))
        raw = json.dumps(doc, ensure_ascii=rnd.random() < 0.5).encode()
        assert json_depth(raw) == reference(doc), raw


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH, 100_000, 2_000_000])
def test_deep_manifest_is_a_manifest_error_never_recursion(levels):
    raw = _nested(levels)  # one more level: the manifest object itself
    with pytest.raises(ManifestError, match="nested more than 64 levels") as e:
        parse_manifest(raw, what="m.json")
    assert e.value.exit_code == 3


def test_depth_limit_is_exact():
    load_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, what="x")
    with pytest.raises(ManifestError):
        load_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), what="x")
    # an unterminated string cannot hide brackets the parser would recurse into
    with pytest.raises(ManifestError):
        load_json(b"[" * 100_000 + b'"', what="x")


def test_deep_config_and_index_json_are_refused_in_bundles(tmp_path):
    deep_config = b'{"architecture":"amd64","os":"linux","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    m = manifest_bytes([descriptor(LAYER, DOCKER_LAYER)], config=deep_config)
    bundle = staged_bundle(tmp_path / "b", m, {"l.tar.gz": LAYER}, config=deep_config)
    with pytest.raises(ManifestError, match="config .*nested more than"):
        load_bundle(LocalFolderSource(bundle))

    layout = tmp_path / "oci"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_bytes(b'{"schemaVersion":2,"mediaType":"' + OCI_INDEX.encode()
                                        + b'","manifests":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(ManifestError, match="index.json: JSON nested"):
        load_bundle(LocalFolderSource(layout))


# -- duplicate and case-folded keys ---------------------------------------------------

def _manifest_text(**replace) -> bytes:
    text = manifest_bytes([descriptor(LAYER, DOCKER_LAYER)]).decode()
    for old, new in replace.items():
        text = text.replace(old, new, 1)
    return text.encode()


@pytest.mark.parametrize("raw,needle", [
    # both lists: Python would verify one, the registry serve the other
    (lambda: _manifest_text(**{'"layers": [': '"LAYERS": [], "layers": ['}), "'LAYERS' and 'layers'"),
    (lambda: _manifest_text(**{'"schemaVersion": 2': '"schemaVersion": 2, "schemaVersion": 2'}),
     "duplicate key 'schemaVersion'"),
    # Go folds the long s (U+017F) to 's' and the Kelvin sign (U+212A) to 'k'
    (lambda: _manifest_text(**{'"schemaVersion": 2': '"schemaVersion": 2, "\u017fchemaVersion": 1'}),
     "'schemaVersion' and 'ſchemaVersion'"),
    # one look-alike key alone: Go reads it as the field, Python would not
    (lambda: _manifest_text(**{'"size"': '"Size"'}), "key 'Size' is not 'size'"),
    (lambda: _manifest_text(**{'"mediaType": "application/vnd.docker.distribution':
                               '"MediaType": "application/vnd.docker.distribution'}),
     "key 'MediaType' is not 'mediaType'"),
    (lambda: _manifest_text(**{'"layers"': '"layer\u017f"'}), "key 'layerſ' is not 'layers'"),
    # every object level, names the key
    (lambda: _manifest_text(**{'"size"': '"annotations": {"a": "1", "A": "2"}, "size"'}),
     "'a' and 'A'"),
    (lambda: _manifest_text(**{'"size": ': '"size": 1e400, "x": '}), "non-negative integer, got inf"),
    (lambda: _manifest_text(**{'"schemaVersion": 2': '"schemaVersion": 2, "x": NaN'}), "NaN is not JSON"),
    (lambda: _manifest_text(**{'"size": 11': '"size": 9223372036854775808'}), "64-bit integer"),
    (lambda: _manifest_text(**{'"layers"': '"\\ud800"'}), "lone UTF-16 surrogate"),
])
def test_ambiguous_manifests_are_refused_naming_the_key(raw, needle):
    with pytest.raises(ManifestError) as e:
        parse_manifest(raw(), what="bundle/app.manifest.json")
    assert needle in str(e.value)
    assert str(e.value).startswith("bundle/app.manifest.json")


def test_ambiguous_config_and_oci_layout_are_refused(tmp_path):
    config = b'{"architecture":"amd64","os":"linux","OS":"windows"}'
    m = manifest_bytes([descriptor(LAYER, DOCKER_LAYER)], config=config)
    with pytest.raises(ManifestError, match="'os' and 'OS'"):
        load_bundle(LocalFolderSource(staged_bundle(tmp_path / "b", m, {"l": LAYER}, config=config)))
    layout = tmp_path / "oci"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0","imageLayoutVersion":"2.0"}')
    (layout / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')
    with pytest.raises(ManifestError, match="oci-layout: duplicate key 'imageLayoutVersion'"):
        load_bundle(LocalFolderSource(layout))


def test_a_plain_manifest_still_parses():
    m = parse_manifest(manifest_bytes([descriptor(LAYER, DOCKER_LAYER)]), what="m")
    assert m.layers[0].digest.hex == digest_of(LAYER)[7:]


# -- which blobs may be missing -------------------------------------------------------

def test_ordinary_layer_with_urls_but_no_bytes_is_missing(tmp_path, store):
    m = manifest_bytes([descriptor(b"elsewhere", DOCKER_LAYER, urls=["https://example.com/l"])])
    bundle = staged_bundle(tmp_path / "b", m, {})
    with pytest.raises(BlobMissing) as e:
        plan(bundle, store)
    assert "not a foreign / non-distributable layer" in str(e.value)
    assert e.value.exit_code == 3


@pytest.mark.parametrize("media_type,oci", [(DOCKER_FOREIGN_LAYER, False), (OCI_ND_LAYER, True)])
def test_foreign_layer_may_be_missing(tmp_path, store, media_type, oci):
    m = manifest_bytes([descriptor(b"foreign", media_type, urls=["https://example.com/l"]),
                        descriptor(LAYER, OCI_LAYER if oci else DOCKER_LAYER)], oci=oci)
    bundle = staged_bundle(tmp_path / "b", m, {"l.tar.gz": LAYER})
    p = plan(bundle, store)
    assert [b.action for b in p.blobs][1] == FOREIGN
    assert any("foreign layer" in w for w in p.warnings)


def test_foreign_looking_media_type_strings_are_not_foreign(tmp_path, store):
    m = manifest_bytes([descriptor(b"x", "application/x-foreign-nondistributable",
                                   urls=["https://example.com/l"])])
    with pytest.raises(BlobMissing):
        plan(staged_bundle(tmp_path / "b", m, {}), store)


# -- the registry's URL policy ---------------------------------------------------------

def _config(tmp_path, validation=None):
    doc = {"version": 0.1, "storage": {"filesystem": {"rootdirectory": str(tmp_path / "root")}},
           "http": {"addr": ":5000"}}
    if validation is not None:
        doc["validation"] = validation
    path = tmp_path / "config.yml"
    import yaml

    path.write_text(yaml.safe_dump(doc))
    return path


def test_policy_from_config_semantics(tmp_path):
    default = url_policy_from_config(_config(tmp_path))
    assert default.enabled and "allows no URL at all" in default.refusal("https://go.microsoft.com/x")
    # 'enabled: false' alone is deprecated and has no effect: 'disabled: true' turns checks off
    assert url_policy_from_config(_config(tmp_path, {"enabled": False})).enabled
    off = url_policy_from_config(_config(tmp_path, {"disabled": True}))
    assert off.refusal("https://anything.example/x") is None
    assert "scheme" in off.refusal("ftp://anything.example/x")  # always checked
    assert "#fragment" in off.refusal("https://a.example/x#frag")
    rules = url_policy_from_config(_config(tmp_path, {"manifests": {"urls": {
        "allow": [r"^https?://([^/]+\.)?microsoft\.com/"], "deny": [r"^https://bad\.microsoft\.com/"]}}}))
    assert rules.refusal("https://go.microsoft.com/fwlink/?linkid=1") is None
    assert "allow" in rules.refusal("https://example.com/x")
    assert "deny '^https://bad" in rules.refusal("https://bad.microsoft.com/x")
    deny_only = UrlPolicy("cfg", deny=("internal",))
    assert deny_only.refusal("https://public.example/x") is None
    assert deny_only.refusal("https://internal.example/x")
    for bad in ({"manifests": {"urls": {"allow": "^https://"}}}, {"disabled": "yes please"},
                {"manifests": {"urls": {"allow": ["(?<=x)y"]}}}):
        with pytest.raises(ConfigError, match="validation"):
            url_policy_from_config(_config(tmp_path, bad))


def _foreign_bundle(tmp_path, urls, *, oci=False, media_type=None):
    mt = media_type or (OCI_ND_LAYER if oci else DOCKER_FOREIGN_LAYER)
    m = manifest_bytes([descriptor(b"foreign", mt, urls=urls), descriptor(LAYER, OCI_LAYER if oci else DOCKER_LAYER)],
                       oci=oci)
    return staged_bundle(tmp_path / "b", m, {"l.tar.gz": LAYER})


def test_make_plan_refuses_urls_the_registry_would_refuse_before_reading_storage(tmp_path, store):
    policy = UrlPolicy("registry config c.yml", allow=(r"^https://mcr\.microsoft\.com/",))
    bundle = _foreign_bundle(tmp_path, ["https://mcr.microsoft.com/ok", "https://evil.example/l"])
    before = tree_hash(store.root)
    with pytest.raises(ManifestError) as e:
        plan(bundle, store, url_policy=policy)
    msg = str(e.value)
    assert "'https://evil.example/l'" in msg and "allow" in msg and "c.yml" in msg
    assert "layers[0]" in msg and e.value.exit_code == 3
    assert tree_hash(store.root) == before
    assert plan(bundle, store).blobs  # no policy given: no check


def test_ignore_url_policy_turns_the_refusal_into_a_warning(tmp_path, store, caplog):
    bundle = _foreign_bundle(tmp_path, ["https://evil.example/l"])
    with caplog.at_level(logging.WARNING, logger="regpatch.plan"):
        p = plan(bundle, store, url_policy=UrlPolicy("cfg"), ignore_url_policy=True)
    assert any("URL policy overridden" in w and "evil.example" in w for w in p.warnings)
    assert "URL policy overridden" in caplog.text


def test_which_descriptors_the_registry_checks(tmp_path):
    policy = UrlPolicy("cfg")  # allows nothing
    docker_foreign_no_url = parse_manifest(manifest_bytes([descriptor(b"f", DOCKER_FOREIGN_LAYER)]), what="m")
    assert "missing URL" in url_refusals([docker_foreign_no_url], UrlPolicy("cfg", enabled=False))[0]
    # an ordinary Docker layer's urls are not checked by the registry (nor here) ...
    docker_plain = parse_manifest(manifest_bytes([descriptor(b"f", DOCKER_LAYER, urls=["https://x/"])]),
                                  what="m")
    assert url_refusals([docker_plain], policy) == []
    # ... but an ordinary OCI layer's are
    oci_plain = parse_manifest(manifest_bytes([descriptor(b"f", OCI_LAYER, urls=["https://x/"])], oci=True),
                               what="m")
    assert len(url_refusals([oci_plain], policy)) == 1


@pytest.mark.parametrize("url,problem", [
    ("https://x.example/a\nb", "control character"), ("https://x.example:80a/", "port"),
    ("https://x y.example/", "host"), ("https://x.example/%zz", "%-escape"), ("ftp://x.example/", "scheme"),
    ("//x.example/a", "scheme"), ("https://x.example/a#f", "#fragment"),
])
def test_url_parse_problems(url, problem):
    assert problem in UrlPolicy("cfg", enabled=False).refusal(url)


@pytest.mark.parametrize("url", ["https://x.example/a", "HTTP://X.example/a?b=c", "https://x.example/a#",
                                 "https://[::1]:5000/a", "http:opaque", "https://u:p@x.example/"])
def test_urls_go_accepts(url):
    assert UrlPolicy("cfg", enabled=False).refusal(url) is None


def test_go_regexp_syntax_is_translated():
    p = UrlPolicy("cfg", allow=(r"(?i)^HTTPS://[[:alpha:]]+\.example/\Qa.b\E\z",))
    assert p.refusal("https://abc.example/a.b") is None
    assert p.refusal("https://abc.example/aXb") is not None
    assert p.refusal("https://ab1.example/a.b") is not None
