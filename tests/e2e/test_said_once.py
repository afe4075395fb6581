"""Issue 20, point 7, through the command line against a real registry (the unit layer has the
rest: tests/unit/test_smaller_items.py): a malformed current link is warned about once although
the plan, the same-registry probe and the flip all read it; the plan and the summary count the
same links; a foreign layer's URL the registry's config was not read for is said to be unchecked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.util import skopeo_inspect_digest

REPO, TAG = "servercore", "ltsc2019"
REGPATCH = str(Path(sys.executable).with_name("regpatch"))


def regpatch(*args) -> tuple[int, str, str]:
    """The command line in a process of its own, as an operator runs it (no Prefect API)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = "/nonexistent-prefect-home"
    p = subprocess.run([REGPATCH, *args], env=env, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_what_the_operator_reads_is_said_once_and_counted_alike(registry, scenario):
    target = ["--storage", str(registry.root), "--registry-url", registry.url, "--repository", REPO, "--tag", TAG]
    current = registry.root / f"docker/registry/v2/repositories/{REPO}/_manifests/tags/{TAG}/current/link"
    current.write_bytes(current.read_bytes() + b"\r\n")
    code, out, err = regpatch("patch", str(scenario["staged"]), *target, "--dry-run")
    assert code == 0 and "6 links to write" in out
    assert err.count("does not hold 'sha256:<hex>' exactly") == 1
    code, out, err = regpatch("patch", str(scenario["staged"]), *target)
    assert code == 0, err
    assert err.count("does not hold 'sha256:<hex>' exactly") == 1  # before: twice
    assert "6 links written" in out  # before: 4, where the plan said 6
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(scenario["new"].manifest_digest)
