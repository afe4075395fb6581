"""Names with control characters never forge output; command lines never show secrets."""

from __future__ import annotations

import io
import logging

import pytest
from hardening_helpers import descriptor, empty_storage, manifest_bytes, plan, staged_bundle

from regpatch.bundle.local import LocalFolderSource
from regpatch.bundle.open import load_bundle
from regpatch.errors import BlobMissing, RegpatchError, SizeMismatch
from regpatch.manifest import DOCKER_LAYER
from regpatch.sanitize import escape_controls, redact_command
from regpatch.storage.store import RegistryStore

FORGED = "x\nregpatch: error: all good\r\x1b[2K\u202eevil\u2028"


def test_escape_controls():
    assert escape_controls(FORGED) == "x\\nregpatch: error: all good\\r\\x1b[2K\\u202eevil\\u2028"
    assert escape_controls("plain ünïcode name-1.tar.gz") == "plain ünïcode name-1.tar.gz"
    assert escape_controls("\x00\x7f\x85\t") == "\\x00\\x7f\\x85\\t"


def test_every_error_is_one_escaped_line():
    for e in (RegpatchError(f"layer file {FORGED} is bad"), SizeMismatch(FORGED, 1, 2),
              BlobMissing("sha256:x", FORGED)):
        text = str(e)
        assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\u202e" not in text
        assert "x\\nregpatch: error: all good" in text


def test_a_bundle_file_name_with_a_newline_is_escaped_in_the_error(tmp_path):
    layer = b"the layer"
    name = "delta\nregpatch: error: patched OK.tar.gz"
    m = manifest_bytes([descriptor(layer, DOCKER_LAYER)])
    bundle = staged_bundle(tmp_path / "b", m, {name: layer + b"!"})  # one byte too many
    (bundle / f"{name}.digest").write_text(descriptor(layer, DOCKER_LAYER)["digest"])
    store = RegistryStore(empty_storage(tmp_path / "root"))
    with pytest.raises(SizeMismatch) as e:
        plan(bundle, store)
    assert "delta\\nregpatch: error: patched OK.tar.gz" in str(e.value)
    assert len(f"regpatch: error: {e.value}".splitlines()) == 1


def test_regpatch_log_records_are_escaped_for_every_handler(tmp_path, caplog):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # like Prefect's handlers: attached to the logger tree
    core = logging.getLogger("regpatch")
    core.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO):
            logging.getLogger("regpatch.bundle").warning("sidecar %s names no file", FORGED)
            logging.getLogger("regpatch.store").info(f"f-string {FORGED}")
            logging.getLogger("someone.else").warning("untouched %s", "a\nb")
    finally:
        core.removeHandler(handler)
    out = stream.getvalue()
    assert out.count("\n") == 2  # two records, one line each
    assert "sidecar x\\nregpatch: error: all good\\r\\x1b[2K\\u202eevil\\u2028 names no file" in out
    escaped = [r for r in caplog.records if r.name.startswith("regpatch")]
    assert all("\n" not in r.getMessage() for r in escaped) and len(escaped) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "someone.else"] == ["untouched a\nb"]


def test_a_bundle_log_line_with_a_hostile_name_is_escaped(tmp_path, caplog):
    layer = b"the layer"
    m = manifest_bytes([descriptor(layer, DOCKER_LAYER)])
    bundle = staged_bundle(tmp_path / "b", m, {"l.tar.gz": layer})
    (bundle / "orphan\nregpatch: error: forged.digest").write_text("sha256:" + "0" * 64)
    with caplog.at_level(logging.WARNING, logger="regpatch.bundle"):
        load_bundle(LocalFolderSource(bundle))
    assert "orphan\\nregpatch: error: forged.digest" in caplog.text
    assert not any(line.startswith("regpatch: error") for line in caplog.text.splitlines())


