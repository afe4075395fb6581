"""A rollback killed at every point of its run, against a real registry: the same command
finishes it, its history line is written once, and the run after that is a no-op that says so.

The crash harness (tests/support/crash.py) SIGKILLs the command line at its Nth checkpoint
(journal saves, the tag's current/link, the history line, the report). After every kill the
registry serves the old or the new image, never anything else; the plain re-run ends with the
tag on the image before the patch and exactly one 'rollback' line after the patch's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.util import skopeo_inspect_digest

from regpatch.storage.history import read_history
from regpatch.storage.layout import Layout

REPO, TAG = "servercore", "ltsc2019"
CRASHING_REGPATCH = [sys.executable, str(Path(__file__).parents[1] / "support" / "crash.py")]
MAX_KILL_POINTS = 30


def env_without_prefect(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = "/nonexistent-prefect-home"
    env.update(extra)
    return env


def run(*args, kill_at=None) -> subprocess.CompletedProcess:
    env = env_without_prefect(**({"REGPATCH_FAULT_KILL_AT": str(kill_at)} if kill_at else {}))
    return subprocess.run([*CRASHING_REGPATCH, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_rollback_killed_anywhere_is_finished_by_the_same_command_and_recorded_once(registry, scenario):
    old, new = str(scenario["old"].manifest_digest), str(scenario["new"].manifest_digest)
    target = ["--storage", registry.root, "--registry-url", registry.url, "--repository", REPO, "--tag", TAG]
    layout = Layout(registry.root)
    kills = 0
    for kill_at in range(1, MAX_KILL_POINTS + 1):
        p = run("patch", scenario["staged"], *target)
        assert p.returncode == 0, p.stderr[-2000:]
        since = len(read_history(layout, REPO, TAG))
        assert read_history(layout, REPO, TAG)[-1].action == "patch"

        p = run("rollback", *target, kill_at=kill_at)
        if p.returncode == 0:  # the rollback has fewer checkpoints than kill_at: every point was tried
            break
        assert p.returncode == -9, f"failed instead of being killed at {kill_at}: {p.stderr[-2000:]}"
        kills += 1
        assert skopeo_inspect_digest(registry.host, REPO, TAG) in (old, new)  # never anything else

        p = run("rollback", *target)  # the same command
        assert p.returncode == 0, f"re-run after a kill at {kill_at}: {p.stderr[-2000:]}"
        assert skopeo_inspect_digest(registry.host, REPO, TAG) == old
        after = [(e.action, e.old, e.new) for e in read_history(layout, REPO, TAG)[since:]]
        assert after == [("rollback", new, old)], f"kill at {kill_at}: {after}"

        p = run("rollback", *target)  # and once more: nothing to do, said so
        assert p.returncode == 0 and "nothing to do" in p.stdout, p.stdout + p.stderr[-2000:]
        assert len(read_history(layout, REPO, TAG)) == since + 1
        assert skopeo_inspect_digest(registry.host, REPO, TAG) == old
    else:
        raise AssertionError(f"the rollback was still killed at checkpoint {MAX_KILL_POINTS}")
    print(f"\nrollback kill points: {kills} (each finished by the same command, recorded once)")
    assert kills >= 5
    assert skopeo_inspect_digest(registry.host, REPO, TAG) == old
    # going further back needs --to: the no-op above never went past the patch's old image
    p = run("rollback", *target)
    assert p.returncode == 0 and f"already holds {old}" in p.stdout and "--to" in p.stdout
    leftovers = [q for q in registry.root.rglob("*") if ".regpatch-tmp-" in q.name]
    assert not leftovers, leftovers
