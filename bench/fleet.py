#!/usr/bin/env python3
"""Benchmark: what Prefect costs a rollout, per registry, beside the same rollout without it.

Not a test. N real ``docker-registry`` processes on loopback (16 and 64 by default),
each holding the old sample image; one small bundle (8 MiB: a base and a delta
layer). For each database of the Prefect server (its default SQLite, PostgreSQL as
the production recipe (docs/fleet/production.md) runs it; both with the recipe's deployments/prefect-server.env)
and each N, side by side in one run:

- ``regpatch rollout`` without a Prefect API (``--local``: plain Python), first run
  on fresh storage, then a re-run (every registry up to date);
- the same through a local ``prefect server`` (``PREFECT_API_URL`` set): first run,
  re-run, with the API requests and events the rollout process sent
  (``bench/apicount.py``: per request kind, count and time per call);
- orchestration overhead per registry: ``(with the API - without) / N`` (target <= 0.3 s);
- peak RSS of the rollout process (wait4) and of the server (VmHWM of its process
  tree), and what one rollout adds to Prefect's database (rows per table, bytes);
- a tiny patch with ``PREFECT_API_URL`` (the command line's flow run), median, and
  where its time goes (start-up without Prefect, importing Prefect, API requests);
- a run of a ``patch-registry/patch-NAME`` deployment on a process worker, created as the
  UI's Run button creates it (one POST): seconds to ``Running`` and to ``Completed``,
  the worker polling every ``--worker-poll`` seconds (PREFECT_WORKER_QUERY_SECONDS).

    .venv/bin/python bench/fleet.py [--sizes 16,64] [--databases sqlite,postgres]
                                    [--max-parallel 4] [--repeat 1] [--worker-poll 5,3]

Servers bind 127.0.0.1; no temporary Prefect server is ever started
(PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false everywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Optional

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from regpatch.demo.images import push_with_skopeo, scenario_servercore  # noqa: E402
from regpatch.demo.loopback import LocalRegistry  # noqa: E402
from regpatch.registry.processes import pid_alive  # noqa: E402

BIN = Path(sys.executable).parent
REGPATCH = str(BIN / "regpatch")
REPO, TAG = "servercore", "ltsc2019"
TARGET_PER_REGISTRY = 0.3
YEAR_ROLLOUTS, YEAR_REGISTRIES = 13, 100  # what deployments/prefect-server.env keeps (P400D), the fleet
TABLES = ("flow_run", "flow_run_state", "task_run", "task_run_state", "log", "artifact", "artifact_collection",
          "events", "event_resources")


def env(api: Optional[str] = None, home: Optional[Path] = None, **extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    e["PREFECT_HOME"] = str(home) if home else "/nonexistent-prefect-home"
    e["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
    if api:
        e["PREFECT_API_URL"] = api
    e.update(extra)
    return e


def timed(cmd: list[str], e: dict) -> tuple[float, int, str, int]:
    """Wall seconds, exit code, output, peak RSS in KiB (wait4's ru_maxrss of that child)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    assert p.stdout is not None
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, p.returncode, out.decode(errors="replace"), usage.ru_maxrss


def tree_hwm_kib(pid: int) -> int:
    """Sum of VmHWM (peak resident set) over a process and its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total


# --------------------------------------------------------------------------- registries

def distinct_ports(n: int) -> list[int]:
    """n ports free on 127.0.0.1, all different (the sockets are held until all are chosen:
    one free port asked for n times may come back twice, and two registries on one port
    look like one that answers)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class Fleet:
    """N registries serving copies of one template storage; ``reset`` puts the template back
    (no blob descriptor cache in the registries: they read the storage at every request)."""

    def __init__(self, work: Path, template: Path, regs: list[LocalRegistry]):
        self.work, self.template, self.regs = work, template, regs

    @classmethod
    def start(cls, work: Path, template: Path, n: int) -> "Fleet":
        regs = [LocalRegistry(work / f"reg-{i:03d}", port=port, blobdescriptor_cache=False)
                for i, port in enumerate(distinct_ports(n))]
        for reg in regs:
            shutil.copytree(template, reg.root, dirs_exist_ok=True)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: r.start(), regs))
        time.sleep(1)
        for i, reg in enumerate(regs):  # one whose port was taken meanwhile exits: again on another port
            if not pid_alive(reg.pid or -1):
                reg.stop()
                regs[i] = LocalRegistry(reg.workdir, port=distinct_ports(1)[0], blobdescriptor_cache=False).start()
        return cls(work, template, regs)

    def first(self, n: int) -> "Fleet":
        return Fleet(self.work, self.template, self.regs[:n])

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


