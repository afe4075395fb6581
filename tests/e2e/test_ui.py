"""The operator's path in a real browser: Debian's Chromium driven by Playwright.

A Prefect server on PostgreSQL with its UI, the shipped deployments and the
per-registry ones from ``regpatch deployments --apply``, a process worker on the
``regpatch`` pool, one real registry. In the browser: the generic form refuses a
registry without storage; the per-registry form needs only bundle and tag, is
submitted, the run reaches Completed, its graph and its summary (which names the
registry) are shown; a failed rollout shows its failing registry red.

Screenshots go to $REGPATCH_SCREENSHOTS (``docs/screenshots`` to refresh the
documentation's: docs/fleet/ui.md), else to the test's tmp folder.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from chromium import screenshots_folder, shot
from prefect_cluster import BIN, PrefectCluster, run
from support.util import skopeo_inspect_digest

from regpatch.demo.images import push_with_skopeo, scenario_servercore
from regpatch.demo.loopback import LocalRegistry

REPO, TAG = "servercore", "ltsc2019"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    c = PrefectCluster(tmp, ui=True)
    reg = None
    try:
        c.start()
        s = scenario_servercore(tmp / "sample", base_size=2 << 20, delta_size=16 << 10)
        reg = LocalRegistry(tmp / "site-ui").start()
        push_with_skopeo(s["old_layout"], s["ref"], reg.host, REPO, TAG)
        inventory = tmp / "inventory.yml"
        inventory.write_text(yaml.safe_dump({"registries": [
            {"name": "site-ui", "storage": str(reg.root), "url": reg.url}]}))
        for argv in ([BIN / "prefect", "work-pool", "create", "regpatch", "--type", "process"],
                     [BIN / "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
                     [BIN / "regpatch", "deployments", "--inventory", inventory, "--repository", REPO, "--apply"]):
            out = run(argv, c.env())
            assert out.returncode == 0, out.stdout + out.stderr
        c.start_worker("regpatch")
        yield dict(c=c, reg=reg, scenario=s, tmp=tmp, shots=screenshots_folder(tmp))
    finally:
        c.stop()
        if reg:
            reg.stop()


def field(page, label: str):
    """The input of the run form's property labelled exactly ``label`` (the innermost such
    property: a group, e.g. "change", holds its fields' labels too)."""
    prop = page.locator(".schema-form-property").filter(
        has=page.locator(".schema-form-property__label", has_text=re.compile(f"^{re.escape(label)}$"))).last
    return prop.locator("textarea, input").first


def fill_change(page) -> None:
    """Who asks and why: required in every patch, rollback and rollout form."""
    field(page, "Requested by").fill("ana@example.org")
    field(page, "Reason (change ticket)").fill("CHG-25 monthly patch")


def open_form(page, c, deployment: str) -> None:
    dep = c.get(f"/deployments/name/{deployment}")
    page.goto(f"{c.ui_url}/deployments/deployment/{dep['id']}/run", wait_until="networkidle")
    field(page, "bundle").wait_for()


def test_generic_form_refuses_a_registry_without_storage(site, page):
    c = site["c"]
    runs = len(c.flow_runs())
    open_form(page, c, "patch-registry/patch-registry")
    field(page, "bundle").fill(str(site["scenario"]["staged"]))
    field(page, "repository").fill(REPO)
    field(page, "tag").fill(TAG)
    fill_change(page)
    page.get_by_role("button", name="Submit").click()
    # the server checks the values against the form's schema: no run, a message naming the field
    page.get_by_text("'storage' is a required property").first.wait_for()
    shot(page, site, "ui-form-refuses-empty-registry.png", settle=200)
    assert "/runs/flow-run/" not in page.url
    assert len(c.flow_runs()) == runs  # refused by the form: no run was created


def test_a_bad_tag_is_refused_by_the_form_before_a_run_exists(site, page):
    """The form checks the tag with the engine's grammar (the schema's pattern): 'LTSC 2019!'
    never becomes a run that fails on the worker."""
    c = site["c"]
    runs = len(c.flow_runs())
    open_form(page, c, "patch-registry/patch-site-ui")
    field(page, "bundle").fill(str(site["scenario"]["staged"]))
    field(page, "tag").fill("LTSC 2019!")
    fill_change(page)
    page.get_by_role("button", name="Submit").click()
    page.get_by_text("'LTSC 2019!' does not match").first.wait_for()
    field(page, "tag").scroll_into_view_if_needed()
    shot(page, site, "ui-form-refuses-bad-tag.png", settle=200)
    assert "/runs/flow-run/" not in page.url
    assert len(c.flow_runs()) == runs


