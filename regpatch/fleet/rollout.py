"""Rollouts: one bundle to many registries, in waves.

``run_rollout`` is the whole orchestration in plain Python: waves in the order
their groups first appear, up to ``max_parallel`` registries of a wave at once, a
wave with a failed registry stops the later waves. A re-run patches every registry
again: the engine re-checks its storage (on its host for a ``work_pool``) and writes
nothing where the bundle is already complete, so a storage re-created, restored,
garbage-collected or damaged since is repaired; only a registry rolled back since
this rollout patched it (the storage's history says so) is left as it is. How one
registry is patched is the caller's ``patch_one`` (the engine here, or a Prefect
deployment run on the registry's host); it never raises. The command line runs it
without Prefect; the rollout flow runs it with each registry as a task run, and may
hold something for a whole wave (``around_wave``: the Prefect slots of the wave's
registries on other hosts, taken in one request).

The state file remembers which registries this rollout finished (for the
rollback rule above, and for the operator); it never makes a run skip a check
of the storage. It is a small JSON file per (repository, tag, bundle digest) in the
state folder (``--state-dir``, by default ``.regpatch-rollouts/`` beside the
inventory), written once before the first registry (a folder that cannot be
written fails the rollout before anything changes) and atomically after every
registry.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Optional

from regpatch import engine, platform
from regpatch.engine.requests import patch_request
from regpatch.engine.results import change_rows
from regpatch.errors import Interrupted, RegpatchError, UsageError
from regpatch.fleet.inventory import Inventory, RegistryEntry
from regpatch.options import MAX_PARALLEL, inventory_namer, opt, wording
from regpatch.platform.ownfiles import read_own_file
from regpatch.progress import human
from regpatch.registry.target import RegistryTarget
from regpatch.storage.history import read_history
from regpatch.storage.store import RegistryStore, docker_tree_holding
from regpatch.tables import CompactTable, cell, shorten

log = logging.getLogger("regpatch.rollout")

PATCHED, UP_TO_DATE, DRY_RUN, FAILED, SKIPPED, NOT_RUN = (
    "patched", "up-to-date", "dry-run", "failed", "skipped", "not-run")
FINISHED = (PATCHED, UP_TO_DATE)
STATE_DIR_NAME = ".regpatch-rollouts"


@dataclass
class RegistryOutcome:
    """What happened to one registry of a rollout."""

    name: str
    group: str
    where: str
    status: str
    old: Optional[str] = None
    new: Optional[str] = None
    bytes_copied: Optional[int] = None
    seconds: Optional[float] = None
    error: Optional[str] = None
    flow_run: Optional[str] = None
    note: Optional[str] = None

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def __repr__(self) -> str:  # what an orchestrator's log line shows of a result
        return f"RegistryOutcome({self.name}: {self.status})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RegistryOutcome":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def row(self) -> dict:
        """One row of the summary table (artifact and terminal)."""
        return {
            "registry": self.name,
            "group": self.group,
            "where": self.where,
            "status": self.status,
            "old → new": f"{_short(self.old) or '(new tag)'} → {_short(self.new) or '?'}"
                         if self.status in (PATCHED, DRY_RUN) else (_short(self.new) or ""),
            "bytes copied": "" if self.bytes_copied is None else human(self.bytes_copied),
            "seconds": "" if self.seconds is None else f"{self.seconds:.1f}",
            "error": self.error or self.note or "",
        }


def _short(digest: Optional[str]) -> Optional[str]:
    if not digest:
        return None
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}" if hexpart else digest


class RolloutFailed(RegpatchError):
    """At least one registry of a rollout failed; carries every outcome (exit 7)."""

    exit_code = 7

    def __init__(self, outcomes: list[RegistryOutcome]):
        self.outcomes = outcomes
        failed = [o.name for o in outcomes if o.failed]
        not_run = [o.name for o in outcomes if o.status == NOT_RUN]
        msg = f"{len(failed)} of {len(outcomes)} registries failed: {', '.join(failed)}"
        if not_run:
            msg += f"; not run (an earlier wave failed): {', '.join(not_run)}"
        super().__init__(msg + "; run the same rollout again to retry them (the others are only checked)")

    def __reduce__(self):
        return (type(self), (self.outcomes,))


def render_table(outcomes: list[RegistryOutcome]) -> str:
    """A plain-text table, one line per registry."""
    rows = [o.row() for o in outcomes]
    if not rows:
        return "(no registries)\n"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = lambda r: "  ".join(str(r[c]).ljust(width[c]) for c in cols).rstrip()  # noqa: E731
    out = [line({c: c for c in cols}), "  ".join("-" * width[c] for c in cols)]
    out += [line(r) for r in rows]
    return "\n".join(out) + "\n"


def render_markdown(outcomes: list[RegistryOutcome], title: str, change=None, error: Optional[str] = None,
                    image: Optional[str] = None) -> str:
    """The table (``regpatch.tables``: compact digests, the full ones under it), then each failed
    registry's whole error (its cell is cut); ``change``: who asked for the rollout and why
    (``ChangeParams``); ``error``: the rollout's own, when it stopped before any registry; ``image``:
    the bundle's digest, in full under the title (which shows it compact: a heading never wraps it)."""
    lines = [f"# {title}", ""] + ([f"Image `{image}`", ""] if image else [])
    if change is not None:
        lines += ["| | |", "|---|---|", *change_rows(change).splitlines(), ""]
    table = CompactTable(("registry", "group", "where", "status", "old → new", "copied", "seconds"),
                         right=("copied", "seconds"))
    for o in outcomes:
        r = o.row()
        moved = f"{table.digest(o.old, '(new tag)')} → {table.digest(o.new, '?')}" \
            if o.status in (PATCHED, DRY_RUN) else table.digest(o.new, "")
        table.add(cell(o.name), cell(o.group), cell(shorten(o.where, 24)), cell(o.status), moved, r["bytes copied"],
                  r["seconds"])
        if o.note and not o.error:  # an error is in full under ## Errors
            table.detail(o.name, o.note)
    lines += table.lines()
    failed = [o for o in outcomes if o.failed]
    if failed:
        lines += ["", "## Errors", ""]
        lines += [f"- **{o.name}**: {o.error}" for o in failed]
    if error:
        lines += ["## Error", "", error, "", "No registry was touched: the rollout stopped before its first wave."]
    return "\n".join(lines) + "\n"