def test_plan_render_escapes_names(tmp_path):
    layer = b"the layer"
    m = manifest_bytes([descriptor(layer, DOCKER_LAYER)])
    bundle = staged_bundle(tmp_path / "b", m, {"l\n.tar.gz": layer})
    store = RegistryStore(empty_storage(tmp_path / "root"))
    text = plan(bundle, store).render(store.layout)
    assert "from l\\n.tar.gz" in text
    assert not any(line.startswith(".tar.gz") for line in text.splitlines())


# -- secrets -----------------------------------------------------------------------

SECRET = "hunter2-S3cret"


@pytest.mark.parametrize("command", [
    f"skopeo inspect --creds alice:{SECRET} docker://{{ref}}",
    f"skopeo inspect --creds=alice:{SECRET} docker://{{ref}}",
    f"skopeo copy --src-creds 'alice:{SECRET} x' docker://{{ref}} dir:/tmp/x",
    f"skopeo copy --dest-creds=\"alice:{SECRET}\" a b",
    f"podman login -u alice -p {SECRET} reg && podman pull {{ref}}",
    f"podman pull --password {SECRET} {{ref}}",
    f"crane pull --registry-token {SECRET} {{ref}} /tmp/x",
    f"curl -u alice:{SECRET} https://reg/v2/",
    f"curl https://alice:{SECRET}@reg/v2/",
    f"skopeo inspect docker://alice:{SECRET}@reg/app:1",
    f"REGISTRY_PASSWORD={SECRET} ./pull.sh {{ref}}",
    f"env MY_TOKEN='{SECRET}' AWS_SECRET_ACCESS_KEY={SECRET} pull {{ref}}",
    f"curl -H 'Authorization: Bearer {SECRET}' https://reg/v2/",
    f"curl -H \"authorization: Basic {SECRET}\" https://reg/v2/",
])
def test_redact_command_hides_the_secret(command):
    shown = redact_command(command)
    assert SECRET not in shown and "***" in shown
    assert "{ref}" in shown or "reg" in shown or " a b" in shown


def test_redact_command_keeps_what_is_not_secret():
    assert redact_command("skopeo inspect --tls-verify=false docker://{ref}") == \
        "skopeo inspect --tls-verify=false docker://{ref}"
    # the user name stays, as for -u and in URLs (one detector): only the password is a secret
    assert redact_command("skopeo inspect --creds alice:pw docker://reg/x") == \
        "skopeo inspect --creds alice:*** docker://reg/x"
    assert redact_command("curl https://alice:pw@reg/v2/") == "curl https://alice:***@reg/v2/"
    assert redact_command("docker login --password-stdin reg") == "docker login --password-stdin reg"
    assert redact_command(f"echo {SECRET}", (SECRET,)) == "echo ***"


def test_safe_text_keeps_the_lines_regpatch_composed(tmp_path, caplog):
    from regpatch.sanitize import SafeText

    layer = b"the layer"
    m = manifest_bytes([descriptor(layer, DOCKER_LAYER)])
    bundle = staged_bundle(tmp_path / "b", m, {"l\nregpatch: error: forged.tar.gz": layer})
    store = RegistryStore(empty_storage(tmp_path / "root"))
    rendered = plan(bundle, store).render(store.layout)
    log = logging.getLogger("regpatch.engine")
    with caplog.at_level(logging.INFO, logger="regpatch.engine"):
        log.info(SafeText("plan:\n%s"), rendered)           # vouched: lines kept, names escaped
        log.info("plan:\n%s", rendered)                     # not vouched: one line
        log.info(SafeText("plan:\n%s"), "x\nregpatch: error: forged")  # a plain str arg: escaped
    first, second, third = [r.getMessage() for r in caplog.records]
    assert first.count("\n") >= 3 and "l\\nregpatch: error: forged.tar.gz" in first
    assert not any(line.startswith("regpatch: error") for line in first.splitlines())
    assert "\n" not in second and "\n" not in third
