#!/usr/bin/env python3
"""Benchmark: ``regpatch patch`` against cp, hashlib and skopeo (issues 6, 9, 14).

Not a test. In one run, on a generated bundle of ``--size`` bytes (default
2 GiB: a base layer of 75% and a delta layer of 25%, incompressible content,
gzip level 0), it times each of these ``--repeat`` times (default 3) and
prints median and spread (min-max):

- ``cp`` of the bundle's blobs into a folder on the registry's filesystem,
  and ``cp`` followed by ``sync FILE...`` (fsync of every copied file:
  regpatch fsyncs every file it writes), each measured right before a patch
  (a VM's disk drifts by tens of percent within minutes, so the ingest target
  is the median of the back-to-back ratios);
- Python ``hashlib`` sha256 over the same blobs (one thread, then one thread
  per blob), and ``sha256sum`` for reference;
- ``skopeo copy`` pushing the image from an OCI layout over HTTP into a
  fresh ``docker-registry`` (fresh storage each repetition);
- ``regpatch patch`` (the real CLI, a subprocess, without a Prefect API: the
  engine runs in the command's process) of the staged bundle into a fresh
  storage of a fresh registry; the start-up is the time of a ``regpatch patch``
  of a tiny bundle, so the table shows total, start-up and total minus start-up;
  "ingest" is the run's verify-digests + copy-blobs seconds (its report in the
  state folder);
- ``regpatch patch --consume`` of a copy of the bundle on the storage's
  filesystem (files renamed into the storage, hashed there: ingest = hashing);
- for information, the tiny patch with ``PREFECT_API_URL`` set to one
  ``prefect server start`` on 127.0.0.1 (a flow run, one task run per step);
- the verification pull alone (``RegistryClient.verify_image`` in this
  process) against ``skopeo copy docker://... dir:`` of the same image;
- a re-run of the already applied patch;
- peak RSS of the ``regpatch patch`` process (``wait4`` of that one child)
  at 256 MiB and at ``--size``.

Then it prints the issue's targets with the measured ratios and PASS/FAIL,
and the machine. Every process it starts is stopped and its registries are
removed; unless ``--keep``, a work folder it created is removed whole, and
in a ``--workdir`` given to it only ``logs/`` (one file per CLI run) is left.

    .venv/bin/python bench/bench.py [--size 2GiB] [--repeat 3] [--workdir DIR] [--quick] [--keep]

``--quick``: 64 MiB, one repetition (a smoke run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from regpatch.demo.images import make_image, make_layer, push_with_skopeo, write_oci_layout, write_staged_bundle
from regpatch.demo.loopback import LocalRegistry, free_port  # noqa: E402
from regpatch.registry.client import RegistryClient  # noqa: E402

REPO, TAG, REF = "servercore", "ltsc2019", "ltsc2019"
CHUNK = 4 << 20
MiB = 1 << 20


# --------------------------------------------------------------------------- small helpers

def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GiB, 256MiB)")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    return int(float(m.group(1)) * mult)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Proc:
    """A finished child process: wall seconds, peak RSS (bytes) of that child, exit code."""
    seconds: float
    maxrss: int
    returncode: int
    stdout: str
    stderr: str


def run_child(cmd: list[str], *, env: Optional[dict] = None, log_to: Optional[Path] = None,
              check: bool = True, timeout: float = 3600) -> Proc:
    """Run ``cmd``, time it, and take the peak RSS of exactly this child from
    ``wait4`` (ru_maxrss of one child and the descendants it waited for, not
    the max over every child this process ever had)."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = t0 + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            os.killpg(p.pid, signal.SIGKILL)
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.005)
    secs = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0), err.seek(0)
    so, se = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    out.close(), err.close()
    if log_to is not None:
        log_to.parent.mkdir(parents=True, exist_ok=True)
        log_to.write_text(f"$ {' '.join(cmd)}\n# exit {p.returncode}, {secs:.3f}s, maxrss "
                          f"{ru.ru_maxrss} KiB\n--- stdout\n{so}\n--- stderr\n{se}\n")
    if check and p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {' '.join(cmd[1:3])} ... failed (exit {p.returncode}):\n"
                           f"{so[-2000:]}\n{se[-4000:]}")
    return Proc(secs, ru.ru_maxrss * 1024, p.returncode, so, se)


