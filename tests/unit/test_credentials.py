"""One credential detector, two uses: every spelling of the table (tests/support/credentials.py) is
refused before a Prefect run stores it AND redacted in every message (errors, log records, reports,
the command line's output); every reference ($VAR, ${VAR}, %VAR%, $(...)) and look-alike is neither."""

from __future__ import annotations

import logging

import pytest
from conftest import REPO, TAG
from support.credentials import NOT_SECRETS, literal_cases

from regpatch.cli import main
from regpatch.demo.loopback import free_port
from regpatch.errors import RegpatchError, RestartError, UsageError, VerificationError
from regpatch.params import has_inline_credentials, refuse_inline_credentials
from regpatch.registry.restart import CommandRestart
from regpatch.registry.verify_command import run_verify_command
from regpatch.sanitize import REDACTED, command_secrets, find_credentials, redact

CASES = literal_cases()


@pytest.mark.parametrize("text, secret", CASES, ids=[t for t, _ in CASES])
def test_every_spelling_is_refused_and_redacted(text, secret, caplog):
    assert has_inline_credentials(text)
    with pytest.raises(UsageError, match="carries a credential inline") as e:
        refuse_inline_credentials("--verify-command", text)
    assert secret not in str(e.value)
    # the refusal's own words are never taken for a credential (redacted into nonsense)
    carrier = find_credentials(text)[0].carrier
    assert f"inline ({carrier}); it would be stored" in str(e.value) and REDACTED not in str(e.value)
    assert str(e.value).endswith("REGPATCH_REGISTRY_USERNAME/_PASSWORD")
    shown = redact(text)
    assert secret not in shown and REDACTED in shown
    assert shown.replace(REDACTED, secret) == text  # only the secret went: the command stays readable
    assert [text[c.start:c.end] for c in find_credentials(text)] == [secret]
    assert secret not in str(RegpatchError(f"the verify command ({text}) failed"))
    with caplog.at_level(logging.INFO, logger="regpatch.test"):
        logging.getLogger("regpatch.test").info("running %s", text)
    assert secret not in caplog.records[-1].getMessage()


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_references_and_look_alikes_are_neither_refused_nor_changed(text):
    assert not has_inline_credentials(text)
    refuse_inline_credentials("--verify-command", text)
    assert redact(text) == text


@pytest.fixture
def dead_api(monkeypatch):
    """A configured Prefect API that does not answer: a value that passes the refusal ends at the
    API check instead (exit 2, 'does not answer'), a refused one never gets there."""
    url = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    return url


@pytest.mark.parametrize("text, secret", CASES, ids=[t for t, _ in CASES])
def test_the_command_line_refuses_each_before_a_prefect_run(site, capsys, dead_api, text, secret):
    base = ["patch", str(site.scenario["staged"]), "--storage", str(site.root), "--repository", REPO, "--tag", TAG]
    for extra in (["--registry-url", "http://127.0.0.1:5000", "--verify-command", f"{text} {{ref}}"],
                  ["--restart", f"command:{text}"]):
        code = main([*base, *extra])
        out, err = capsys.readouterr()
        assert code == 2 and "carries a credential inline" in err, err
        assert secret not in out + err


@pytest.mark.parametrize("text", NOT_SECRETS[:6])
def test_a_reference_passes_the_refusal(site, capsys, dead_api, text):
    code = main(["patch", str(site.scenario["staged"]), "--storage", str(site.root), "--repository", REPO,
                 "--tag", TAG, "--restart", f"command:{text}"])
    err = capsys.readouterr().err
    assert code == 2 and "does not answer" in err and "carries a credential" not in err


def test_a_failing_restart_command_never_prints_its_password(monkeypatch):
    """Before: 'restart command exited with code 7: curl -sf -u alice:<password> ...'."""
    monkeypatch.setenv("REG_PW", "Env-Secret-42")
    command = ("curl -sf -u alice:Lit-Secret-41 http://127.0.0.1:1/ || "
               "{ echo 'denied alice:Lit-Secret-41' >&2; echo \"also $REG_PW\" >&2; exit 7; }; : --password $REG_PW")
    with pytest.raises(RestartError) as e:
        CommandRestart(command, timeout=30).restart()
    shown = str(e.value)
    assert "exited with code 7" in shown and "Lit-Secret-41" not in shown and "Env-Secret-42" not in shown
    assert shown.endswith("exited with code 7: also ***")
    command2 = 'echo "token rejected: $REG_PW" >&2; exit 3; skopeo --creds "alice:$REG_PW"'
    with pytest.raises(RestartError) as e:
        CommandRestart(command2, timeout=30).restart()
    assert "Env-Secret-42" not in str(e.value) and "token rejected: ***" in str(e.value)
    assert set(command_secrets(command)) == {"Lit-Secret-41", "Env-Secret-42"}


def test_a_failing_verify_command_never_prints_its_password(monkeypatch):
    monkeypatch.setenv("REG_PW", "Env-Secret-43")
    with pytest.raises(VerificationError) as e:
        run_verify_command('test -n {ref} && echo "login alice:$REG_PW refused" >&2 && exit 1; '
                           'skopeo inspect --creds alice:$REG_PW docker://{ref}', "reg/x@sha256:" + "a" * 64)
    assert "Env-Secret-43" not in str(e.value) and "refused" in str(e.value)
    with pytest.raises(VerificationError) as e:
        run_verify_command("skopeo inspect -pLit-Secret-44 docker://{ref}", "reg/x@sha256:" + "a" * 64)
    assert "Lit-Secret-44" not in str(e.value) and "-p***" in str(e.value)


def _message_literals():
    """Every string literal and f-string of regpatch/ but docstrings, with its place."""
    import ast
    from pathlib import Path

    root = Path(__file__).parents[2] / "regpatch"
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if id(node) in docstrings:
                continue
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield f"{path.relative_to(root.parent)}:{node.lineno}", node.value
            elif isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
                yield f"{path.relative_to(root.parent)}:{node.lineno}", text


def test_no_message_of_regpatch_is_taken_for_a_credential():
    """Every error and log line is redacted: a message whose own words look like a credential
    (an example 'USER:PASSWORD', a flag like -pubout) would reach the operator mangled."""
    hits = [f"{where}: {text[:80]!r}" for where, text in _message_literals()
            if REDACTED not in text and find_credentials(text)]
    assert hits == []
