"""The tag flip against a real registry PUT of the same tag, hundreds of times (bounded in time).

regpatch's compare-and-swap of ``current/link`` (``storage.tagswap``) must never let another
writer's push be overwritten without a word: every round where the registry's PUT lands in the
flip's window ends with the flip refusing (nothing written) or reporting the race (TagRaced, a
'raced' history line), never with a normal flip and the push gone. The counts are printed
(tests/support/tagrace.py says what each means); ``REGPATCH_RACE_SECONDS`` sets the time (60 s).
"""

from __future__ import annotations

import os

from support.tagrace import prepare, run_race

from regpatch.engine.tags import flip_tag
from regpatch.storage.history import read_history
from regpatch.storage.store import RegistryStore

RACE_SECONDS = float(os.environ.get("REGPATCH_RACE_SECONDS", "60"))


def test_a_registry_push_racing_the_flip_is_never_lost_silently(registry, tmp_path):
    images = prepare(registry, tmp_path / "images")
    store = RegistryStore(registry.root)
    a, b, c = images["a"], images["b"], images["c"]
    counts = run_race(host=registry.host, store=store, repo="race", tag="t", a=(a.manifest_bytes, a.media_type),
                      c=(c.manifest_bytes, c.media_type), b_digest=b.manifest_digest, flip=flip_tag,
                      seconds=RACE_SECONDS)
    print(f"\ntag race: {counts.line()}")
    assert counts.lost == 0, f"silent losses in rounds {counts.lost_rounds[:10]}"
    assert counts.rounds >= 200 and counts.provoked >= 100, counts.line()  # hundreds of races, really run
    assert counts.refused + counts.detected >= 20, counts.line()  # pushes landed in the window and were seen
    raced = [e for e in read_history(store.layout, "race", "t") if e.action == "raced"]
    assert len(raced) == counts.detected
    assert all(e.old == str(a.manifest_digest) and e.new == str(b.manifest_digest) for e in raced)
    assert all(e.other == str(c.manifest_digest) for e in raced), {e.other for e in raced}
    leftovers = [p for p in registry.root.rglob("*") if ".regpatch-tmp-" in p.name]
    assert not leftovers, leftovers