def test_patch_from_the_run_form_completes_and_its_summary_names_the_registry(site, page):
    c, reg, s = site["c"], site["reg"], site["scenario"]
    open_form(page, c, "patch-registry/patch-site-ui")
    assert field(page, "repository").input_value() == REPO   # prefilled by regpatch deployments
    field(page, "bundle").fill(str(s["staged"]))
    field(page, "tag").fill(TAG)
    fill_change(page)  # required: the server has no users to take it from
    shot(page, site, "ui-run-form.png")
    dep = c.get("/deployments/name/patch-registry/patch-site-ui")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r"/deployments/deployment/[0-9a-f-]+(\?.*)?$"))  # back to the deployment
    (fr,) = c.flow_runs(deployment_id={"any_": [dep["id"]]})
    flow_run_id = fr["id"]
    fr = c.wait_final(flow_run_id, timeout=300)
    assert fr["state_type"] == "COMPLETED", fr["state"]
    assert fr["name"] == f"patch site-ui {REPO}:{TAG}" and "registry:site-ui" in fr["tags"]
    assert skopeo_inspect_digest(reg.host, REPO, TAG) == str(s["new"].manifest_digest)

    page.get_by_text(f"patch site-ui {REPO}:{TAG}").first.click()  # the run, renamed, in the deployment's list
    page.wait_for_url(re.compile(f"/runs/flow-run/{flow_run_id}"))
    page.get_by_text("Completed").first.wait_for()
    page.locator("canvas").first.wait_for()
    shot(page, site, "ui-run-graph.png", settle=6000)  # the graph draws its nodes after the page

    (art,) = [a for a in c.artifacts(flow_run_id={"any_": [flow_run_id]}) if a["key"] == f"site-ui-{REPO}-{TAG}"]
    page.goto(f"{c.ui_url}/artifacts/artifact/{art['id']}", wait_until="networkidle")
    page.get_by_text("Patched:").first.wait_for()
    body = page.inner_text("body")
    assert "site-ui" in body and str(reg.root) in body and str(s["new"].manifest_digest) in body
    assert "ana@example.org" in body and "CHG-25 monthly patch" in body
    shot(page, site, "ui-run-summary.png")


def test_failed_rollout_shows_the_failing_registry_red(site, page):
    c, reg, s, tmp = site["c"], site["reg"], site["scenario"], site["tmp"]
    broken = tmp / "site-broken-storage"
    broken.write_text("not a registry storage\n")
    second = LocalRegistry(tmp / "site-late").start()
    try:
        push_with_skopeo(s["old_layout"], s["ref"], second.host, REPO, TAG)
        inventory = tmp / "rollout.yml"
        inventory.write_text(yaml.safe_dump({"registries": [
            {"name": "site-ui", "storage": str(reg.root), "url": reg.url, "group": "canary"},
            {"name": "site-broken", "storage": str(broken), "group": "canary"},
            {"name": "site-late", "storage": str(second.root), "url": second.url, "group": "fleet"}]}))
        out = run([BIN / "regpatch", "rollout", s["staged"], "--inventory", inventory, "--repository", REPO,
                   "--tag", "october", "--reason", "CHG-25"], c.env(), timeout=400)
        assert out.returncode == 7, out.stdout + out.stderr
    finally:
        second.stop()
    (rollout,) = c.flow_runs(name={"any_": [f"rollout {REPO}:october"]})
    # one task run per registry (a subflow's own task run is named after the subflow)
    states = {t["name"]: t["state_name"] for t in c.task_runs(rollout["id"]) if t["name"].endswith(":october")}
    assert states == {f"patch site-ui {REPO}:october": "Completed", f"patch site-broken {REPO}:october": "Failed",
                      f"patch site-late {REPO}:october": "NotRun"}
    page.goto(f"{c.ui_url}/runs/flow-run/{rollout['id']}", wait_until="networkidle")
    page.get_by_text(f"rollout {REPO}:october").first.wait_for()
    page.get_by_text("Failed").first.wait_for()
    # the graph is a canvas: what it draws comes from these states (checked above); the
    # picture is for the documentation (docs/fleet/ui.md)
    page.locator("canvas").first.wait_for()
    shot(page, site, "ui-rollout-failed.png", settle=6000)