def tag_state(moved: bool, old: Optional[str] = None, error: str = "") -> str:
    """Where a failed patch left the tag: a patch moves it only after the new image was
    proven, so it moved only when the failure came after that (the registry then
    serving something else, say). Empty when the error already says it (the engine put
    the tag back after the flip)."""
    if "the tag was put back" in error:
        return ""
    if moved:
        return "the tag was moved to the new image before the failure"
    return "the tag was not moved" + (f": it still points at {old}" if old else "")


def check_change_for_workers(change, entries: list[RegistryEntry],
                             how: str = "patched through their patch-registry deployments") -> None:
    """A registry on a work pool is patched (maintained) through its deployment, whose
    schema (the run form's) requires a reason: refused here, before anything runs, rather
    than by the API at the registry's turn."""
    pooled = [e.name for e in entries if e.work_pool]
    if pooled and (change is None or not change.reason):
        raise UsageError(f"registries {', '.join(pooled)} are {how}, "
                         f"which require a reason: give {opt.reason} (e.g. the change ticket)")


def check_state_dir(state_dir: Path, entries: list[RegistryEntry]) -> None:
    """The rollout's state folder must not be inside a registry's storage tree (the
    registry would take its files for repositories), like a patch's ``--state-dir``."""
    for e in entries:
        if e.work_pool:
            continue  # a path on another host
        base = docker_tree_holding(Path(e.storage), state_dir)
        if base is not None:
            raise UsageError(f"{opt.state_dir} {state_dir} is inside the storage tree {base} of registry "
                             f"{e.name}; the registry would take the rollout's files for repositories: "
                             "choose a folder outside every registry's docker/")


