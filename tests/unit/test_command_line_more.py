"""The command line in this process (no Prefect API reachable), the inventory it reads
for rollouts, the rollout's tables and state file, progress output and the stop flag."""

from __future__ import annotations

import io
import logging
import pickle
import shutil
import signal
import threading
import time

import pytest
import yaml
from conftest import REPO, TAG, tree_hash
from support.util import error_line

from regpatch import interrupt
from regpatch.cli import main
from regpatch.demo.loopback import free_port
from regpatch.errors import Interrupted, UsageError
from regpatch.fleet.inventory import InventoryError, load_inventory, parse_inventory
from regpatch.fleet.rollout import (
    DRY_RUN,
    FAILED,
    PATCHED,
    SKIPPED,
    RegistryOutcome,
    RolloutFailed,
    RolloutState,
    outcome_of,
    render_markdown,
    render_table,
    run_rollout,
)
from regpatch.platform import children, pid_alive
from regpatch.progress import Progress, human


@pytest.fixture
def no_api(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "no-prefect-home"))
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "INFO")  # --debug changes it: restored afterwards


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- patch, rollback, history

def test_dry_run_prints_the_plan_and_writes_nothing(site, capsys, no_api):
    before = tree_hash(site.root)
    code, out, err = run(capsys, "patch", site.scenario["staged"], "--storage", site.root, "--repository", REPO,
                         "--tag", TAG, "--dry-run")
    assert code == 0, err
    assert f"patch {REPO}:{TAG} from {site.scenario['staged']}" in out
    assert f"tag: {site.old} -> {site.new}" in out and out.rstrip().endswith("dry run: nothing was written")
    assert tree_hash(site.root) == before


@pytest.mark.parametrize("args, code, message", [
    (["--lock-timeout", "-1"], 2, "--lock-timeout '-1': input should be greater than or equal to 0"),
    (["--aws-credentials-block", "site-store"], 2, "--aws-credentials-block names a Prefect block: it needs"),
    (["--verify-command", "skopeo inspect docker://{ref}"], 2, "a verify command needs the registry's URL"),
    (["--registry-config", "/nonexistent/config.yml"], 2, "registry config /nonexistent/config.yml does not exist"),
])
def test_bad_patch_options_are_one_line_with_their_exit_code(site, capsys, no_api, args, code, message):
    before = tree_hash(site.root)
    bundle = "s3://bucket/p" if "--aws-credentials-block" in args else site.scenario["staged"]
    rc, out, err = run(capsys, "patch", bundle, "--storage", site.root, "--repository", REPO, "--tag", TAG, *args)
    assert rc == code and message in error_line(err)
    assert tree_hash(site.root) == before


def test_debug_adds_the_traceback_and_keeps_the_exit_code(site, capsys, no_api):
    rc, out, err = run(capsys, "--debug", "patch", site.scenario["staged"], "--storage", site.root,
                       "--repository", REPO, "--tag", TAG, "--lock-timeout", "nan")
    assert rc == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("regpatch: error: --lock-timeout 'nan': input should be a finite")


def test_rollback_prints_what_it_did(site, capsys, no_api):
    assert run(capsys, "patch", site.scenario["staged"], "--storage", site.root, "--repository", REPO,
               "--tag", TAG)[0] == 0
    code, out, err = run(capsys, "rollback", "--storage", site.root, "--repository", REPO, "--tag", TAG,
                         "--to", site.old)
    assert code == 0, err
    assert out.strip() == f"rolled back {REPO}:{TAG}: {site.new} -> {site.old}"
    code, out, err = run(capsys, "rollback", "--storage", site.root, "--repository", REPO, "--tag", TAG,
                         "--to", site.old)
    # a second run is a no-op that says so (the history's last line is that rollback)
    assert code == 0 and out.strip().startswith(f"{REPO}:{TAG} already holds {site.old}: rolled back to it on ")
    assert out.strip().endswith("; nothing to do")