# --------------------------------------------------------------------------- the server and its database

class Server:
    """``prefect server start`` on 127.0.0.1 with the recipe's settings, on SQLite or on a
    PostgreSQL cluster of its own (initdb/pg_ctl, as tests/e2e/prefect_cluster.py)."""

    def __init__(self, work: Path, database: str):
        from prefect_cluster import PostgresCluster, recipe_server_env
        from support.prefect_fixtures import PrefectServer

        self.database, self.pg = database, None
        extra = recipe_server_env()
        if database == "postgres":
            self.pg = PostgresCluster().start()
            extra["PREFECT_SERVER_DATABASE_DRIVER"] = "postgresql+asyncpg"
        self.server = PrefectServer(work / f"prefect-{database}", database_url=self.pg.url if self.pg else None,
                                    server_env=extra)
        self.started_in = 0.0

    def start(self) -> "Server":
        t0 = time.perf_counter()
        self.server.start(timeout=300)
        self.started_in = time.perf_counter() - t0
        return self

    @property
    def api(self) -> str:
        return self.server.url

    @property
    def home(self) -> Path:
        return self.server.home

    def hwm_kib(self) -> int:
        assert self.server.proc is not None
        return tree_hwm_kib(self.server.proc.pid)

    def usage(self) -> tuple[dict[str, int], int]:
        """Rows per table and the bytes the database uses."""
        if self.pg:
            psql = [str(self.pg.bindir / "psql"), "-h", str(self.pg.socket_dir), "-p", str(self.pg.port),
                    "-d", self.pg.database, "-At", "-F", "|"]
            q = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in TABLES)
            q += " UNION ALL SELECT 'bytes', pg_database_size(current_database())"
            out = subprocess.run(psql + ["-c", q], capture_output=True, text=True, check=True).stdout
            answers = dict(line.split("|") for line in out.split())
            return {t: int(answers[t]) for t in TABLES}, int(answers["bytes"])
        with sqlite3.connect(self.home / "prefect.db", timeout=60) as c:
            c.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the WAL's pages into the file, without blocking the server
            rows = {t: int(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}
            used = c.execute("PRAGMA page_count").fetchone()[0] - c.execute("PRAGMA freelist_count").fetchone()[0]
            return rows, int(used * c.execute("PRAGMA page_size").fetchone()[0])

    def settle(self, timeout: float = 60) -> None:
        """Wait until the server has written what it was sent (events are written by its
        services a moment after they arrive): three equal counts a second apart."""
        last, still, deadline = None, 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.usage()[0]
            still = still + 1 if now == last else 0
            if still >= 2:
                return
            last = now
            time.sleep(1)

    def stop(self) -> None:
        self.server.stop()
        if self.pg:
            self.pg.stop()


# --------------------------------------------------------------------------- rollouts

def rollout_cmd(staged: Path, inventory: Path, state: Path, max_parallel: int, *extra: str) -> list[str]:
    return [REGPATCH, "rollout", str(staged), "--inventory", str(inventory), "--repository", REPO, "--tag", TAG,
            "--max-parallel", str(max_parallel), "--state-dir", str(state), "--reason", "bench", *extra]


def counted(out: Path, cmd: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "apicount.py"), str(out), "--", *cmd[1:]]


