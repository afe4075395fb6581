"""The operator's own pull command (skopeo, podman, docker) run on the new image, logged redacted."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import tempfile

from regpatch import interrupt
from regpatch.errors import UsageError, VerificationError
from regpatch.registry.config import registry_url_from_config, storage_root_from_config  # noqa: F401 (re-export)
from regpatch.registry.credentials import ENV_PASSWORD
from regpatch.sanitize import command_secrets, redact_command

log = logging.getLogger("regpatch.registry")


def run_verify_command(template: str, ref: str, *, timeout: float = 1800) -> None:
    """Run the operator's verification command with ``{ref}`` replaced (shell-quoted).

    A non-zero exit becomes a ``VerificationError`` with the exit code and the
    last non-empty line of stderr. The command line is logged, and named in
    errors, only through ``redact_command`` (credential options, passwords in
    URLs and secret variables hidden); the stderr line is redacted the same
    way, and ``REGPATCH_REGISTRY_PASSWORD``'s value, and the values of the variables the command
    names where a credential goes (``--creds alice:$PW``), are hidden wherever they are.
    """
    if "{ref}" not in template:
        raise UsageError("the verify command must contain {ref}, where the image reference goes, "
                         "e.g. 'skopeo inspect docker://{ref}'")
    command = template.replace("{ref}", shlex.quote(ref))
    secrets = tuple(s for s in (os.environ.get(ENV_PASSWORD),) if s) + command_secrets(template)
    shown = redact_command(command, secrets)
    log.info("running the verify command: %s", shown)
    # Its own session, stderr in a temp file: on a stop request or the timeout the
    # whole process group is killed and reaped (interrupt.wait_child).

    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        except OSError as e:
            raise VerificationError(f"verify command for {ref} ({shown}) could not start: "
                                    f"{e.strerror or type(e).__name__}") from None
        try:
            returncode = interrupt.wait_child(proc, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise VerificationError(f"verify command for {ref} ({shown}) did not finish within "
                                    f"{timeout:g}s") from None
        if returncode == 0:
            log.info("verify command passed: %s", shown)
            return
        size = err.seek(0, os.SEEK_END)
        err.seek(max(0, size - (64 << 10)))  # the last lines are what tell
        stderr = err.read()
    lines = [l.strip() for l in stderr.decode("utf-8", "replace").splitlines() if l.strip()]
    last = redact_command(lines[-1], secrets) if lines else "(no output on stderr)"
    if returncode < 0:
        status = f"was killed by signal {-returncode}"
    else:
        status = f"exited with code {returncode}"
    raise VerificationError(f"verify command for {ref} ({shown}) {status}: {last}")

