"""A real registry ``PUT`` of a tag racing regpatch's tag flip, over and over, for a bounded time.

Each round: the registry itself sets the tag to image A (``PUT /v2/<repo>/manifests/<tag>``);
then, from a common start, one thread PUTs image C on the same tag (another writer's push)
while this thread flips the tag from A to B with ``flip`` (regpatch's compare-and-swap, the
function under test), the PUT started a random moment before or after the flip so that its
writes land before, inside and after the flip's window. Each round ends in one of:

* refused   the flip saw the push before writing and refused (TagMoved): nothing lost;
* detected  the flip saw the push land while it moved the tag (TagRaced, 'raced' in the history);
* after     the flip finished, then the push set the tag to C: the push came later, nothing lost;
* quiet     the flip finished and the push had not started writing (the PUT came later still);
* LOST      the flip finished without a word, the PUT answered 201, and the tag holds B: the
            push was overwritten silently. Must never happen.

``provoked`` counts the rounds where the PUT was in flight while the flip ran (the two
intervals overlap). Used by tests/e2e/test_tag_race.py, and runnable against older code.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from regpatch import errors
from regpatch.digest import Digest
from regpatch.reference import Repository, Tag


@dataclass
class RaceCounts:
    rounds: int = 0
    provoked: int = 0
    refused: int = 0
    detected: int = 0
    detected_ours: int = 0     # detected, and the tag holds regpatch's digest (the push would have been lost)
    detected_theirs: int = 0   # detected, and the tag holds the push's digest (it landed over the flip)
    after: int = 0
    quiet: int = 0
    lost: int = 0
    put_failed: int = 0
    seconds: float = 0.0
    put_ms: float = 0.0
    lost_rounds: list[int] = field(default_factory=list)

    def line(self) -> str:
        return (f"rounds {self.rounds} in {self.seconds:.0f}s (a PUT takes {self.put_ms:.1f} ms); races provoked "
                f"{self.provoked} (PUT in flight during the flip); refused before writing {self.refused}; races "
                f"detected {self.detected} (tag left on regpatch's digest {self.detected_ours}, on the push's "
                f"{self.detected_theirs}); push landed after the flip {self.after}; no overlap {self.quiet}; "
                f"PUT failed {self.put_failed}; SILENT LOSSES {self.lost}")


class Pusher:
    """PUTs manifests on one keep-alive connection to the registry."""

    def __init__(self, host: str, repo: str, tag: str):
        self.host, self.path = host, f"/v2/{repo}/manifests/{tag}"
        self.conn = http.client.HTTPConnection(host, timeout=30)

    def put(self, raw: bytes, media_type: str) -> int:
        for attempt in (1, 2):
            try:
                self.conn.request("PUT", self.path, body=raw, headers={"Content-Type": media_type})
                resp = self.conn.getresponse()
                resp.read()
                return resp.status
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def prepare(registry, workdir: Path, repo: str = "race") -> dict:
    """Three small images pushed to ``repo`` (tags a, b, c) with skopeo: the registry holds
    every blob, manifest and revision link, so a PUT of a tag is one manifest write."""
    from regpatch.demo.images import make_image, make_layer, push_with_skopeo, write_oci_layout  # test kit only

    images = {}
    for name, seed in (("a", 11), ("b", 22), ("c", 33)):
        layer = make_layer(workdir / name, "layer.tar.gz", seed=seed, size=4096)
        images[name] = make_image(workdir / name, [layer], seed=seed)
        push_with_skopeo(write_oci_layout(workdir / f"{name}-layout", {name: images[name]}), name, registry.host,
                         repo, name)
    return images


def run_race(*, host: str, store, repo: str, tag: str, a: tuple[bytes, str], c: tuple[bytes, str],
             b_digest: Digest, flip: Callable[..., object], seconds: float, seed: int = 20) -> RaceCounts:
    """Race ``flip(store, Repository, Tag, b_digest, expected)`` against PUTs of ``c`` for ``seconds``."""
    rng = random.Random(seed)
    r, t = Repository.parse(repo), Tag.parse(tag)
    a_digest, c_digest = Digest.of_bytes(a[0]), Digest.of_bytes(c[0])
    reset, racer = Pusher(host, repo, tag), Pusher(host, repo, tag)
    counts = RaceCounts()
    put_seconds = _calibrate(reset, a, c)
    counts.put_ms = put_seconds * 1000
    t_end = time.monotonic() + seconds
    t0 = time.monotonic()
    try:
        while time.monotonic() < t_end:
            assert reset.put(*a) == 201
            assert store.current_tag(r, t) == a_digest
            # the PUT starts between 1.5 PUT-times before and half a PUT-time after the flip
            delay = rng.uniform(-1.5 * put_seconds, 0.5 * put_seconds)
            _count(counts, _round(store, r, t, racer, c, b_digest, a_digest, flip, delay), b_digest, c_digest)
    finally:
        reset.close()
        racer.close()
    counts.seconds = time.monotonic() - t0
    return counts


@dataclass
class Round:
    outcome: str = "ok"                 # ok | refused | detected
    put: dict = field(default_factory=dict)
    flip_start: float = 0.0
    flip_end: float = 0.0
    final: object = None


def _push(go: threading.Barrier, delay: float, racer: Pusher, c: tuple[bytes, str], put: dict) -> None:
    go.wait()
    time.sleep(max(0.0, delay))
    put["start"] = time.monotonic()
    try:
        put["status"] = racer.put(*c)
    finally:
        put["end"] = time.monotonic()


def _round(store, r: Repository, t: Tag, racer: Pusher, c: tuple[bytes, str], b_digest: Digest,
           a_digest: Digest, flip: Callable[..., object], delay: float) -> Round:
    """One race: the PUT of C ``delay`` seconds after the flip starts (before it, if negative)."""
    raced_cls = getattr(errors, "TagRaced", None)  # (older code has no TagRaced)
    rnd = Round()
    go = threading.Barrier(2)
    th = threading.Thread(target=_push, args=(go, delay, racer, c, rnd.put))
    th.start()
    go.wait()
    time.sleep(max(0.0, -delay))
    rnd.flip_start = time.monotonic()
    try:
        flip(store, r, t, b_digest, a_digest)
    except errors.TagMoved:
        rnd.outcome = "refused"
    except Exception as e:  # noqa: BLE001 - the race's own error is one of the outcomes
        if raced_cls is None or not isinstance(e, raced_cls):
            raise
        rnd.outcome = "detected"
    rnd.flip_end = time.monotonic()
    th.join()
    rnd.final = store.current_tag(r, t)
    return rnd


def _count(counts: RaceCounts, rnd: Round, b_digest: Digest, c_digest: Digest) -> None:
    counts.rounds += 1
    put = rnd.put
    if put.get("start", 0) < rnd.flip_end and put.get("end", 0) > rnd.flip_start:
        counts.provoked += 1
    if put.get("status") != 201:
        counts.put_failed += 1
    elif rnd.outcome == "refused":
        counts.refused += 1
    elif rnd.outcome == "detected":
        counts.detected += 1
        counts.detected_ours += rnd.final == b_digest
        counts.detected_theirs += rnd.final == c_digest
    elif rnd.final == c_digest:
        if put["start"] < rnd.flip_end:
            counts.after += 1
        else:
            counts.quiet += 1
    else:
        counts.lost += 1
        counts.lost_rounds.append(counts.rounds)


def _calibrate(pusher: Pusher, a: tuple[bytes, str], c: tuple[bytes, str], n: int = 10) -> float:
    """The median time of one PUT of a tag on this machine (seconds)."""
    times = []
    for i in range(n):
        t0 = time.monotonic()
        assert pusher.put(*(a if i % 2 else c)) == 201
        times.append(time.monotonic() - t0)
    return sorted(times)[n // 2]