def measure_fleet(work: Path, fleet: Fleet, staged: Path, server: Server, max_parallel: int, rep: int) -> dict:
    n = len(fleet.regs)
    inventory = fleet.inventory(work / f"inventory-{n}.yml")
    res: dict = {"n": n, "db": server.database}
    fleet.reset()
    state = work / f"state-local-{server.database}-{n}-{rep}"
    for key in ("local_first", "local_rerun"):
        t, rc, out, rss = timed(rollout_cmd(staged, inventory, state, max_parallel, "--local"), env())
        assert rc == 0, out[-3000:]
        res[key], res[key + "_rss"] = t, rss
    fleet.reset()
    state = work / f"state-api-{server.database}-{n}-{rep}"
    for key in ("api_first", "api_rerun"):
        server.settle()
        rows0, bytes0 = server.usage()
        count_file = work / f"counts-{server.database}-{n}-{rep}-{key}.json"
        t, rc, out, rss = timed(counted(count_file, rollout_cmd(staged, inventory, state, max_parallel)),
                                env(server.api, server.home))
        assert rc == 0 and f"all {n} registries ok" in out, out[-3000:]
        server.settle()
        rows1, bytes1 = server.usage()
        res[key], res[key + "_rss"] = t, rss
        res[key + "_rows"] = {k: rows1[k] - rows0[k] for k in rows1}
        res[key + "_bytes"] = bytes1 - bytes0
        res[key + "_counts"] = json.loads(count_file.read_text())
    return res


# --------------------------------------------------------------------------- a tiny patch, a run from the UI

def tiny_patches(work: Path, server: Server, repeat: int) -> dict:
    """``regpatch patch`` of a tiny bundle into a fresh registry, with PREFECT_API_URL;
    and what its time is made of."""
    s = scenario_servercore(work / "tiny", base_size=256 << 10, delta_size=64 << 10)
    times: list[float] = []
    local: list[float] = []
    counts: dict = {}
    # the API's runs: one to create the flow (not timed), `repeat` timed, one counted (not timed);
    # without an API: `repeat` timed
    plan = [("warm-up", True)] + [("timed", True), ("timed", False)] * repeat + [("counted", True)]
    for i, (what, api) in enumerate(plan):
        reg = LocalRegistry(work / f"tiny-{server.database}-{i}").start()
        try:
            push_with_skopeo(s["old_layout"], s["ref"], reg.host, REPO, TAG)
            cmd = [REGPATCH, "patch", str(s["staged"]), "--registry-config", str(reg.config_path),
                   "--repository", REPO, "--tag", TAG, "--registry-name", f"tiny-{i}"]
            count_file = work / f"tiny-{server.database}.json"
            t, rc, out, _ = timed(counted(count_file, cmd) if what == "counted" else cmd,
                                  env(server.api, server.home) if api else env())
            assert rc == 0, out[-2000:]
            if what == "counted":
                counts = json.loads(count_file.read_text())
            elif what == "timed":
                (times if api else local).append(t)
        finally:
            reg.stop()
            shutil.rmtree(reg.workdir, ignore_errors=True)
    imports = []
    for _ in range(3):
        t, rc, out, _ = timed([sys.executable, "-c", "import prefect.main, regpatch_flows.entry"], env())
        assert rc == 0, out
        imports.append(t)
    return {"times": times, "local": local, "import": statistics.median(imports), "counts": counts}


