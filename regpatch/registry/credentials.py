"""The registry's credentials, read where they are used and never shown: REGPATCH_REGISTRY_USERNAME/
_PASSWORD, else a docker ``config.json`` (its credential helpers, ``docker-credential-<name> get``, or its
``auths`` entries)."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import urlsplit

from regpatch import platform
from regpatch.errors import AuthError, ManifestError, UsageError
from regpatch.manifest import load_json
from regpatch.platform import children
from regpatch.registry.config import registry_url_from_config, storage_root_from_config  # noqa: F401 (re-export)

log = logging.getLogger("regpatch.registry")


ENV_USERNAME = "REGPATCH_REGISTRY_USERNAME"


ENV_PASSWORD = "REGPATCH_REGISTRY_PASSWORD"


HOW_TO_GIVE_CREDENTIALS = (f"set {ENV_USERNAME} and {ENV_PASSWORD}, or give a docker config.json "
                           "(auth file) with an 'auths' entry or a credential helper for the registry")


HELPER_PREFIX = "docker-credential-"


HELPER_TIMEOUT = 30.0



HELPER_OUTPUT_LIMIT = 1 << 20  # an answer is a small JSON object: more is read and dropped



HELPER_NOT_FOUND = b"credentials not found in native keychain"  # the protocol's "no entry" answer


TOKEN_USERNAME = "<token>"  # a helper's Username meaning: Secret is an identity token


_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)


@dataclass(frozen=True)
class Credentials:
    """A username and password, or an identity token (``identity_token=True``: the
    password is an OAuth2 refresh token for the registry's token server). The
    secret never shows in repr or str."""

    username: str
    password: str = field(repr=False)
    identity_token: bool = False

    def __repr__(self) -> str:
        kind = ", identity_token=True" if self.identity_token else ""
        return f"Credentials(username={self.username!r}, password='***'{kind})"

    __str__ = __repr__

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode("utf-8")
        return "Basic " + base64.b64encode(raw).decode("ascii")


def _normalise_host(value: str) -> str:
    """'https://Host:5000/v1/' -> 'host:5000'; 'host:5000' -> 'host:5000'."""
    v = value.strip()
    if "://" not in v:
        v = "//" + v
    parts = urlsplit(v)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return netloc.lower()


def _default_auth_files(env: Mapping[str, str]) -> list[Path]:
    files = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("DOCKER_CONFIG"):
        files.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    home = platform.home_dir(env)  # $HOME, %USERPROFILE% on Windows
    if home is not None:
        files.append(home / ".docker" / "config.json")
    return files


def load_credentials(host: str, *, auth_file: str | Path | None = None,
                     env: Mapping[str, str] = os.environ) -> Optional[Credentials]:
    """Credentials for ``host`` ('host:port', or a URL), or None (anonymous).

    Order: the ``REGPATCH_REGISTRY_USERNAME``/``_PASSWORD`` environment
    variables; else ``auth_file`` (a docker ``config.json``); else, when no
    ``auth_file`` is given, the first existing of ``$REGISTRY_AUTH_FILE``,
    ``$DOCKER_CONFIG/config.json``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
    ``$HOME/.docker/config.json`` (``%USERPROFILE%\\.docker\\config.json`` on Windows).

    In a config file: a ``credHelpers`` entry for the host wins; then an
    ``auths`` entry with credentials in it; then the ``credsStore`` helper.
    A helper is run as ``docker-credential-<name> get`` (found on ``PATH`` of
    ``env``), the host on stdin, within ``HELPER_TIMEOUT`` seconds, see
    ``credentials_from_helper``.
    """
    user, password = env.get(ENV_USERNAME), env.get(ENV_PASSWORD)
    if user or password:
        if not (user and password):
            missing = ENV_PASSWORD if user else ENV_USERNAME
            raise UsageError(f"{missing} is not set: set both {ENV_USERNAME} and {ENV_PASSWORD}, "
                             "or neither")
        return Credentials(user, password)

    if auth_file is not None:
        path = Path(auth_file)
        if not path.is_file():
            raise UsageError(f"auth file {path} does not exist or is not a file")
        return _credentials_from_file(path, host, env)
    for candidate in _default_auth_files(env):
        if candidate.is_file():
            return _credentials_from_file(candidate, host, env)
    return None


def _credentials_from_file(path: Path, host: str, env: Mapping[str, str] = os.environ) -> Optional[Credentials]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError(f"auth file {path} cannot be read: {e.strerror or type(e).__name__}") from e
    try:
        doc = load_json(raw, what=f"auth file {path}", strict_keys=False)
    except ManifestError:
        # never echo the content: it holds secrets
        raise UsageError(f"auth file {path} is not valid JSON; expected a docker config.json "
                         "with an 'auths' object") from None
    if not isinstance(doc, dict):
        raise UsageError(f"auth file {path} must hold a JSON object with an 'auths' object")
    want = _normalise_host(host)

    helpers = doc.get("credHelpers") or {}
    if not isinstance(helpers, dict):
        raise UsageError(f"auth file {path}: 'credHelpers' must be an object keyed by registry host")
    for key, helper in helpers.items():
        if _normalise_host(str(key)) == want:
            return credentials_from_helper(helper, want, origin=f"auth file {path} (credHelpers)",
                                           env=env)

    auths = doc.get("auths") or {}
    if not isinstance(auths, dict):
        raise UsageError(f"auth file {path}: 'auths' must be an object keyed by registry host")
    entry = None
    for key, value in auths.items():
        if _normalise_host(str(key)) == want:
            entry = value
            break

    creds = _credentials_from_entry(entry, path, want) if entry is not None else None
    if creds is None and doc.get("credsStore"):
        return credentials_from_helper(doc["credsStore"], want,
                                       origin=f"auth file {path} (credsStore)", env=env)
    return creds


def _credentials_from_entry(entry, path: Path, host: str) -> Optional[Credentials]:
    if not isinstance(entry, dict):
        raise UsageError(f"auth file {path}: the 'auths' entry for {host} must be an object")
    if entry.get("identitytoken"):
        token = entry["identitytoken"]
        if not isinstance(token, str):
            raise UsageError(f"auth file {path}: the 'identitytoken' for {host} must be a string")
        return Credentials(TOKEN_USERNAME, token, identity_token=True)
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise UsageError(f"auth file {path}: the 'auth' value for {host} is not base64 of "
                             "'user:password'") from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise UsageError(f"auth file {path}: the 'auth' value for {host} is not base64 of "
                             "'user:password'")
        return Credentials(user, password)
    if entry.get("username") or entry.get("password"):
        username, secret = entry.get("username"), entry.get("password")
        if not (isinstance(username, str) and username and isinstance(secret, str)):
            raise UsageError(f"auth file {path}: the entry for {host} needs both 'username' and "
                             "'password' strings")
        return Credentials(username, secret)
    return None


def credentials_from_helper(helper: object, server: str, *, origin: str,
                            env: Mapping[str, str] = os.environ,
                            timeout: float = HELPER_TIMEOUT) -> Optional[Credentials]:
    """Ask a docker credential helper for ``server``'s credentials (None: it has none).

    The protocol of docker-credential-helpers: ``docker-credential-<helper> get``
    reads the server (``host:port``) on stdin and prints
    ``{"ServerURL": ..., "Username": ..., "Secret": ...}``; a ``Username`` of
    ``<token>`` means ``Secret`` is an identity token. A helper that prints
    ``credentials not found in native keychain`` and fails means "no
    credentials" (anonymous, as docker does). Any other failure, a missing
    helper or a helper slower than ``timeout`` is an ``AuthError``. Neither
    the helper's stderr nor its stdout is ever shown: both may hold secrets.
    """
    if not isinstance(helper, str) or not _HELPER_NAME.fullmatch(helper):
        raise AuthError(f"{origin} names the credential helper {str(helper)[:64]!r}, which is not a "
                        "helper name (letters, digits, '.', '_', '-'); fix the config file")
    program = HELPER_PREFIX + helper
    exe = shutil.which(program, path=env.get("PATH", os.defpath))
    if exe is None:
        raise AuthError(f"credential helper {program} (from {origin}) is not installed or not on "
                        f"PATH; install it, or {HOW_TO_GIVE_CREDENTIALS}")
    try:  # the one runner: its own tree, interruptible, at most HELPER_OUTPUT_LIMIT bytes kept
        proc = children.run([exe, "get"], input=server.encode("utf-8"), stdout=children.Capture(HELPER_OUTPUT_LIMIT),
                            timeout=timeout, env=None if env is os.environ else dict(env), leftovers="keep")
    except children.ChildTimeout:
        raise AuthError(f"credential helper {program} (from {origin}) did not answer within "
                        f"{timeout:g}s for {server}; check it (it may be waiting for an unlock "
                        "prompt)") from None
    except OSError as e:
        raise AuthError(f"credential helper {program} (from {origin}) could not be started: "
                        f"{e.strerror or type(e).__name__}") from None
    if proc.returncode != 0:
        if proc.stdout.data.strip() == HELPER_NOT_FOUND:
            log.info("credential helper %s has no credentials for %s: pulling anonymously",
                     program, server)
            return None
        raise AuthError(f"credential helper {program} (from {origin}) {proc.status()} for {server}; its "
                        f"output is not shown (it may hold secrets): run 'echo {server} | {program} "
                        "get' to see why")
    bad = AuthError(f"credential helper {program} (from {origin}) did not answer {server} with a "
                    "JSON object {\"ServerURL\", \"Username\", \"Secret\"} (its output is not "
                    "shown: it may hold secrets)")
    if proc.stdout.truncated:
        raise bad
    try:
        doc = load_json(proc.stdout.data, what=f"the answer of {program}")
    except ManifestError:
        raise bad from None
    if not isinstance(doc, dict):
        raise bad
    fields = {k.casefold(): v for k, v in doc.items()}  # Go decodes these keys case-insensitively
    user, secret = fields.get("username", ""), fields.get("secret", "")
    if not isinstance(user, str) or not isinstance(secret, str):
        raise bad
    if not user and not secret:
        log.info("credential helper %s has empty credentials for %s: pulling anonymously",
                 program, server)
        return None
    if user == TOKEN_USERNAME:
        return Credentials(TOKEN_USERNAME, secret, identity_token=True)
    if not user:
        raise AuthError(f"credential helper {program} (from {origin}) answered {server} with a "
                        "secret but no username")
    return Credentials(user, secret)

