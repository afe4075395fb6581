#!/usr/bin/env python3
"""Benchmark: how fast the command line starts and fails, with and without Prefect.

Not a test. In one run, side by side (median of ``--repeat``, default 5):

- ``regpatch patch ... --repository Bad``: a bad argument, wall time to the error;
- a tiny patch (two small layers) of a fresh registry **without a Prefect API**:
  the engine runs in the command's own process;
- ``skopeo copy`` pushing the same image into a fresh registry (the reference);
- the same tiny patch **with PREFECT_API_URL** set to a running ``prefect server``
  on loopback (a flow run with one task run per step);
- four ``regpatch patch`` commands of four repositories started at once while two
  busy processes load both cores: every exit code, and the slowest wall time.

    .venv/bin/python bench/startup.py [--repeat 5] [--no-prefect] [--postgres]

The Prefect server keeps its default SQLite database, unless ``--postgres`` (a
PostgreSQL cluster of its own, as docs/fleet/production.md recommends for a shared server): on
SQLite a write that meets the server's own event writes gets a 503 ("database is
locked") and Prefect's client waits 2 s before it tries again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from regpatch.demo.images import push_with_skopeo, scenario_servercore  # noqa: E402
from regpatch.demo.loopback import LocalRegistry  # noqa: E402

REGPATCH = str(Path(sys.executable).with_name("regpatch"))
REPO, TAG = "servercore", "ltsc2019"


def env(api: str | None = None, home: Path | None = None) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    e["PREFECT_HOME"] = str(home) if home else "/nonexistent-prefect-home"
    if api:
        e["PREFECT_API_URL"] = api
    return e


def timed_run(cmd: list[str], e: dict) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=e, capture_output=True, text=True)
    return time.perf_counter() - t0, p.returncode, p.stdout + p.stderr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-prefect", action="store_true", help="skip the measurement with a Prefect server")
    ap.add_argument("--postgres", action="store_true", help="the Prefect server on PostgreSQL instead of SQLite")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="regpatch-startup-", dir="/var/tmp"))
    rows: list[tuple[str, list[float], str]] = []
    server = pg = None
    try:
        s = scenario_servercore(work / "sample", base_size=256 << 10, delta_size=64 << 10)
        staged = s["staged"]

        def fresh(name: str) -> LocalRegistry:
            reg = LocalRegistry(work / name).start()
            push_with_skopeo(s["old_layout"], s["ref"], reg.host, REPO, TAG)
            return reg

        def drop(reg: LocalRegistry) -> None:
            reg.stop()
            shutil.rmtree(reg.workdir, ignore_errors=True)

        # bad argument
        times = []
        for _ in range(a.repeat):
            t, rc, out = timed_run([REGPATCH, "patch", str(staged), "--storage", str(work), "--repository", "Bad",
                                    "--tag", TAG], env())
            assert rc == 2, out
            times.append(t)
        rows.append(("bad argument (--repository Bad), to the error", times, "target <= 1 s"))

        # tiny patch without Prefect, and skopeo's push of the same image
        local, push = [], []
        for i in range(a.repeat):
            reg = fresh(f"local-{i}")
            try:
                t, rc, out = timed_run([REGPATCH, "patch", str(staged), "--registry-config", str(reg.config_path),
                                        "--repository", REPO, "--tag", TAG], env())
                assert rc == 0 and "patched" in out, out
                local.append(t)
            finally:
                drop(reg)
            reg = LocalRegistry(work / f"push-{i}").start()
            try:
                t0 = time.perf_counter()
                push_with_skopeo(s["new_layout"], s["ref"], reg.host, REPO, TAG)
                push.append(time.perf_counter() - t0)
            finally:
                drop(reg)
        rows.append(("tiny patch, no Prefect API (engine in the CLI)", local, "target <= 1.5 s"))
        rows.append(("skopeo copy oci: -> docker:// of the same image", push, "reference"))

        # tiny patch with a Prefect server
        if not a.no_prefect:
            from support.prefect_fixtures import PrefectServer

            if a.postgres:
                sys.path.insert(0, str(ROOT / "tests" / "e2e"))
                from prefect_cluster import PostgresCluster

                pg = PostgresCluster().start()
            server = PrefectServer(work / "prefect-home", database_url=pg.url if pg else None).start()
            api, home = server.url, server.home
            warm = fresh("warm")
            timed_run([REGPATCH, "patch", str(staged), "--registry-config", str(warm.config_path),
                       "--repository", REPO, "--tag", TAG], env(api, home))  # first run creates the flow
            drop(warm)
            times = []
            for i in range(a.repeat):
                reg = fresh(f"prefect-{i}")
                try:
                    t, rc, out = timed_run([REGPATCH, "patch", str(staged), "--registry-config",
                                            str(reg.config_path), "--repository", REPO, "--tag", TAG],
                                           env(api, home))
                    assert rc == 0 and "Flow run" in out, out
                    times.append(t)
                finally:
                    drop(reg)
            rows.append((f"tiny patch, PREFECT_API_URL set (a flow run; {'PostgreSQL' if pg else 'SQLite'})", times,
                         "target <= 3 s"))

        # four at once on a loaded machine
        reg = LocalRegistry(work / "four").start()
        for n in range(4):
            push_with_skopeo(s["old_layout"], s["ref"], reg.host, f"repo{n}", TAG)
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        try:
            t0 = time.perf_counter()
            procs = [subprocess.Popen([REGPATCH, "patch", str(staged), "--registry-config", str(reg.config_path),
                                       "--repository", f"repo{n}", "--tag", TAG], env=env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for n in range(4)]
            codes = []
            ends = []
            for p in procs:
                p.communicate()
                codes.append(p.returncode)
                ends.append(time.perf_counter() - t0)
        finally:
            for b in burners:
                b.kill()
                b.wait()
            drop(reg)
        rows.append((f"4 patches at once, 2 cores busy: exit codes {codes}", ends,
                     "all exit 0" + (" (yes)" if codes == [0, 0, 0, 0] else " (NO)")))
    finally:
        if server:
            server.stop()
        if pg:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    w = max(len(r[0]) for r in rows)
    print(f"\n{'measurement':<{w}}  {'median s':>8}  {'min-max s':>13}  note")
    print("-" * (w + 40))
    for label, vals, note in rows:
        print(f"{label:<{w}}  {statistics.median(vals):8.2f}  {min(vals):6.2f}-{max(vals):<6.2f}  {note}")
    print(f"\nmachine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