def ui_runs(work: Path, server: Server, staged: Path, template: Path, poll: float, repeat: int) -> dict:
    """A patch-registry/patch-NAME deployment on a process worker; runs created with one POST, as
    the UI's Run button does; seconds from that POST to Running, and to Completed."""
    from prefect_cluster import Proc

    work.mkdir(parents=True, exist_ok=True)
    reg = LocalRegistry(work / f"ui-{server.database}", blobdescriptor_cache=False)
    shutil.copytree(template, reg.root, dirs_exist_ok=True)
    reg.start()
    inventory = work / f"ui-{server.database}.yml"
    inventory.write_text(yaml.safe_dump({"registries": [
        {"name": "site-ui", "storage": str(reg.root), "url": reg.url, "work_pool": "bench-pool"}]}))
    e = env(server.api, server.home)
    t, rc, out, _ = timed([REGPATCH, "deployments", "--inventory", str(inventory), "--repository", REPO, "--apply"], e)
    assert rc == 0, out
    home = work / f"worker-home-{server.database}"
    home.mkdir(exist_ok=True)
    name = f"bench-{server.database}-{poll:g}"
    worker = Proc([BIN / "prefect", "worker", "start", "--pool", "bench-pool", "--type", "process", "--name", name],
                  env(server.api, home, PREFECT_WORKER_QUERY_SECONDS=str(poll)), work / f"worker-{server.database}.log",
                  cwd=work)
    api = httpx.Client(base_url=server.api, timeout=30)
    running: list[float] = []
    completed: list[float] = []
    picked: list[float] = []
    started: list[float] = []
    try:
        deadline = time.monotonic() + 120
        while not any(w["name"] == name for w in api.post("/work_pools/bench-pool/workers/filter", json={}).json()):
            assert time.monotonic() < deadline, worker.text()[-2000:]
            time.sleep(0.5)
        dep = api.get("/deployments/name/patch-registry/patch-site-ui").json()
        for i in range(repeat):
            time.sleep((i * 0.37 * poll) % poll)  # the click lands anywhere in the worker's poll period
            t0 = time.perf_counter()
            r = api.post(f"/deployments/{dep['id']}/create_flow_run",
                         json={"parameters": {"bundle": str(staged), "tag": f"ui-{i}",
                                                 "change": {"requested_by": "bench", "reason": "bench"}}})
            assert r.status_code == 201, f"the deployment run was refused: HTTP {r.status_code} {r.text[:500]}"
            fr = r.json()
            seen_running = None
            while True:
                state = api.get(f"/flow_runs/{fr['id']}").json()["state_type"]
                if state == "RUNNING" and seen_running is None:
                    seen_running = time.perf_counter() - t0
                if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    assert state == "COMPLETED", (state, worker.text()[-3000:])
                    break
                assert time.perf_counter() - t0 < 300, worker.text()[-3000:]
                time.sleep(0.1)
            completed.append(time.perf_counter() - t0)
            running.append(seen_running if seen_running is not None else completed[-1])
            states = {st["type"]: datetime.fromisoformat(st["timestamp"]).timestamp() for st in
                      api.get("/flow_run_states/", params={"flow_run_id": fr["id"]}).json()}
            created = datetime.fromisoformat(fr["created"]).timestamp()
            picked.append(states.get("PENDING", created) - created)  # the worker's poll found it
            started.append(states.get("RUNNING", created) - states.get("PENDING", created))  # its process
    finally:
        api.close()
        worker.stop()
        reg.stop()
    return {"running": running, "completed": completed, "poll": poll, "picked": picked, "started": started}


# --------------------------------------------------------------------------- report

def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else ""


def requests_of(doc: dict) -> tuple[int, int, float]:
    """(requests, HTTP 503 answers, seconds of request time) of one counted process."""
    reqs = doc["requests"].values()
    return (sum(v["n"] for v in reqs), sum(v["errors"].get("503", 0) for v in reqs),
            sum(v["seconds"] for v in reqs))


def print_rollouts(results: list[dict]) -> None:
    print("\nrollouts (seconds; overhead = (with the API - without) / N; target <= 0.3 s per registry)\n")
    head = (f"{'N':>3} {'database':<9} {'run':<6} {'no API':>7} {'API':>7} {'ratio':>6} {'s/registry':>10} "
            f"{'target':>6} {'requests/reg':>12} {'events/reg':>10} {'503s':>4} {'RSS MiB':>7}")
    print(head)
    print("-" * len(head))
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["n"], r["db"]), []).append(r)
    for (n, db), reps in groups.items():
        for run in ("first", "rerun"):
            local = [r[f"local_{run}"] for r in reps]
            api = [r[f"api_{run}"] for r in reps]
            over = [(a - b) / n for a, b in zip(api, local, strict=True)]
            counts = [requests_of(r[f"api_{run}_counts"]) for r in reps]
            events = [sum(r[f"api_{run}_counts"]["events"].values()) for r in reps]
            rss = max(r[f"api_{run}_rss"] for r in reps) / 1024
            ok = "PASS" if _median(over) <= TARGET_PER_REGISTRY else "FAIL"
            print(f"{n:>3} {db:<9} {run:<6} {_median(local):7.2f} {_median(api):7.2f} "
                  f"{_median(api) / _median(local):6.2f} {_median(over):10.3f} {ok:>6} "
                  f"{_median([c[0] for c in counts]) / n:12.2f} {_median(events) / n:10.2f} "
                  f"{max(c[1] for c in counts):4d} {rss:7.0f}"
                  + (f"   overhead {_span(over)} over {len(reps)} runs" if len(reps) > 1 else ""))


