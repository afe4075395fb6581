#!/usr/bin/env python3
"""Benchmark: what Prefect costs a rollout, per registry, beside the same rollout without it.

Not a test. N real ``docker-registry`` processes on loopback (16 and 64 by default),
each holding the old sample image; one small bundle (8 MiB: a base and a delta
layer). For each database of the Prefect server (its default SQLite, PostgreSQL as
the README's recipe runs it) and each N, side by side in one run:

- ``regpatch rollout`` without a Prefect API (``--local``: plain Python), first run
  on fresh storage, then a re-run (every registry up to date);
- the same through a local ``prefect server`` (``PREFECT_API_URL`` set): first run,
  re-run; the API requests and events the rollout process sent (``bench/apicount.py``);
- orchestration overhead per registry: ``(with the API - without) / N``;
- peak RSS of the rollout process (wait4) and of the server (its process tree's
  VmHWM), and the growth of Prefect's database per rollout (rows per table, bytes);
- a tiny patch with ``PREFECT_API_URL`` (the command line's flow run), median;
- a run of a ``patch-registry`` deployment on a process worker, created as the UI's
  Run button does (one POST): seconds to ``Running`` and to ``Completed``, with the
  worker polling every ``--worker-poll`` seconds (PREFECT_WORKER_QUERY_SECONDS).

    .venv/bin/python bench/fleet.py [--sizes 16,64] [--databases sqlite,postgres]
                                    [--max-parallel 4] [--worker-poll 5] [--counts]

Servers bind 127.0.0.1; no temporary Prefect server is ever started
(PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false everywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from regpatch.demo.images import push_with_skopeo, scenario_servercore  # noqa: E402
from regpatch.demo.loopback import LocalRegistry  # noqa: E402

BIN = Path(sys.executable).parent
REGPATCH = str(BIN / "regpatch")
REPO, TAG = "servercore", "ltsc2019"
TARGET_PER_REGISTRY = 0.3


def env(api: Optional[str] = None, home: Optional[Path] = None, **extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    e["PREFECT_HOME"] = str(home) if home else "/nonexistent-prefect-home"
    e["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
    if api:
        e["PREFECT_API_URL"] = api
    e.update(extra)
    return e


class Fleet:
    """N registries serving copies of one template storage; ``reset`` puts the template back
    (no blob descriptor cache in the registries: they read the storage at every request)."""

    def __init__(self, work: Path, template: Path, n: int):
        self.work, self.template = work, template
        self.regs = [LocalRegistry(work / f"reg-{i:03d}", blobdescriptor_cache=False) for i in range(n)]

    def start(self) -> "Fleet":
        for reg in self.regs:
            shutil.copytree(self.template, reg.root, dirs_exist_ok=True)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: r.start(), self.regs))
        return self

    def reset(self) -> None:
        def one(reg: LocalRegistry) -> None:
            shutil.rmtree(reg.root / "docker")
            shutil.rmtree(reg.root / ".regpatch", ignore_errors=True)
            shutil.copytree(self.template / "docker", reg.root / "docker")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, self.regs))

    def inventory(self, path: Path) -> Path:
        entries = [{"name": f"site-{i:03d}", "storage": str(r.root), "url": r.url,
                    "group": "canary" if i == 0 else "fleet"} for i, r in enumerate(self.regs)]
        path.write_text(yaml.safe_dump({"registries": entries}, sort_keys=False))
        return path

    def stop(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: r.stop(), self.regs))


def timed(cmd: list[str], e: dict, timeout: float = 3600) -> tuple[float, int, str, int]:
    """Wall seconds, exit code, output, peak RSS in KiB (wait4's ru_maxrss of that child)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    out = b""
    assert p.stdout is not None
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, p.returncode, out.decode(errors="replace"), usage.ru_maxrss


def tree_hwm_kib(pid: int) -> int:
    """Sum of VmHWM (peak resident set) over a process and its descendants."""
    def children(p: int) -> list[int]:
        found = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                found += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return found

    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
        todo += children(p)
    return total


# --------------------------------------------------------------------------- the server and its database

TABLES = ("flow_run", "flow_run_state", "task_run", "task_run_state", "log", "artifact", "artifact_collection",
          "events", "event_resources", "concurrency_limit_v2")


class Server:
    def __init__(self, work: Path, database: str):
        from support.prefect_fixtures import PrefectServer

        self.database = database
        self.pg = None
        if database == "postgres":
            from prefect_cluster import PostgresCluster

            self.pg = PostgresCluster().start()
        self.server = PrefectServer(work / f"prefect-{database}", database_url=self.pg.url if self.pg else None)

    def start(self) -> "Server":
        self.server.start()
        return self

    @property
    def api(self) -> str:
        return self.server.url

    @property
    def home(self) -> Path:
        return self.server.home

    def hwm_kib(self) -> int:
        return tree_hwm_kib(self.server.proc.pid)

    def usage(self) -> tuple[dict[str, int], int]:
        """Rows per table and the database's bytes."""
        if self.pg:
            psql = [str(self.pg.bindir / "psql"), "-h", str(self.pg.socket_dir), "-p", str(self.pg.port),
                    "-d", self.pg.database, "-At", "-F", "|"]
            q = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in TABLES)
            q += " UNION ALL SELECT 'bytes', pg_database_size(current_database())"
            out = subprocess.run(psql + ["-c", q], capture_output=True, text=True, check=True).stdout
            rows = dict(line.split("|") for line in out.split())
            return {t: int(rows[t]) for t in TABLES}, int(rows["bytes"])
        db = self.home / "prefect.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
            rows = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
            pages = c.execute("PRAGMA page_count").fetchone()[0] * c.execute("PRAGMA page_size").fetchone()[0]
        wal = Path(str(db) + "-wal")
        return rows, pages + (wal.stat().st_size if wal.exists() else 0)

    def settle(self, timeout: float = 60) -> None:
        """Wait until the server has written what it was sent (events are written by its
        services a moment after they arrive): the task run count stops moving."""
        last, still, deadline = None, 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.usage()[0]
            still = still + 1 if now == last else 0
            if still >= 3:
                return
            last = now
            time.sleep(1)

    def stop(self) -> None:
        self.server.stop()
        if self.pg:
            self.pg.stop()


