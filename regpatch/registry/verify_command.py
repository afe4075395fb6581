"""The operator's own pull command (skopeo, podman, docker) run on the new image, logged redacted."""

from __future__ import annotations

import logging
import os

from regpatch.errors import UsageError, VerificationError
from regpatch.platform import children
from regpatch.registry.config import registry_url_from_config, storage_root_from_config  # noqa: F401 (re-export)
from regpatch.registry.credentials import ENV_PASSWORD
from regpatch.sanitize import command_secrets, redact_command

log = logging.getLogger("regpatch.registry")

STDERR_KEPT = 64 << 10  # the last lines are what tell


def run_verify_command(template: str, ref: str, *, timeout: float = 1800) -> None:
    """Run the operator's verification command with ``{ref}`` replaced, quoted for the
    shell that runs it (``sh``, or ``cmd.exe`` on Windows: ``children.quote``).

    It runs through the one runner (``regpatch.platform.children``): its own process group
    or Job Object, stdout dropped, the last 64 KiB of stderr kept; on a stop request or the
    timeout its whole tree is killed and reaped, and so is whatever it left running when it
    exits. A non-zero exit becomes a ``VerificationError`` with the exit code and the last
    non-empty line of stderr. The command line is logged, and named in errors, only
    through ``redact_command`` (credential options, passwords in URLs and secret
    variables hidden); the stderr line is redacted the same way, and
    ``REGPATCH_REGISTRY_PASSWORD``'s value, and the values of the variables the command
    names where a credential goes (``--creds alice:$PW``), are hidden wherever they are.
    """
    if "{ref}" not in template:
        raise UsageError("the verify command must contain {ref}, where the image reference goes, "
                         "e.g. 'skopeo inspect docker://{ref}'")
    try:
        quoted = children.quote(ref)
    except ValueError as e:
        raise VerificationError(f"the image reference cannot be given to the verify command: {e}") from None
    command = template.replace("{ref}", quoted)
    secrets = tuple(s for s in (os.environ.get(ENV_PASSWORD),) if s) + command_secrets(template)
    shown = redact_command(command, secrets)
    log.info("running the verify command: %s", shown)
    children.run_or_raise(command, shell=True, stderr=children.Capture(STDERR_KEPT, "tail"), timeout=timeout,
                          what=f"verify command for {ref} ({shown})", error=VerificationError,
                          show=lambda line: redact_command(line, secrets))
    log.info("verify command passed: %s", shown)