def print_breakdown(results: list[dict]) -> None:
    """Per request kind: calls per registry and milliseconds per call (the last repetition)."""
    last: dict[tuple, dict] = {}
    for r in results:
        last[(r["n"], r["db"])] = r
    for (n, db), r in last.items():
        for run in ("first", "rerun"):
            doc = r[f"api_{run}_counts"]
            total, e503, secs = requests_of(doc)
            print(f"\n  {db}, {n} registries, {run} run: {total} API requests ({total / n:.2f} per registry), "
                  f"{secs:.1f} s of request time summed over threads, {e503} x HTTP 503, "
                  f"Prefect clients made: {sum(doc['clients'].values())}\n  {phases_text(doc)}")
            for k, v in sorted(doc["requests"].items(), key=lambda kv: -kv[1]["n"]):
                errors = "".join(f", {c} x HTTP {s}" for s, c in v["errors"].items())
                print(f"    {v['n']:5d} {v['n'] / n:6.2f}/reg {1000 * v['seconds'] / v['n']:7.1f} ms  {k}{errors}")
            for k, v in sorted(doc["events"].items(), key=lambda kv: -kv[1]):
                print(f"    {v:5d} {v / n:6.2f}/reg {'event':>10}  {k}")


def print_database(results: list[dict], servers: dict[str, dict]) -> None:
    print("\nPrefect's database: what one rollout adds (rows per table, bytes), per registry in brackets")
    for r in results:
        n = r["n"]
        for run in ("first", "rerun"):
            rows = r[f"api_{run}_rows"]
            cells = ", ".join(f"{t} {v}" for t, v in rows.items() if v)
            b = r[f"api_{run}_bytes"]
            print(f"  {r['db']:<9} N={n:<3} {run:<6} {b / 1e6:6.2f} MB ({b / n / 1e3:.1f} kB): {cells}")
    largest: dict[str, dict] = {}
    for r in results:
        if r["n"] >= largest.get(r["db"], {"n": 0})["n"]:
            largest[r["db"]] = r
    for db, r in largest.items():
        per_reg = max(r["api_first_bytes"], r["api_rerun_bytes"]) / r["n"]
        print(f"  {db}: a year of monthly rollouts over {YEAR_REGISTRIES} registries, kept by the shipped retention "
              f"(P400D: {YEAR_ROLLOUTS} rollouts) = {YEAR_ROLLOUTS} x {YEAR_REGISTRIES} x {per_reg / 1e3:.1f} kB "
              f"= {YEAR_ROLLOUTS * YEAR_REGISTRIES * per_reg / 1e6:.0f} MB (N={r['n']}'s larger run per registry; "
              "an upper bound: its events go after 7 days)")
    for db, info in servers.items():
        print(f"  {db}: server started in {info['started']:.1f} s; peak RSS of the server process tree "
              f"{info['hwm'] / 1024:.0f} MiB")


PHASES = {"process start": "interpreter start", "main": "the command's checks and plan",
          "import prefect side": "importing Prefect and the flows", "imported": "until the flow is called",
          "flow call": "the flow run", "flow returned": "after the flow, until the process ends (output, "
          "Prefect's log and event workers drained)"}


def phases_text(doc: dict) -> str:
    return "; ".join(f"{PHASES.get(name, name)} {secs:.2f} s" for name, secs in doc.get("phases", []))


