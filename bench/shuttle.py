#!/usr/bin/env python3
"""Benchmark of the shuttle side (issue 13): delta bundle size and time, contents size and time.

Not a test. It builds last month's servercore-like image (``--size`` bytes of
layers: a base of 75 % and a delta of 25 %, incompressible, gzip level 0) and
this month's (the same base, a new delta), pushes both to a source
``docker-registry`` and last month's to a site registry, then measures,
``--repeat`` times each (median and min-max):

- ``regpatch bundle docker://SOURCE/servercore:ltsc2019 --have site.json`` (the
  real CLI, a subprocess, signed with an Ed25519 key) into a fresh folder:
  time, peak RSS, and the bundle's size against the new delta's bytes (target:
  the delta plus less than 64 KB);
- the same without ``--have`` (the whole image, like skopeo) and
  ``skopeo copy docker://SOURCE/servercore:ltsc2019 oci:FOLDER:ltsc2019``: time
  and size;
- ``regpatch contents`` (the CLI) on a storage of ``--blobs`` blobs (default
  2,000, in 200 images of 10 blobs across 20 repositories with 10 tags each,
  written directly as a registry lays them out): time and file size.

    .venv/bin/python bench/shuttle.py [--size 2GiB] [--repeat 3] [--blobs 2000] [--workdir DIR] [--keep]

Every registry it starts is stopped; unless ``--keep`` the work folder it
created is removed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from regpatch.demo.images import make_image, make_layer, push_with_skopeo, write_oci_layout  # noqa: E402
from regpatch.demo.loopback import LocalRegistry  # noqa: E402
from regpatch.digest import Digest  # noqa: E402
from regpatch.reference import Repository, Tag  # noqa: E402
from regpatch.storage.store import RegistryStore  # noqa: E402

_spec = importlib.util.spec_from_file_location("regpatch_bench_common", ROOT / "bench" / "bench.py")
common = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = common
_spec.loader.exec_module(common)  # helpers shared with bench.py: run_child, sizes, machine info

REPO, TAG = "servercore", "ltsc2019"
REGPATCH = str(Path(sys.executable).with_name("regpatch"))
KB64 = 64 << 10


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f}s  ({min(values):.2f}-{max(values):.2f})"


def build_images(d: Path, size: int):
    base = make_layer(d / "layers", "base", seed=301, size=size * 3 // 4, compresslevel=0)
    d1 = make_layer(d / "layers", "delta-2026-10", seed=302, size=size // 4, compresslevel=0)
    d2 = make_layer(d / "layers", "delta-2026-11", seed=303, size=size // 4, compresslevel=0)
    old = make_image(d / "old", [base, d1], os="windows", os_version="10.0.17763.6414", seed=302)
    new = make_image(d / "new", [base, d2], os="windows", os_version="10.0.17763.6532", seed=303)
    return base, d2, old, new


def synth_storage(root: Path, blobs: int) -> RegistryStore:
    """A registry storage with ``blobs`` blobs: images of 10 blobs (manifest, config, 8 layers
    of 1-64 KiB), spread over 20 repositories with 10 tags each."""
    root.mkdir(parents=True)
    store = RegistryStore(root)
    lay = store.layout
    rnd = random.Random(13)
    for i in range(blobs // 10):
        repo = Repository.parse(f"team{i % 20}/app")
        digests = []
        for _ in range(10):
            data = rnd.randbytes(rnd.randint(1 << 10, 64 << 10))
            d = Digest.of_bytes(data)
            store.write_file(lay.blob_data(d), data, durable=False)
            digests.append(d)
        manifest = digests[0]
        for d in digests[1:]:
            store.write_file(lay.layer_link(repo, d), str(d).encode(), durable=False)
        store.write_file(lay.revision_link(repo, manifest), str(manifest).encode(), durable=False)
        tag = Tag.parse(f"v{i // 20}")
        store.write_file(lay.tag_index_link(repo, tag, manifest), str(manifest).encode(), durable=False)
        store.write_file(lay.tag_current_link(repo, tag), str(manifest).encode(), durable=False)
    return store


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=common.parse_size, default=common.parse_size("2GiB"),
                    help="bytes of layers of one image (default 2GiB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blobs", type=int, default=2000, help="blobs of the contents storage (default 2000)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    load_at_start = "%.2f %.2f %.2f" % os.getloadavg()
    created = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="regpatch-bench-shuttle-", dir="/var/tmp")) if created else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    regs: list[LocalRegistry] = []
    rows: list[tuple[str, str, str]] = []
    checks: list[str] = []
    try:
        common.log(f"building two images of {common.human(args.size)} (same base, new delta) in {work}")
        base, delta, old, new = build_images(work / "images", args.size)
        old_layout = write_oci_layout(work / "old-layout", {TAG: old})
        new_layout = write_oci_layout(work / "new-layout", {TAG: new})
        source = LocalRegistry(work / "source").start()
        regs.append(source)
        site = LocalRegistry(work / "site").start()
        regs.append(site)
        common.log("pushing last month's and this month's image to the source, last month's to the site")
        push_with_skopeo(old_layout, TAG, source.host, REPO, "ltsc2019-2026-10")
        push_with_skopeo(new_layout, TAG, source.host, REPO, TAG)
        push_with_skopeo(old_layout, TAG, site.host, REPO, TAG)
        shutil.rmtree(work / "old-layout"), shutil.rmtree(work / "new-layout")
        have = work / "site.contents.json"
        common.run_child([REGPATCH, "contents", "--storage", str(site.root), "--out", str(have)])
        common.run_child([REGPATCH, "keygen", "--out", str(work / "shuttle")], check=not (work / "shuttle.key").exists())
        ref = f"docker://{source.host}/{REPO}:{TAG}"

        times: dict[str, list[float]] = {"delta": [], "full": [], "skopeo": []}
        sizes: dict[str, int] = {}
        rss = 0
        for i in range(args.repeat):
            for kind in ("delta", "full", "skopeo"):
                out = work / f"out-{kind}"
                shutil.rmtree(out, ignore_errors=True)
                subprocess_sync()
                if kind == "skopeo":
                    cmd = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                           ref, f"oci:{out}:{TAG}"]
                else:
                    cmd = [REGPATCH, "bundle", ref, "--out", str(out), "--insecure",
                           "--sign-key", str(work / "shuttle.key")] + (["--have", str(have)] if kind == "delta" else [])
                common.log(f"run {i + 1}/{args.repeat}: {kind}")
                p = common.run_child(cmd, log_to=work / "logs" / f"{kind}-{i}.log")
                times[kind].append(p.seconds)
                sizes[kind] = folder_bytes(out)
                if kind == "delta":
                    rss = max(rss, p.maxrss)

        common.log(f"contents of a storage of {args.blobs} blobs")
        storage = synth_storage(work / "many", args.blobs)
        ctimes = []
        for i in range(args.repeat):
            p = common.run_child([REGPATCH, "contents", "--storage", str(storage.root), "--out",
                                  str(work / "many.json")])
            ctimes.append(p.seconds)
        cdoc = json.loads((work / "many.json").read_bytes())
        csize = (work / "many.json").stat().st_size
        t0 = time.perf_counter()
        from regpatch.storage.contents import read_storage
        read_storage(storage).to_json()
        core_secs = time.perf_counter() - t0

        overhead = sizes["delta"] - delta.size
        rows += [
            ("regpatch bundle --have (delta)", stats(times["delta"]), f"{sizes['delta']:>15,} B"),
            ("regpatch bundle (whole image)", stats(times["full"]), f"{sizes['full']:>15,} B"),
            ("skopeo copy docker:// oci:", stats(times["skopeo"]), f"{sizes['skopeo']:>15,} B"),
            (f"regpatch contents ({len(cdoc['blobs'])} blobs)", stats(ctimes), f"{csize:>15,} B"),
        ]
        ratio = sizes["delta"] / sizes["skopeo"]
        checks += [
            f"{'PASS' if overhead < KB64 else 'FAIL'}  delta bundle = new delta ({delta.size:,} B) + "
            f"{overhead:,} B (target < {KB64:,} B)",
            f"info  delta bundle / skopeo oci: export = {ratio:.3f} ({common.human(sizes['delta'])} vs "
            f"{common.human(sizes['skopeo'])})",
            f"info  time: regpatch bundle --have / skopeo copy = "
            f"{statistics.median(times['delta']) / statistics.median(times['skopeo']):.2f}; whole image "
            f"regpatch / skopeo = {statistics.median(times['full']) / statistics.median(times['skopeo']):.2f}",
            f"info  peak RSS of regpatch bundle: {common.human(rss)}",
            f"info  contents: {csize / max(1, len(cdoc['blobs'])):.0f} B per blob; the core read "
            f"alone {core_secs:.3f}s, the rest of the CLI time is the interpreter's start-up",
        ]
        print(f"\nshuttle benchmark: images of {common.human(args.size)} (base {common.human(base.size)}, "
              f"delta {common.human(delta.size)}), {args.repeat} run(s), median (min-max)\n")
        print(f"  {'what':36} {'time':24} {'size':>17}")
        for what, t, s in rows:
            print(f"  {what:36} {t:24} {s:>17}")
        print()
        for c in checks:
            print("  " + c)
        print("\nmachine:")
        for k, v in common.machine_info(work) + [("load avg at start", load_at_start),
                                                 ("command", " ".join(["python", "bench/shuttle.py", *(argv or sys.argv[1:])]))]:
            print(f"  {k:20} {v}")
        return 0
    finally:
        for r in regs:
            r.stop()
        if created and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def subprocess_sync() -> None:
    os.sync()


if __name__ == "__main__":
    sys.exit(main())