_TS = r"^(\d\d):(\d\d):(\d\d\.\d+) \| \w+ +\| "


def flow_wall(stderr: str) -> Optional[float]:
    """Seconds from the flow run's 'Beginning flow run' log line to its 'Finished in state'
    line: the time inside the engine, without interpreter start, imports and exit."""
    def secs(m):
        return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    b = re.search(_TS + r"Flow run '[^']+' - Beginning flow run", stderr, re.M)
    e = None
    for e in re.finditer(_TS + r"Flow run '[^']+' - Finished in state", stderr, re.M):
        pass
    if not b or not e:
        return None
    d = secs(e) - secs(b)
    return d + 86400 if d < 0 else d


def staged_rates(stderr: str) -> list[str]:
    """The CLI's per-blob staging lines: 'staged bundle file X: N B verified as D in Ts (R MB/s)'."""
    return [f"{Path(m.group(1)).name} {m.group(2)} B in {m.group(3)}s ({m.group(4)} MB/s)"
            for m in re.finditer(r"staged bundle file (\S+): ([\d,]+) B verified as \S+ in ([\d.]+)s "
                                 r"\((\d+) MB/s\)", stderr)]


def sha256_file(path: Path) -> str:
    """hashlib sha256 of a file, read in CHUNK-sized pieces into one buffer (like regpatch)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- machine

def machine_info(workdir: Path) -> list[tuple[str, str]]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = human(int(line.split()[1]) * 1024)
    except OSError:
        pass
    fs = "?"
    try:
        fs = subprocess.run(["findmnt", "-T", str(workdir), "-no", "FSTYPE,SOURCE,TARGET"],
                            capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        pass
    def version(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("RAM", mem),
        ("workdir", f"{workdir} ({fs})"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("python", platform.python_version()),
        ("skopeo", version(["skopeo", "--version"])),
        ("docker-registry", version(["docker-registry", "--version"])),
        ("prefect", version([sys.executable, "-c", "import prefect; print(prefect.__version__)"])),
        ("load average", "%.2f %.2f %.2f" % os.getloadavg()),
    ]


# --------------------------------------------------------------------------- the bundle

@dataclass
class Bundle:
    size: int               # payload bytes asked for
    image: object           # SampleImage
    staged: Path
    layout: Path
    blob_files: list[Path]  # the bundle's blob files (layers, config)

    blob_bytes: int = 0     # their total size

    def __post_init__(self):
        self.blob_bytes = sum(p.stat().st_size for p in self.blob_files)

    @property
    def digest(self) -> str:
        return str(self.image.manifest_digest)


def _link(src: Path, dst: Path) -> None:
    """Hard-link src to dst (same filesystem), so the layout and the staged
    folder do not cost another copy of every layer; sample's writers keep
    files that already exist."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def build_bundle(folder: Path, size: int, *, seed: int) -> Bundle:
    folder.mkdir(parents=True, exist_ok=True)
    base_size = size * 3 // 4
    delta_size = size - base_size
    src = folder / "src"
    base = make_layer(src, "base.tar.gz", seed=seed, size=base_size, compresslevel=0)
    delta = make_layer(src, "delta.tar.gz", seed=seed + 1, size=delta_size, compresslevel=0)
    image = make_image(src, [base, delta], os="windows", os_version=f"10.0.17763.{seed}", seed=seed,
                       name="servercore")
    staged, layout = folder / "staged", folder / "layout"
    for layer, name in ((base, "base.tar.gz"), (delta, "delta.tar.gz")):
        _link(Path(layer.path), staged / name)
        _link(Path(layer.path), layout / "blobs" / "sha256" / layer.digest.hex)
    write_staged_bundle(staged, image)
    write_oci_layout(layout, {REF: image})
    blob_files = [staged / "base.tar.gz", staged / "delta.tar.gz", staged / "delta.tar.gz.config.json"]
    return Bundle(size, image, staged, layout, blob_files)


