"""The month's bundle found by itself: the newest bundle of a drop location (a folder, or an
``s3://`` prefix, where the shuttle side lands signed bundles, one per subfolder), by the
signed ``created`` time of its ``regpatch-bundle.json``.

A scheduled rollout given a drop location instead of a bundle takes the newest one, and
refuses (a UsageError, so the run is red and its message says why), before anything is
touched:

- a drop with no dated bundle (no subfolder with a ``regpatch-bundle.json``);
- the newest bundle unsigned, or signed by no trust key, when the inventory's registries
  have trust keys (its ``created`` time could be anyone's);
- the newest bundle older than the maximum age (last month's bundle again: the shuttle
  did not come);
- the newest bundle's image already served by every registry of the rollout under the
  tag, read in their storages (a registry whose storage is not on this host counts as not
  known to serve it, so a re-run of a partly failed rollout still goes on).

``choose_bundle`` returns the choice with one line for the operator; ``regpatch deployments
--check`` prints it, and the rollout logs it as its first step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional, Sequence

from regpatch.errors import RegpatchError, UsageError
from regpatch.fleet.inventory import RegistryEntry
from regpatch.options import opt
from regpatch.reference import Repository, Tag
from regpatch.signing.descriptor import DESCRIPTOR

DEFAULT_MAX_AGE_DAYS = 35.0  # a monthly drop: last month's bundle is refused


@dataclass(frozen=True)
class DropBundle:
    """One bundle of a drop location, as its descriptor dates it."""

    location: str                       # the bundle: a folder, or s3://bucket/prefix/NAME
    created: Optional[datetime] = None  # its regpatch-bundle.json's created (UTC)
    image: Optional[str] = None         # the digest of its image
    signed: bool = False                # it has a signature
    key: Optional[str] = None           # the trust key that verified it
    problem: Optional[str] = None       # why it cannot be dated

    def describe(self) -> str:
        when = self.created.strftime("%Y-%m-%dT%H:%M:%SZ") if self.created else "undated"
        how = f"signed, key {self.key}" if self.key else ("signed, not checked" if self.signed else "unsigned")
        return f"{self.location} (created {when}, {how}, image {self.image or '?'})"


@dataclass(frozen=True)
class Choice:
    bundle: DropBundle
    others: tuple[DropBundle, ...]
    served: dict[str, Optional[bool]]  # registry -> serves the image under the tag (None: storage not here)

    def summary(self) -> str:
        known = [n for n, v in self.served.items() if v]
        return (f"takes {self.bundle.describe()}: the newest of {1 + len(self.others)} bundle(s) in the drop; "
                f"{len(known)} of {len(self.served)} registries already serve its image")


def bundle_locations(drop: str, s3=None) -> list[str]:
    """The bundles of a drop location: its subfolders (or s3 sub-prefixes) that hold a
    ``regpatch-bundle.json``."""
    if drop.startswith("s3://"):
        from regpatch.bundle.s3 import S3Source  # boto3: imported only for an S3 drop

        prefix = drop.rstrip("/")
        names = S3Source(prefix, s3).list()
        return sorted(f"{prefix}/{name[:-len(DESCRIPTOR) - 1]}" for name in names
                      if name.endswith("/" + DESCRIPTOR) and name.count("/") == 1)
    require_drop(drop)
    return sorted(str(p.parent) for p in Path(drop).glob(f"*/{DESCRIPTOR}"))


def require_drop(drop: Optional[str]) -> None:
    """A drop location on this host is a folder (the shipped rollout deployment names
    /srv/shuttle/drop): one sentence naming the parameter and what to set, otherwise."""
    if drop and not drop.startswith("s3://") and not Path(drop).is_dir():
        raise UsageError(f"{opt.drop} is {drop}, which is not a folder on this host: set it to the folder (or "
                         "s3://bucket/prefix) where the signed bundles land, or leave it empty and give the bundle")


def read_bundle(location: str, trust_keys: Sequence[str], s3=None) -> DropBundle:
    """One bundle's date, image and signature (only its descriptor and signature are read)."""
    from regpatch.bundle.open import open_source  # the bundle readers: only when a drop is read
    from regpatch.signing.check import read_descriptor  # (the same)

    try:
        desc, signed, key = read_descriptor(open_source(location, s3=s3), trust_keys)
    except RegpatchError as e:
        return DropBundle(location, problem=str(e))
    if desc is None:
        return DropBundle(location, signed=signed, problem=f"no {DESCRIPTOR}")
    try:
        created = datetime.fromisoformat(desc.created.replace("Z", "+00:00"))
        created = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
    except ValueError:
        return DropBundle(location, image=str(desc.image.digest), signed=signed, key=key,
                          problem=f"its created time {desc.created!r} is not a date")
    return DropBundle(location, created.astimezone(timezone.utc), str(desc.image.digest), signed, key)


def served_by(entries: Sequence[RegistryEntry], repository: str, tag: str, image: str) -> dict[str, Optional[bool]]:
    """Whether each registry's storage serves ``image`` under the tag (None: its storage is
    not on this host, so not known)."""
    from regpatch.storage.store import RegistryStore  # (the storage package: only when a drop is read)

    repo, t = Repository.parse(repository), Tag.parse(tag)
    out: dict[str, Optional[bool]] = {}
    for e in entries:
        if not os.path.isdir(os.path.join(e.storage, "docker", "registry", "v2")):
            out[e.name] = None
            continue
        current = RegistryStore(e.storage).current_tag(repo, t)
        out[e.name] = current is not None and str(current) == image
    return out


def choose_bundle(drop: str, *, repository: str, tag: str, entries: Sequence[RegistryEntry],
                  max_age_days: float = DEFAULT_MAX_AGE_DAYS, now: Optional[datetime] = None,
                  s3=None) -> Choice:
    """The newest bundle of ``drop`` that a rollout of ``entries`` may take, or UsageError
    saying why none is (see the module docstring)."""
    trust_keys = sorted({k for e in entries for k in e.trust_keys})
    bundles = [read_bundle(loc, trust_keys, s3) for loc in bundle_locations(drop, s3)]
    dated = [b for b in bundles if b.created is not None and b.problem is None]
    if not dated:
        why = "; ".join(f"{b.location}: {b.problem}" for b in bundles) or "it is empty"
        raise UsageError(f"no bundle to roll out in the drop location {drop}: {why}")
    newest = max(dated, key=lambda b: (b.created, b.location))
    others = tuple(b for b in bundles if b is not newest)
    if trust_keys and newest.key is None:
        raise UsageError(f"the newest bundle of {drop}, {newest.describe()}, is not signed by a trust key of "
                         "the inventory: refused (its created time could be anyone's); sign it with "
                         "'regpatch bundle --sign-key' on the shuttle side")
    now = now or datetime.now(timezone.utc)
    assert newest.created is not None and newest.image is not None  # dated
    age = now - newest.created
    if age > timedelta(days=max_age_days):
        raise UsageError(f"the newest bundle of {drop}, {newest.describe()}, is {age.days} days old, more "
                         f"than the maximum age of {max_age_days:g} days: refused (did this month's shuttle "
                         "land?); raise the maximum age to take it anyway")
    served = served_by(entries, repository, tag, newest.image)
    if served and all(served.values()):
        raise UsageError(f"every registry of the rollout ({', '.join(served)}) already serves "
                         f"{repository}:{tag} = {newest.image}, the image of the newest bundle of {drop}, "
                         f"{newest.location}: refused, a stale drop must not look like a patch day")
    return Choice(newest, others, served)
