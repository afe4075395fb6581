"""The front door's main job (README.md, docs/getting-started.md), end to end:
``python -m regpatch.demo`` (what scripts/demo.sh runs after the bootstrap). The seed's
story, then the pipeline: a Prefect server, the shipped deployments, a worker, a rollout
to three registries in two waves with one failing on purpose. Run with --keep-running,
checked, then stopped with --stop: nothing stays."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from regpatch.registry.processes import pid_alive


def _alive(pid: int) -> bool:
    """Running (a zombie whose parent is gone counts as stopped: it runs nothing)."""
    return pid_alive(pid)


def test_the_demo_tells_the_story_and_the_pipeline_and_stops_everything(tmp_path):
    workdir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    p = subprocess.run([sys.executable, "-m", "regpatch.demo", "--workdir", str(workdir), "--keep-running"],
                       capture_output=True, text=True, timeout=600, env=env)
    try:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        out = p.stdout
        assert "demo passed: all 9 steps" in out
        assert "OK: the tag now serves the patched image, byte for byte" in out
        assert "the rollout run is red, as intended" in out and "| site-c | fleet | local | failed |" in out
        assert "site-a: serves the patched image" in out and "site-c: serves last month's" in out
        ui = next(line.split()[3] for line in out.splitlines() if line.startswith("the Prefect UI:"))
        assert httpx.get(f"{ui}/api/health", timeout=10).status_code == 200
        pids = json.loads((workdir / "pipeline" / "pipeline.pids.json").read_text())["processes"]
        assert set(pids) == {"server", "worker"} and all(_alive(pid) for pid in pids.values())
    finally:
        stop = subprocess.run([sys.executable, "-m", "regpatch.demo", "--stop", "--workdir", str(workdir)],
                              capture_output=True, text=True, timeout=120, env=env)
    assert stop.returncode == 0 and "server" in stop.stdout and "worker" in stop.stdout, stop.stdout
    assert not any(_alive(pid) for pid in pids.values())
    left = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True).stdout.split()
    assert left == [], left