# --------------------------------------------------------------------------- Prefect server

class PrefectServer:
    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = home / "server.log"

    def start(self, env: dict, timeout: float = 120) -> float:
        self.home.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        import httpx
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"prefect server did not answer {self.url}/health in {timeout}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: server + uvicorn child
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # a child left in the group after the leader exited
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        self.proc = None


def report_steps(root: Path) -> dict[str, float]:
    """Per-step seconds from the newest run report in the storage's state folder."""
    reports = sorted((root / ".regpatch" / "reports").glob("*.md"))
    if not reports:
        return {}
    steps: dict[str, float] = {}
    part = reports[-1].read_text().split("## Time per step", 1)
    if len(part) == 2:
        for m in re.finditer(r"^\| ([^|]+?) \| ([0-9.]+) \|$", part[1], re.M):
            steps[m.group(1)] = float(m.group(2))
    return steps


# --------------------------------------------------------------------------- the benchmark

@dataclass
class Row:
    label: str
    values: list[float] = field(default_factory=list)
    nbytes: int = 0          # bytes moved, for MB/s
    note: str = ""
    unit: str = "s"

    def add(self, v: float) -> float:
        self.values.append(v)
        return v

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")


class Bench:
    def __init__(self, args):
        self.args = args
        self.size: int = args.size
        self.repeat: int = args.repeat
        self.rows: dict[str, Row] = {}
        self.registries: list[LocalRegistry] = []
        self.server: Optional[PrefectServer] = None
        self.steps: list[dict[str, float]] = []
        self.rss: dict[str, list[int]] = {}
        self.notes: list[str] = []
        self.staged_lines: list[list[str]] = []
        self.ingest_pairs: list[tuple[float, float]] = []  # (ingest s, cp+sync s) back to back
        self.n = 0

    # ---- bookkeeping
    def row(self, key: str, label: str, nbytes: int = 0, note: str = "", unit: str = "s") -> Row:
        if key not in self.rows:
            self.rows[key] = Row(label, nbytes=nbytes, note=note, unit=unit)
        return self.rows[key]

    def fresh_registry(self, name: str) -> LocalRegistry:
        self.n += 1
        reg = LocalRegistry(self.work / "registries" / f"{self.n:02d}-{name}")
        self.registries.append(reg)
        reg.start(timeout=30)
        return reg

    def drop_registry(self, reg: LocalRegistry) -> None:
        reg.stop()
        shutil.rmtree(reg.workdir, ignore_errors=True)

    def cli_env(self, server: bool = True) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(self.work / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PYTHONUNBUFFERED="1")
        if server and self.server is not None:
            env["PREFECT_API_URL"] = self.server.url
        return env

    def patch(self, bundle: Path, reg: LocalRegistry, label: str, server: bool = False, *extra: str) -> Proc:
        cmd = [str(Path(sys.executable).parent / "regpatch"), "patch", str(bundle), "--repository", REPO,
               "--tag", TAG, "--registry-config", str(reg.config_path), "--init", *extra]
        return run_child(cmd, env=self.cli_env(server), log_to=self.work / "logs" / f"{self.n:02d}-{label}.log")

    def tiny_patch(self, tiny: "Bundle") -> None:
        reg = self.fresh_registry("tiny")
        try:
            p = self.patch(tiny.staged, reg, "tiny")
            self.row("startup", "start-up: patch of a tiny bundle (no Prefect API)").add(p.seconds)
        finally:
            self.drop_registry(reg)

    def measure_cp(self, i: int) -> None:
        """cp and cp + sync of the bundle's blob files, measured right before each patch:
        the disk of a VM drifts by tens of percent, so the ingest is compared with the
        cp + sync of the same minute (a paired ratio) rather than with one taken earlier."""
        b: Bundle = self.bundle
        nb = b.blob_bytes
        dest = self.work / "cp-target"
        for key, label, sync in (("cp", "cp (blobs -> folder)", False),
                                 ("cp+sync", "cp + sync FILE... (fsync each)", True)):
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            run_child(["sync"])
            cmd = ["cp"] + [str(p) for p in b.blob_files] + [str(dest) + "/"]
            if sync:
                cmd = ["sh", "-c", shlex.join(cmd) + " && sync " + shlex.join(
                    [str(dest / p.name) for p in b.blob_files])]
            self.row(key, label, nb).add(run_child(cmd).seconds)
        shutil.rmtree(dest, ignore_errors=True)
        run_child(["sync"])
        log(f"cp {i + 1}: {self.rows['cp'].values[-1]:.2f}s, with sync {self.rows['cp+sync'].values[-1]:.2f}s")

    # ---- measurements
    def run(self) -> None:
        a = self.args
        self.work = Path(a.workdir).resolve() if a.workdir else Path(
            tempfile.mkdtemp(prefix="regpatch-bench-", dir="/var/tmp"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.created_work = not a.workdir
        self.machine = machine_info(self.work)
        log(f"workdir {self.work}")
        try:
            self._run()
        finally:
            self.cleanup()

    def _run(self) -> None:
        R = self.repeat
        log(f"building the bundle: {human(self.size)} (75% base, 25% delta), gzip level 0")
        t = timed(lambda: setattr(self, "bundle", build_bundle(self.work / "bundle", self.size, seed=7)))
        b: Bundle = self.bundle
        nb = b.blob_bytes
        log(f"bundle built in {t:.1f}s: {human(nb)} of blobs, manifest {b.digest}")
        tiny = build_bundle(self.work / "tiny", 8 << 10, seed=11)
        rss_size = 256 * MiB
        rss_bundle = build_bundle(self.work / "rss256", rss_size, seed=13) if rss_size != self.size else b

        log("starting prefect server")
        self.server = PrefectServer(self.work / "prefect-home")
        self.server_start = self.server.start(self.cli_env(server=False))
        log(f"prefect server at {self.server.url} in {self.server_start:.1f}s")

        # warm the page cache once so every contender reads from memory alike
        for p in b.blob_files:
            with open(p, "rb") as f:
                while f.read(CHUNK):
                    pass

        # 2. hashlib (one thread; one thread per blob), sha256sum
        def hash_all():
            for p in b.blob_files:
                sha256_file(p)

        def hash_parallel():
            ts = [threading.Thread(target=sha256_file, args=(p,)) for p in b.blob_files]
            for t_ in ts:
                t_.start()
            for t_ in ts:
                t_.join()

        for i in range(R):
            self.row("hashlib", "hashlib sha256, 1 thread", nb).add(timed(hash_all))
            self.row("hashlib2", "hashlib sha256, 1 thread per blob", nb).add(timed(hash_parallel))
            self.row("sha256sum", "sha256sum (reference)", nb).add(
                run_child(["sha256sum"] + [str(p) for p in b.blob_files]).seconds)
            log(f"hash {i + 1}/{R}: hashlib {self.rows['hashlib'].values[-1]:.2f}s")

        # 3. skopeo push into a fresh registry
        for i in range(R):
            reg = self.fresh_registry("skopeo-push")
            try:
                self.row("push", "skopeo copy oci: -> docker:// (push)", nb).add(
                    timed(lambda: push_with_skopeo(b.layout, REF, reg.host, REPO, TAG, timeout=3600)))
            finally:
                self.drop_registry(reg)
            log(f"skopeo push {i + 1}/{R}: {self.rows['push'].values[-1]:.2f}s")

        # 4. start-up: a patch of a tiny bundle without a Prefect API, and (info) with the server;
        #    more tiny patches are interleaved with the big ones below (the load drifts)
        for i in range(max(R, 3)):
            self.tiny_patch(tiny)
        for i in range(max(R, 3)):
            reg = self.fresh_registry("tiny-server")
            try:
                p = self.patch(tiny.staged, reg, "tiny-server", True)
                self.row("startup-api", "start-up with PREFECT_API_URL (a flow run; info)").add(p.seconds)
                fw = flow_wall(p.stderr)
                if fw is not None:
                    self.row("startup-flow", "  of which: its flow run (log: Beginning->Finished)").add(fw)
            finally:
                self.drop_registry(reg)
        log(f"start-up: {self.rows['startup'].values}, with the API {self.rows['startup-api'].values}")

        # 5. regpatch patch, verification pull, skopeo pull to dir:, re-run
        for i in range(R):
            if i:
                self.tiny_patch(tiny)
            self.measure_cp(i)
            reg = self.fresh_registry("patch")
            try:
                p = self.patch(b.staged, reg, "patch")
                self.staged_lines.append(staged_rates(p.stderr))
                if "patched" not in p.stdout:
                    raise RuntimeError(f"regpatch did not patch: {p.stdout}")
                steps = report_steps(reg.root)
                self.steps.append(steps)
                self.rss.setdefault("default", []).append(p.maxrss)
                self.row("patch", "regpatch patch (CLI), total", nb).add(p.seconds)
                ingest = steps.get("verify-digests", 0) + steps.get("copy-blobs", 0)
                if ingest > 0:
                    self.row("ingest", "regpatch ingest (verify-digests + copy-blobs)", nb).add(ingest)
                    self.ingest_pairs.append((ingest, self.rows["cp+sync"].values[-1]))
                log(f"patch {i + 1}/{R}: {p.seconds:.2f}s, rss {human(p.maxrss)}, steps {steps}")

                with RegistryClient(reg.url, insecure=True) as client:
                    self.row("verify", "verification pull (verify_image, in-process)", nb).add(
                        timed(lambda: client.verify_image(REPO, TAG, b.image.manifest_digest)))
                pulled = self.work / "pulled"
                shutil.rmtree(pulled, ignore_errors=True)
                self.row("pull", "skopeo copy docker:// -> dir:", nb).add(run_child(
                    ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                     f"docker://{reg.host}/{REPO}:{TAG}", f"dir:{pulled}"], timeout=3600).seconds)
                shutil.rmtree(pulled, ignore_errors=True)

                p2 = self.patch(b.staged, reg, "rerun")
                if "nothing to do" not in p2.stdout:
                    self.notes.append(f"re-run {i + 1} did not say 'nothing to do': {p2.stdout.strip()}")
                self.row("rerun", "re-run of the applied patch, total").add(p2.seconds)
                self.rerun_steps = report_steps(reg.root)
                log(f"verify {self.rows['verify'].values[-1]:.2f}s, skopeo pull {self.rows['pull'].values[-1]:.2f}s, "
                    f"re-run {p2.seconds:.2f}s")
            finally:
                self.drop_registry(reg)

            # --consume: a copy of the bundle on the storage's filesystem is taken, not copied
            reg = self.fresh_registry("consume")
            taken = self.work / "registries" / "consume-bundle"
            try:
                shutil.rmtree(taken, ignore_errors=True)
                run_child(["cp", "-r", str(b.staged), str(taken)])
                run_child(["sync"])
                p = self.patch(taken, reg, "consume", False, "--consume")
                steps = report_steps(reg.root)
                ingest = steps.get("verify-digests", 0) + steps.get("copy-blobs", 0)
                if ingest > 0:
                    self.row("consume", "regpatch ingest with --consume (rename + hash)", nb).add(ingest)
                self.rss.setdefault("default", []).append(p.maxrss)
                log(f"consume {i + 1}/{R}: ingest {ingest:.2f}s, total {p.seconds:.2f}s")
            finally:
                self.drop_registry(reg)
                shutil.rmtree(taken, ignore_errors=True)

        # "minus start-up" with the median of every tiny patch (interleaved with the big ones)
        startup = self.rows["startup"].median
        net = {}
        for key, label, src in (("patch-net", "regpatch patch minus start-up", "patch"),
                                ("rerun-net", "re-run minus start-up", "rerun")):
            net[key] = Row(label, [v - startup for v in self.rows[src].values], nbytes=self.rows[src].nbytes)
        rows = {}
        for k, r in self.rows.items():
            rows[k] = r
            if k == "patch":
                rows["patch-net"] = net["patch-net"]
            if k == "rerun":
                rows["rerun-net"] = net["rerun-net"]
        self.rows = rows

        # 6. peak RSS at 256 MiB (one fresh run; at the default size it is taken from the runs above)
        if rss_bundle is not b:
            reg = self.fresh_registry("rss256")
            try:
                p = self.patch(rss_bundle.staged, reg, "rss256")
                self.rss["256MiB"] = [p.maxrss]
                log(f"patch of 256 MiB: {p.seconds:.2f}s, rss {human(p.maxrss)}")
            finally:
                self.drop_registry(reg)
        else:
            self.rss["256MiB"] = self.rss["default"]
        self.machine.append(("load average at end", "%.2f %.2f %.2f" % os.getloadavg()))

    # ---- output
    def report(self) -> str:
        out = []
        R = self.repeat
        out.append(f"regpatch benchmark: bundle {human(self.size)} payload ({human(self.bundle.blob_bytes)} "
                   f"of blobs: base 75%, delta 25%, incompressible, gzip level 0), {R} repetition(s)")
        out.append("")
        w = max(len(r.label) for r in self.rows.values())
        head = f"{'measurement':<{w}}  {'median s':>9}  {'min-max s':>15}  {'MB/s':>7}  n"
        out.append(head)
        out.append("-" * len(head))
        for r in self.rows.values():
            if not r.values:
                continue
            mbs = f"{r.nbytes / 1e6 / r.median:7.0f}" if r.nbytes and r.median > 0 else " " * 7
            spread = f"{min(r.values):.2f}-{max(r.values):.2f}"
            out.append(f"{r.label:<{w}}  {r.median:9.2f}  {spread:>15}  {mbs}  {len(r.values)}")
        out.append("")
        out.append(f"prefect server start (once, until /api/health answers): {self.server_start:.1f}s")
        out.append(f"peak RSS of the regpatch patch process (wait4 ru_maxrss of that child): "
                   f"256 MiB bundle {', '.join(human(x) for x in self.rss.get('256MiB', []))}; "
                   f"{human(self.size)} bundle " + ", ".join(human(x) for x in self.rss.get("default", [])))
        out.append("")
        if self.steps:
            names = list(self.steps[0])
            out.append("regpatch per-step seconds (from the run's report, 'Time per step'), per repetition:")
            out.append("  " + "  ".join(f"{n:>16}" for n in names))
            for s in self.steps:
                out.append("  " + "  ".join(f"{s.get(n, float('nan')):16.3f}" for n in names))
            for i, lines in enumerate(self.staged_lines):
                out.append(f"  rep {i + 1} staging (CLI log): " + "; ".join(lines))
            if getattr(self, "rerun_steps", None):
                out.append("re-run per-step seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in self.rerun_steps.items()))
            out.append("")

        # targets
        m = lambda k: self.rows[k].median if k in self.rows and self.rows[k].values else float("nan")
        nb = self.bundle.blob_bytes
        targets = []
        out_floor = None
        floor2 = m("hashlib2")  # sha256 of the same bytes on both cores (one thread per blob)
        if self.ingest_pairs:
            # throughput ratio = cp+sync seconds / ingest seconds, per repetition (measured
            # back to back), and its median
            ratios = sorted(c / i for i, c in self.ingest_pairs)
            r = statistics.median(ratios)
            pairs = ", ".join(f"{i:.2f}s vs {c:.2f}s" for i, c in self.ingest_pairs)
            targets.append((f"ingest throughput >= 0.9 x cp + sync, back to back  [ingest vs cp+sync: {pairs}; "
                            f"medians {nb / m('ingest') / 1e6:.0f} vs {nb / m('cp+sync') / 1e6:.0f} MB/s]",
                            r, r >= 0.9))
            out_floor = (f"  info  hash floor: sha256 of the same bytes takes {m('hashlib'):.2f}s on one core, "
                         f"{floor2:.2f}s on both (one thread per blob: bound by the largest blob)")
        if "consume" in self.rows:
            r = floor2 / m("consume")
            targets.append((f"ingest with --consume >= 0.8 x the hash floor on both cores  [{m('consume'):.2f}s "
                            f"vs {floor2:.2f}s]", r, r >= 0.8))
        r = m("patch-net") / m("push")
        targets.append((f"patch - start-up <= 0.5 x skopeo push  [{m('patch-net'):.2f}s vs {m('push'):.2f}s]", r, r <= 0.5))
        r = m("verify") / m("pull")
        targets.append((f"verification pull <= 0.5 x skopeo copy to dir:  [{m('verify'):.2f}s vs {m('pull'):.2f}s]",
                        r, r <= 0.5))
        r = m("rerun-net") / m("patch-net")
        targets.append((f"re-run - start-up <= 10% of first run - start-up  [{m('rerun-net'):.2f}s vs "
                        f"{m('patch-net'):.2f}s]", r, r <= 0.10))
        for k, label in (("256MiB", "256 MiB"), ("default", human(self.size))):
            if not self.rss.get(k):
                continue
            peak = max(self.rss[k])
            targets.append((f"peak RSS <= 200 MB at {label}  [{peak / 1e6:.0f} MB]", peak / 200e6, peak <= 200e6))
        out.append("targets (ratio = measured / reference; PASS when within the target):")
        for text, ratio, ok in targets:
            out.append(f"  {'PASS' if ok else 'FAIL'}  ratio {ratio:5.2f}  {text}")
        if out_floor:
            out.append(out_floor)
        out.append(f"  info  start-up (patch of an {human(8 << 10)} bundle): {m('startup'):.2f}s without a Prefect "
                   f"API, {m('startup-api'):.2f}s with PREFECT_API_URL (its flow run {m('startup-flow'):.2f}s)")
        out.append("")
        out.append("machine:")
        for k, v in self.machine:
            out.append(f"  {k:<20} {v}")
        out.append(f"  command              {' '.join([Path(sys.executable).name] + sys.argv)}")
        for n in self.notes:
            out.append(f"note: {n}")
        return "\n".join(out)

    def cleanup(self) -> None:
        for reg in self.registries:
            try:
                reg.stop()
            except Exception as e:  # noqa: BLE001
                log(f"stopping {reg}: {e}")
            shutil.rmtree(reg.workdir, ignore_errors=True)
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.work / "registries", ignore_errors=True)
        shutil.rmtree(self.work / "cp-target", ignore_errors=True)
        shutil.rmtree(self.work / "pulled", ignore_errors=True)
        if not self.args.keep:
            if self.created_work:
                shutil.rmtree(self.work, ignore_errors=True)
            else:
                for d in ("bundle", "tiny", "rss256", "prefect-home"):
                    shutil.rmtree(self.work / d, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=2 << 30, help="bundle payload (default 2GiB)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions of each measurement (default 3)")
    ap.add_argument("--workdir", help="work folder (default: a new folder under /var/tmp, removed at the end)")
    ap.add_argument("--quick", action="store_true", help="64 MiB, one repetition: a smoke run")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (bundles, logs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.repeat = 64 * MiB, 1
    bench = Bench(args)
    try:
        bench.run()
    except BaseException:
        if getattr(bench, "bundle", None) is not None and bench.rows:
            try:
                print("PARTIAL RESULTS (the run failed):\n" + bench.report(), flush=True)
            except Exception:  # noqa: BLE001
                pass
        raise
    print(bench.report(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