def test_history_as_a_table_filtered_or_from_the_config(site, capsys, no_api, tmp_path):
    run(capsys, "patch", site.scenario["staged"], "--storage", site.root, "--repository", REPO, "--tag", TAG)
    code, out, err = run(capsys, "history", "--storage", site.root, "--repository", REPO, "--tag", TAG)
    assert code == 0 and out.splitlines()[0].split()[:3] == ["TIME", "REPOSITORY:TAG", "ACTION"]
    assert len(out.strip().splitlines()) == 3  # header, the old image, the patch
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"storage:\n  filesystem:\n    rootdirectory: {site.root}\nhttp:\n  addr: :5000\n")
    code, out, err = run(capsys, "history", "--registry-config", cfg, "--repository", "other")
    assert code == 0 and out.strip() == "no tag changes recorded"
    code, out, err = run(capsys, "history")
    assert code == 2 and "pass --storage ROOT or --registry-config config.yml" in error_line(err)


def test_operating_system_errors_are_one_line_and_a_stop_wins(site, capsys, no_api):
    hosts = site.root / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    code, out, err = run(capsys, "history", "--storage", hosts)
    assert code == 4 and "Not a directory" in error_line(err) and "Traceback" not in err
    code, out, err = run(capsys, "--debug", "history", "--storage", hosts)
    assert code == 4 and "Traceback" in err
    interrupt.request_stop(signal.SIGTERM)  # an I/O error while stopping reports the stop
    code, out, err = run(capsys, "history", "--storage", hosts)
    assert code == 143 and "interrupted by SIGTERM; nothing is half-written" in error_line(err)
    code, out, err = run(capsys, "--debug", "history", "--storage", hosts)
    assert code == 143 and "Traceback" in err


def test_with_an_unreachable_api_nothing_runs_and_expected_errors_stay_one_line(site, capsys, monkeypatch, tmp_path):
    api = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", api)
    before = tree_hash(site.root)
    for args in (["patch", site.scenario["staged"], "--storage", site.root, "--repository", REPO, "--tag", TAG],
                 ["rollback", "--storage", site.root, "--repository", REPO, "--tag", TAG]):
        code, out, err = run(capsys, *args)
        assert code == 2 and f"the Prefect API at {api} does not answer (ConnectError)" in error_line(err)
    inv = tmp_path / "inventory.yml"
    for key, value, secret in (("verify_command", "skopeo --creds bob:pw x {ref}", "bob:pw"),
                               ("restart", "command:systemctl restart r TOKEN=hunter2", "hunter2")):
        inv.write_text(yaml.safe_dump({"registries": [{"name": "a", "storage": str(site.root), key: value}]}))
        code, out, err = run(capsys, "rollout", site.scenario["staged"], "--inventory", inv, "--repository", REPO,
                             "--tag", TAG)
        assert code == 2 and f"'{'url' if key == 'url' else key}' of inventory entry a carries a credential inline" in error_line(err)
        assert secret not in err and tree_hash(site.root) == before
    # on an API, a task's failure is logged once, without the traceback of an expected error
    record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "task failed", None,
                               (UsageError, UsageError("bad"), None))
    assert all(f.filter(record) for f in logging.getLogger("prefect.task_runs").filters)
    assert record.exc_info is None
    code, out, err = run(capsys, "--debug", "rollback", "--storage", site.root, "--repository", REPO, "--tag", TAG)
    assert code == 2 and "Traceback" in err  # --debug keeps tracebacks, on an API too
    # --local runs here all the same
    code, out, err = run(capsys, "patch", site.scenario["staged"], "--storage", site.root, "--repository", REPO,
                         "--tag", TAG, "--local")
    assert code == 0 and f"patched {REPO}:{TAG}" in out and site.current() == str(site.new).encode()


# --------------------------------------------------------------------------- rollouts

