#!/usr/bin/env python3
"""Benchmark of retention (issue 26): a year of monthly patches, ``prune --keep 2`` and ``gc``.

Not a test. It builds a year of servercore:ltsc2019 images with
``regpatch.demo.images.monthly_servercore`` (12 months; a ``--base-mib`` base
layer, default 768, new every third month, and a ``--delta-mib`` delta of its
own each month, default 256; the layers are random bytes, incompressible, in
gzip level 0 so generation is fast), starts one real ``docker-registry`` on
127.0.0.1 and patches every month in with the CLI in the benchmark's own
process (``regpatch patch STAGED --storage ROOT --registry-url URL --local``,
``--init`` for month 1 into the empty storage; no Prefect API). Then, each the
real CLI in a child process (its wall time includes the interpreter's start-up):

- ``regpatch prune --storage ROOT --keep 2 --apply --json``;
- ``regpatch gc --storage ROOT --registry-url URL --restart process:... --apply --json``
  (the registry stopped, its own garbage-collect, started, every kept image pulled).

It prints the time of the patch year, of the prune and of the gc; ``du -sb``
of the storage's ``docker/`` before, after the prune and after the gc; the
bytes freed by gc's report against the ``du`` difference, prune's planned
``freed_bytes`` and a reference computed from the images' blob sizes (the
pruned months' deltas, configs and manifests, and the bases only they used);
what was kept; the registry's downtime (gc's ``downtime_seconds``: from the
stop to ``/v2/`` answering again) and the peak RSS of the gc step: GNU
``time``'s ``%M`` of the ``regpatch gc`` child (the largest of it and the
``garbage-collect`` children it waited for). Not this process's own ``wait4``:
on Linux a child forked from a big parent reports at least the parent's RSS.

    .venv/bin/python bench/retention.py [--base-mib 768] [--delta-mib 256] [--workdir DIR] [--keep]

A quick run: ``--base-mib 24 --delta-mib 8``. The full size needs about
(4 x 768 + 12 x 256) MiB of layers, 12 staged bundles (base + delta each) and
the registry's copy: ~24 GiB in the work folder. The registry is stopped;
unless ``--keep`` the work folder it created is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from regpatch.cli import main as regpatch_main  # noqa: E402
from regpatch.demo.images import monthly_servercore  # noqa: E402
from regpatch.demo.loopback import LocalRegistry  # noqa: E402

_spec = importlib.util.spec_from_file_location("regpatch_bench_common", ROOT / "bench" / "bench.py")
common = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = common
_spec.loader.exec_module(common)  # helpers shared with bench.py: run_child, sizes, machine info

REPO, TAG = "servercore", "ltsc2019"
REGPATCH = str(Path(sys.executable).with_name("regpatch"))
MONTHS, BASE_EVERY, KEEP = 12, 3, 2
MiB = 1 << 20


def du_bytes(path: Path) -> int:
    """``du -sb PATH``: the apparent size of every file and folder under it, as du counts it."""
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def run_cli(args: list[str], work: Path, name: str):
    """The real CLI in a child, under GNU time: (Proc, peak RSS in bytes of that child)."""
    out = work / "logs" / f"{name}.time"
    out.parent.mkdir(parents=True, exist_ok=True)
    p = common.run_child(["/usr/bin/time", "-f", "%M", "-o", str(out), REGPATCH, *args], env=cli_env(),
                         log_to=work / "logs" / f"{name}.log")
    return p, int(out.read_text().split()[-1]) * 1024


def cli_env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    e["PREFECT_HOME"] = "/nonexistent-prefect-home"
    return e


def reference_freed(months) -> tuple[int, int, list[int], list[int]]:
    """The blobs of the months prune --keep 2 drops (all but the tagged month and the 2 before
    it) that no kept month uses: their bytes and count, the pruned and the kept month numbers."""
    kept_months = months[-(KEEP + 1):]
    pruned_months = months[:-(KEEP + 1)]

    def blobs(m) -> dict[str, int]:
        out = {str(b.digest): b.size for b in m.image.blobs}
        out[str(m.image.manifest_digest)] = len(m.image.manifest_bytes)
        return out

    kept: dict[str, int] = {}
    for m in kept_months:
        kept.update(blobs(m))
    gone: dict[str, int] = {}
    for m in pruned_months:
        gone.update({d: n for d, n in blobs(m).items() if d not in kept})
    return sum(gone.values()), len(gone), [m.number for m in pruned_months], [m.number for m in kept_months]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-mib", type=float, default=768, help="MiB of the base layer (default 768)")
    ap.add_argument("--delta-mib", type=float, default=256, help="MiB of each month's delta (default 256)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    base_size, delta_size = int(args.base_mib * MiB), int(args.delta_mib * MiB)
    load_at_start = "%.2f %.2f %.2f" % os.getloadavg()
    created = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="regpatch-bench-retention-", dir="/var/tmp")) if created else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    os.environ.pop("PREFECT_API_URL", None)  # the patches run the engine in this process
    reg = None
    try:
        common.log(f"building {MONTHS} months: base {common.human(base_size)} (new every {BASE_EVERY} months), "
                   f"delta {common.human(delta_size)} each, random bytes, gzip level 0, in {work}")
        t0 = time.perf_counter()
        months = monthly_servercore(work / "months", months=MONTHS, base_every=BASE_EVERY, base_size=base_size,
                                    delta_size=delta_size, compresslevel=0)
        build_secs = time.perf_counter() - t0
        reg = LocalRegistry(work / "registry").start()
        docker = reg.root / "docker"

        common.log(f"patching the {MONTHS} months into {reg.url} (regpatch patch --local, in this process)")
        month_secs = []
        with open(work / "patch.log", "w") as plog, contextlib.redirect_stdout(plog), \
                contextlib.redirect_stderr(plog):
            for m in months:
                os.sync()
                t0 = time.perf_counter()
                code = regpatch_main(["patch", str(m.staged), "--repository", REPO, "--tag", TAG,
                                      "--storage", str(reg.root), "--registry-url", reg.url, "--local",
                                      *(["--init"] if m.number == 1 else [])])  # month 1: an empty storage
                month_secs.append(time.perf_counter() - t0)
                if code != 0:
                    raise RuntimeError(f"regpatch patch of month {m.number} exited {code}; see {work / 'patch.log'}")
        year_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        du_year = du_bytes(docker)

        common.log("regpatch prune --keep 2 --apply")
        os.sync()
        prune, prune_rss = run_cli(["prune", "--storage", str(reg.root), "--keep", str(KEEP), "--apply", "--json"],
                                   work, "prune")
        plan = json.loads(prune.stdout)
        du_pruned = du_bytes(docker)

        common.log("regpatch gc --apply (the registry stopped, collected, started, every kept image pulled)")
        os.sync()
        restart = f"process:pidfile={reg.pidfile},config={reg.config_path},log={reg.log_path}"
        gc_p, gc_rss = run_cli(["gc", "--storage", str(reg.root), "--registry-url", reg.url, "--restart", restart,
                                "--apply", "--json"], work, "gc")
        gc = json.loads(gc_p.stdout)
        du_gc = du_bytes(docker)

        ref_bytes, ref_blobs, pruned_months, kept_months = reference_freed(months)
        by_digest = {str(m.image.manifest_digest): m.number for m in months}
        pruned_nums = sorted(by_digest.get(i["digest"], 0) for i in plan["images"])
        kept = gc["kept_images"]
        tags = [f"{k['repository']}:{k['reference']}" for k in kept if not k["reference"].startswith("sha256:")]
        digests = [k for k in kept if k["reference"].startswith("sha256:")]
        kept_nums = sorted({by_digest.get(k["digest"], 0) for k in kept})  # the tagged month twice: tag, digest
        new_bases = sum(1 for m in months if m.new_base)
        layer_bytes = sum(m.image.layers[-1].size for m in months) + sum(
            m.image.layers[0].size for m in months if m.new_base)
        pruned_bases = sum(1 for m in months if m.new_base and m.number <= max(pruned_months)
                           and all(k.image.layers[0].digest != m.image.layers[0].digest
                                   for k in months if k.number in kept_months))
        formula = len(pruned_months) * delta_size + pruned_bases * base_size

        def b(n) -> str:
            return f"{n:,} B" if n is not None else "-"

        rows = [
            ("patch year: 12 x regpatch patch --local (total)", f"{sum(month_secs):.2f} s",
             f"per month {min(month_secs):.2f}-{max(month_secs):.2f} s; {common.human(layer_bytes)} of layers "
             f"({new_bases} bases + {MONTHS} deltas); building them {build_secs:.1f} s (not counted)"),
            ("prune --keep 2 --apply (CLI, child)", f"{prune.seconds:.2f} s",
             f"pruned {len(plan['images'])} image(s): months {pruned_nums}; peak RSS {common.human(prune_rss)}"),
            ("gc --apply (CLI, child)", f"{gc_p.seconds:.2f} s",
             f"stop, garbage-collect --dry-run + real, start, {len(gc['proven'])} reference(s) pulled"),
            ("registry downtime (stop -> /v2/ answers)", f"{gc['downtime_seconds']:.2f} s", "gc's downtime_seconds"),
            ("peak RSS of the gc step", common.human(gc_rss),
             f"GNU time %M of regpatch gc (and its garbage-collect children); the patch year in this "
             f"process: {common.human(year_rss)} (RUSAGE_SELF)"),
            ("du -sb docker/ after the year", b(du_year), common.human(du_year)),
            ("du -sb docker/ after prune", b(du_pruned), f"{du_pruned - du_year:+,} B: links gone, history written"),
            ("du -sb docker/ after gc", b(du_gc), common.human(du_gc)),
            ("freed: gc report freed_bytes", b(gc["freed_bytes"]),
             f"blob data {common.human(gc['blob_bytes_before'])} -> {common.human(gc['blob_bytes_after'])}"),
            ("freed: du difference (after prune - after gc)", b(du_pruned - du_gc),
             f"{du_pruned - du_gc - (gc['freed_bytes'] or 0):+,} B vs gc's report (folders, links)"),
            ("freed: prune plan freed_bytes", b(plan["freed_bytes"]),
             f"{plan['freed_blobs']} blob(s); gc eligible {b(gc['eligible_bytes'])} in {gc['eligible_blobs']}"),
            ("freed: reference from the blob sizes", b(ref_bytes),
             f"{ref_blobs} blob(s) of months {pruned_months} no kept month uses; "
             f"{len(pruned_months)} x delta + {pruned_bases} x base = {formula:,} B + gzip/tar, configs, manifests"),
            ("kept", f"{len(kept)} ref(s)",
             f"{len(tags)} tag(s) {tags}, {len(digests)} digest(s); months {kept_nums} "
             f"(reference: months {kept_months}); {gc['kept_blobs']} blob(s) marked"),
        ]
        print(f"\nretention benchmark: {MONTHS} months, base {common.human(base_size)} new every {BASE_EVERY} months, "
              f"delta {common.human(delta_size)} a month (random bytes, gzip level 0), prune --keep {KEEP} + gc\n")
        w = max(len(r[0]) for r in rows)
        v = max(len(r[1]) for r in rows)
        print(f"  {'measurement':<{w}}  {'figure':>{v}}  reference / note")
        print("  " + "-" * (w + v + 40))
        for what, fig, note in rows:
            print(f"  {what:<{w}}  {fig:>{v}}  {note}")
        same = gc["freed_bytes"] == plan["freed_bytes"] == ref_bytes
        print(f"\n  {'same' if same else 'DIFFERENT'}: gc freed_bytes, prune's plan and the reference from the sizes")
        print("\nmachine:")
        for k, val in common.machine_info(work) + [("load avg at start", load_at_start),
                                                   ("command", " ".join(["python", "bench/retention.py",
                                                                         *(argv or sys.argv[1:])]))]:
            print(f"  {k:20} {val}")
        return 0
    finally:
        if reg is not None:
            reg.stop()
        if created and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