def test_a_rollout_of_sixteen_registries_one_task_run_each(site, page, tmp_path_factory):
    """16 registries (copies of site-ui's storage before its patch, each served by its own
    registry), 8 at once (this server is on PostgreSQL): the rollout's graph has a node per
    registry; a registry's task run shows the time of each step, its summary and logs."""
    import shutil

    c, s, tmp = site["c"], site["scenario"], tmp_path_factory.mktemp("sixteen")
    template = LocalRegistry(tmp / "template").start()
    regs: list[LocalRegistry] = []
    try:
        push_with_skopeo(s["old_layout"], s["ref"], template.host, REPO, TAG)
        template.stop()
        for i in range(16):
            reg = LocalRegistry(tmp / f"site-{i:02d}")
            shutil.copytree(template.root, reg.root)
            regs.append(reg.start())
        inventory = tmp / "sixteen.yml"
        inventory.write_text(yaml.safe_dump({"registries": [
            {"name": f"site-{i:02d}", "storage": str(r.root), "url": r.url, "group": "canary" if i < 2 else "fleet"}
            for i, r in enumerate(regs)]}))
        out = run([BIN / "regpatch", "rollout", s["staged"], "--inventory", inventory, "--repository", REPO,
                   "--tag", "november", "--max-parallel", "8"], c.env(), timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "all 16 registries ok" in out.stdout
    finally:
        for reg in regs:
            reg.stop()
        template.stop()
    (rollout,) = c.flow_runs(name={"any_": [f"rollout {REPO}:november"]})
    tasks = {t["name"]: t for t in c.task_runs(rollout["id"])}
    assert sorted(tasks) == [f"patch site-{i:02d} {REPO}:november" for i in range(16)]  # one task run each, no other
    assert {t["state_name"] for t in tasks.values()} == {"Completed"}
    page.goto(f"{c.ui_url}/runs/flow-run/{rollout['id']}", wait_until="networkidle")
    page.get_by_text(f"rollout {REPO}:november").first.wait_for()
    page.locator("canvas").first.wait_for()
    shot(page, site, "ui-rollout-16.png", settle=6000)

    one = tasks[f"patch site-03 {REPO}:november"]
    (summary,) = [a for a in c.artifacts(task_run_id={"any_": [one["id"]]}) if a["type"] == "markdown"
                  and a["key"] == f"site-03-{REPO}-november"]
    assert summary["data"].startswith(f"# Patched: `{REPO}:november` on `site-03`")
    assert "## Time per step" in summary["data"] and "| verify-pull |" in summary["data"]
    page.goto(f"{c.ui_url}/runs/task-run/{one['id']}", wait_until="networkidle")
    page.get_by_text(f"patch site-03 {REPO}:november").first.wait_for()
    steps = page.get_by_text("site-03: steps fetch-bundle").first  # its logs: every step with its time
    steps.wait_for()
    steps.scroll_into_view_if_needed()
    shot(page, site, "ui-rollout-registry.png")
    page.goto(f"{c.ui_url}/artifacts/artifact/{summary['id']}", wait_until="networkidle")
    times = page.get_by_text("Time per step").first
    times.wait_for()
    times.scroll_into_view_if_needed()
    shot(page, site, "ui-rollout-registry-summary.png")


def test_the_scheduled_rollout_takes_the_newest_signed_bundle_of_the_drop_then_refuses_it(site, page):
    """The shipped rollout deployment (bundle: null, rollout.drop) on a drop folder where the
    shuttle left two signed bundles, last month's and this month's (written first: the newest
    files are last month's): its run takes this month's, by the signed created time, and says
    so in its log; once every registry serves it, the next run is refused red."""
    from datetime import datetime, timedelta, timezone

    from regpatch.signing.descriptor import DESCRIPTOR, SIGNATURE
    from regpatch.signing.keys import fingerprint, load_private_key, load_public_key, sign_bytes

    c, reg, s, tmp = site["c"], site["reg"], site["scenario"], site["tmp"]
    out = run([BIN / "regpatch", "keygen", "--out", tmp / "shuttle"], c.env())
    assert out.returncode == 0, out.stdout + out.stderr
    key, pub = tmp / "shuttle.key", tmp / "shuttle.pub"
    drop = tmp / "drop"
    for month, layout in (("2026-12", s["new_layout"]), ("2026-11", s["old_layout"])):
        made = run([BIN / "regpatch", "bundle", f"oci:{layout}", "--out", drop / month, "--sign-key", key], c.env())
        assert made.returncode == 0 and "signed with" in made.stdout, made.stdout + made.stderr
    # last month's: created 27 days ago (within the maximum age), signed as the shuttle signed it then
    last = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=27)
    doc = json.loads((drop / "2026-11" / DESCRIPTOR).read_text())
    doc["created"] = last.isoformat().replace("+00:00", "Z")
    raw = json.dumps(doc).encode()
    (drop / "2026-11" / DESCRIPTOR).write_bytes(raw)
    (drop / "2026-11" / SIGNATURE).write_bytes(sign_bytes(load_private_key(key), raw))
    inventory = tmp / "drop.yml"
    inventory.write_text(yaml.safe_dump({"registries": [
        {"name": "site-ui", "storage": str(reg.root), "url": reg.url, "trust_keys": [str(pub)]}]}))
    dep = c.get("/deployments/name/rollout/rollout")
    params = {"tag": "drop", "rollout": {"inventory": str(inventory), "drop": str(drop)}}

    first = c.wait_final(c.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": params})["id"])
    assert first["state_type"] == "COMPLETED", first["state"]
    assert skopeo_inspect_digest(reg.host, REPO, "drop") == str(s["new"].manifest_digest)
    chose = f"drop location {drop}: takes {drop / '2026-12'} (created "
    (line,) = [m for m in c.logs_until([first["id"]], lambda ms: any(chose in m for m in ms)) if chose in m]
    signed = f"signed, key {fingerprint(load_public_key(pub))}, image {s['new'].manifest_digest})"
    assert signed in line, line
    assert "the newest of 2 bundle(s) in the drop; 0 of 1 registries already serve its image" in line, line
    page.goto(f"{c.ui_url}/runs/flow-run/{first['id']}", wait_until="networkidle")
    page.get_by_text("Completed").first.wait_for()
    page.get_by_text(f"takes {drop / '2026-12'}").first.wait_for()  # the log line, in the run's page
    shot(page, site, "ui-drop-newest.png")

    second = c.wait_final(c.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": params})["id"])
    assert second["state_type"] == "FAILED", second["state"]
    message = second["state"]["message"]
    assert f"every registry of the rollout (site-ui) already serves {REPO}:drop = {s['new'].manifest_digest}" \
        in message and f"{drop / '2026-12'}: refused" in message, message
    assert skopeo_inspect_digest(reg.host, REPO, "drop") == str(s["new"].manifest_digest)  # nothing touched
    page.goto(f"{c.ui_url}/runs/flow-run/{second['id']}", wait_until="networkidle")
    page.get_by_text("Failed").first.wait_for()
    page.get_by_text("already serves").first.wait_for()
    messages = c.logs_until([second["id"]], lambda m: any(x.startswith("Finished in state Failed") for x in m))
    messages = c.logs_until([second["id"]], lambda m: any("Engine execution" in x for x in m), timeout=4)
    said = [m for m in messages if "already serves" in m]  # the refusal, said once by the flow
    assert len(said) == 1 and said[0].startswith(f"rollout of {REPO}:drop failed: "), messages
    assert not any("Traceback" in m or "Encountered exception" in m or "Engine execution" in m for m in messages)
    page.reload(wait_until="networkidle")
    page.get_by_text("already serves").first.wait_for()
    shot(page, site, "ui-drop-refused.png")


def test_a_long_copy_shows_its_progress_moving_and_an_early_failure_its_summary(site, page, tmp_path_factory):
    """Issue 25 items 5 and 6. A patch whose verification pull lasts seconds (a 32 MiB layer through
    a proxy that serves blobs at 3 MiB/s): while it runs, the run's summary links the progress of
    the step that is running, and that progress moves (two screenshots); once the run is over
    every progress artifact of it reads 100 % and the summary is the run's own, in the same
    artifact. A run on the worker with a bundle that does not exist: its summary, and its error
    said once in its logs."""
    import subprocess
    import time

    from support.faultproxy import FaultProxy

    from regpatch.demo.images import make_image, make_layer, write_staged_bundle

    c, reg, tmp = site["c"], site["reg"], tmp_path_factory.mktemp("progress")
    layer = make_layer(tmp / "big", "base.tar.gz", seed=25, size=32 << 20, compresslevel=0)
    bundle = write_staged_bundle(tmp / "bundle", make_image(tmp / "big", [layer], os="windows"))
    key = f"site-big-{REPO}-big"

    def percent_shown() -> int:  # Prefect's UI shows a progress artifact as "Progress: N%"
        page.get_by_text(re.compile(r"Progress: \d+%")).first.wait_for()
        return int(re.search(r"Progress: (\d+)%", page.inner_text("body")).group(1))

    with FaultProxy(upstream=reg.url) as proxy:
        proxy.inject("throttle", count=1000, match=lambda r: "/blobs/" in r.path, rate=3 << 20)
        proc = subprocess.Popen([str(a) for a in (
            BIN / "regpatch", "patch", bundle, "--storage", reg.root, "--registry-url", proxy.url, "--repository",
            REPO, "--tag", "big", "--registry-name", "site-big", "--reason", "CHG-25 a big layer")],
            env=c.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while True:  # the running summary, once the pull has shown its progress
                running = [a for a in c.artifacts(key={"any_": [key]}) if "Step **verify-pull**" in a["data"]]
                if running:
                    break
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
                time.sleep(0.2)
            (summary,) = running
            assert summary["data"].startswith(f"# Running: Patch of `{REPO}:big` on `site-big`"), summary["data"]
            progress_id = re.search(r"/artifacts/artifact/([0-9a-f-]{36})\)", summary["data"]).group(1)
            page.goto(f"{c.ui_url}/artifacts/artifact/{summary['id']}", wait_until="networkidle")
            link = page.get_by_role("link", name=re.compile("progress of pull")).first  # the summary's link
            shot(page, site, "ui-running-summary.png", settle=200)
            href = link.get_attribute("href")
            assert href == f"{c.ui_url}/artifacts/artifact/{progress_id}", href
            page.goto(href, wait_until="networkidle")  # (the UI opens a markdown link in a new tab)
            first = percent_shown()
            shot(page, site, "ui-progress-moving-1.png", settle=300)
            page.wait_for_timeout(2000)
            page.reload(wait_until="networkidle")
            second = percent_shown()
            shot(page, site, "ui-progress-moving-2.png", settle=300)
            assert first < second, (first, second)  # moving (100 if the pull ended meanwhile)
        finally:
            out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    (fr,) = c.flow_runs(name={"any_": [f"patch site-big {REPO}:big"]})
    progress = [a for a in c.artifacts(flow_run_id={"any_": [fr["id"]]}) if a["type"] == "progress"]
    assert progress and all(a["data"] == 100 for a in progress), progress  # every one ended at 100 %
    (summary,) = c.artifacts(key={"any_": [key]})  # the running summary became the run's: one version
    assert summary["id"] == running[0]["id"] and summary["data"].startswith(f"# Patched: `{REPO}:big` on `site-big`")

    # an early failure on the worker: its summary, its error once in its logs
    dep = c.get("/deployments/name/patch-registry/patch-site-ui")
    missing = str(tmp / "no-such-bundle")
    fr = c.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": {
        "bundle": missing, "tag": "early", "change": {"requested_by": "ana@example.org", "reason": "CHG-25"}}})
    fr = c.wait_final(fr["id"], timeout=300)
    assert fr["state_type"] == "FAILED" and missing in fr["state"]["message"]
    (summary,) = [a for a in c.artifacts(flow_run_id={"any_": [fr["id"]]}) if a["key"] == f"site-ui-{REPO}-early"]
    page.goto(f"{c.ui_url}/artifacts/artifact/{summary['id']}", wait_until="networkidle")
    page.get_by_text(missing).first.wait_for()  # the error, in the summary
    body = page.inner_text("body")
    assert f"Failed: {REPO}:early on site-ui" in body.replace("`", "") and missing in body
    shot(page, site, "ui-early-failure-summary.png")
    messages = c.logs_until([fr["id"]], lambda m: sum(x.startswith("Finished in state Failed") for x in m) >= 2)
    messages = c.logs_until([fr["id"]], lambda m: any("Engine execution" in x for x in m), timeout=4)
    said = [m for m in messages if missing in m]
    assert len(said) == 1 and said[0].startswith("fetch-bundle failed: "), messages  # the step's line
    assert not any("Traceback" in m or "Engine execution" in m for m in messages), messages