def test_rollout_options_are_checked_before_anything_runs(site, capsys, no_api, tmp_path):
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"registries": [{"name": "a", "storage": str(site.root)}]}))
    base = ["rollout", site.scenario["staged"], "--inventory", inv, "--repository", REPO, "--tag", TAG]
    for extra, message in ((["--max-parallel", "0"], "--max-parallel '0': input should be greater than or equal to 1"),
                           (["--verify-command", "skopeo inspect x"], "must contain {ref}"),
                           (["--only", "a,zz"], "--only names registries not in the inventory: zz; known: a")):
        code, out, err = run(capsys, *base, *extra)
        assert code == 2 and message in error_line(err)


def test_a_failed_rollout_prints_the_table_and_exits_7(site, capsys, no_api, tmp_path):
    good = tmp_path / "good"
    shutil.copytree(site.root, good)
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"registries": [
        {"name": "good", "storage": str(good), "group": "canary"},
        {"name": "gone", "storage": str(tmp_path / "gone"), "group": "canary"},
        {"name": "later", "storage": str(site.root), "group": "rest"}]}))
    code, out, err = run(capsys, "rollout", site.scenario["staged"], "--inventory", inv, "--repository", REPO,
                         "--tag", TAG, "--state-dir", tmp_path / "state")
    assert code == 7
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "patched" in rows["good"] and "failed" in rows["gone"] and "not-run" in rows["later"]
    assert "is not a directory" in rows["gone"] and "wave 'canary' failed" in rows["later"]
    assert error_line(err) == ("regpatch: error: 1 of 3 registries failed: gone; not run (an earlier wave "
                               "failed): later; run the same rollout again to retry them (the others are only checked)")
    assert site.current() == str(site.old).encode()


def test_rollout_tables_state_and_errors_survive_their_round_trips(tmp_path):
    outcomes = [RegistryOutcome("a", "canary", "local", PATCHED, old="sha256:" + "1" * 64, new="sha256:" + "2" * 64,
                                bytes_copied=3 << 20, seconds=1.25),
                RegistryOutcome("b|c", "canary", "pool p", FAILED, error="disk | full"),
                RegistryOutcome("d", "rest", "local", DRY_RUN, new="sha256:" + "2" * 64),
                RegistryOutcome("e", "rest", "local", SKIPPED, new="sha256:" + "2" * 64, note="done in an earlier run")]
    table = render_table(outcomes)
    assert "sha256:111111111111 → sha256:222222222222" in table and "3.0 MiB" in table and "1.2" in table
    assert "(new tag) → sha256:222222222222" in table and "done in an earlier run" in table
    assert render_table([]) == "(no registries)\n"
    md = render_markdown(outcomes, "Rollout")
    assert md.startswith("# Rollout\n") and "| b\\|c | canary | pool p | failed |" in md \
        and "disk | full" in md.split("## Errors", 1)[1]  # the error in full under the table
    failed = RolloutFailed(outcomes)
    again = pickle.loads(pickle.dumps(failed))  # crosses process boundaries intact
    assert str(again) == str(failed) and again.exit_code == 7 and again.outcomes[1].error == "disk | full"
    assert RegistryOutcome.from_dict({**outcomes[0].to_dict(), "added_later": 1}) == outcomes[0]

    state = RolloutState(tmp_path, "servercore", "ltsc2019", "sha256:" + "2" * 64)
    state.path.write_text("{torn")
    assert RolloutState(tmp_path, "servercore", "ltsc2019", "sha256:" + "2" * 64).registries == {}
    for o in outcomes:
        state.record(o)
    reread = RolloutState(tmp_path, "servercore", "ltsc2019", "sha256:" + "2" * 64)
    assert set(reread.registries) == {"a", "b|c"}  # skipped, not-run and dry-run are not recorded
    assert reread.finished("a") == outcomes[0] and reread.finished("b|c") is None
    assert RolloutState(tmp_path, "servercore", "ltsc2019", "sha256:" + "3" * 64).registries == {}


