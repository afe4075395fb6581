"""The embedded default job: the seed's story, end to end, on this machine.

    python -m regpatch.demo [--workdir DIR] [--keep-running]

1. builds a small servercore:ltsc2019 "old" image and its monthly patch
   (``regpatch.demo.images.scenario_servercore``: real gzip layers, a few MB);
2. starts a real ``docker-registry`` on 127.0.0.1 (a free port) with its own
   storage under the workdir;
3. pushes the old image with skopeo, digests preserved;
4. shows what the registry serves and what its storage holds;
5. runs the real CLI, ``regpatch patch <staged bundle> --registry-config ...``,
   as a subprocess (no Prefect API: the engine runs in the command's own process);
6. pulls the patched tag with skopeo, independently of regpatch, and compares
   the manifest digest before and after;
7. pulls the old image by digest: a patch never removes it;
8. the same patch day as a Prefect pipeline (``regpatch.demo.pipeline``): a local
   Prefect server on its embedded default (SQLite), the shipped deployments, one process
   worker, three registries, a rollout in two waves run as a deployment (as the UI's Run
   button does), one registry failing on purpose;
9. stops what it started (or, with ``--keep-running``, prints the UI's address and the
   command that stops everything: ``python -m regpatch.demo --stop``).

Exit code 0 when every step behaved as intended (the planned failure included), 1
otherwise (130 when interrupted). This module does not import Prefect: the patch runs
in the CLI subprocess, the pipeline through Prefect's command line and HTTP API.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import httpx

from regpatch.demo.images import push_with_skopeo, scenario_servercore
from regpatch.demo.loopback import LocalRegistry
from regpatch.demo.pipeline import Pipeline, stop_left_running
from regpatch.platform import children
from regpatch.progress import human
from regpatch.registry.client import RegistryClient
from regpatch.registry.processes import looks_like_registry, pid_alive, read_pidfile, stop_pid

MARKER = ".regpatch-demo"


STEPS = 9


BASE_SIZE = 2 << 20      # random bytes in the base layer (incompressible: ~2 MiB gzip)


DELTA_SIZE = 512 << 10   # random bytes in the delta layer


POLICY_FILE = Path("/etc/containers/policy.json")


class DemoFailed(Exception):
    """A step of the demo did not give the expected result."""


class Demo:
    def __init__(self, workdir: Path, keep_running: bool):
        self.workdir = workdir
        self.keep_running = keep_running
        self.registry: Optional[LocalRegistry] = None
        self.pipeline: Optional[Pipeline] = None
        self.step_no = 0
        self.t0 = time.monotonic()

    # -- output ---------------------------------------------------------------
    def step(self, title: str) -> None:
        self.step_no += 1
        print(f"\n=== Step {self.step_no}/{STEPS}: {title} ===", flush=True)

    @staticmethod
    def say(text: str = "") -> None:
        print(text, flush=True)

    # -- helpers ----------------------------------------------------------------
    def prepare_workdir(self) -> None:
        """Make the workdir ours: a new or empty folder, or one an earlier demo made."""
        wd = self.workdir
        if wd.exists() and not wd.is_dir():
            raise DemoFailed(f"--workdir {wd} exists and is not a folder")
        if wd.is_dir() and any(wd.iterdir()) and not (wd / MARKER).exists():
            raise DemoFailed(f"--workdir {wd} is not empty and was not made by the demo "
                             f"(no {MARKER} file in it); choose a new or empty folder")
        wd.mkdir(parents=True, exist_ok=True)
        (wd / MARKER).write_text("made by python -m regpatch.demo; safe to delete\n")
        # An earlier demo run with --keep-running may still serve this storage.
        old_pid = read_pidfile(wd / "registry" / "registry.pid")
        if old_pid is not None and pid_alive(old_pid) and looks_like_registry(old_pid):
            self.say(f"stopping the registry an earlier demo left running (pid {old_pid})")
            stop_pid(old_pid)
        for what in stop_left_running(wd):
            self.say(f"stopped {what}, left running by an earlier demo")
        for sub in ("registry", "scenario", "pulled", "pulled-old", "pipeline"):
            shutil.rmtree(wd / sub, ignore_errors=True)

    @staticmethod
    def skopeo(*args: str, timeout: float = 300) -> children.Finished:
        cmd = ["skopeo"]
        if not POLICY_FILE.exists():
            cmd.append("--insecure-policy")  # no signature policy on this machine: accept anything
        cmd += list(args)
        Demo.say("$ " + shlex.join(cmd))
        try:
            proc = children.run(cmd, stdout=children.Capture(1 << 20), stderr=children.Capture(64 << 10, "tail"),
                                timeout=timeout)
        except FileNotFoundError:
            raise DemoFailed("skopeo is not installed; run scripts/bootstrap.sh") from None
        except children.ChildTimeout:
            raise DemoFailed(f"skopeo {args[0]} did not finish within {timeout:g} s") from None
        if proc.returncode != 0:
            raise DemoFailed(f"skopeo {args[0]} failed (exit {proc.returncode}): {' '.join(proc.stderr.lines())}")
        return proc

    def tag_digest(self, repository: str, tag: str) -> str:
        assert self.registry is not None
        with RegistryClient(self.registry.url, insecure=True) as client:
            return str(client.get_manifest(repository, tag).digest)

    def show_registry(self, repository: str) -> None:
        """What the registry API serves, then what its storage holds for the repository."""
        assert self.registry is not None
        base = self.registry.url
        with httpx.Client(timeout=10) as http:
            catalog = http.get(f"{base}/v2/_catalog").json().get("repositories") or []
            self.say(f"catalog: {', '.join(catalog) or '(empty)'}")
            for repo in catalog:
                tags = http.get(f"{base}/v2/{repo}/tags/list").json().get("tags") or []
                for t in sorted(tags):
                    self.say(f"  {repo}:{t} -> {self.tag_digest(repo, t)}")
        v2 = self.registry.root / "docker" / "registry" / "v2"
        repo_dir = v2 / "repositories" / repository
        blobs = [p for p in (v2 / "blobs").rglob("data") if p.is_file()]
        self.say(f"storage {v2}: {len(blobs)} blobs, {human(sum(p.stat().st_size for p in blobs))}")
        self.say(f"link files under repositories/{repository}/:")
        for link in sorted(repo_dir.rglob("link")):
            rel = link.relative_to(repo_dir).as_posix()
            parts = rel.split("/")
            if len(parts) > 3 and len(parts[-2]) == 64:  # shorten the <hex> folder names
                parts[-2] = parts[-2][:12] + "..."
            self.say(f"  {'/'.join(parts):60} {link.read_text(encoding='ascii')[:19]}...")

    @staticmethod
    def manifest_digest_of_dir(folder: Path) -> str:
        raw = (folder / "manifest.json").read_bytes()
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    # -- the story --------------------------------------------------------------
    def run(self) -> None:
        wd = self.workdir

        self.step("build the sample images: servercore:ltsc2019 and its monthly patch")
        self.prepare_workdir()
        sc = scenario_servercore(wd / "scenario", base_size=BASE_SIZE, delta_size=DELTA_SIZE)
        old, new = sc["old"], sc["new"]
        repo, tag = sc["repository"], sc["tag"]
        for label, img in (("old", old), ("new", new)):
            size = sum(b.size for b in img.blobs)
            self.say(f"{label} image {img.manifest_digest} (os.version {img.os_version}, "
                     f"{len(img.layers)} layers, {human(size)})")
        self.say(f"staged patch bundle (the seed's format) in {sc['staged']}:")
        for p in sorted(sc["staged"].iterdir()):
            self.say(f"  {p.name:32} {p.stat().st_size:>10,} B")

        self.step("start docker-registry on loopback with its own storage")
        self.registry = LocalRegistry(wd / "registry").start()
        self.say(f"registry {self.registry.url} (pid {self.registry.pid})")
        self.say(f"config   {self.registry.config_path}")
        self.say(f"storage  {self.registry.root}")
        self.say(f"log      {self.registry.log_path}")
        host = self.registry.host

        self.step(f"push the old image as {repo}:{tag} with skopeo")
        t = time.monotonic()
        push_with_skopeo(sc["old_layout"], sc["ref"], host, repo, tag)
        self.say(f"pushed oci:{sc['old_layout']}:{sc['ref']} -> {host}/{repo}:{tag} "
                 f"in {time.monotonic() - t:.1f}s")

        self.step("what the registry holds before the patch")
        self.show_registry(repo)
        before = self.tag_digest(repo, tag)
        if before != str(old.manifest_digest):
            raise DemoFailed(f"{repo}:{tag} is {before}, expected the old image {old.manifest_digest}")

        self.step("patch the registry's storage with the real CLI (regpatch patch)")
        cmd = [sys.executable, "-m", "regpatch.cli", "patch", str(sc["staged"]),
               "--registry-config", str(self.registry.config_path),
               "--repository", repo, "--tag", tag,
               "--verify-command", "skopeo inspect --tls-verify=false docker://{ref}"]
        self.say("$ " + shlex.join(["regpatch"] + cmd[3:]))
        t = time.monotonic()
        proc = children.run(cmd, inherit=True)  # its output is the demo's
        self.say(f"regpatch exited with code {proc.returncode} after {time.monotonic() - t:.1f}s")
        if proc.returncode != 0:
            raise DemoFailed(f"regpatch patch failed with exit code {proc.returncode}")
        self.show_registry(repo)

        self.step(f"pull the patched {repo}:{tag} independently with skopeo")
        pulled = wd / "pulled"
        self.skopeo("copy", "--src-tls-verify=false", f"docker://{host}/{repo}:{tag}", f"dir:{pulled}")
        after = self.manifest_digest_of_dir(pulled)
        files = sorted(p for p in pulled.iterdir() if p.is_file())
        self.say(f"pulled {len(files)} files ({human(sum(p.stat().st_size for p in files))}) "
                 f"into {pulled}; skopeo checked every digest")
        config_file = pulled / new.config.digest.hex  # skopeo's dir: names blobs by hex digest
        config = json.loads(config_file.read_bytes()) if config_file.is_file() else {}
        self.say(f"manifest digest before: {before}  (os.version {old.os_version})")
        self.say(f"manifest digest after:  {after}  (os.version {config.get('os.version')})")
        if after != str(new.manifest_digest):
            raise DemoFailed(f"pulled {after}, expected the patched image {new.manifest_digest}")
        self.say("OK: the tag now serves the patched image, byte for byte")

        self.step("the old image still pulls by digest (nothing was deleted)")
        pulled_old = wd / "pulled-old"
        self.skopeo("copy", "--src-tls-verify=false", f"docker://{host}/{repo}@{old.manifest_digest}",
                    f"dir:{pulled_old}")
        got = self.manifest_digest_of_dir(pulled_old)
        if got != str(old.manifest_digest):
            raise DemoFailed(f"pulled {got} by digest, expected {old.manifest_digest}")
        self.say(f"OK: {repo}@{old.manifest_digest} pulled into {pulled_old}; "
                 "a rollback can re-point the tag at it")

        self.step("the same patch day as a Prefect pipeline: a rollout to three registries, one failing on purpose")
        self.pipeline = Pipeline(wd, self.say)
        self.pipeline.run(sc)

        self.step("stop what the demo started" if not self.keep_running else "leave everything running")
        self.finish()

    def finish(self) -> None:
        reg, pipe = self.registry, self.pipeline
        if self.keep_running and (reg or pipe):
            if pipe is not None:
                self.say(f"the Prefect UI:   {pipe.ui}  (Runs: the rollout, red; its three registries)")
            if reg is not None:
                self.say(f"the first registry: {reg.url} (pid {reg.pid}), storage {reg.root}")
                self.say(f"try:     skopeo inspect --tls-verify=false docker://{reg.host}/servercore:ltsc2019")
            self.say(f"stop everything: {sys.executable} -m regpatch.demo --stop --workdir {self.workdir}")
            self.registry = self.pipeline = None  # said once (main's finally calls finish again)
            return
        if pipe is not None:
            pipe.stop()
            self.say("Prefect server, worker and the pipeline's registries stopped")
        if reg is not None:
            reg.stop()
            self.say(f"registry at {reg.url} stopped; files kept in {self.workdir}")
        self.registry = self.pipeline = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m regpatch.demo",
        description="Run the seed's story end to end on this machine: a real docker-registry on "
                    "loopback, an old servercore:ltsc2019 pushed with skopeo, patched in storage "
                    "by 'regpatch patch', and pulled again with skopeo.")
    p.add_argument("--workdir", default="demo", type=Path, metavar="DIR",
                   help="folder for the images, the registry storage and the pulls (default: ./demo)")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the registries, the Prefect server and its worker running at the end, print the "
                        "UI's address and the command that stops them")
    p.add_argument("--stop", action="store_true",
                   help="stop what an earlier demo left running with --keep-running in --workdir, and exit")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stop:
        workdir = Path(os.path.abspath(args.workdir))
        stopped = stop_left_running(workdir)
        old = read_pidfile(workdir / "registry" / "registry.pid")
        if old is not None and pid_alive(old) and looks_like_registry(old):
            stop_pid(old)
            stopped.append(f"registry (pid {old})")
        print("stopped: " + (", ".join(stopped) or "nothing was running"), flush=True)
        return 0
    demo = Demo(Path(os.path.abspath(args.workdir)), args.keep_running)
    print(f"regpatch demo in {demo.workdir}", flush=True)
    code = 0
    try:
        demo.run()
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        demo.keep_running = False
        code = 130
    except Exception as e:  # every failure ends the demo with one clear line
        print(f"\nFAILED at step {demo.step_no}/{STEPS}: {type(e).__name__}: {e}", file=sys.stderr)
        code = 1
    finally:
        try:
            demo.finish()
        except Exception as e:
            print(f"could not stop what the demo started: {e}", file=sys.stderr)
            code = code or 1
    if code == 0:
        print(f"\ndemo passed: all {STEPS} steps in {time.monotonic() - demo.t0:.1f}s", flush=True)
    return code