def print_tiny(db: str, tiny: dict) -> None:
    times, local = tiny["times"], tiny["local"]
    total, e503, secs = requests_of(tiny["counts"]) if tiny["counts"] else (0, 0, 0.0)
    med = _median(times)
    print(f"\ntiny patch with PREFECT_API_URL ({db}): median {med:.2f} s ({_span(times)}, n={len(times)}), "
          f"target <= 3 s: {'PASS' if med <= 3 else 'FAIL'}; without an API {_median(local):.2f} s; "
          f"'import prefect.main, regpatch_flows.entry' alone {tiny['import']:.2f} s")
    print(f"  one run, counted: {phases_text(tiny['counts'])}; {total} API requests taking {secs:.2f} s "
          f"({e503} x HTTP 503)")


def print_ui(db: str, ui: dict) -> None:
    r, c = ui["running"], ui["completed"]
    print(f"\nUI-style run of patch-registry/patch-site-ui on a process worker ({db}, PREFECT_WORKER_QUERY_SECONDS="
          f"{ui['poll']:g}): to Running median {_median(r):.1f} s ({_span(r)}), target <= 10 s: "
          f"{'PASS' if max(r) <= 10 else 'FAIL'}; to Completed median {_median(c):.1f} s ({_span(c)})")
    print(f"  of which (server's state times): created -> Pending (the worker's poll found it) median "
          f"{_median(ui['picked']):.1f} s ({_span(ui['picked'])}); Pending -> Running (its process started, "
          f"imported Prefect and the flow) median {_median(ui['started']):.1f} s ({_span(ui['started'])})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16,64")
    ap.add_argument("--databases", default="sqlite,postgres")
    ap.add_argument("--max-parallel", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="rollout measurements per size and database")
    ap.add_argument("--tiny", type=int, default=5, help="tiny patches per database (0: none)")
    ap.add_argument("--ui", type=int, default=4, help="UI-style deployment runs per database (0: none)")
    ap.add_argument("--worker-poll", default="5,3",
                    help="PREFECT_WORKER_QUERY_SECONDS of the worker; several: the UI-style runs once for each")
    ap.add_argument("--workdir", default=None, help="kept afterwards (default: a temporary folder, removed)")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x]
    work = Path(a.workdir or tempfile.mkdtemp(prefix="regpatch-fleet-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    servers: dict[str, dict] = {}
    extras: list[tuple] = []
    loads = [os.getloadavg()]
    fleet = None
    try:
        s = scenario_servercore(work / "sample", base_size=6 << 20, delta_size=2 << 20)
        template = LocalRegistry(work / "template").start()
        push_with_skopeo(s["old_layout"], s["ref"], template.host, REPO, TAG)
        template.stop()
        fleet = Fleet.start(work, template.root, max(sizes)) if sizes else None
        for db in a.databases.split(","):
            server = Server(work, db).start()
            try:
                for n in sizes:
                    for rep in range(a.repeat):
                        assert fleet is not None
                        r = measure_fleet(work, fleet.first(n), s["staged"], server, a.max_parallel, rep)
                        results.append(r)
                        loads.append(os.getloadavg())
                        print(f"{db} N={n}: no API {r['local_first']:.1f} s / re-run {r['local_rerun']:.1f} s; "
                              f"API {r['api_first']:.1f} s / re-run {r['api_rerun']:.1f} s", flush=True)
                if a.tiny:
                    extras.append(("tiny", db, tiny_patches(work, server, a.tiny)))
                for k, poll in enumerate(float(x) for x in a.worker_poll.split(",") if a.ui and x):
                    extras.append(("ui", db, ui_runs(work / f"poll-{k}", server, s["staged"], template.root, poll,
                                                     a.ui)))
                servers[db] = {"hwm": server.hwm_kib(), "started": server.started_in}
            finally:
                server.stop()
    finally:
        if fleet:
            fleet.stop()
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print_rollouts(results)
    print_database(results, servers)
    for kind, db, doc in extras:
        (print_tiny if kind == "tiny" else print_ui)(db, doc)
    print("\nAPI requests and events of the rollout process, per kind:")
    print_breakdown(results)
    print(f"\nmachine: {os.cpu_count()} cores; load average (1 min) while measured: "
          f"{' '.join(f'{x[0]:.1f}' for x in loads)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