class RolloutState:
    """The JSON file that remembers which registries finished this rollout.

    It only remembers: it never decides that a registry is done (the storage does, at
    every run). What it adds is intent: a registry this rollout finished and that was
    rolled back since (``regpatch rollback``, in the storage's history) is not patched
    again behind the operator's back."""

    MAX_BYTES = 4 << 20  # a few hundred bytes per registry: anything larger is not ours

    def __init__(self, state_dir: Path, repository: str, tag: str, digest: str):
        key = hashlib.sha256(f"{repository}\0{tag}\0{digest}".encode()).hexdigest()[:12]
        # a readable prefix, bounded: a 255-character repository and a 128-character tag
        # must still make a file name the filesystem takes
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{repository}-{tag}")[:80]
        self.path = Path(state_dir) / f"rollout-{safe}-{key}.json"
        self.repository, self.tag, self.digest = repository, tag, digest
        self._lock = threading.Lock()
        self.registries: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        """The finished registries of the file, or nothing when the file is missing, of
        another bundle, or not what this code writes (it is then rewritten): forgetting
        costs a re-check of the storage, never a wrong skip."""
        try:
            raw = read_own_file(self.path, self.MAX_BYTES, what="rollout state file")
            if raw is None:
                return {}
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("digest") != self.digest:
                return {}
            regs = doc.get("registries")
            if not isinstance(regs, dict):
                raise ValueError("'registries' is not an object")
            good = {}
            for name, d in regs.items():
                if isinstance(d, dict) and all(isinstance(d.get(k), str) for k in ("group", "where", "status")):
                    RegistryOutcome.from_dict(d)  # raises TypeError when it is not one
                    good[name] = d
            return good
        except (RegpatchError, OSError, ValueError, TypeError, RecursionError) as e:
            log.warning("rollout state file %s is not usable (%s): every registry is re-checked",
                        self.path, (str(e).splitlines() or [type(e).__name__])[0][:200])
            return {}

    @classmethod
    def load_doc(cls, path: Path) -> Optional[dict]:
        """The JSON object of a rollout state file, or None when it is missing, not a
        regular file, too large or not a JSON object (read for ``regpatch status``)."""
        try:
            raw = read_own_file(path, cls.MAX_BYTES, what="rollout state file")
            doc = json.loads(raw) if raw is not None else None
        except (RegpatchError, OSError, ValueError, RecursionError):
            return None
        return doc if isinstance(doc, dict) else None

    @staticmethod
    def default_dir(inventory: Path) -> Path:
        return Path(inventory).resolve().parent / STATE_DIR_NAME

    def check_writable(self) -> None:
        """Write the file once before any registry is patched: a state folder that cannot
        be written fails the rollout before it changes anything."""
        with self._lock:
            try:
                self._write()
            except OSError as e:
                raise UsageError(f"the rollout state folder {self.path.parent} cannot be written "
                                 f"({e.strerror or type(e).__name__}); give a writable {opt.state_dir}") from None

    def finished(self, name: str) -> Optional[RegistryOutcome]:
        """The earlier outcome when that registry finished with this bundle."""
        d = self.registries.get(name)
        if d and d.get("status") in FINISHED and d.get("new") == self.digest:
            return RegistryOutcome.from_dict(d)
        return None

    def rolled_back_since(self, entry: RegistryEntry) -> Optional[str]:
        """When the storage's history (readable from here) says the tag was last moved by
        a rollback away from this bundle's digest: that entry's time; else None."""
        if entry.work_pool:
            return None
        try:
            entries = read_history(RegistryStore(entry.storage).layout, self.repository, self.tag)
        except (RegpatchError, OSError, ValueError):
            return None
        if entries and entries[-1].action == "rollback" and entries[-1].old == self.digest:
            return entries[-1].time
        return None

    def record(self, outcome: RegistryOutcome) -> None:
        with self._lock:
            if outcome.status in (SKIPPED, NOT_RUN, DRY_RUN):
                return
            self.registries[outcome.name] = outcome.to_dict()
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"repository": self.repository, "tag": self.tag, "digest": self.digest,
               "registries": self.registries}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            platform.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --------------------------------------------------------------------------- orchestration

PatchOne = Callable[[RegistryEntry], RegistryOutcome]
AroundWave = Callable[[list[RegistryEntry]], ContextManager[object]]


def run_rollout(entries: list[RegistryEntry], patch_one: PatchOne, *, state: RolloutState,
                max_parallel: int = 4, dry_run: bool = False,
                around_wave: Optional[AroundWave] = None) -> list[RegistryOutcome]:
    """Patch ``entries`` in waves with ``patch_one``; the outcomes in inventory order.
    ``around_wave(todo)`` is entered before a wave's first registry and left after its
    last (not for a wave with nothing to do)."""
    if not 1 <= max_parallel <= MAX_PARALLEL:
        raise UsageError(f"{opt.max_parallel} must be between 1 and {MAX_PARALLEL}, not {max_parallel}")
    if not dry_run:
        state.check_writable()
    outcomes: dict[str, RegistryOutcome] = {}
    stopped_by: Optional[str] = None
    for group, members in Inventory.waves(entries):
        if stopped_by:
            for e in members:
                outcomes[e.name] = RegistryOutcome(e.name, e.wave, e.where, NOT_RUN,
                                                   note=f"not run: wave {stopped_by!r} failed")
            continue
        todo: list[RegistryEntry] = []
        for e in members:
            earlier = None if dry_run else state.finished(e.name)
            rolled_back = state.rolled_back_since(e) if earlier else None
            if rolled_back:
                outcomes[e.name] = RegistryOutcome(
                    e.name, e.wave, e.where, SKIPPED,
                    note=f"rolled back since this rollout patched it ({rolled_back}); not patched again "
                         f"(regpatch patch re-applies it)")
                continue
            if earlier:
                # the state file only remembers: the engine re-checks every blob and link of the
                # storage (on the registry's host for a work_pool) and writes nothing when all
                # are there; a storage re-created, restored, collected or damaged since is repaired
                log.info("%s: finished in an earlier run of this rollout; its storage is checked again",
                         e.name)
            todo.append(e)
        log.info("wave %r: %d to patch or check, %d rolled back since", group, len(todo), len(members) - len(todo))
        with around_wave(todo) if around_wave and todo else contextlib.nullcontext():
            for outcome in _run_wave(todo, patch_one, max_parallel):
                outcomes[outcome.name] = outcome
                if not dry_run:
                    state.record(outcome)
        if any(outcomes[e.name].failed for e in members):
            stopped_by = group
            log.error("wave %r failed: later waves are not run", group)
    return [outcomes[e.name] for e in entries]