def test_a_stop_request_ends_the_rollout_and_errors_never_stop_the_others(site, tmp_path):
    entries = parse_inventory({"registries": [{"name": n, "storage": f"/x/{n}"} for n in ("a", "b")]}).select()
    state = RolloutState(tmp_path, REPO, TAG, "sha256:" + "2" * 64)

    def broken(entry):
        raise ValueError(f"a bug\nin {entry.name}")

    outcomes = run_rollout(entries, broken, state=state)
    assert [o.status for o in outcomes] == [FAILED, FAILED] and outcomes[0].error == "ValueError: a bug in a"
    assert outcome_of(entries[0], error=UsageError("bad")).error == "bad; the tag was not moved"

    def stopped(entry):
        raise Interrupted(signal.SIGINT)

    with pytest.raises(Interrupted):
        run_rollout(entries, stopped, state=state)


# --------------------------------------------------------------------------- the inventory

def test_every_inventory_problem_is_reported_at_once_by_entry_and_field(tmp_path):
    doc = {"registries": [
        {"name": "ok-1", "storage": "/srv/a"},
        {"name": "bad name", "storage": " ", "stroage": "/x"},
        {"name": "c", "storage": "/c", "url": "not a url", "group": " ", "restart": "reboot"},
        {"name": "d", "storage": "/d", "restart": "process:pidfile=/run/r.pid"},
        {"storage": "/e"},
        {"name": "ok-1", "storage": "/f"},
        "just a string",
    ]}
    with pytest.raises(InventoryError) as e:
        parse_inventory(doc, "fleet.yml")
    text = str(e.value)
    assert text.startswith("inventory fleet.yml is invalid: ")
    for needle in ("registries[1] ('bad name'): name: 'bad name' must be 1-63 letters",
                   "registries[1] ('bad name'): storage: must not be empty",
                   "registries[1] ('bad name'): stroage: unknown field",
                   "registries[2] ('c'): url: 'not a url' is not a registry URL",
                   "registries[2] ('c'): group: must not be empty",
                   "registries[2] ('c'): restart: invalid restart spec 'reboot'",
                   "registries[3] ('d'): restart 'process:' needs config=PATH or the entry's registry_config",
                   "registries[4]: name: required field is missing",
                   "registries[6]: Input should be a valid dictionary"):
        assert needle in text, (needle, text)
    with pytest.raises(InventoryError, match="registries\\[1\\]: name 'ok-1' is already used by registries\\[0\\]"):
        parse_inventory({"registries": [{"name": "ok-1", "storage": "/a"}, {"name": "ok-1", "storage": "/b"}]})
    # one storage under two names (a trailing slash, a '.'): one registry patched twice at once
    with pytest.raises(InventoryError, match="registries\\[1\\]: storage '/a/./b/' is the storage of registries\\[0\\] "
                                             "\\('ok-1'\\) too"):
        parse_inventory({"registries": [{"name": "ok-1", "storage": "/a/b"}, {"name": "ok-2", "storage": "/a/./b/"}]})
    parse_inventory({"registries": [{"name": "h1", "storage": "/srv/registry", "work_pool": "h1"},  # other hosts
                                    {"name": "h2", "storage": "/srv/registry", "work_pool": "h2"}]})
    with pytest.raises(InventoryError, match="registries: List should have at least 1 item"):
        parse_inventory({"registries": []})
    with pytest.raises(InventoryError, match="is invalid: Input should be a valid dictionary"):
        parse_inventory(["a list"])


