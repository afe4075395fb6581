#!/usr/bin/env python3
"""Benchmark: fetch one bundle from a local moto S3 server, regpatch vs. ``aws s3 cp``.

Not a test. In one run it:

1. starts ``moto_server`` on 127.0.0.1 (a free port), as a child process;
2. builds an OCI layout bundle of ``--size`` bytes (default 1 GiB) in
   ``--layers`` layers (real gzip tars, compression level 0, so generating
   them is quick) and uploads it to ``s3://regpatch-bench/bundle``;
3. times, each in its own child process (wall time, peak RSS via wait4):
   - regpatch, the default settings: parallel ranged GETs into the staging
     folder of an empty registry storage, every byte hashed (sha256) and
     fsynced before it counts as fetched;
   - regpatch with one streaming GET per blob (``concurrency=1``);
   - ``aws s3 cp --recursive`` of the same prefix into a folder (no digest
     check);
4. prints the table, stops moto and removes its work folder (unless ``--keep``).

    .venv/bin/python bench/s3_fetch.py [--size 1GiB] [--layers 4] [--workdir DIR] [--aws aws]

Needs ``moto[server]`` (the test extra) and the AWS CLI (``pip install -e '.[test,bench]'``,
or any ``aws`` given with ``--aws``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUCKET, PREFIX = "regpatch-bench", "bundle"
ENV = {"AWS_ACCESS_KEY_ID": "benchkey", "AWS_SECRET_ACCESS_KEY": "benchsecret",
       "AWS_DEFAULT_REGION": "us-east-1"}

# Runs in a child process: the fetch part of a patch (list, manifests, every blob
# streamed into staging and hashed), no Prefect, so only the fetch is timed.
WORKER = r"""
import sys, time
from regpatch.bundle.open import load_bundle
from regpatch.bundle.s3 import S3Options, S3Source
from regpatch.engine.plan import make_plan
from regpatch.engine.apply import verify_blobs
from regpatch.reference import Repository, Tag
from regpatch.storage.store import RegistryStore
url, endpoint, root, concurrency, part_mib = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
src = S3Source(url, S3Options(endpoint_url=endpoint, concurrency=concurrency, part_size=part_mib << 20))
store = RegistryStore(root)
plan = make_plan(load_bundle(src), store, Repository.parse("bench"), Tag.parse("latest"))
verify_blobs(plan, store)
print(src.bytes_fetched)
"""


def parse_size(text: str) -> int:
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    for suffix, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{port}")


def timed(cmd: list[str], env: dict) -> tuple[float, int, str]:
    """Run cmd; wall seconds, peak RSS (bytes), stdout. Raises on failure."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = b"", b""
    # wait4 gives this child's own rusage (peak RSS); communicate() would reap it first
    import threading

    def drain():
        nonlocal out, err
        out = proc.stdout.read()
        err = proc.stderr.read()

    th = threading.Thread(target=drain)
    th.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    th.join()
    secs = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}): "
                           f"{err.decode(errors='replace')[-2000:]}")
    return secs, usage.ru_maxrss * 1024, out.decode()


def build_bundle(work: Path, size: int, layers: int) -> Path:
    from regpatch.demo.images import make_image, make_layer, write_oci_layout

    per = size // layers
    blobs = [make_layer(work / "layers", f"layer{i}.tar.gz", seed=100 + i, size=per, compresslevel=0,
                        oci=True) for i in range(layers)]
    image = make_image(work / "layers", blobs, fmt="oci", seed=1)
    layout = write_oci_layout(work / "layout", {"bench": image})
    shutil.rmtree(work / "layers")  # the layout holds copies
    return layout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB", help="bundle size (default 1GiB)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--workdir", help="work folder (default: a new temporary folder)")
    venv_aws = Path(sys.executable).with_name("aws")
    ap.add_argument("--aws", default=str(venv_aws) if venv_aws.exists() else (shutil.which("aws") or "aws"),
                    help="the AWS CLI executable (default: the one beside this python, else on PATH)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    size = parse_size(args.size)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="regpatch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **ENV, PYTHONPATH=str(ROOT))
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(k, None)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto_bin = Path(sys.executable).with_name("moto_server")
    moto = subprocess.Popen([str(moto_bin), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    try:
        wait_for_port(port)
        print(f"building a {size / (1 << 30):.2f} GiB bundle ({args.layers} layers) in {work} ...", flush=True)
        layout = build_bundle(work / "bundle", size, args.layers)
        total = sum(p.stat().st_size for p in layout.rglob("*") if p.is_file())

        import boto3
        from boto3.s3.transfer import TransferConfig

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket=BUCKET)
        print(f"uploading {total:,} B to s3://{BUCKET}/{PREFIX} at {endpoint} ...", flush=True)
        t0 = time.monotonic()
        for p in sorted(layout.rglob("*")):
            if p.is_file():
                s3.upload_file(str(p), BUCKET, f"{PREFIX}/{p.relative_to(layout).as_posix()}",
                               Config=TransferConfig(multipart_chunksize=64 << 20))
        print(f"uploaded in {time.monotonic() - t0:.1f}s", flush=True)
        shutil.rmtree(layout)

        url = f"s3://{BUCKET}/{PREFIX}"
        rows = []
        for label, conc, part in (("regpatch, default: 4 parallel 8 MiB ranged GETs", 4, 8),
                                  ("regpatch --s3-part-size 32: 4 parallel 32 MiB GETs", 4, 32),
                                  ("regpatch --s3-concurrency 1: 1 streaming GET/blob", 1, 8)):
            root = work / f"storage-{conc}-{part}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            secs, rss, out = timed([sys.executable, "-c", WORKER, url, endpoint, str(root), str(conc), str(part)],
                                   env)
            fetched = int(out.strip().splitlines()[-1])
            rows.append((label, fetched, secs, rss))
            shutil.rmtree(root)
        dest = work / "aws-copy"
        shutil.rmtree(dest, ignore_errors=True)
        secs, rss, _ = timed([args.aws, "s3", "cp", "--recursive", "--only-show-errors", "--endpoint-url",
                              endpoint, url, str(dest)], env)
        copied = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        rows.append(("aws s3 cp --recursive (10 x 8 MiB, no digest check)", copied, secs, rss))
        shutil.rmtree(dest)

        print()
        print(f"fetch of a {total / (1 << 30):.2f} GiB bundle ({args.layers} layers + config + manifest) "
              f"from moto_server on loopback; regpatch rows hash (sha256) and fsync every byte")
        head = f"| {'tool':52} | {'bytes':>15} | {'seconds':>8} | {'MiB/s':>8} | {'peak RSS':>9} |"
        print(head)
        print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
        for label, nbytes, secs, rss in rows:
            print(f"| {label:52} | {nbytes:>15,} | {secs:>8.2f} | {nbytes / (1 << 20) / secs:>8.1f} | "
                  f"{rss / (1 << 20):>6.0f} MiB |")
        return 0
    finally:
        moto.terminate()
        try:
            moto.wait(15)
        except subprocess.TimeoutExpired:
            moto.kill()
            moto.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