# --------------------------------------------------------------------------- measurements

def rollout_cmd(staged: Path, inventory: Path, state: Path, max_parallel: int, *extra: str) -> list[str]:
    return [REGPATCH, "rollout", str(staged), "--inventory", str(inventory), "--repository", REPO, "--tag", TAG,
            "--max-parallel", str(max_parallel), "--state-dir", str(state), *extra]


def counted_cmd(out: Path, cmd: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "apicount.py"), str(out), "--", *cmd[1:]]


class Row:
    def __init__(self, label: str):
        self.label = label
        self.values: dict[str, float] = {}


def measure_fleet(work: Path, fleet: Fleet, staged: Path, server: Server, n: int, max_parallel: int,
                  counts: bool) -> dict:
    inventory = fleet.inventory(work / f"inventory-{n}.yml")
    res: dict = {"n": n, "db": server.database}
    # without the API: first run, re-run
    fleet.reset()
    state = work / f"state-local-{server.database}-{n}"
    shutil.rmtree(state, ignore_errors=True)
    for key in ("local_first", "local_rerun"):
        t, rc, out, rss = timed(rollout_cmd(staged, inventory, state, max_parallel, "--local"), env())
        assert rc == 0, out[-3000:]
        res[key], res[key + "_rss"] = t, rss
    # through the server: first run, re-run
    fleet.reset()
    state = work / f"state-api-{server.database}-{n}"
    shutil.rmtree(state, ignore_errors=True)
    e = env(server.api, server.home)
    for key in ("api_first", "api_rerun"):
        server.settle()
        rows0, bytes0 = server.usage()
        cmd = rollout_cmd(staged, inventory, state, max_parallel)
        count_file = work / f"counts-{server.database}-{n}-{key}.json"
        t, rc, out, rss = timed(counted_cmd(count_file, cmd) if counts else cmd, e)
        assert rc == 0, out[-3000:]
        assert ("all %d registries ok" % n) in out, out[-3000:]
        server.settle()
        rows1, bytes1 = server.usage()
        res[key], res[key + "_rss"] = t, rss
        res[key + "_rows"] = {k: rows1[k] - rows0[k] for k in rows1}
        res[key + "_bytes"] = bytes1 - bytes0
        if counts:
            res[key + "_counts"] = json.loads(count_file.read_text())
    res["server_hwm"] = server.hwm_kib()
    return res


def print_counts(label: str, doc: dict, n: int) -> None:
    reqs = doc["requests"]
    total = sum(v["n"] for v in reqs.values())
    secs = sum(v["seconds"] for v in reqs.values())
    print(f"\n  {label}: {total} API requests ({total / n:.1f} per registry), {secs:.1f} s of request time "
          f"(summed over threads), {sum(doc['events'].values())} events, clients made: {doc['clients']}")
    for k, v in sorted(reqs.items(), key=lambda kv: -kv[1]["n"]):
        err = "".join(f", {c} x HTTP {s}" for s, c in v["errors"].items())
        print(f"    {v['n']:6d}  {v['n'] / n:6.2f}/reg  {1000 * v['seconds'] / v['n']:7.1f} ms  {k}{err}")
    for k, v in sorted(doc["events"].items(), key=lambda kv: -kv[1]):
        print(f"    {v:6d}  {v / n:6.2f}/reg  {'event':>10}  {k}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16,64")
    ap.add_argument("--databases", default="sqlite,postgres")
    ap.add_argument("--max-parallel", type=int, default=4)
    ap.add_argument("--counts", action="store_true", help="count API requests and events (bench/apicount.py)")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",")]
    work = Path(a.workdir or tempfile.mkdtemp(prefix="regpatch-fleet-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    fleet = None
    try:
        s = scenario_servercore(work / "sample", base_size=6 << 20, delta_size=2 << 20)
        template = LocalRegistry(work / "template").start()
        push_with_skopeo(s["old_layout"], s["ref"], template.host, REPO, TAG)
        template.stop()
        fleet = Fleet(work, template.root, max(sizes)).start()
        for db in a.databases.split(","):
            server = Server(work, db).start()
            try:
                for n in sizes:
                    sub = Fleet.__new__(Fleet)
                    sub.work, sub.template, sub.regs = work, template.root, fleet.regs[:n]
                    r = measure_fleet(work, sub, s["staged"], server, n, a.max_parallel, a.counts)
                    results.append(r)
                    print(json.dumps({k: v for k, v in r.items() if not k.endswith("_counts")}), flush=True)
                    if a.counts:
                        for key in ("api_first", "api_rerun"):
                            print_counts(f"{db}, {n} registries, {key}", r[key + "_counts"], n)
            finally:
                server.stop()
    finally:
        if fleet:
            fleet.stop()
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nmachine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