def test_inventory_files_are_read_safely_and_select_waves(tmp_path):
    with pytest.raises(InventoryError, match="cannot read it: No such file or directory"):
        load_inventory(tmp_path / "absent.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("registries: [\n")
    with pytest.raises(InventoryError, match="not valid YAML"):
        load_inventory(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(InventoryError, match="expected a mapping with a 'registries:' list"):
        load_inventory(bad)
    good = tmp_path / "fleet.yml"
    good.write_text("\ufeff" + yaml.safe_dump({"registries": [
        {"name": "a", "storage": "/a", "group": "canary", "url": "http://127.0.0.1:5000",
         "restart": "process:pidfile=/run/r.pid", "registry_config": "/etc/r.yml", "insecure": True},
        {"name": "b", "storage": "/b", "work_pool": "site-b"},
        {"name": "c", "storage": "/c", "group": "canary"}]}))
    inv = load_inventory(good)
    assert [(w, [e.name for e in es]) for w, es in inv.waves(inv.select())] == [("canary", ["a", "c"]),
                                                                                ("default", ["b"])]
    assert [e.name for e in inv.select(["c", "a"])] == ["a", "c"]
    a, b, _ = inv.registries
    assert (a.where, b.where, b.wave) == ("local", "pool site-b", "default")
    params = a.registry_params()
    assert (params.storage, params.registry_url, params.registry_config, params.insecure) == (
        "/a", "http://127.0.0.1:5000", "/etc/r.yml", True)


# --------------------------------------------------------------------------- progress

def test_progress_draws_a_bar_on_a_terminal_and_logs_big_copies_elsewhere(caplog, monkeypatch):
    assert [human(n) for n in (0, 1023, 1024, 5 << 20, 3 << 40, 5 << 50)] == [
        "0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 TiB", "5120.0 TiB"]
    screen = io.StringIO()
    advance = Progress(stream=screen, terminal=True)("copy base.tar.gz", 2048)
    advance(1024)
    advance(1024)
    drawn = screen.getvalue()
    assert drawn.startswith("\rcopy base.tar.gz") and "[" + "#" * 30 + "] 100.0% 2.0 KiB/2.0 KiB" in drawn
    assert drawn.endswith("\n")
    empty = io.StringIO()
    Progress(stream=empty, terminal=True)("empty", 0)(0)
    assert "100.0%" in empty.getvalue()

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    quiet = io.StringIO()
    advance = Progress(stream=quiet)("hash layer", 1 << 30)  # not a terminal: log lines every 10 s
    with caplog.at_level(logging.INFO, logger="regpatch.progress"):
        clock[0] += 5
        advance(100 << 20)
        clock[0] += 6
        advance(100 << 20)
    assert quiet.getvalue() == ""
    assert [r.getMessage() for r in caplog.records] == ["hash layer: 200.0 MiB of 1.0 GiB (20%), 18.2 MiB/s"]


# --------------------------------------------------------------------------- the stop flag

def test_signals_only_set_the_flag_and_sleeps_end_early():
    original = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        interrupt.install_handlers()
        signal.raise_signal(signal.SIGINT)
        assert interrupt.stopping() and interrupt.signal_number() == signal.SIGINT
        signal.raise_signal(signal.SIGTERM)  # a second signal keeps the first one's number
        assert interrupt.signal_number() == signal.SIGINT
        t0 = time.monotonic()
        with pytest.raises(Interrupted) as e:
            interrupt.sleep(30)
        assert time.monotonic() - t0 < 5 and e.value.exit_code == 130
    finally:
        for s, h in original.items():
            signal.signal(s, h)


def test_outside_the_main_thread_handlers_are_left_alone():
    before = signal.getsignal(signal.SIGTERM)
    errors = []

    def in_a_thread():
        try:
            interrupt.install_handlers()
            with interrupt.chained_handlers():
                pass
        except Exception as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    t = threading.Thread(target=in_a_thread)
    t.start()
    t.join()
    assert errors == [] and signal.getsignal(signal.SIGTERM) is before


def test_chained_handlers_turn_an_unhandled_ctrl_c_into_keyboard_interrupt():
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupt.chained_handlers():
                signal.raise_signal(signal.SIGINT)
        assert interrupt.stopping()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, original)


def test_a_child_ignoring_sigterm_is_killed_and_reaped(tmp_path):
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    with pytest.raises(children.ChildTimeout):
        children.run(f"trap '' TERM; echo $$ > {pidfile}; while :; do sleep 0.1; done", shell=True,
                     timeout=0.5, kill_grace=0.3)
    assert time.monotonic() - t0 < 5
    pid = int(pidfile.read_text())
    assert not pid_alive(pid)  # killed after the grace, and reaped
