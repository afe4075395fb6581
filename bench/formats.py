#!/usr/bin/env python3
"""Benchmark: regpatch ingest of each bundle format against skopeo (issue 11).

Not a test. In one run, on one generated image of ``--size`` MiB (four
layers, incompressible content, written by regpatch.demo.images with gzip level 0):

- the image as an OCI layout, as a ``dir:`` folder and as an OCI archive
  (both written by ``skopeo copy``): regpatch ingest of each (read the bundle,
  plan, verify every digest while staging, install the blobs: the core
  functions the patch flow runs, without the Prefect start-up and the
  verification pull) into a fresh registry storage, against ``skopeo copy``
  of the same input into a fresh running ``docker-registry``;
- the image as a ``docker save`` archive (``skopeo copy ... docker-archive:``),
  and a docker save archive of one layer of real files from /usr (``--size``/4,
  compressible, where gzip does real work): regpatch conversion + ingest
  (converted layers written into the scratch folder beside the staging
  folder) against ``skopeo copy docker-archive:... docker://...``.

Each input is read once before it is timed (page cache warm for every format
and for skopeo alike). Each figure is the median of ``--repeat`` runs (default
1); rounds interleave the formats. CPU seconds (regpatch's process; skopeo's
plus the registry's) do not depend on what else the machine runs. Targets: every
format within 1.2x of the OCI layout figure; docker save conversion no slower
than skopeo's.

    .venv/bin/python bench/formats.py [--size 2048] [--repeat 1] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from regpatch.bundle.open import (
    load_bundle,  # noqa: E402
    open_source,  # noqa: E402
)
from regpatch.demo.images import make_image, make_layer, write_oci_layout  # noqa: E402
from regpatch.demo.loopback import LocalRegistry  # noqa: E402
from regpatch.engine.apply import install_blobs, verify_blobs  # noqa: E402
from regpatch.engine.plan import make_plan  # noqa: E402
from regpatch.reference import Repository, Tag  # noqa: E402
from regpatch.storage.store import RegistryStore  # noqa: E402


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", *args], check=True,
                   capture_output=True, timeout=3600)


def drop_storage(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def real_files_docker_save(dest: Path, size: int) -> Path:
    """A docker save archive (the layout skopeo writes) of one layer holding real files from /usr,
    up to ``size`` bytes: compressible content, unlike the random layers."""
    import hashlib
    import io
    import json
    import tarfile

    layer = dest.with_suffix(".layer.tar")
    total = 0
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as t:
        for top in ("/usr/lib", "/usr/share", "/usr/bin"):
            for dirpath, _, filenames in os.walk(top):
                for fn in sorted(filenames):
                    p = os.path.join(dirpath, fn)
                    if total >= size or not os.path.isfile(p) or os.path.islink(p):
                        continue
                    try:
                        t.add(p, arcname=p.lstrip("/"), recursive=False)
                    except OSError:
                        continue
                    total += os.path.getsize(p)
    h = hashlib.sha256()
    with open(layer, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    diff = h.hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff]}}).encode()
    cid = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{cid}.json", "RepoTags": ["bench/real:t"],
                            "Layers": [f"{diff}.tar"]}]).encode()
    with tarfile.open(dest, "w") as t:
        t.add(layer, arcname=f"{diff}.tar")
        for name, data in ((f"{cid}.json", config), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    layer.unlink()
    return dest


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def warm(path: Path) -> None:
    """Read every file of an input once, so that each format is timed from the page cache alike
    (the inputs were written minutes earlier, other pushes in between)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(16 << 20):
                pass


def regpatch_ingest(bundle: Path, storage: Path, *, convert: bool = False) -> tuple[float, dict]:
    storage.mkdir(parents=True)
    store = RegistryStore(storage)
    c0 = cpu_self()
    t0 = time.monotonic()
    b = load_bundle(open_source(str(bundle)), scratch=store.layout.state / "convert" if convert else None)
    t_load = time.monotonic() - t0
    plan = make_plan(b, store, Repository.parse("bench/app"), Tag.parse("t"))
    verify_blobs(plan, store)
    install_blobs(plan, store)
    total = time.monotonic() - t0
    cpu = cpu_self() - c0
    b.close()
    return total, {"load/convert": t_load, "digest": str(b.top.digest), "cpu": cpu}