def test_a_per_registry_form_shows_the_registrys_block(site, page):
    """patch-registry/patch-site-ui's form: the registry is its regpatch-registry block, chosen (written
    by regpatch deployments --apply), not a dozen fields to fill in or edit on every run."""
    c = site["c"]
    open_form(page, c, "patch-registry/patch-site-ui")
    chooser = page.locator(".schema-form-property-block-document")
    chooser.first.wait_for()
    chooser.first.get_by_text("site-ui").first.wait_for()  # the block selected
    assert page.locator(".schema-form-property__label", has_text="Storage folder (rootdirectory)").count() == 0
    chooser.first.scroll_into_view_if_needed()
    shot(page, site, "ui-form-registry-block.png")
def test_the_history_fits_a_laptop_screen_of_1366_px(site, page):
    """Issue 25 item 8: the history table was 2,223 px wide (new digest, source and who off-screen
    at 1,920 px). Two patches of a new tag by the command line on the API (the old image, then
    the new: two lines, two digests, a long bundle path); at 1366x768 the history artifact's
    table fits the box the page shows it in, its digests compact, their full values under it."""
    c, reg, s = site["c"], site["reg"], site["scenario"]
    for bundle in (s["old_layout"], s["staged"]):
        out = run([BIN / "regpatch", "patch", bundle, "--storage", reg.root, "--registry-url", reg.url,
                   "--registry-name", "site-ui", "--repository", REPO, "--tag", "wide",
                   "--requested-by", "ana.operator@site-ui.example.org", "--reason", "CHG-25 item 8: readable"],
                  c.env(), timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
    new = str(s["new"].manifest_digest)
    art = max((a for a in c.artifacts(key={"any_": ["history-site-ui"]}) if "CHG-25 item 8" in a["data"]),
              key=lambda a: a["created"])
    assert f"`{new}`" in art["data"]
    assert f"`{new[7:19]}…`" in art["data"]  # compact in its cell, in full under the table
    page.set_viewport_size({"width": 1366, "height": 768})
    fits_the_page(page, f"{c.ui_url}/artifacts/artifact/{art['id']}", f"{new[7:19]}…")
    body = page.inner_text("body")
    assert new in body and "ana.operator@site-ui.example.org" in body  # nothing lost: under the table
    shot(page, site, "ui-history-1366.png")

    # a rollout's table too (one registry, patched here)
    out = run([BIN / "regpatch", "rollout", s["staged"], "--inventory", site["tmp"] / "inventory.yml",
               "--repository", REPO, "--tag", "wide-rollout", "--reason", "CHG-25 item 8"], c.env(), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (art,) = c.artifacts(key={"any_": [f"rollout-{REPO}-wide-rollout"]})
    fits_the_page(page, f"{c.ui_url}/artifacts/artifact/{art['id']}", f"{new[7:19]}…")
    shot(page, site, "ui-rollout-table-1366.png")


def fits_the_page(page, url: str, text: str) -> None:
    """At the page's size, the first table of the artifact at ``url`` (which shows ``text``) fits
    the box Prefect shows it in, and the page fits the window. Prefect never wraps a cell, and
    shows a wide table in a box that scrolls sideways (beside its navigation and details panels)."""
    page.goto(url, wait_until="networkidle")
    page.get_by_text(text).first.wait_for()
    table = page.locator("table").filter(has_text=text).first
    width = page.evaluate("() => window.innerWidth")
    table_px, box_px, right, page_px = table.evaluate(
        "t => [t.scrollWidth, t.parentElement.clientWidth, t.getBoundingClientRect().right, "
        "document.documentElement.scrollWidth]")
    columns = table.evaluate("t => [...t.querySelectorAll('th')].map(c => [c.innerText, "
                             "Math.round(c.getBoundingClientRect().width)])")
    assert page_px <= width and right <= width, (right, page_px, width)
    assert table_px <= box_px, f"the table is {table_px} px wide in a box of {box_px} px: {columns}"
