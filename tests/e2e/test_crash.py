"""Kill -9 a patch at 20+ points of its run while skopeo pulls the tag in a loop.

The crash harness (tests/support/crash.py) SIGKILLs the CLI process at its Nth
checkpoint: after every durable write (staged blob, installed blob, manifest,
link, journal, history) and every 8 MiB of a blob being staged. After every
kill the tag must pull completely (the old or the new image, never a broken
one), and a re-run must complete. Printed: kills survived, pulls done, pulls
failed (which must be zero).
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from support.util import skopeo, skopeo_inspect_digest

from regpatch.demo.images import make_image, make_layer, push_with_skopeo, write_oci_layout, write_staged_bundle

REPO, TAG = "servercore", "ltsc2019"
CRASHING_REGPATCH = [sys.executable, str(Path(__file__).parents[1] / "support" / "crash.py")]
MIN_KILLS = 20


class PullLoop(threading.Thread):
    """Pull the tag completely with skopeo, over and over, counting failures."""

    def __init__(self, host: str, dest: Path):
        super().__init__(daemon=True)
        self.host, self.dest = host, dest
        self.done = self.failed = 0
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self):
        n = 0
        while not self._halt.is_set():
            n += 1
            out = self.dest / f"pull-{n % 2}"
            subprocess.run(["rm", "-rf", str(out)], check=False)
            p = subprocess.run(["skopeo", "--insecure-policy", "copy", "--all", "--src-tls-verify=false",
                                f"docker://{self.host}/{REPO}:{TAG}", f"dir:{out}"],
                               capture_output=True, text=True, timeout=300)
            self.done += 1
            if p.returncode != 0:
                self.failed += 1
                self.failures.append(p.stderr.strip()[-500:])

    def stop(self):
        self._halt.set()
        self.join(timeout=320)


def _image(work: Path, seed: int, base_mib: int, delta_mib: int):
    base = make_layer(work, f"base-{seed}.tar.gz", seed=seed, size=base_mib << 20, compresslevel=0)
    delta = make_layer(work, f"delta-{seed}.tar.gz", seed=seed + 1, size=delta_mib << 20, compresslevel=0)
    return make_image(work, [base, delta], os="windows", os_version=f"10.0.17763.{seed}", seed=seed)


def test_sigkill_at_every_kind_of_step_never_breaks_the_tag(registry, prefect_server, tmp_path):
    rng = random.Random(20261128)
    work = tmp_path / "images"
    old = _image(work, 100, 4, 1)
    push_with_skopeo(write_oci_layout(tmp_path / "old-layout", {"old": old}), "old", registry.host, REPO, TAG)
    bundles = []
    for i, seed in enumerate((200, 300, 400)):
        img = _image(work, seed, 24, 8)
        bundles.append((img, write_staged_bundle(tmp_path / f"bundle-{i}", img)))

    env = prefect_server.env()
    base_cmd = ["--storage", str(registry.root), "--registry-url", registry.url,
                "--repository", REPO, "--tag", TAG]

    pulls = PullLoop(registry.host, tmp_path)
    pulls.start()
    kills = resumed_runs = 0
    expected = {str(old.manifest_digest)}
    try:
        cycle = 0
        while kills < MIN_KILLS or cycle < len(bundles):
            assert cycle < 40, 'too many cycles'
            image, bundle = bundles[cycle % len(bundles)]
            expected.add(str(image.manifest_digest))
            while True:
                kill_at = rng.randint(1, 15)
                t0 = time.monotonic()
                p = subprocess.run([*CRASHING_REGPATCH, "patch", str(bundle), *base_cmd],
                                   env={**env, "REGPATCH_FAULT_KILL_AT": str(kill_at)},
                                   capture_output=True, text=True, timeout=600)
                if p.returncode == 0:
                    break
                assert p.returncode == -9, f"run failed instead of being killed: {p.stderr[-3000:]}"
                kills += 1
                # after every kill: the tag pulls completely, old or new image
                digest = skopeo_inspect_digest(registry.host, REPO, TAG)
                assert digest in expected, digest
                skopeo("copy", "--all", f"docker://{registry.host}/{REPO}:{TAG}", f"dir:{tmp_path / 'check'}")
                subprocess.run(["rm", "-rf", str(tmp_path / "check")], check=True)
                print(f"kill {kills}: at checkpoint {kill_at} after {time.monotonic() - t0:.1f}s, "
                      f"tag at {digest[:19]}", flush=True)
            # the run that completed resumed the killed ones
            if "resuming the patch" in p.stdout + p.stderr:
                resumed_runs += 1
            assert skopeo_inspect_digest(registry.host, REPO, TAG) == str(image.manifest_digest)
            cycle += 1
        # a final plain re-run changes nothing
        p = subprocess.run([*CRASHING_REGPATCH, "patch", str(bundle), *base_cmd], env=env, capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0 and "nothing to do" in p.stdout, p.stderr[-3000:]
    finally:
        pulls.stop()
    print(f"\ncrash test: kills survived {kills}, pulls done {pulls.done}, pulls failed {pulls.failed}, "
          f"runs that resumed a killed patch {resumed_runs}")
    assert pulls.failed == 0, pulls.failures[:3]
    assert kills >= MIN_KILLS
    assert pulls.done > 0
    leftovers = [p for p in registry.root.rglob("*") if ".regpatch-tmp-" in p.name]
    assert not leftovers, leftovers