def skopeo_push(src: str, workdir: Path, name: str) -> tuple[float, float]:
    """Seconds of the copy, and CPU seconds of skopeo and of the registry it pushed to."""
    c0 = cpu_children()
    with LocalRegistry(workdir / f"reg-{name}") as reg:
        t0 = time.monotonic()
        skopeo("--dest-tls-verify=false", src, f"docker://{reg.host}/bench/app:t")
        took = time.monotonic() - t0
    cpu = cpu_children() - c0
    drop_storage(workdir / f"reg-{name}")
    return took, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="image size in MiB (default 2048)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--only", metavar="WORD", help="only the formats whose label holds WORD (e.g. 'docker')")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="rp-formats-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    size = args.size << 20
    try:
        t0 = time.monotonic()
        layers = [make_layer(work / "src", f"l{i}", seed=900 + i, size=size // 4, compresslevel=0, oci=True)
                  for i in range(4)]
        img = make_image(work / "src", layers, fmt="oci", name="bench")
        layout = write_oci_layout(work / "layout", {"bench": img})
        skopeo(f"oci:{layout}:bench", f"dir:{work / 'dir'}")
        skopeo(f"oci:{layout}:bench", f"oci-archive:{work / 'image.tar'}")
        skopeo(f"oci:{layout}:bench", f"docker-archive:{work / 'saved.tar'}:bench/app:t")
        real = real_files_docker_save(work / "real-saved.tar", size // 4)
        subprocess.run(["sync"], check=True)
        print(f"inputs: {args.size} MiB image, 4 layers (random bytes); a docker save archive of "
              f"{real.stat().st_size >> 20} MiB of real files from /usr; built in {time.monotonic() - t0:.1f}s "
              f"in {work}")
        cases = [("OCI layout", work / "layout", f"oci:{layout}:bench", False),
                 ("dir:", work / "dir", f"dir:{work / 'dir'}", False),
                 ("OCI archive (tar)", work / "image.tar", f"oci-archive:{work / 'image.tar'}", False),
                 ("docker save archive (converted)", work / "saved.tar", f"docker-archive:{work / 'saved.tar'}",
                  True),
                 ("docker save, real files (converted)", real, f"docker-archive:{real}", True)]
        if args.only:
            cases = [cases[0]] + [c for c in cases[1:] if args.only in c[0]]
        results = {c[0]: ([], [], {}) for c in cases}
        for r in range(args.repeat):  # rounds interleave the formats: load and cache hit all alike
            for label, bundle, skopeo_src, convert in cases:
                storage = work / f"storage-{r}"
                warm(bundle)
                took, extra = regpatch_ingest(bundle, storage, convert=convert)
                drop_storage(storage)
                results[label][0].append(took)
                results[label][2].update(extra)
                warm(bundle)
                took, cpu = skopeo_push(skopeo_src, work, f"{r}")
                results[label][1].append(took)
                results[label][2].setdefault("skopeo_cpu", []).append(cpu)
                results[label][2].setdefault("our_cpu", []).append(extra["cpu"])
        rows = [(label, statistics.median(o), statistics.median(t), e) for label, (o, t, e) in results.items()]
        base = rows[0][1]
        print(f"\n{'format':36} {'regpatch s':>10} {'skopeo s':>9} {'vs OCI layout':>13} "
              f"{'CPU s ours':>10} {'CPU s skopeo+registry':>21}  notes")
        for label, ours, theirs, extra in rows:
            print(f"{label:36} {ours:10.2f} {theirs:9.2f} {ours / base:13.2f} "
                  f"{statistics.median(extra['our_cpu']):10.2f} {statistics.median(extra['skopeo_cpu']):21.2f}  "
                  f"load/convert {extra['load/convert']:.2f}s")
        print("\ntargets:")
        for label, ours, theirs, _ in [r for r in rows[1:] if "docker save" not in r[0]]:
            print(f"  {'PASS' if ours <= 1.2 * base else 'FAIL'}  {label}: {ours / base:.2f} x OCI layout (<= 1.2)")
        for label, ours, theirs, _ in [r for r in rows if "docker save" in r[0]]:
            print(f"  {'PASS' if ours <= theirs else 'FAIL'}  {label}: {ours:.2f}s vs skopeo copy "
                  f"docker-archive: {theirs:.2f}s ({ours / theirs:.2f} x, <= 1.0)")
        print(f"\nmachine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
