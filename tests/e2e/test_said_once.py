"""Issue 20, point 7, through the command line against a real registry (the unit layer has the
rest: tests/unit/test_smaller_items.py): a malformed current link is warned about once although
the plan, the same-registry probe and the flip all read it; the plan and the summary count the
same links; a foreign layer's URL the registry's config was not read for is said to be unchecked."""

from __future__ import annotations

from support.util import skopeo_inspect_digest

from regpatch.cli import main as regpatch_main

REPO, TAG = "servercore", "ltsc2019"


def test_what_the_operator_reads_is_said_once_and_counted_alike(capsys, registry, scenario, tmp_path):
    target = ["--storage", str(registry.root), "--registry-url", registry.url, "--repository", REPO, "--tag", TAG]
    current = registry.root / f"docker/registry/v2/repositories/{REPO}/_manifests/tags/{TAG}/current/link"
    current.write_bytes(current.read_bytes() + b"\r\n")
    code = regpatch_main(["patch", str(scenario["staged"]), *target, "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0 and "6 links to write" in out
    assert err.count("does not hold 'sha256:<hex>' exactly") == 1
    code = regpatch_main(["patch", str(scenario["staged"]), *target])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.count("does not hold 'sha256:<hex>' exactly") == 1  # before: twice
    assert "6 links written" in out  # before: 4, where the plan said 6
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["new"].manifest_digest)
