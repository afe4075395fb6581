"""Replay of an older signed bundle: refused unless asked for.

A signature proves who made a bundle, not that it is the newest one: an older signed
bundle carried in again (by mistake, or by someone who kept it) would roll the tag back
to last month's image with every check green. So the bundle's signed ``created`` time is
compared with the image the tag serves now: its config's ``created`` time (the image was
built after the bundle was made: the bundle is older than what the tag serves). A
deliberate rollback by bundle passes with ``--allow-downgrade``; ``regpatch rollback`` is
the usual way back.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Optional

from regpatch.digest import Digest
from regpatch.errors import ManifestError, RegpatchError
from regpatch.manifest import MAX_MANIFEST_SIZE, ImageIndex, load_json, parse_manifest
from regpatch.options import opt
from regpatch.reference import Repository, Tag
from regpatch.signing.check import BundleTrust
from regpatch.storage.store import RegistryStore

MAX_CONFIG = 16 << 20
MAX_CHILDREN = 64
_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", re.ASCII)


def parse_time(text: object) -> Optional[datetime]:
    """An RFC 3339 time as Go writes it (any number of fraction digits), or None."""
    if not isinstance(text, str):
        return None
    m = _TIME.fullmatch(text.strip())
    if not m:
        return None
    fraction = (m.group(2) or "")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return datetime.fromisoformat(f"{m.group(1)}.{fraction}{zone}").astimezone(timezone.utc)
    except ValueError:
        return None


def image_created(store: RegistryStore, digest: Digest) -> Optional[datetime]:
    """The newest ``created`` time of the configs of the image ``digest`` in the storage
    (an index: of its children), or None when the storage cannot say."""
    try:
        top = parse_manifest(store.read_blob(digest, MAX_MANIFEST_SIZE), what=f"manifest {digest}")
        images = [top]
        if isinstance(top, ImageIndex):
            images = [parse_manifest(store.read_blob(d.digest, MAX_MANIFEST_SIZE), what=f"manifest {d.digest}")
                      for d in top.manifests[:MAX_CHILDREN]]
        times = []
        for image in images:
            if isinstance(image, ImageIndex):
                continue
            doc = load_json(store.read_blob(image.config.digest, MAX_CONFIG), what=f"config {image.config.digest}",
                            strict_keys=False)
            t = parse_time(doc.get("created")) if isinstance(doc, dict) else None
            if t is not None:
                times.append(t)
        return max(times) if times else None
    except (RegpatchError, ManifestError, OSError):
        return None


def replay_refusal(trust: BundleTrust, store: RegistryStore, repository: Repository, tag: Tag,
                   current: Optional[Digest]) -> Optional[str]:
    """Why this signed bundle is older than the image ``repository:tag`` serves, or None."""
    desc = trust.descriptor
    if not trust.signed or desc is None or current is None or current == desc.image.digest:
        return None
    made = parse_time(desc.created)
    served = image_created(store, current)
    if made is None or served is None or made >= served:
        return None
    return (f"bundle {trust.bundle} was made {desc.created}, before the image {repository}:{tag} serves now "
            f"({current}, built {served.isoformat().replace('+00:00', 'Z')}): an older signed bundle would "
            f"roll the tag back; to do that on purpose pass {opt.allow_downgrade} (or use regpatch rollback)")
