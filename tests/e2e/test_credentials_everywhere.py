"""No password in any output, in Prefect's database, or in the state folder, whichever way it is given.

Against a real registry and the session's real Prefect server, through the command line as an
operator runs it: with a Prefect API, every spelling of an inline credential in a verify command,
a restart command or the registry URL is refused before a flow run exists; flow runs whose
commands refer to the password as a $VARIABLE and fail while printing it keep it out of their
logs, state messages and artifacts; without an API (runs here), inline credentials are not
refused but every line printed, the journal, the reports and the history are redacted. Then
every file under the Prefect server's home (its SQLite database and its WAL, and a dump of the
database) and under the state folder is searched for the password's bytes.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from support.credentials import LITERAL

REPO, TAG = "servercore", "ltsc2019"
REGPATCH = str(Path(sys.executable).with_name("regpatch"))
SECRET = "Qz7-e2e-Secret-91"
# one spelling of each carrier (the unit table runs them all through the same detector)
SPELLINGS = [LITERAL[i][0].replace("{s}", SECRET) for i in (0, 1, 4, 6, 13, 14, 16, 19, 22, 24, 26, 30)]


def cli(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([REGPATCH, *map(str, args)], env=env, capture_output=True, text=True, timeout=300)


def without_prefect(env: dict) -> dict:
    out = {k: v for k, v in env.items() if not k.startswith("PREFECT_")}
    out["PREFECT_HOME"] = "/nonexistent-prefect-home"
    return out


def test_no_password_in_any_output_nor_in_prefects_database_nor_in_the_state_folder(registry, scenario,
                                                                                   prefect_server):
    target = ["--storage", registry.root, "--registry-url", registry.url, "--repository", REPO, "--tag", TAG]
    api_env = prefect_server.env(REG_PW=SECRET)
    outputs: list[str] = []

    def run(*args, env, codes) -> subprocess.CompletedProcess:
        p = cli(*args, env=env)
        outputs.append(p.stdout + p.stderr)
        assert p.returncode in codes, f"{args}: exit {p.returncode}: {p.stderr[-2000:]}"
        return p

    # 1. with a Prefect API: refused before any flow run exists
    for text in SPELLINGS:
        p = run("patch", scenario["staged"], *target, "--verify-command", f"{text} {{ref}}", env=api_env, codes=(2,))
        assert "carries a credential inline" in p.stderr
    for text in SPELLINGS[::3]:
        p = run("patch", scenario["staged"], *target, "--restart", f"command:{text}", env=api_env, codes=(2,))
        assert "carries a credential inline" in p.stderr
        p = run("rollback", *target, "--to", str(scenario["old"].manifest_digest), "--restart", f"command:{text}",
                env=api_env, codes=(2,))
        assert "carries a credential inline" in p.stderr
    run("patch", scenario["staged"], "--storage", registry.root, "--registry-url",
        f"http://alice:{SECRET}@{registry.host}", "--repository", REPO, "--tag", TAG, env=api_env, codes=(2,))

    # 2. flow runs on the API whose commands name the password as $REG_PW and fail printing it
    t0 = time.monotonic()
    run("patch", scenario["staged"], *target, "--verify-command",
        'test -n {ref} && echo "login alice:$REG_PW refused" >&2 && exit 1; '
        'skopeo inspect --creds alice:$REG_PW docker://{ref}', env=api_env, codes=(5,))
    run("patch", scenario["staged"], *target, "--restart",
        'command:echo "restart refused for $REG_PW" >&2; exit 3; : --password $REG_PW', env=api_env, codes=(6,))
    print(f"\ntwo failing flow runs: {time.monotonic() - t0:.0f}s")

    # 3. runs here (no API): inline credentials run, and every line printed and written is redacted
    local = without_prefect(api_env)
    p = run("patch", scenario["staged"], *target, "--verify-command", f"skopeo inspect -p{SECRET} docker://{{ref}}",
            env=local, codes=(5,))
    assert "-p***" in p.stderr  # skopeo's own error line quotes the flag, password included: redacted
    p = run("patch", scenario["staged"], *target, "--restart", f"command:curl -sf -u alice:{SECRET} http://127.0.0.1:1/",
            env=local, codes=(6,))
    assert "restart command (curl -sf -u alice:*** http://127.0.0.1:1/) exited with code 7" in p.stderr
    run("patch", scenario["staged"], *target, "--verify-command",
        f"REGISTRY_PASSWORD={SECRET} skopeo inspect --tls-verify=false docker://{{ref}}", env=local, codes=(0,))
    run("rollback", *target, "--verify-command",
        f"skopeo inspect --tls-verify=false --creds alice:{SECRET} docker://{{ref}}", env=local, codes=(0,))
    run("history", "--storage", registry.root, env=local, codes=(0,))

    for text in outputs:
        assert SECRET not in text, text
    time.sleep(2)  # events and logs the server has accepted reach its database
    secret = SECRET.encode()
    searched = 0
    for folder in (prefect_server.home, registry.root / ".regpatch"):
        for path in Path(folder).rglob("*"):
            if path.is_file():
                searched += 1
                assert secret not in path.read_bytes(), f"the password is in {path}"
    databases = [p for p in Path(prefect_server.home).rglob("*.db")]
    assert databases, "no SQLite database under the Prefect server's home"
    for db in databases:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            dump = "\n".join(conn.iterdump())
        assert len(dump) > 10_000 and SECRET not in dump
        assert "restart refused for ***" in dump or "login alice:*** refused" in dump  # the runs' logs are there
    print(f"searched {searched} files and {len(databases)} database dump(s): no password")
    assert os.path.isdir(registry.root / ".regpatch" / "reports")