def _guarded(patch_one: PatchOne, entry: RegistryEntry) -> RegistryOutcome:
    t0 = time.monotonic()
    try:
        outcome = patch_one(entry)
    except Interrupted:
        raise
    except Exception as e:  # noqa: BLE001 - one registry never harms the others
        outcome = RegistryOutcome(entry.name, entry.wave, entry.where, FAILED, error=_one_line(e))
    if outcome.seconds is None:
        outcome.seconds = round(time.monotonic() - t0, 1)
    if outcome.failed:
        log.error("%s: failed: %s", entry.name, outcome.error)
    else:
        log.info("%s: %s %s -> %s", entry.name, outcome.status, outcome.old or "(new tag)", outcome.new)
    return outcome


def _one_line(e: BaseException) -> str:
    return str(e) if isinstance(e, RegpatchError) else f"{type(e).__name__}: {' '.join(str(e).split())}"


def _run_wave(todo: list[RegistryEntry], patch_one: PatchOne, max_parallel: int) -> Iterator[RegistryOutcome]:
    """At most ``max_parallel`` at once; each in a thread that carries the caller's
    context (an orchestrator's run context travels with it)."""
    if not todo:
        return
    with ThreadPoolExecutor(max_workers=min(max_parallel, len(todo)), thread_name_prefix="rollout") as pool:
        pending = {pool.submit(contextvars.copy_context().run, _guarded, patch_one, e) for e in todo}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()


def outcome_of(entry: RegistryEntry, result=None, error: Optional[BaseException] = None) -> RegistryOutcome:
    """A registry's outcome from an engine ``PatchResult`` (or the error it raised)."""
    if error is not None:
        text, result = _one_line(error), getattr(error, "result", None)
        where = "" if getattr(result, "dry_run", False) else tag_state(  # no result: failed before the plan
            bool(getattr(result, "tag_moved", False)), getattr(result, "old", None), text)
        text += f"; {where}" if where else ""
        return RegistryOutcome(entry.name, entry.wave, entry.where, FAILED, error=text)
    status = DRY_RUN if result.dry_run else (PATCHED if result.changed else UP_TO_DATE)
    return RegistryOutcome(entry.name, entry.wave, entry.where, status, old=result.old, new=result.new,
                           bytes_copied=result.bytes_copied)


@dataclass
class PatchedHere:
    """A registry patched by this process: its outcome, and what a caller may publish (the
    engine's result, None when it failed before its plan; the registry it patched)."""

    outcome: RegistryOutcome
    result: Optional[engine.PatchResult] = None
    target: Optional[RegistryTarget] = None


def patch_here(entry: RegistryEntry, *, bundle: str, repository: str, tag: str, image: Optional[str] = None,
               verify_command: Optional[str] = None, dry_run: bool = False, s3=None,
               observer=None, change=None) -> PatchedHere:
    """Run the engine in this process for one registry; its messages name options as the
    registry's inventory entry writes them. Never raises but ``Interrupted``."""
    done = PatchedHere(RegistryOutcome(entry.name, entry.wave, entry.where, FAILED))
    try:
        with wording(inventory_namer(entry.name)):
            request = patch_request(bundle=bundle, repository=repository, tag=tag,
                                    registry=entry.registry_params(), verify=entry.verify_params(verify_command),
                                    image=image, dry_run=dry_run, s3=s3, trust=entry.trust_params(),
                                    change=change)
            done.target = request.target
            done.result = engine.patch(request, observer)
            done.outcome = outcome_of(entry, done.result)
    except Interrupted:
        raise
    except RegpatchError as e:
        done.result = getattr(e, "result", None)
        done.outcome = outcome_of(entry, error=e)
    return done


def engine_patcher(*, bundle: str, repository: str, tag: str, image: Optional[str] = None,
                   verify_command: Optional[str] = None, dry_run: bool = False, s3=None,
                   observer=None, change=None) -> PatchOne:
    """``patch_one`` that runs the engine in this process for each registry (``patch_here``)."""
    def patch_one(entry: RegistryEntry) -> RegistryOutcome:
        return patch_here(entry, bundle=bundle, repository=repository, tag=tag, image=image,
                          verify_command=verify_command, dry_run=dry_run, s3=s3, observer=observer,
                          change=change).outcome

    return patch_one
