"""Tables that fit a 1,366 px screen (``regpatch.tables``): compact digests in the cells, the
full ones once under the table, long text shortened to its start and end, every cell escaped;
the history, rollout, fleet-status and maintenance artifacts made with it."""

from __future__ import annotations

from regpatch.fleet.maintenance import MaintenanceResult
from regpatch.fleet.maintenance import render_markdown as maintenance_markdown
from regpatch.fleet.rollout import FAILED, NOT_RUN, PATCHED, RegistryOutcome
from regpatch.fleet.rollout import render_markdown as rollout_markdown
from regpatch.params import ChangeParams
from regpatch.storage.history import HistoryEntry, render_history_markdown
from regpatch.tables import CompactTable, cell, code, short_digest, shorten

D1, D2 = "sha256:" + "1a2b3c4d5e6f" + "7" * 52, "sha256:" + "f" * 64


def test_a_digest_is_compact_in_its_cell_and_in_full_once_under_the_table():
    assert short_digest(D1) == "1a2b3c4d5e6f…" and short_digest("latest") == "latest"  # docker's short id
    assert short_digest(None) == "" and short_digest("sha256:abc") == "sha256:abc"  # not a digest: as it is
    table = CompactTable(("old", "new", "n"), right=("n",))
    table.add(table.digest(D1), table.digest(D2), "1")
    table.add(table.digest(None, "(new tag)"), table.digest(D1), "2")
    assert table.lines() == [
        "| old | new | n |", "|---|---|---:|",
        "| `1a2b3c4d5e6f…` | `ffffffffffff…` | 1 |",
        "| (new tag) | `1a2b3c4d5e6f…` | 2 |",
        "",
        f"- `1a2b3c4d5e6f…` = `{D1}`",   # each digest once, in the order met
        f"- `ffffffffffff…` = `{D2}`"]
    assert CompactTable(("a",)).lines() == []  # no rows: no table


def test_long_text_is_shortened_to_its_start_and_end_and_given_in_full_under_the_table():
    path = "/srv/shuttle/drop/2026-11/servercore-ltsc2019-delta-against-site-a/bundle"
    assert shorten("short") == "short"
    cut = shorten(path, 30)
    assert len(cut) == 30 and cut.startswith("/srv/shuttl") and cut.endswith("site-a/bundle") and "…" in cut
    table = CompactTable(("source",), width=30)
    table.add(table.text(path, "row 1 source"))
    lines = table.lines()
    assert lines[2] == f"| {cut} |" and lines[-1] == f"- row 1 source: {path}"


def test_every_cell_is_escaped():
    assert cell("a|b *c* <x>\nforged") == "a\\|b \\*c\\* \\<x\\>\\\\nforged"  # one line, markup as typed
    assert code("windows/servercore:ltsc_2019|x") == "`windows/servercore:ltsc_2019\\|x`"  # code: pipes only


def _entry(n: int, **kw) -> HistoryEntry:
    base = dict(time=f"2026-12-0{n}T03:00:00+00:00", repository="servercore", tag="ltsc2019", old=D1, new=D2,
                action="patch", source="regpatch patch /srv/shuttle/drop/2026-11/servercore-ltsc2019-delta "
                                       "(bundle signed by shuttle.pub)", actor="svc-regpatch@site-a-host")
    return HistoryEntry(**{**base, **kw})


def test_the_history_artifact_has_compact_digests_and_the_full_ones_under_it():
    entries = [_entry(1, old=None), _entry(2, requested_by="ana@example.org", reason="CHG-25")]
    text = render_history_markdown(entries, "History of `site-a`", "Registry `/srv/a`", limit=100)
    lines = text.splitlines()
    assert lines[2] == "Registry `/srv/a`: 2 tag change(s) recorded."
    assert lines[4] == "| time (UTC) | repository:tag | action | old | new | by |"
    assert lines[6] == ("| 2026-12-02 03:00:00 | `servercore:ltsc2019` | patch | `1a2b3c4d5e6f…` | `ffffffffffff…` | "
                        "ana@example.org |")  # newest first; who asked
    assert lines[7] == ("| 2026-12-01 03:00:00 | `servercore:ltsc2019` | patch | (new tag) | `ffffffffffff…` | "
                        "svc-re…te-a-host |")  # else who ran it (user@host), cut to its start and end
    assert max(len(x) for x in lines[4:8]) < 110  # was ~330 with full digests and sources
    assert f"- `1a2b3c4d5e6f…` = `{D1}`" in lines and f"- `ffffffffffff…` = `{D2}`" in lines
    assert "- 2026-12-02 03:00:00 patch of servercore:ltsc2019: source regpatch patch /srv/shuttle/drop/2026-11/" \
        "servercore-ltsc2019-delta (bundle signed by shuttle.pub); requested by ana@example.org; reason CHG-25" \
        in lines  # nothing lost
    assert "newest 1 shown" in render_history_markdown(entries, "h", "r", limit=1)


def test_the_rollout_and_maintenance_tables_are_compact_too():
    outcomes = [RegistryOutcome("site-a", "canary", "here", PATCHED, old=D1, new=D2, bytes_copied=1 << 20,
                                seconds=1.25),
                RegistryOutcome("site-b", "canary", "pool p", FAILED, error="disk full while writing " + "x" * 200),
                RegistryOutcome("site-c", "fleet", "here", NOT_RUN, note="an earlier wave failed")]
    text = rollout_markdown(outcomes, "Rollout", ChangeParams(requested_by="ana", reason="CHG-1"))
    lines = text.splitlines()
    assert "| site-a | canary | here | patched | `1a2b3c4d5e6f…` → `ffffffffffff…` | 1.0 MiB | 1.2 |" in lines
    assert "| site-b | canary | pool p | failed |  |  |  |" in lines  # its error in full under ## Errors
    assert "- site-c: an earlier wave failed" in lines  # a note under the table
    assert f"- **site-b**: disk full while writing {'x' * 200}" in lines
    assert f"- `1a2b3c4d5e6f…` = `{D1}`" in lines
    failed = rollout_markdown([], "Rollout of servercore:ltsc2019 failed before any registry", None,
                              error='"Inventory" (rollout.inventory) is /etc/regpatch/inventory.yml, which ...')
    assert failed.splitlines()[2:5] == ["## Error", "", '"Inventory" (rollout.inventory) is '
                                        "/etc/regpatch/inventory.yml, which ..."]
    md = maintenance_markdown([MaintenanceResult("site-a", True, pruned=[f"servercore@{D1}"])], "Maintenance",
                              ChangeParams(requested_by="ana@example.org", reason="CHG-9 window"))
    assert "| requested by | ana@example.org |\n| reason | CHG-9 window |" in md
    assert "| site-a | done | 1 | 0 B | - | 0 |" in md
