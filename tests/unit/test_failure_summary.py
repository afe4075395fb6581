"""The summary of a run that failed before the engine had a result (issue 25 item 5): where
the tag stands, read in the storage; a storage that cannot be read is said, never a crash."""

from __future__ import annotations

from conftest import REPO, TAG

from regpatch.engine.results import render_failure_markdown, tag_position
from regpatch.params import ChangeParams, RegistryParams


def test_where_the_tag_stands_is_read_in_the_storage(site, tmp_path):
    target = RegistryParams(storage=str(site.root)).target()
    assert tag_position(target, REPO, TAG) == f"The tag points at `{site.old}` (read in the storage after the failure)."
    assert tag_position(target, REPO, "never-made") == "The tag does not exist in the storage (read after the failure)."
    assert tag_position(None, REPO, TAG).startswith("The tag was not moved: the run stopped before it opened")
    assert tag_position(target, "Bad Name", TAG).startswith("Where the tag stands could not be read (InvalidReference)")


def test_the_failure_summary_names_the_error_the_request_and_the_tag():
    text = render_failure_markdown("rollback", REPO, TAG, "no such digest", "The tag points at `x`.", name="site-a",
                                   registry="/srv/a", change=ChangeParams(requested_by="ana", reason="CHG-1"))
    assert text.splitlines()[0] == f"# Failed: `{REPO}:{TAG}` on `site-a` (rollback)"
    assert "| registry | `/srv/a` |" in text and "| verification | not run |" in text and "| reason | CHG-1 |" in text
    assert text.endswith("## Error\n\nno such digest\n\nThe tag points at `x`.\n")
