"""The command line without Prefect: checks first, one line per error, the engine here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TAG, tree_hash

from regpatch.cli import main
from regpatch.cli.prefect_api import configured_prefect_api

EXE = str(Path(sys.executable).with_name("regpatch"))


def no_prefect_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = "/nonexistent-prefect-home"
    return env


def test_patch_and_rollback_run_here_without_prefect(site, capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(site.root / "no-prefect-here"))
    code = main(["patch", str(site.scenario["staged"]), "--storage", str(site.root), "--repository", REPO,
                 "--tag", TAG])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"patched {REPO}:{TAG}: {site.old} -> {site.new}" in out
    assert "no registry URL" in err  # said once, as a warning line
    code = main(["rollback", "--storage", str(site.root), "--repository", REPO, "--tag", TAG])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"rolled back {REPO}:{TAG}: {site.new} -> {site.old}" in out
    code = main(["history", "--storage", str(site.root), "--json"])
    assert code == 0 and capsys.readouterr().out.count('"action"') == 3


def run_cli(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *map(str, args)], env=env or no_prefect_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, code, message", [
    (["--repository", "Bad", "--tag", TAG], 2, "invalid repository 'Bad'"),
    (["--repository", "servercore\n", "--tag", TAG], 2, "invalid repository"),
    (["--repository", REPO, "--tag=-x"], 2, "invalid tag"),
    (["--repository", REPO, "--tag", TAG, "--lock-timeout", "nan"], 2, "--lock-timeout 'nan': input should be a finite number"),
    (["--repository", REPO, "--tag", TAG, "--verify-command", "skopeo inspect x"], 2, "must contain {ref}"),
    (["--repository", REPO, "--tag", TAG, "--registry-url", "ftp://h:1"], 2, "must start with https://"),
    (["--repository", REPO, "--tag", TAG, "--registry-url", "http://127.0.0.1:1",
      "--registry-ca", "/nonexistent/ca.pem"], 2, "CA file /nonexistent/ca.pem does not exist"),
    (["--repository", REPO, "--tag", TAG, "--restart", "process:pidfile=x"], 2, "needs config="),
])
def test_bad_arguments_fail_at_once_with_one_line_and_no_prefect(site, args, code, message):
    before = tree_hash(site.root)
    proc = run_cli("patch", site.scenario["staged"], "--storage", site.root, *args)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regpatch: error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "prefect" not in proc.stderr.lower()
    assert tree_hash(site.root) == before


def test_debug_keeps_the_exit_code_and_adds_the_traceback(site):
    proc = run_cli("--debug", "patch", site.scenario["staged"], "--storage", site.root, "--repository", "Bad",
                   "--tag", TAG)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("regpatch: error:")


def test_the_command_line_never_imports_prefect_without_an_api(site):
    code = ("import sys, runpy; sys.argv = ['regpatch', 'patch', %r, '--storage', %r, '--repository', %r, "
            "'--tag', %r]\nfrom regpatch.cli import main\nrc = main(sys.argv[1:])\n"
            "assert 'prefect' not in sys.modules, 'prefect was imported'\nsys.exit(rc)"
            % (str(site.scenario["staged"]), str(site.root), REPO, TAG))
    proc = subprocess.run([sys.executable, "-c", code], env=no_prefect_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert site.current() == str(site.new).encode()


def test_prefect_api_from_the_environment_or_the_active_profile(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert configured_prefect_api() is None
    (tmp_path / "profiles.toml").write_text('active = "prod"\n[profiles.prod]\n'
                                            'PREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
                                            '[profiles.ephemeral]\n')
    assert configured_prefect_api() == "http://127.0.0.1:4200/api"
    monkeypatch.setenv("PREFECT_PROFILE", "ephemeral")
    assert configured_prefect_api() is None
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert configured_prefect_api() == "http://127.0.0.1:9/api"


def test_with_an_api_inline_credentials_are_refused_before_the_run_exists(site):
    """A credential typed into the command line would be stored as a flow-run parameter."""
    env = {**no_prefect_env(), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    proc = run_cli("patch", site.scenario["staged"], "--storage", site.root, "--registry-url", "http://127.0.0.1:9",
                   "--repository", REPO, "--tag", TAG,
                   "--verify-command", "skopeo inspect --creds bob:hunter2 docker://{ref}", env=env)
    assert proc.returncode == 2
    assert "carries a credential inline" in proc.stderr and "hunter2" not in proc.stderr
    # with the credential in a variable, the next problem is the unreachable API, named plainly
    proc = run_cli("patch", site.scenario["staged"], "--storage", site.root, "--repository", REPO, "--tag", TAG,
                   env=env)
    assert proc.returncode == 2 and "the Prefect API at http://127.0.0.1:9/api does not answer" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_local_flag_runs_here_even_with_an_api(site):
    env = {**no_prefect_env(), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    proc = run_cli("patch", site.scenario["staged"], "--storage", site.root, "--repository", REPO, "--tag", TAG,
                   "--local", env=env)
    assert proc.returncode == 0, proc.stderr
    assert site.current() == str(site.new).encode()
