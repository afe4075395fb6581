"""Failure notifications (issue 25 item 1), for real: ``prefect server start`` on
PostgreSQL, a Custom Webhook notification block pointing at a webhook receiver on
127.0.0.1, ``regpatch deployments --apply --notify custom-webhook/oncall`` (twice: one
automation, updated), a patch run of a registry's deployment on its worker that fails
(a corrupted bundle): the receiver gets one message naming the registry, the
repository and the tag, the error line and where the tag stands. A completed run sends
nothing. In Chromium (tests/e2e/chromium.py): the automation's page in the Prefect UI, and
the message the receiver got, rendered (docs/screenshots/ui-notification-*.png with
REGPATCH_SCREENSHOTS=docs/screenshots)."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from chromium import screenshots_folder, shot
from prefect_cluster import BIN, PrefectCluster, run

from regpatch.demo.images import push_with_skopeo, scenario_servercore
from regpatch.demo.loopback import LocalRegistry
from regpatch.fleet.notify import AUTOMATION_NAME

REPO, TAG = "servercore", "ltsc2019"
CHANGE = {"requested_by": "ana@example.org", "reason": "CHG-25"}


class Receiver:
    """A webhook receiver on loopback: keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(data or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < n and time.monotonic() < deadline:
            time.sleep(0.5)
        return list(self.bodies)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notify")
    c = PrefectCluster(tmp, ui=True)
    receiver = Receiver()
    reg = None
    try:
        c.start()
        s = scenario_servercore(tmp / "sample", base_size=1 << 20, delta_size=16 << 10)
        reg = LocalRegistry(tmp / "site-n").start()
        push_with_skopeo(s["old_layout"], s["ref"], reg.host, REPO, TAG)
        inventory = tmp / "inventory.yml"
        inventory.write_text(yaml.safe_dump({"registries": [
            {"name": "site-n", "storage": str(reg.root), "url": reg.url, "work_pool": "pool-n"}]}))
        made = subprocess.run([sys.executable, "-c", (
            "import sys\n"
            "from prefect.blocks.notifications import CustomWebhookNotificationBlock as B\n"
            "B(name='oncall', url=sys.argv[1], json_data={'text': '{{subject}}\\n{{body}}'}).save('oncall')\n"),
            receiver.url], env=c.env(), capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        c.start_worker("pool-n")
        yield dict(c=c, reg=reg, scenario=s, tmp=tmp, inventory=inventory, receiver=receiver,
                   shots=screenshots_folder(tmp))
    finally:
        c.stop()
        receiver.stop()
        if reg is not None:
            reg.stop()


def apply(world, *extra):
    return run([BIN / "regpatch", "deployments", "--inventory", world["inventory"], "--repository", REPO, "--apply",
                *extra], world["c"].env())


def test_notify_needs_apply_and_names_a_block_that_exists(world):
    c = world["c"]
    out = run([BIN / "regpatch", "deployments", "--inventory", world["inventory"], "--notify", "custom-webhook/oncall"],
              c.env())
    assert out.returncode == 2 and "--notify creates an automation on the Prefect API: give --apply too" in out.stderr
    out = apply(world, "--notify", "oncall")
    assert out.returncode == 2 and "name a notification block as TYPE/NAME" in out.stderr
    out = apply(world, "--notify", "custom-webhook/nobody")
    assert out.returncode == 2 and "no block 'nobody' of type 'custom-webhook'" in out.stderr, out.stderr
    assert c.post("/automations/filter", {}) == []


def test_a_failed_patch_on_a_worker_sends_one_message_with_the_tag_and_the_error(world, page):
    c, s, reg, receiver = world["c"], world["scenario"], world["reg"], world["receiver"]
    out = apply(world, "--notify", "custom-webhook/oncall")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"automation '{AUTOMATION_NAME}' created: failed or crashed runs notify custom-webhook/oncall" in out.stdout
    again = apply(world, "--notify", "custom-webhook/oncall")  # idempotent: updated in place
    assert again.returncode == 0 and f"automation '{AUTOMATION_NAME}' updated" in again.stdout, again.stderr
    (automation,) = c.post("/automations/filter", {})
    assert automation["name"] == AUTOMATION_NAME and automation["enabled"] is True

    dep = c.get("/deployments/name/patch-registry/patch-site-n")
    bad = world["tmp"] / "bad-bundle"
    shutil.copytree(s["staged"], bad)
    layer = bad / "delta.tar.gz"
    data = bytearray(layer.read_bytes())
    data[200] ^= 0xFF
    layer.write_bytes(bytes(data))
    fr = c.post(f"/deployments/{dep['id']}/create_flow_run",
                {"parameters": {"bundle": str(bad), "tag": "corrupt", "change": CHANGE}})
    fr = c.wait_final(fr["id"])
    assert fr["state_type"] == "FAILED"
    (message,) = receiver.wait(1)
    text = message["text"]
    assert text.startswith(f"regpatch: patch-registry patch site-n {REPO}:corrupt Failed\n"), text
    assert "registry: site-n " in text and f"repository:tag: {REPO}:corrupt" in text
    assert "error: " in text and "digest mismatch" in text and "delta.tar.gz" in text
    assert "the tag: the tag was not moved" in text, text
    assert f"/runs/flow-run/{fr['id']}" in text or f"flow run {fr['id']}" in text, text
    # then the good bundle (before it, the registry lacked the corrupted layer: now it is verified and copied)
    good = c.post(f"/deployments/{dep['id']}/create_flow_run",
                  {"parameters": {"bundle": str(s["staged"]), "tag": TAG, "change": CHANGE}})
    assert c.wait_final(good["id"])["state_type"] == "COMPLETED"
    time.sleep(5)
    assert len(receiver.bodies) == 1  # the completed run sent nothing, the failed one once
    assert reg.root.is_dir()

    # in the browser: the automation as the Prefect UI shows it, and the message the receiver got
    page.goto(f"{c.ui_url}/automations/automation/{automation['id']}", wait_until="networkidle")
    page.get_by_text(AUTOMATION_NAME).first.wait_for()
    page.get_by_text("Send a custom webhook notification using").first.wait_for()
    assert "oncall" in page.inner_text("body")  # the block it sends through
    shot(page, world, "ui-notification-automation.png")
    page.set_content(
        "<body style='font: 15px sans-serif; margin: 32px; background: #f4f5f7'>"
        f"<h2>The webhook receiver on 127.0.0.1: POST {html.escape(receiver.url)}</h2>"
        "<div style='background: #fff; border-left: 6px solid #d24; padding: 16px 24px; max-width: 1100px'>"
        f"<pre id='text' style='font: 15px/1.5 monospace; white-space: pre-wrap'>{html.escape(text)}</pre></div>"
        "<h3>The JSON body, as received</h3>"
        f"<pre style='white-space: pre-wrap; word-break: break-all; max-width: 1100px'>"
        f"{html.escape(json.dumps(message))}</pre></body>")
    assert page.inner_text("#text") == text.rstrip("\n")  # the picture shows the message checked above
    shot(page, world, "ui-notification-received.png", settle=200)
